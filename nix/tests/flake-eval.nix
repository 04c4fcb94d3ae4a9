# Evaluates flake.nix against ./stub-nixpkgs and checks its outputs: the
# output names, the llama.cpp overrides (flags, hooks, source, target list),
# the rocm-llm package, the wrapper, the app and the checks. Nothing is built.
#
#   NIXPKGS_LIB_DIR=/path/to/nixpkgs/lib \
#     nix-instantiate --eval --strict --json nix/tests/flake-eval.nix --arg lib 'import /path/to/nixpkgs/lib'
{ lib }:
let
  inherit (lib) hasInfix;

  flake = import ../../flake.nix;
  nixpkgs = {
    inherit lib;
    outPath = ./stub-nixpkgs;
  };
  self = flake.outputs { inherit self nixpkgs; } // {
    outPath = ../..;
  };

  system = "x86_64-linux";
  packages = self.packages.${system};
  checks = self.checks.${system};
  names = builtins.attrNames;

  rocm = packages.llama-cpp-rocm;
  vulkan = packages.llama-cpp-vulkan;
  cpu = packages.llama-cpp-cpu;
  rocmMulti = rocm.override {
    rocmGpuTargets = [
      "gfx1100"
      "gfx1101"
      "gfx1102"
    ];
  };
  flags = p: p.cmakeFlags;
  hasFlag = p: f: builtins.elem f (flags p);
  anyFlag = p: needle: builtins.any (hasInfix needle) (flags p);
  toolNames = p: map lib.getName p.nativeBuildInputs;

  wanted = {
    packages = [
      "default"
      "llama-cpp-cpu"
      "llama-cpp-rocm"
      "llama-cpp-vulkan"
      "rocm-llm"
    ];
    checks = [
      "cargo-tests"
      "default"
      "formatting"
      "llama-cpp-cpu"
      "llama-cpp-rocm"
      "llama-cpp-vulkan"
      "module-eval"
      "rocm-llm"
      "vm-device-access"
      "vm-serve"
    ];
  };

  vmScript = checks.vm-serve.testArgs.testScript;

  results = {
    "outputs: packages" = names packages == wanted.packages;
    "outputs: checks" = names checks == wanted.checks;
    "outputs: apps.default runs the wrapped rocm-llm" =
      self.apps.${system}.default.program == "${packages.default}/bin/rocm-llm";
    "outputs: nixosModules.default is modules/rocm-llm.nix" =
      self.nixosModules.default == ../../modules/rocm-llm.nix;
    "outputs: overlays.default, devShells.default, formatter" =
      builtins.isFunction self.overlays.default
      && self.devShells.${system} ? default
      && self.formatter.${system}.name == "nixfmt-tree";
    "devShell has cargo, clippy, rustfmt and nixfmt" =
      builtins.all (n: builtins.elem n (map lib.getName self.devShells.${system}.default.packages))
        [
          "cargo"
          "clippy"
          "rustfmt"
          "nixfmt"
        ];

    "llama-cpp-rocm: b11434 from the sdist" =
      rocm.version == "0.6.0-b11434" && rocm.src.name == "llama.cpp-b11434-source";
    "llama-cpp-rocm: the sdist is fetched by its verified sha256" =
      rocm.sdist.outputHash == "sha256-sKL+tkxvvQnxKvIwc08HLdgZ7LDr0llWXh1unDQAfkU=";
    "llama-cpp-rocm: nixpkgs' llama-cpp got rocmSupport and rocmGpuTargets" =
      rocm.stubArgs.rocmSupport && rocm.stubArgs.rocmGpuTargets == [ "gfx1101" ];
    "llama-cpp-rocm: GGML_HIP on, gfx1101 only" =
      hasFlag rocm "-DGGML_HIP:BOOL=TRUE"
      && hasFlag rocm "-DCMAKE_HIP_ARCHITECTURES:STRING=gfx1101"
      && builtins.length (builtins.filter (hasInfix "CMAKE_HIP_ARCHITECTURES") (flags rocm)) == 1;
    "llama-cpp-rocm: GGML_NATIVE off, build number 11434 (once)" =
      hasFlag rocm "-DGGML_NATIVE:BOOL=FALSE"
      && hasFlag rocm "-DLLAMA_BUILD_NUMBER:STRING=11434"
      && !(hasFlag rocm "-DLLAMA_BUILD_NUMBER:STRING=10566")
      && !(hasFlag rocm "-DLLAMA_BUILD_COMMIT:STRING=bb4caa7");
    "llama-cpp-rocm: flash attention via GGML_CUDA_FA, no rocWMMA" =
      hasFlag rocm "-DGGML_CUDA_FA:BOOL=TRUE" && !(anyFlag rocm "ROCWMMA");
    "llama-cpp-rocm: nixpkgs' CMAKE_HIP_COMPILER kept, GGML_CLBLAST dropped" =
      anyFlag rocm "CMAKE_HIP_COMPILER"
      && !(anyFlag rocm "GGML_CLBLAST")
      && builtins.elem "-DGGML_CLBLAST:BOOL=FALSE" rocm.droppedNixpkgsCmakeFlags;
    "llama-cpp-rocm: no npm build (hooks, preConfigure, npmDeps)" =
      !(builtins.elem "npm-config-hook" (toolNames rocm))
      && !(builtins.elem "nodejs" (toolNames rocm))
      && rocm.preConfigure == ""
      && rocm.npmDeps == null
      && hasFlag rocm "-DLLAMA_BUILD_UI:BOOL=FALSE"
      && hasFlag rocm "-DLLAMA_USE_PREBUILT_UI:BOOL=FALSE";
    "llama-cpp-rocm: cmake and the other build tools stay" =
      builtins.all (t: builtins.elem t (toolNames rocm))
        [
          "cmake"
          "ninja"
          "installShellFiles"
        ];
    "llama-cpp-rocm: mainProgram llama-server" = rocm.meta.mainProgram == "llama-server";
    "llama-cpp-rocm.override { rocmGpuTargets }" =
      hasFlag rocmMulti "-DCMAKE_HIP_ARCHITECTURES:STRING=gfx1100;gfx1101;gfx1102"
      &&
        rocmMulti.stubArgs.rocmGpuTargets == [
          "gfx1100"
          "gfx1101"
          "gfx1102"
        ];
    "llama-cpp-vulkan: GGML_VULKAN on, no HIP" =
      vulkan.stubArgs.vulkanSupport
      && hasFlag vulkan "-DGGML_VULKAN:BOOL=TRUE"
      && hasFlag vulkan "-DGGML_HIP:BOOL=FALSE"
      && !(anyFlag vulkan "CMAKE_HIP");
    "llama-cpp-cpu: no GPU backend" =
      !cpu.stubArgs.rocmSupport
      && !cpu.stubArgs.vulkanSupport
      && hasFlag cpu "-DGGML_HIP:BOOL=FALSE"
      && hasFlag cpu "-DGGML_VULKAN:BOOL=FALSE"
      && hasFlag cpu "-DGGML_CUDA:BOOL=FALSE";

    "rocm-llm: from Cargo.toml and Cargo.lock, no tests in the build" =
      packages.rocm-llm.pname == "rocm-llm"
      && packages.rocm-llm.version == (lib.importTOML ../../Cargo.toml).package.version
      && packages.rocm-llm.cargoLock.lockFile == ../../Cargo.lock
      && packages.rocm-llm.doCheck == false;
    "rocm-llm: the source holds the crate and not the Nix side" =
      let
        src = toString packages.rocm-llm.src;
      in
      builtins.pathExists "${src}/Cargo.toml"
      && builtins.pathExists "${src}/src/main.rs"
      && !(builtins.pathExists "${src}/flake.nix")
      && !(builtins.pathExists "${src}/modules");
    "default: rocm-llm wrapped with llama-cpp-rocm's llama-server as default" =
      hasInfix "--set-default ROCM_LLM_LLAMA_SERVER ${rocm}/bin/llama-server" packages.default.postBuild;

    "checks.cargo-tests: runs cargo test with the CPU llama-server" =
      checks.cargo-tests.doCheck && hasInfix "${cpu}/bin/llama-server" checks.cargo-tests.preCheck;
    "checks.vm-serve: edits the spec, reloads, stops" =
      hasInfix "switch-to-configuration test" vmScript
      && hasInfix "systemctl stop rocm-llm.service" vmScript
      && hasInfix "last_reload" vmScript;
    "checks.vm-device-access: checks DeviceAllow" =
      hasInfix "char-kfd" checks.vm-device-access.testArgs.testScript;
  };

  failed = names (lib.filterAttrs (_: ok: !ok) results);
in
{
  inherit failed;
  passed = names (lib.filterAttrs (_: ok: ok) results);
}
