#!/usr/bin/env bash
# scripts/soak.sh: the chaos and soak run (scripts/soak.py) for MINUTES against
# the real `rocm-llm serve` and the real llama-server, with three tiny models:
# spec saves in every editor style (valid and invalid), SIGHUP storms,
# SIGKILL and SIGSTOP/SIGCONT of children, and concurrent streaming and plain
# requests (some clients hang up mid-stream), all on 127.0.0.1. It checks its
# invariants all through (one instance per model, no request lost, no RSS or
# fd growth, no orphans: docs/hardening.md), prints a summary and exits
# non-zero on any violation. It stops by itself.
#
# Binaries: ROCM_LLM_BIN (else target/debug/rocm-llm, built here with
# `cargo build --bin rocm-llm`, or target/release with --release) and
# ROCM_LLM_LLAMA_SERVER (else scripts/llama-server.sh, which builds it once).
#
# Usage: scripts/soak.sh MINUTES [--release] [soak.py options...]
#        scripts/soak.sh 2
#        scripts/soak.sh 30 --release --seed 7 --json-out target/soak-30.json
# soak.py options: --seed N (SOAK_SEED), --clients N, --json-out FILE,
# --workdir DIR (kept; default: a temporary directory, removed on success).
set -uo pipefail

cd "$(dirname "$0")/.." || exit 1
[ $# -ge 1 ] || { echo "usage: scripts/soak.sh MINUTES [--release] [soak.py options...]" >&2; exit 2; }
minutes=$1
shift
profile=debug
if [ "${1:-}" = --release ]; then
  profile=release
  shift
fi

if [ -z "${ROCM_LLM_BIN:-}" ]; then
  flags=()
  [ "$profile" = release ] && flags=(--release)
  if ! cargo build "${flags[@]}" --bin rocm-llm >/dev/null 2>target/soak-build.log; then
    tail -30 target/soak-build.log >&2
    echo "soak.sh: cargo build --bin rocm-llm failed" >&2
    exit 3
  fi
  ROCM_LLM_BIN=$PWD/target/$profile/rocm-llm
fi
if [ -z "${ROCM_LLM_LLAMA_SERVER:-}" ]; then
  ROCM_LLM_LLAMA_SERVER=$(bash scripts/llama-server.sh) || { echo "soak.sh: scripts/llama-server.sh failed" >&2; exit 3; }
fi

has_workdir=0
for a in "$@"; do [ "$a" = --workdir ] && has_workdir=1; done
extra=()
if [ "$has_workdir" = 0 ]; then
  work=$(mktemp -d "${TMPDIR:-/tmp}/rocm-llm-soak.XXXXXX")
  extra=(--workdir "$work")
fi

python3 scripts/soak.py "$minutes" --rocm-llm "$ROCM_LLM_BIN" --llama-server "$ROCM_LLM_LLAMA_SERVER" "${extra[@]}" "$@"
rc=$?
if [ "$has_workdir" = 0 ]; then
  if [ "$rc" = 0 ]; then
    rm -rf "$work"
  else
    echo "soak.sh: kept $work (daemon.log, spec/)" >&2
  fi
fi
exit "$rc"
