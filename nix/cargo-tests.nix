# `cargo test` with a CPU llama-server on PATH and in ROCM_LLM_LLAMA_SERVER,
# for the tests that start real llama-server processes (loopback only).
{
  lib,
  rocm-llm,
  llama-cpp-cpu,
}:
rocm-llm.overrideAttrs (old: {
  pname = "rocm-llm-cargo-tests";
  doCheck = true;
  nativeCheckInputs = (old.nativeCheckInputs or [ ]) ++ [ llama-cpp-cpu ];
  preCheck = (old.preCheck or "") + ''
    export ROCM_LLM_LLAMA_SERVER=${lib.getExe' llama-cpp-cpu "llama-server"}
    export HOME=$TMPDIR
  '';
  # the point of this derivation is the test run
  postInstall = (old.postInstall or "") + ''
    rm -rf $out/bin
    mkdir -p $out
    echo "cargo tests passed with $ROCM_LLM_LLAMA_SERVER" > $out/result
  '';
})
