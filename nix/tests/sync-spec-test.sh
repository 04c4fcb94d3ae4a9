#!/usr/bin/env bash
# Runs the module's spec-sync script (ExecStartPre / ExecReload) through its
# cases. Usage: sync-spec-test.sh SCRIPT WORKDIR
set -euo pipefail
script=$1 dir=$2
mkdir -p "$dir"
declared=$dir/etc-models.yaml target=$dir/state/models.yaml stamp=$dir/declared.sha256
sync() { bash "$script" "$declared" "$target" "$stamp" "$1"; }
check() { if eval "$2"; then echo "ok   $1"; else echo "FAIL $1"; exit 1; fi; }

echo "models: {a: {model: /m/a.gguf}}" >"$declared"
sync on-change
check "a missing spec file is seeded from the declaration" 'cmp -s "$declared" "$target"'
check "the seeded file is writable" '[ -w "$target" ]'

echo "# local edit" >>"$target"
sync on-change
check "a reload with an unchanged declaration keeps local edits" 'grep -q "local edit" "$target"'

echo "models: {b: {model: /m/b.gguf}}" >"$declared"
sync on-change
check "a changed declaration replaces the file" 'cmp -s "$declared" "$target"'
check "the locally edited file is kept as .bak" 'grep -q "local edit" "$target.bak"'

rm "$target.bak"
echo "models: {c: {model: /m/c.gguf}}" >"$declared"
sync on-change
check "an unedited file is replaced without a .bak" '[ ! -e "$target.bak" ] && cmp -s "$declared" "$target"'

echo "# mine" >>"$target"
echo "models: {d: {model: /m/d.gguf}}" >"$declared"
sync if-missing
check "if-missing leaves an existing file alone" 'grep -q "# mine" "$target" && ! grep -q "d.gguf" "$target"'
rm "$target"
sync if-missing
check "if-missing seeds a missing file" 'cmp -s "$declared" "$target"'
check "no temporary files are left" '[ -z "$(ls "$dir/state" | grep -v "^models.yaml$")" ]'
