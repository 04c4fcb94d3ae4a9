#!/usr/bin/env bash
# scripts/run-demo.sh: THE main-job command. Serves a demo model on
# http://127.0.0.1:8080 (OpenAI-compatible) until Ctrl-C.
#
#   1. builds rocm-llm (release);
#   2. gets llama-server b11434 from scripts/llama-server.sh (built from the
#      pinned source the first time: ~9 min on 2 cores; cached after that),
#      unless ROCM_LLM_LLAMA_SERVER already names one;
#   3. gets the demo model: SmolLM2-135M-Instruct (98 MB, a real model that
#      answers) from scripts/smollm2.sh, linked as examples/smollm2.gguf;
#      or, with --tiny, writes the tiny random-weight examples/tiny.gguf
#      (0.5 MB, nothing fetched; it answers in gibberish);
#   4. runs `rocm-llm serve --spec examples/demo.yaml` (demo-tiny.yaml with
#      --tiny) in its place.
#
# Usage: scripts/run-demo.sh [--tiny] [SERVE-ARGS...]
# Edit the spec while it runs: valid saves are applied, invalid ones are
# reported and change nothing. Other arguments go to `rocm-llm serve`.
# Needs: a Rust toolchain, python3 with pip, and apt (as root) or a C/C++
# compiler, make and cmake; see scripts/llama-server.sh.
set -euo pipefail

cd "$(dirname "$0")/.."
log() { printf 'run-demo.sh: %s\n' "$*" >&2; }

tiny=false
if [[ "${1:-}" == --tiny ]]; then
  tiny=true
  shift
fi

log "building rocm-llm (cargo build --release)"
cargo build --release --bin rocm-llm >&2
bin="$PWD/target/release/rocm-llm"

if [[ -z "${ROCM_LLM_LLAMA_SERVER:-}" ]]; then
  ROCM_LLM_LLAMA_SERVER="$(bash scripts/llama-server.sh)"
fi
export ROCM_LLM_LLAMA_SERVER
log "llama-server: $ROCM_LLM_LLAMA_SERVER"

if $tiny; then
  "$bin" demo-model examples/tiny.gguf >/dev/null
  log "demo model: examples/tiny.gguf (random weights)"
  spec=examples/demo-tiny.yaml model=tiny question=Hello
else
  gguf="$(bash scripts/smollm2.sh)"
  ln -sfn "$gguf" examples/smollm2.gguf
  log "demo model: examples/smollm2.gguf -> $gguf"
  spec=examples/demo.yaml model=smollm2 question="What is the capital of France? Answer in one sentence."
fi

if ! "$bin" serve --help >/dev/null 2>&1; then
  log "error: this rocm-llm has no 'serve' subcommand yet"
  exit 3
fi

cat >&2 <<HINT

rocm-llm is starting: the OpenAI-compatible endpoint is http://127.0.0.1:8080
(model "$model", alias "demo"; the status API is on 127.0.0.1:8081). Try:

  curl -s http://127.0.0.1:8080/v1/models
  curl -s http://127.0.0.1:8080/v1/chat/completions \\
    -H 'Content-Type: application/json' \\
    -d '{"model": "demo", "messages": [{"role": "user", "content": "$question"}], "max_tokens": 32}'

  $bin status

Ctrl-C stops rocm-llm and the llama-server it started.

HINT
exec "$bin" serve --spec "$spec" "$@"
