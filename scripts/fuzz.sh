#!/usr/bin/env bash
# scripts/fuzz.sh: run every fuzz target for MINUTES each, one after the other,
# and print inputs per second and coverage per target. Exits non-zero when a
# target crashes (panic, timeout, out-of-memory), leaving the input in
# fuzz/artifacts/TARGET/ and naming it.
#
# Targets (fuzz/fuzz_targets/; docs/hardening.md lists their invariants):
#   spec_parser    the spec front end (validate::load and planning)
#   gguf           the GGUF header reader and the memory estimate
#   proxy_request  the proxy's route, JSON/multipart/query `model`, upstream URI
#
# Seeds: fuzz/seeds/TARGET (committed, small), plus examples/ and
# tests/fixtures/spec-errors/ for spec_parser. What a run finds goes to
# fuzz/corpus/TARGET (not committed) and seeds the next run.
#
# Needs the nightly toolchain and cargo-fuzz (cargo install cargo-fuzz).
# Targets are built with debug assertions, overflow checks and AddressSanitizer
# (cargo-fuzz's defaults). Each runs `nice`d, with libFuzzer's
#   -rss_limit_mb=1024 (and malloc limit): an input that allocates more is a crash
#   -timeout=10:       an input that takes longer than 10 s is a crash (a hang)
#
# Usage: scripts/fuzz.sh MINUTES [TARGET...]
#        FUZZ_JOBS_NICE=0 scripts/fuzz.sh 1 gguf   # not niced
set -uo pipefail

cd "$(dirname "$0")/.." || exit 1
root=$PWD

usage() { echo "usage: scripts/fuzz.sh MINUTES [TARGET...]" >&2; exit 2; }
[ $# -ge 1 ] || usage
minutes=$1
shift
[[ "$minutes" =~ ^[0-9]+$ ]] && [ "$minutes" -gt 0 ] || usage
all=(spec_parser gguf proxy_request)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all[@]}")
for t in "${targets[@]}"; do
  [[ " ${all[*]} " == *" $t "* ]] || { echo "fuzz.sh: unknown target $t (known: ${all[*]})" >&2; exit 2; }
done

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz.sh: needs the nightly toolchain: rustup toolchain install nightly" >&2
  exit 3
fi
if ! cargo +nightly fuzz --help >/dev/null 2>&1; then
  echo "fuzz.sh: needs cargo-fuzz: cargo install cargo-fuzz" >&2
  exit 3
fi

nice_cmd=(nice -n "${FUZZ_JOBS_NICE:-10}")
logs="$root/target/fuzz-logs"
mkdir -p "$logs"
# The fuzz crate's lock file is the main one (plus libfuzzer-sys).
[ fuzz/Cargo.lock -nt Cargo.lock ] || cp Cargo.lock fuzz/Cargo.lock

echo "fuzz.sh: building ${targets[*]} (cargo +nightly fuzz build)"
for t in "${targets[@]}"; do
  if ! "${nice_cmd[@]}" cargo +nightly fuzz build "$t" >"$logs/build-$t.log" 2>&1; then
    tail -40 "$logs/build-$t.log" >&2
    echo "fuzz.sh: building $t failed (all of it in $logs/build-$t.log)" >&2
    exit 1
  fi
done

seeds_of() { # the seed directories of a target
  case "$1" in
    spec_parser) echo fuzz/seeds/spec_parser examples tests/fixtures/spec-errors ;;
    *) echo "fuzz/seeds/$1" ;;
  esac
}
max_len_of() {
  case "$1" in
    spec_parser) echo 16384 ;;
    *) echo 65536 ;;
  esac
}

results=()
crashed=()
for t in "${targets[@]}"; do
  corpus=fuzz/corpus/$t
  mkdir -p "$corpus" "fuzz/artifacts/$t"
  log="$logs/run-$t.log"
  # shellcheck disable=SC2046 # seed dirs are word-split on purpose
  echo "fuzz.sh: $t for $minutes min (log: $log)"
  start=$SECONDS
  "${nice_cmd[@]}" cargo +nightly fuzz run "$t" "$corpus" $(seeds_of "$t") -- \
    -max_total_time=$((minutes * 60)) -rss_limit_mb=1024 -timeout=10 \
    -max_len="$(max_len_of "$t")" -print_final_stats=1 >"$log" 2>&1
  rc=$?
  secs=$((SECONDS - start))
  # libFuzzer's last status line: "#N DONE cov: C ft: F corp: ..." (or the
  # last pulse/NEW line when it stopped on a crash).
  last=$(grep -E '^#[0-9]+' "$log" | tail -1)
  cov=$(sed -nE 's/.* cov: ([0-9]+).*/\1/p' <<<"$last")
  ft=$(sed -nE 's/.* ft: ([0-9]+).*/\1/p' <<<"$last")
  corp=$(sed -nE 's/.* corp: ([0-9]+).*/\1/p' <<<"$last")
  execs=$(sed -nE 's/^stat::number_of_executed_units: *([0-9]+).*/\1/p' "$log" | tail -1)
  per_sec=$(sed -nE 's/^stat::average_exec_per_sec: *([0-9]+).*/\1/p' "$log" | tail -1)
  rss=$(sed -nE 's/^stat::peak_rss_mb: *([0-9]+).*/\1/p' "$log" | tail -1)
  if [ "$rc" = 0 ]; then
    result=ok
  else
    result="CRASH (exit $rc)"
    artifact=$(sed -nE 's/.*Test unit written to (.*)$/\1/p' "$log" | tail -1)
    [ -n "$artifact" ] && result="$result: $artifact"
    crashed+=("$t")
    grep -m5 -E "panicked at|ERROR: libFuzzer|SUMMARY" "$log" | sed 's/^/    /'
  fi
  results+=("$t|$((secs / 60))m$((secs % 60))s|${execs:-?}|${per_sec:-?}|${cov:-?}|${ft:-?}|${corp:-?}|${rss:-?}|$result")
done

printf '\n%-14s %8s %12s %8s %6s %7s %6s %8s  %s\n' target time inputs inputs/s cov ft corpus rss_mb result
for r in "${results[@]}"; do
  IFS='|' read -r t time execs per_sec cov ft corp rss result <<<"$r"
  printf '%-14s %8s %12s %8s %6s %7s %6s %8s  %s\n' "$t" "$time" "$execs" "$per_sec" "$cov" "$ft" "$corp" "$rss" "$result"
done
if [ ${#crashed[@]} -gt 0 ]; then
  echo "fuzz.sh: crashed: ${crashed[*]} (reproduce: cargo +nightly fuzz run TARGET ARTIFACT)"
  exit 1
fi
echo "fuzz.sh: no crash"
