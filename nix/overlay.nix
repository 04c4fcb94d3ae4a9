# overlays.default: the packages of this flake, for any nixpkgs.
#
# Every name is rocm-llm's own: nixpkgs has its own llama-cpp-rocm and
# llama-cpp-vulkan (other build numbers, every GPU target, the web UI), and
# services.llama-cpp or a llama-swap config that uses them must keep getting
# them. The module tests for rocm-llm-llama-cpp-rocm, which only this overlay
# defines.
final: _prev:
let
  llamaCpp = backend: final.callPackage ./llama-cpp.nix { inherit backend; };
in
{
  rocm-llm = final.callPackage ./rocm-llm.nix { };

  rocm-llm-llama-cpp-rocm = llamaCpp "rocm";
  # CUDA is unfree: evaluating this needs a nixpkgs that allows it
  # (config.allowUnfree, or an allowUnfreePredicate for the CUDA packages)
  rocm-llm-llama-cpp-cuda = llamaCpp "cuda";
  rocm-llm-llama-cpp-vulkan = llamaCpp "vulkan";
  rocm-llm-llama-cpp-cpu = llamaCpp "cpu";

  # rocm-llm with rocm-llm-llama-cpp-rocm as its default llama-server
  rocm-llm-rocm = final.callPackage ./wrapped.nix { llama-cpp = final.rocm-llm-llama-cpp-rocm; };

  # SmolLM2-135M-Instruct (GGUF) for the demo and the VM tests
  rocm-llm-demo-model = final.callPackage ./demo-model.nix { };
}
