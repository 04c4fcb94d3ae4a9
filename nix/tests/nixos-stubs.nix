# The few NixOS options services.rocm-llm sets, declared loosely, and the few
# packages it uses, faked: enough to evaluate modules/rocm-llm.nix with
# nixpkgs' `lib` alone (scripts/check-nix.sh). The flake's checks.module-eval
# evaluates the same module in the real NixOS module system.
{ lib }:
let
  inherit (lib) mkOption types;
  loose = types.attrsOf types.anything;

  fakePackage = name: path: {
    type = "derivation";
    inherit name;
    outPath = path;
    meta.mainProgram = name;
  };
in
{
  pkgs = lib.fix (self: {
    inherit lib;
    callPackage = lib.callPackageWith self;
    symlinkJoin =
      args: args // fakePackage args.name "/nix/store/22222222222222222222222222222222-${args.name}";
    makeWrapper = fakePackage "make-wrapper" "/nix/store/33333333333333333333333333333333-make-wrapper";
    # coreutils of the machine that runs the check, so the sync script the
    # module writes can run there
    coreutils = fakePackage "coreutils" "/usr";
    rocm-llm = fakePackage "rocm-llm" "/nix/store/00000000000000000000000000000000-rocm-llm-stub";
    llama-cpp-rocm = fakePackage "llama-cpp-rocm" "/nix/store/11111111111111111111111111111111-llama-cpp-rocm-stub";
    writeText = name: text: builtins.toFile name text;
    writeShellScript = name: text: builtins.toFile name "#!/usr/bin/env bash\n${text}";
  });

  module = {
    options = {
      assertions = mkOption {
        type = types.listOf loose;
        default = [ ];
      };
      warnings = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      environment.etc = mkOption {
        type = types.attrsOf loose;
        default = { };
      };
      environment.systemPackages = mkOption {
        type = types.listOf types.anything;
        default = [ ];
      };
      networking.firewall.allowedTCPPorts = mkOption {
        type = types.listOf types.port;
        default = [ ];
      };
      systemd.services = mkOption {
        type = types.attrsOf (
          types.submodule {
            freeformType = loose;
            options = {
              serviceConfig = mkOption {
                type = loose;
                default = { };
              };
              environment = mkOption {
                type = types.attrsOf types.str;
                default = { };
              };
              reloadTriggers = mkOption {
                type = types.listOf types.anything;
                default = [ ];
              };
            };
          }
        );
        default = { };
      };
    };
  };
}
