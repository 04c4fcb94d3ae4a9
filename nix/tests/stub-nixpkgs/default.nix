# A stand-in for nixpkgs with just the attributes this flake uses, so that
# flake.nix and everything it imports can be evaluated where no nixpkgs is
# (nix/tests/flake-eval.nix, run by scripts/check-nix.sh). Derivations are
# attribute sets that remember their arguments, around a real derivation
# whose builder only fails (so a current Nix's `nix flake check --no-build`
# finds a drvPath); nothing is built. `lib` is the real nixpkgs lib: ./lib
# where check-nix.sh copies it in to make this directory a flake (the input
# that replaces nixpkgs), else found through NIXPKGS_LIB_DIR. Its
# nixos/lib/eval-config.nix is the NixOS module system stubbed
# (./nixos-stubs.nix).
{
  system ? "x86_64-linux",
  overlays ? [ ],
  config ? { },
  ...
}:
let
  lib = import (
    let
      dir = builtins.getEnv "NIXPKGS_LIB_DIR";
    in
    if builtins.pathExists ./lib/default.nix then
      ./lib
    else if dir == "" then
      throw "stub-nixpkgs: set NIXPKGS_LIB_DIR to nixpkgs' lib directory"
    else
      dir
  );

  # `key` tells apart derivations of one name (the text of a writeText)
  realDerivation =
    name: key:
    derivation {
      inherit name system;
      builder = "/bin/sh";
      args = [
        "-c"
        "echo stub-nixpkgs cannot build anything; exit 1"
      ];
      stubKey = key;
    };

  mkDerivation =
    attrs:
    let
      name = attrs.name or "${attrs.pname}-${attrs.version}";
      real = realDerivation name (attrs.stubKey or "");
    in
    (attrs.passthru or { })
    // attrs
    // {
      type = "derivation";
      inherit name;
      inherit (real) outPath drvPath;
      drvAttrs = attrs;
      overrideAttrs = f: mkDerivation (attrs // (if builtins.isFunction f then f attrs else f));
    };

  drv = name: mkDerivation { inherit name; };

  # nixpkgs' llama-cpp as of 2026: the arguments the flake overrides and the
  # kinds of flags and hooks the override has to deal with.
  llamaCppPackage =
    {
      lib,
      cmake,
      ninja,
      installShellFiles,
      nodejs_latest,
      npmHooks,
      pkg-config,
      cudaSupport ? false,
      cudaPackages ? { },
      rocmSupport ? false,
      rocmPackages ? { },
      rocmGpuTargets ? [ "gfx900" ],
      vulkanSupport ? false,
      blasSupport ? !(cudaSupport || rocmSupport || vulkanSupport),
    }:
    let
      inherit (lib) cmakeBool cmakeFeature optionals;
    in
    mkDerivation {
      pname = "llama-cpp";
      version = "0.2.0";
      __structuredAttrs = true;
      src = drv "source";
      nativeBuildInputs = [
        cmake
        installShellFiles
        ninja
        nodejs_latest
        npmHooks.npmConfigHook
        pkg-config
      ];
      npmRoot = "tools/ui";
      npmDeps = throw "stub-nixpkgs: the web UI's npm dependencies were evaluated";
      preConfigure = "pushd tools/ui; npm run build; popd";
      cmakeFlags = [
        (cmakeBool "GGML_NATIVE" false)
        (cmakeBool "LLAMA_BUILD_EXAMPLES" false)
        (cmakeBool "LLAMA_BUILD_SERVER" true)
        (cmakeBool "LLAMA_BUILD_IS_DEV" false)
        (cmakeBool "BUILD_SHARED_LIBS" true)
        (cmakeBool "GGML_BLAS" blasSupport)
        (cmakeBool "GGML_CLBLAST" false)
        (cmakeBool "GGML_CUDA" cudaSupport)
        (cmakeBool "GGML_HIP" rocmSupport)
        (cmakeBool "GGML_VULKAN" vulkanSupport)
        (cmakeFeature "LLAMA_BUILD_NUMBER" "10566")
        (cmakeFeature "LLAMA_BUILD_COMMIT" "bb4caa7")
        (cmakeBool "GGML_CPU_ALL_VARIANTS" true)
        (cmakeBool "GGML_BACKEND_DL" true)
      ]
      ++ optionals cudaSupport [
        (cmakeFeature "CMAKE_CUDA_ARCHITECTURES" (
          cudaPackages.flags.cmakeCudaArchitecturesString or "75;86"
        ))
      ]
      ++ optionals rocmSupport [
        (cmakeFeature "CMAKE_HIP_COMPILER" "${rocmPackages.clr or "clr"}/bin/clang++")
        (cmakeFeature "CMAKE_HIP_ARCHITECTURES" (builtins.concatStringsSep ";" rocmGpuTargets))
      ];
      postInstall = "cp $src/include/llama.h $out/include/";
      passthru.stubArgs = {
        allowUnfree = config.allowUnfree or false;
        inherit
          cudaSupport
          rocmSupport
          rocmGpuTargets
          vulkanSupport
          ;
      };
      meta.mainProgram = "llama";
    };

  base =
    self:
    {
      inherit lib;
      path = ./.;
      stdenv.hostPlatform.system = system;
      callPackage = lib.callPackageWith self;

      inherit mkDerivation;
      runCommand =
        name: env: script:
        mkDerivation ({ inherit name; } // env // { buildCommand = script; });
      # the store path depends on the text, as a real one does
      writeText =
        name: text:
        mkDerivation {
          inherit name text;
          stubKey = builtins.hashString "sha256" text;
        };
      writeShellScript = name: text: self.writeText name "#!/usr/bin/env bash\n${text}";
      # as nixpkgs' symlinkJoin: postBuild (and the other arguments of
      # symlinkJoin itself) are not attributes of the result
      symlinkJoin =
        args:
        mkDerivation (
          builtins.removeAttrs args [
            "postBuild"
            "paths"
            "stripPrefix"
          ]
        );
      mkShell = args: mkDerivation ({ name = "shell"; } // args);
      fetchPypi =
        {
          pname,
          version,
          hash,
          format ? "setuptools",
          dist ? "py2.py3",
          python ? "py2.py3",
        }:
        mkDerivation {
          name =
            if format == "wheel" then
              "${pname}-${version}-${python}-none-any.whl"
            else
              "${pname}-${version}.tar.gz";
          outputHash = hash;
          stubArgs = { inherit format dist python; };
        };
      rustPlatform = {
        buildRustPackage = args: mkDerivation args;
        rustLibSrc = drv "rust-lib-src";
      };
      testers.runNixOSTest =
        args:
        mkDerivation {
          name = "vm-test-run-${args.name}";
          passthru.testArgs = args;
        };

      llama-cpp = self.callPackage llamaCppPackage { };
      # nixpkgs' own builds (top-level since 2025): the overlay must leave
      # them alone, and the module must not pick them
      llama-cpp-rocm = (self.llama-cpp.override { rocmSupport = true; }) // {
        nixpkgsOwn = true;
      };
      llama-cpp-vulkan = (self.llama-cpp.override { vulkanSupport = true; }) // {
        nixpkgsOwn = true;
      };
      cudaPackages.flags.cmakeCudaArchitecturesString = "75;86";
      npmHooks.npmConfigHook = drv "npm-config-hook";
      nodejs_latest = drv "nodejs-25.2.0";
    }
    // lib.genAttrs [
      "cargo"
      "cargo-nextest"
      "clippy"
      "cmake"
      "coreutils"
      "curl"
      "installShellFiles"
      "makeWrapper"
      "ninja"
      "nixfmt"
      "nixfmt-tree"
      "pkg-config"
      "rust-analyzer"
      "rustc"
      "rustfmt"
      "unzip"
    ] drv;
in
lib.fix (lib.foldl' (acc: overlay: lib.extends overlay acc) base overlays)
