{
  description = "rocm-llm: declare local LLMs in one YAML file, supervised llama-server on ROCm (gfx1101)";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      system = "x86_64-linux";
      inherit (nixpkgs) lib;

      pkgs = import nixpkgs {
        inherit system;
        overlays = [ self.overlays.default ];
      };
      # CUDA is unfree; only llama-cpp-cuda comes from this instance
      pkgsUnfree = import nixpkgs {
        inherit system;
        overlays = [ self.overlays.default ];
        config.allowUnfree = true;
      };

      tests = import ./nix/tests {
        inherit pkgs self;
      };
    in
    {
      overlays.default = import ./nix/overlay.nix;

      nixosModules.default = ./modules/rocm-llm.nix;
      nixosModules.rocm-llm = self.nixosModules.default;

      packages.${system} = {
        inherit (pkgs) rocm-llm;
        llama-cpp-rocm = pkgs.rocm-llm-llama-cpp-rocm;
        llama-cpp-cuda = pkgsUnfree.rocm-llm-llama-cpp-cuda;
        llama-cpp-vulkan = pkgs.rocm-llm-llama-cpp-vulkan;
        llama-cpp-cpu = pkgs.rocm-llm-llama-cpp-cpu;
        demo-model = pkgs.rocm-llm-demo-model;
        # rocm-llm whose default llama-server is llama-cpp-rocm
        default = pkgs.rocm-llm-rocm;
      };

      # nix run <flake> -- serve --spec ./models.yaml
      apps.${system}.default = {
        type = "app";
        program = lib.getExe self.packages.${system}.default;
        meta.description = "rocm-llm with the ROCm (gfx1101) llama-server";
      };

      devShells.${system} = {
        default = pkgs.mkShell {
          packages = with pkgs; [
            cargo
            rustc
            clippy
            rustfmt
            rust-analyzer
            cargo-nextest
          ];
          RUST_SRC_PATH = "${pkgs.rustPlatform.rustLibSrc}";
        };
        # the same, plus a CPU llama-server for the integration tests
        # (builds llama.cpp on first use)
        with-llama-server = pkgs.mkShell {
          inputsFrom = [ self.devShells.${system}.default ];
          packages = [ pkgs.rocm-llm-llama-cpp-cpu ];
          ROCM_LLM_LLAMA_SERVER = lib.getExe' pkgs.rocm-llm-llama-cpp-cpu "llama-server";
        };
      };

      # `nix fmt`. The authoritative format check is scripts/check-nix.sh (b)
      # (docs/nix.md, "Formatting"); this nixfmt may be another release.
      formatter.${system} = pkgs.nixfmt-tree;

      checks.${system} = {
        # package builds (llama-cpp-cuda is left out: unfree, and hours of
        # nvcc on a builder that has no substitute for it)
        inherit (self.packages.${system})
          rocm-llm
          llama-cpp-rocm
          llama-cpp-vulkan
          llama-cpp-cpu
          demo-model
          default
          ;
      }
      // tests;
    };
}
