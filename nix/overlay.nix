# overlays.default: the packages of this flake, for any nixpkgs.
final: _prev: {
  rocm-llm = final.callPackage ./rocm-llm.nix { };

  llama-cpp-rocm = final.callPackage ./llama-cpp.nix { backend = "rocm"; };
  llama-cpp-vulkan = final.callPackage ./llama-cpp.nix { backend = "vulkan"; };
  llama-cpp-cpu = final.callPackage ./llama-cpp.nix { backend = "cpu"; };

  # rocm-llm with llama-cpp-rocm as its default llama-server
  rocm-llm-rocm = final.callPackage ./wrapped.nix { llama-cpp = final.llama-cpp-rocm; };
}
