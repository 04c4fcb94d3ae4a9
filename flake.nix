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

      tests = import ./nix/tests {
        inherit pkgs self;
      };
    in
    {
      overlays.default = import ./nix/overlay.nix;

      nixosModules.default = ./modules/rocm-llm.nix;
      nixosModules.rocm-llm = self.nixosModules.default;

      packages.${system} = {
        inherit (pkgs)
          rocm-llm
          llama-cpp-rocm
          llama-cpp-vulkan
          llama-cpp-cpu
          ;
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
            nixfmt
          ];
          RUST_SRC_PATH = "${pkgs.rustPlatform.rustLibSrc}";
        };
        # the same, plus a CPU llama-server for the integration tests
        # (builds llama.cpp on first use)
        with-llama-server = pkgs.mkShell {
          inputsFrom = [ self.devShells.${system}.default ];
          packages = [ pkgs.llama-cpp-cpu ];
          ROCM_LLM_LLAMA_SERVER = lib.getExe' pkgs.llama-cpp-cpu "llama-server";
        };
      };

      formatter.${system} = pkgs.nixfmt-tree;

      checks.${system} = {
        # package builds
        inherit (pkgs)
          rocm-llm
          llama-cpp-rocm
          llama-cpp-vulkan
          llama-cpp-cpu
          ;
        default = self.packages.${system}.default;
      }
      // tests;
    };
}
