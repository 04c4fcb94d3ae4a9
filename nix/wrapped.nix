# rocm-llm whose default llama-server is the given llama.cpp build.
# ROCM_LLM_LLAMA_SERVER is only a default: a value already in the environment,
# or `llama_server:` in the spec, still wins.
#
# nixpkgs' symlinkJoin does not keep postBuild among the derivation's
# attributes, so what the wrapper sets is also in passthru (wrapperArgs,
# llamaServer), where checks can read it.
{
  lib,
  symlinkJoin,
  makeWrapper,
  rocm-llm,
  llama-cpp,
}:
let
  wrapperArgs = [
    "--set-default"
    "ROCM_LLM_LLAMA_SERVER"
    (lib.getExe' llama-cpp "llama-server")
  ];
in
symlinkJoin {
  name = "rocm-llm-${rocm-llm.version or "unstable"}-${llama-cpp.passthru.backend or "llama-cpp"}";
  paths = [ rocm-llm ];
  nativeBuildInputs = [ makeWrapper ];
  postBuild = ''
    wrapProgram $out/bin/rocm-llm ${lib.escapeShellArgs wrapperArgs}
  '';
  passthru = {
    unwrapped = rocm-llm;
    llamaServer = llama-cpp;
    inherit wrapperArgs;
  };
  version = rocm-llm.version or "unstable";
  meta = (rocm-llm.meta or { }) // {
    description = "rocm-llm (llama-server from ${llama-cpp.name})";
    mainProgram = "rocm-llm";
  };
}
