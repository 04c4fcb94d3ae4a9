#!/usr/bin/env bash
# scripts/current-nix.sh: run the current Nix (2.34, from Debian unstable) that
# the Debian root of scripts/debian-root.sh holds, as if it were `nix` here.
#
# Why: the host's Debian nix-bin is too old to check today's flake schema; the
# root's is current. Set ROCM_LLM_CURRENT_NIX to this script to use it.
#
# How: `chroot ROOT nix ARGS...`, in a private mount namespace (nothing leaks
# onto the host) where /proc, /dev and these host directories are bound at
# their own paths, so host paths in ARGS and in the current directory work:
#   - the current directory (run it from the flake, then `.` is the flake);
#   - when that is inside a git work tree, the repository's git directory
#     (a worktree's .git file points outside it);
#   - NIXPKGS_LIB_DIR, when set (it is also passed into the root);
#   - each directory in ROCM_LLM_CURRENT_NIX_BIND (colon-separated).
# The environment inside is minimal: PATH, HOME=/root, NIX_CONFIG enabling
# nix-command and flakes (and no build users: single-user, as root), NIXPKGS_LIB_DIR, and each NAME listed (space-
# separated) in ROCM_LLM_CURRENT_NIX_ENV. The store is the root's /nix.
# Exit status: nix's. 2 if the root is missing (make it with
# scripts/debian-root.sh) or this is not run as root.
#
# Usage: scripts/current-nix.sh --version
#        cd flake && ROCM_LLM_CURRENT_NIX=$PWD/scripts/current-nix.sh
#        "$ROCM_LLM_CURRENT_NIX" flake show --override-input nixpkgs path:$PWD/nix/tests/stub-nixpkgs
#        scripts/current-nix.sh --print-root   # the root's path, exit 2 if not ready
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
say() { printf 'current-nix.sh: %s\n' "$*" >&2; }

root="$(bash "$here/debian-root.sh" --check)" || { say "no Debian root yet: run scripts/debian-root.sh (as root)"; exit 2; }
if [[ "${1:-}" == --print-root ]]; then echo "$root"; exit 0; fi
[[ "$(id -u)" == 0 ]] || { say "must run as root (chroot)"; exit 2; }
[[ -x "$root/usr/bin/nix" ]] || { say "$root has no /usr/bin/nix (nix-bin)"; exit 2; }

binds=("$PWD")
if gitdir="$(git rev-parse --path-format=absolute --git-common-dir 2>/dev/null)"; then
  binds+=("$gitdir")
fi
[[ -n "${NIXPKGS_LIB_DIR:-}" ]] && binds+=("$NIXPKGS_LIB_DIR")
IFS=: read -r -a extra <<<"${ROCM_LLM_CURRENT_NIX_BIND:-}"
for d in "${extra[@]}"; do [[ -n "$d" ]] && binds+=("$d"); done

envs=(PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8
  "NIX_CONFIG=experimental-features = nix-command flakes
build-users-group =")
[[ -n "${NIXPKGS_LIB_DIR:-}" ]] && envs+=("NIXPKGS_LIB_DIR=$NIXPKGS_LIB_DIR")
for name in ${ROCM_LLM_CURRENT_NIX_ENV:-}; do
  [[ -n "${!name+x}" ]] && envs+=("$name=${!name}")
done

# In the namespace: mount, then chroot into the same directory.
exec unshare --mount --propagation private -- bash -c '
  set -e
  root=$1; cwd=$2; nb=$3; shift 3
  mount -t proc proc "$root/proc"
  mount --rbind /dev "$root/dev"
  for ((i = 0; i < nb; i++)); do
    d=$(realpath "$1"); shift
    mkdir -p "$root$d"
    mount --rbind "$d" "$root$d"
  done
  ne=$1; shift
  envs=("${@:1:ne}"); shift "$ne"
  exec chroot "$root" /usr/bin/env -i "${envs[@]}" sh -c "cd \"\$0\" && exec nix \"\$@\"" "$cwd" "$@"
' bash "$root" "$PWD" "${#binds[@]}" "${binds[@]}" "${#envs[@]}" "${envs[@]}" "$@"
