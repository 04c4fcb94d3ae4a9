# The flake's checks beyond the package builds.
{
  pkgs,
  self,
}:
let
  inherit (pkgs) lib;

  # A tiny random-weight llama GGUF that llama-server loads; made by rocm-llm
  # itself, so the tests download nothing.
  tinyModel = pkgs.runCommand "rocm-llm-tiny-gguf" { nativeBuildInputs = [ pkgs.rocm-llm ]; } ''
    mkdir -p $out
    rocm-llm demo-model $out/tiny.gguf
  '';

  # The same checks as scripts/check-nix.sh (c), but against the full NixOS
  # module system of the pinned nixpkgs instead of stubs.
  moduleEval = import ./module-eval.nix {
    inherit lib;
    evalConfig =
      modules:
      (import (pkgs.path + "/nixos/lib/eval-config.nix") {
        # the platform comes from pkgs (nixpkgs.pkgs)
        system = null;
        inherit pkgs;
        modules = [
          self.nixosModules.default
          {
            boot.loader.grub.enable = false;
            fileSystems."/".device = "/dev/null";
            system.stateVersion = "26.05";
          }
        ]
        ++ modules;
      }).config;
    modelDir = "/var/lib/models";
  };
in
{
  module-eval = pkgs.writeText "rocm-llm-module-eval.json" (
    builtins.toJSON (
      if moduleEval.failed == [ ] then
        moduleEval.summary
      else
        throw "module-eval: failed checks: ${lib.concatStringsSep "; " moduleEval.failed}"
    )
  );

  cargo-tests = pkgs.callPackage ../cargo-tests.nix { };

  formatting = pkgs.runCommand "rocm-llm-nixfmt-check" { nativeBuildInputs = [ pkgs.nixfmt ]; } ''
    cd ${lib.cleanSource ../..}
    find . -name '*.nix' -print0 | xargs -0 nixfmt --check
    touch $out
  '';

  vm-serve = import ./vm-serve.nix { inherit pkgs self tinyModel; };
  vm-device-access = import ./vm-device-access.nix { inherit pkgs self tinyModel; };
}
