# The CMake cache entries that turn nixpkgs' llama-cpp into the pinned
# llama.cpp b11434 build for one backend. Pure: needs only nixpkgs' `lib`, so
# scripts/check-nix.sh can evaluate it without nixpkgs and compare every name
# against the CMake files of the pinned source.
{
  lib,
  # "rocm", "vulkan", "cuda" or "cpu"
  backend,
  # HIP offload targets; only read when backend == "rocm"
  rocmGpuTargets ? [ "gfx1101" ],
  # CUDA compute capabilities without the dot ("89" = sm_89); only read when
  # backend == "cuda"
  cudaArchitectures ? [ "89" ],
  # llama.cpp's build number (LLAMA_BUILD_NUMBER)
  buildNumber,
  # what `llama-server --version` prints as the commit
  buildCommit,
  # null keeps llama.cpp's default set of FlashAttention K/V type pairs;
  # "all" or "q8_0-q8_0,q4_0-q4_0,..." compiles others (longer HIP build)
  faQuants ? null,
}:
let
  inherit (lib) cmakeBool cmakeFeature optionals;
  rocm = backend == "rocm";
  vulkan = backend == "vulkan";
  cuda = backend == "cuda";
in
assert lib.assertOneOf "backend" backend [
  "rocm"
  "vulkan"
  "cuda"
  "cpu"
];
assert lib.assertMsg (
  !rocm || rocmGpuTargets != [ ]
) "llama-cpp-rocm: rocmGpuTargets must name at least one gfx target";
assert lib.assertMsg (
  !cuda || cudaArchitectures != [ ]
) "llama-cpp-cuda: cudaArchitectures must name at least one compute capability";
rec {
  # Cache entries that nixpkgs' llama-cpp passes and b11434 reads. Every other
  # -D flag nixpkgs passes is dropped, so that no flag reaches cmake that the
  # pinned llama.cpp would ignore (nixpkgs passes GGML_CLBLAST, for example,
  # which b11434 no longer has). CMAKE_* entries are cmake's own and are kept.
  keptFromNixpkgs = [
    "BUILD_SHARED_LIBS"
    "GGML_BACKEND_DL"
    "GGML_BLAS"
    "GGML_BLAS_VENDOR"
    "GGML_CPU_ALL_VARIANTS"
    "GGML_METAL"
    "GGML_RPC"
    "LLAMA_BUILD_EXAMPLES"
    "LLAMA_BUILD_IS_DEV"
    "LLAMA_BUILD_SERVER"
    "LLAMA_BUILD_TESTS"
    "LLAMA_METAL_EMBED_LIBRARY"
    "LLAMA_OPENSSL"
  ];

  # The entries every backend sets, from nix/llama-cpp-flags.json: the one
  # table this file and scripts/llama-server.sh (builds without Nix) both read,
  # with the reason for each entry. Booleans become -DNAME:BOOL=TRUE|FALSE,
  # strings -DNAME:STRING=VALUE.
  table = builtins.fromJSON (builtins.readFile ./llama-cpp-flags.json);
  tableFlags = lib.mapAttrsToList (
    name: value: if builtins.isBool value then cmakeBool name value else cmakeFeature name value
  ) (table.all // table.backends.${backend});

  # Set here, replacing whatever nixpkgs passes for the same name.
  flags = [
    (cmakeFeature "LLAMA_BUILD_NUMBER" buildNumber)
    (cmakeFeature "LLAMA_BUILD_COMMIT" buildCommit)
  ]
  ++ tableFlags
  ++ optionals rocm (
    [ (cmakeFeature "CMAKE_HIP_ARCHITECTURES" (lib.concatStringsSep ";" rocmGpuTargets)) ]
    ++ optionals (faQuants != null) [ (cmakeFeature "GGML_CUDA_FA_QUANTS" faQuants) ]
  )
  # CUDA: the same discipline as HIP (the target list is a parameter; FA is
  # stated in the table)
  ++ optionals cuda (
    [
      (cmakeFeature "CMAKE_CUDA_ARCHITECTURES" (lib.concatStringsSep ";" cudaArchitectures))
    ]
    ++ optionals (faQuants != null) [ (cmakeFeature "GGML_CUDA_FA_QUANTS" faQuants) ]
  );

  # The name of the cache entry a "-DNAME[:TYPE]=VALUE" flag sets, or null.
  flagName =
    flag:
    let
      m = builtins.match "-D([A-Za-z0-9_]+)(:[A-Za-z]+)?=.*" flag;
    in
    if m == null then null else builtins.head m;

  names = map flagName flags;

  # Keeps the nixpkgs flags that b11434 reads and that are not set above.
  filterNixpkgsFlags =
    old:
    builtins.filter (
      flag:
      let
        name = flagName flag;
      in
      name != null
      && !(builtins.elem name names)
      && (lib.hasPrefix "CMAKE_" name || builtins.elem name keptFromNixpkgs)
    ) old;

  # The nixpkgs flags that filterNixpkgsFlags drops (for passthru/inspection).
  droppedNixpkgsFlags = old: builtins.filter (f: !(builtins.elem f (filterNixpkgsFlags old))) old;
}
