# The stub nixpkgs' NixOS: lib.evalModules with ../../nixos-stubs.nix in place
# of NixOS's modules, so that the flake's checks.module-eval evaluates under
# the stub nixpkgs too (a current Nix's `nix flake check --no-build`).
{
  system ? null,
  pkgs,
  modules,
  ...
}:
let
  inherit (pkgs) lib;
  stubs = import ../../nixos-stubs.nix { inherit lib; };
  loose = lib.mkOption {
    type = lib.types.attrsOf lib.types.anything;
    default = { };
  };
in
lib.evalModules {
  modules = [
    stubs.module
    stubs.vmModule
    {
      config._module.args.pkgs = pkgs;
      # what a NixOS configuration sets that the stubs do not model
      options = {
        boot = loose;
        fileSystems = loose;
        system = loose;
      };
    }
  ]
  ++ modules;
}
