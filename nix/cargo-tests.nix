# `cargo nextest run` with a CPU llama-server on PATH and in
# ROCM_LLM_LLAMA_SERVER, for the tests that start real llama-server processes
# (loopback only). One llama-server at a time: see nix/rocm-llm.nix.
{
  callPackage,
  rocm-llm-llama-cpp-cpu,
}:
callPackage ./rocm-llm.nix { testLlamaServer = rocm-llm-llama-cpp-cpu; }
