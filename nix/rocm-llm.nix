# The rocm-llm daemon and CLI, built from Cargo.lock.
#
# The package build runs no tests: the integration tests need a llama-server,
# and they run in the flake's `checks.cargo-tests` (see nix/cargo-tests.nix).
{
  lib,
  rustPlatform,
}:
let
  root = toString ../.;
  cargoToml = lib.importTOML ../Cargo.toml;
  # Everything but the Nix side, so that editing a module or a test does not
  # rebuild the daemon.
  nixSide = [
    "flake.nix"
    "flake.lock"
    "nix"
    "modules"
    "target"
  ];
  src = lib.cleanSourceWith {
    name = "rocm-llm-source";
    src = lib.cleanSource ../.;
    filter =
      path: _type:
      let
        top = builtins.head (lib.splitString "/" (lib.removePrefix "${root}/" (toString path)));
      in
      !(builtins.elem top nixSide);
  };
in
rustPlatform.buildRustPackage {
  pname = cargoToml.package.name;
  inherit (cargoToml.package) version;
  inherit src;

  cargoLock.lockFile = ../Cargo.lock;

  doCheck = false;

  meta = {
    description = cargoToml.package.description;
    license = with lib.licenses; [
      mit
      asl20
    ];
    mainProgram = "rocm-llm";
    platforms = lib.platforms.linux;
  };
}
