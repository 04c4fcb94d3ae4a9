# The rocm-llm daemon and CLI, built from Cargo.lock.
#
# The package build runs no tests: the integration tests need a llama-server.
# Given one (testLlamaServer, a llama.cpp package), the same build runs the
# test suite instead; that is the flake's `checks.cargo-tests`
# (nix/cargo-tests.nix).
{
  lib,
  rustPlatform,
  cargo-nextest ? null,
  testLlamaServer ? null,
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
  testing = testLlamaServer != null;
in
rustPlatform.buildRustPackage (
  {
    pname = cargoToml.package.name + lib.optionalString testing "-cargo-tests";
    inherit (cargoToml.package) version;
    inherit src;

    cargoLock.lockFile = ../Cargo.lock;

    # the daemon and CLI only: src/bin/bench-proxy is a benchmark, not a tool
    # to land on a system's PATH
    cargoBuildFlags = [
      "--bin"
      "rocm-llm"
    ];

    doCheck = testing;

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
  // lib.optionalAttrs testing {
    # cargo-nextest, as scripts/test.sh: .config/nextest.toml puts every test
    # binary that starts llama-server or a daemon into one group of one
    # thread, so a builder with many cores still runs one llama-server at a
    # time; the other tests use the builder's cores.
    useNextest = true;
    nativeCheckInputs = [
      testLlamaServer
    ]
    ++ lib.optional (cargo-nextest != null) cargo-nextest;
    preCheck = ''
      export ROCM_LLM_LLAMA_SERVER=${lib.getExe' testLlamaServer "llama-server"}
      export HOME=$TMPDIR
    '';
    # the point of this derivation is the test run
    postInstall = ''
      rm -rf $out/bin
      mkdir -p $out
      echo "cargo tests passed with $ROCM_LLM_LLAMA_SERVER" > $out/result
    '';
  }
)
