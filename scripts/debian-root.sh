#!/usr/bin/env bash
# scripts/debian-root.sh: make (once) a Debian unstable root with the GPU
# toolchains in it, and print its path on stdout.
#
# Why: this machine (Debian stable, no nixpkgs) has neither ROCm nor the Vulkan
# SDK, but Debian's unstable suite packages both, and a current Nix. The root
# is where scripts/llama-server.sh builds the rocm and vulkan llama-servers when
# the host lacks the toolchain, and where scripts/current-nix.sh finds nix.
#
# What: `debootstrap --variant=minbase sid`, then apt-get installs $PACKAGES
# (ROCm's HIP compiler and libraries, Mesa's lavapipe Vulkan driver, glslc,
# cmake, nix-bin). About 6 GB, a few minutes. The archive is the one the
# host's apt already uses (read from /etc/apt at run time, or given as
# ROCM_LLM_DEBIAN_MIRROR). Unstable's Release file can read as expired against
# a skewed clock, so apt inside runs with Acquire::Check-Valid-Until=false.
#
# Where: ${ROCM_LLM_DEBIAN_ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/rocm-llm/debian-sid}
# A root is ready when its stamp file (.rocm-llm-root) holds this script's
# package list; then the path is printed at once. Otherwise it is made or
# completed (apt-get install is idempotent). One run at a time (flock).
# Mounts (proc) live only in a private mount namespace of this script.
#
# Usage: scripts/debian-root.sh            # make if needed, print the path
#        scripts/debian-root.sh --check    # print the path if ready, else exit 1
#        scripts/debian-root.sh --run CMD… # run CMD in the root (chroot, /proc mounted)
# Needs: root, debootstrap (apt-get installed if missing), unshare, flock.
set -euo pipefail

readonly PACKAGES=(
  # build tools
  ca-certificates cmake make g++ pkg-config python3 file
  # ROCm: HIP runtime and compiler, the BLAS libraries llama.cpp's HIP backend links
  hipcc libamdhip64-dev libhipblas-dev librocblas-dev
  # inspecting code objects (clang-offload-bundler, llvm-objdump)
  llvm
  # Vulkan: headers, loader, shader compiler, Mesa's lavapipe (CPU) driver
  libvulkan-dev glslc spirv-headers mesa-vulkan-drivers
  # a current Nix, for scripts/current-nix.sh
  nix-bin
)

log() { printf 'debian-root.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

root="${ROCM_LLM_DEBIAN_ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/rocm-llm/debian-sid}"
stamp_want="$(printf '%s\n' "${PACKAGES[@]}")"
ready() { [[ "$(cat "$root/.rocm-llm-root" 2>/dev/null || true)" == "$stamp_want" ]]; }

# Run a command chrooted in the root, with /proc mounted in a private mount
# namespace (gone when the command ends; nothing leaks onto the host).
in_root() {
  unshare --mount --propagation private -- sh -c '
    r=$1; shift
    mount -t proc proc "$r/proc"
    exec chroot "$r" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
      HOME=/root LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive "$@"' sh "$root" "$@"
}

mode=make
case "${1:-}" in
  "") ;;
  --check) mode=check ;;
  --run) shift; mode=run ;;
  -h|--help) sed -n '2,/^[^#]/{/^#/p}' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) die "unknown argument '$1' (try --help)" ;;
esac

if [[ $mode == check ]]; then
  ready && { echo "$root"; exit 0; }
  exit 1
fi
[[ "$(id -u)" == 0 ]] || die "must run as root (debootstrap, chroot)"
if [[ $mode == run ]]; then
  ready || die "$root is not ready: run scripts/debian-root.sh first"
  in_root "$@"
  exit
fi

if ready; then echo "$root"; exit 0; fi

mkdir -p "$(dirname "$root")"
exec 8>"$root.lock"
if ! flock -n 8; then
  log "another run holds $root.lock; waiting for it"
  flock 8
fi
if ready; then echo "$root"; exit 0; fi

# The Debian archive the host's apt uses: the first "deb" URI that is not a
# security or updates archive, from deb822 .sources or one-line .list files.
host_mirror() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f $f ]] || continue
    awk 'tolower($1)=="uris:" { for (i = 2; i <= NF; i++) print $i }' "$f"
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -f $f ]] || continue
    awk '$1=="deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z+]+:\/\//) { print $i; break } }' "$f"
  done
}
mirror="${ROCM_LLM_DEBIAN_MIRROR:-$(host_mirror | grep -v -e '-security' -e 'security\.' | head -1)}"
[[ -n "$mirror" ]] || die "no Debian archive found in /etc/apt (set ROCM_LLM_DEBIAN_MIRROR)"

have() { command -v "$1" >/dev/null 2>&1; }
if ! have debootstrap; then
  log "installing debootstrap"
  apt-get install -y --no-install-recommends debootstrap >&2 \
    || { apt-get update >&2 && apt-get install -y --no-install-recommends debootstrap >&2; }
fi

start=$SECONDS
if [[ ! -x "$root/usr/bin/apt-get" || ! -f "$root/.rocm-llm-debootstrapped" ]]; then
  rm -rf "$root"
  log "debootstrap --variant=minbase sid $root (from the host's archive)"
  debootstrap --variant=minbase sid "$root" "$mirror" >&2 \
    || die "debootstrap failed (see above; its log is $root/debootstrap/debootstrap.log)"
  touch "$root/.rocm-llm-debootstrapped"
  log "debootstrap done in $((SECONDS - start)) s"
fi

printf 'deb %s sid main\n' "$mirror" >"$root/etc/apt/sources.list"
cat >"$root/etc/apt/apt.conf.d/90rocm-llm" <<'EOF'
// unstable's Release file may read as expired against this machine's clock
Acquire::Check-Valid-Until "false";
APT::Install-Recommends "false";
APT::Install-Suggests "false";
EOF
cp -L /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true

t=$SECONDS
log "apt-get install in the root: ${PACKAGES[*]}"
in_root apt-get update >&2 || die "apt-get update in the root failed"
in_root apt-get install -y "${PACKAGES[@]}" >&2 || die "apt-get install in the root failed"
in_root apt-get clean >&2 || true
log "packages installed in $((SECONDS - t)) s"

printf '%s' "$stamp_want" >"$root/.rocm-llm-root"
log "root ready in $((SECONDS - start)) s: $(du -sh "$root" 2>/dev/null | cut -f1)"
echo "$root"
