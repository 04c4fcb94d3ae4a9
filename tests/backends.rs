//! The GPU backends of llama-server, built by `scripts/llama-server.sh
//! --backend rocm|vulkan` (issue 15), checked for real:
//! - the build flags are the flake's (nix/llama-cpp-flags.nix evaluated by
//!   nix-instantiate against the script's `--print-flags`);
//! - the ROCm build's code objects target exactly the requested gfx list, its
//!   flash-attention kernels hold WMMA instructions (gfx110x), `--version`
//!   says build 11434, and with no GPU (this machine) it answers on the CPU
//!   under the daemon while status warns about it;
//! - the Vulkan build on Mesa's lavapipe (a CPU-backed Vulkan device, here a
//!   real offload device: `Vulkan0`) takes exactly the `gpu_layers` asked for
//!   under the daemon, and reports per-device buffers in its own log.
//!
//! A backend's binary comes from ROCM_LLM_LLAMA_SERVER_ROCM /
//! ROCM_LLM_LLAMA_SERVER_VULKAN, else from the script's cache (`--check`).
//! Without one a test says SKIPPED; under CI=true that is a failure
//! (scripts/test.sh builds both first).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::daemon::state;
use rocm_llm::supervisor::State;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::daemon::Daemon;
use rocm_llm::memory::log::LogUsage;

const BUILD_NUMBER: &str = "11434";
const NO_GPU_WARNING: &str = "the ROCm build found no GPU; running on the CPU";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Says SKIPPED, or fails under CI (the one policy, `common::skip`).
fn skip(_test: &str, why: &str) {
    common::skip(why);
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// ---- the flags ---------------------------------------------------------------------

/// nixpkgs' lib directory (NIXPKGS_LIB: a nixpkgs tree or its lib), as
/// scripts/check-nix.sh takes it.
fn nixpkgs_lib() -> Option<PathBuf> {
    let dir = PathBuf::from(std::env::var_os("NIXPKGS_LIB")?);
    [dir.join("lib"), dir]
        .into_iter()
        .find(|d| d.join("default.nix").is_file() && d.join("modules.nix").is_file())
}

#[test]
fn the_script_passes_the_flakes_cmake_flags() {
    let test = "the_script_passes_the_flakes_cmake_flags";
    let nix_ok = Command::new("nix-instantiate")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let Some(lib) = nixpkgs_lib().filter(|_| nix_ok) else {
        // The same condition under which scripts/check-nix.sh skips its (c).
        eprintln!("SKIPPED: {test}: needs nix-instantiate and NIXPKGS_LIB (a nixpkgs lib tree)");
        return;
    };
    for backend in ["cpu", "rocm", "vulkan"] {
        let expr = format!(
            "(import {}/nix/llama-cpp-flags.nix {{ lib = import {}; backend = \"{backend}\"; \
             buildNumber = \"{BUILD_NUMBER}\"; buildCommit = \"b{BUILD_NUMBER}\"; }}).flags",
            repo().display(),
            lib.display()
        );
        let nix: Vec<String> = serde_json::from_str(&run(Command::new("nix-instantiate")
            .args(["--eval", "--strict", "--json", "-E"])
            .arg(&expr)))
        .expect("flags JSON");
        let script = run(Command::new("bash")
            .arg(repo().join("scripts/llama-server.sh"))
            .args(["--backend", backend, "--print-flags"]));
        let script: Vec<&str> = script.lines().collect();
        assert_eq!(script, nix, "{backend}: the script and the flake disagree");
        if backend == "rocm" {
            for want in [
                "-DGGML_HIP:BOOL=TRUE",
                "-DCMAKE_HIP_ARCHITECTURES:STRING=gfx1101",
                "-DGGML_CUDA_FA:BOOL=TRUE",
                "-DGGML_NATIVE:BOOL=FALSE",
            ] {
                assert!(script.contains(&want), "rocm lacks {want}: {script:?}");
            }
        }
    }
}

// ---- code objects: ELF sections and clang offload bundles -------------------------

/// The bytes of the ELF64 little-endian section `name` in `elf`.
fn elf_section<'a>(elf: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let u16_at = |o: usize| -> Option<usize> {
        Some(u16::from_le_bytes(elf.get(o..o + 2)?.try_into().ok()?).into())
    };
    let u32_at = |o: usize| -> Option<u64> {
        Some(u32::from_le_bytes(elf.get(o..o + 4)?.try_into().ok()?).into())
    };
    let u64_at = |o: usize| Some(u64::from_le_bytes(elf.get(o..o + 8)?.try_into().ok()?));
    if elf.get(..6)? != b"\x7fELF\x02\x01" {
        return None; // not ELF64 little-endian
    }
    let shoff = usize::try_from(u64_at(0x28)?).ok()?;
    let shentsize = u16_at(0x3a)?;
    let shnum = u16_at(0x3c)?;
    let shstrndx = u16_at(0x3e)?;
    let header = |i: usize| -> Option<(u64, usize, usize)> {
        let h = shoff + i * shentsize;
        Some((
            u32_at(h)?,
            usize::try_from(u64_at(h + 0x18)?).ok()?,
            usize::try_from(u64_at(h + 0x20)?).ok()?,
        ))
    };
    let (_, str_off, str_size) = header(shstrndx)?;
    let names = elf.get(str_off..str_off + str_size)?;
    (0..shnum).find_map(|i| {
        let (name_off, off, size) = header(i)?;
        let n = names.get(usize::try_from(name_off).ok()?..)?;
        let n = &n[..n.iter().position(|&b| b == 0)?];
        (n == name.as_bytes()).then(|| elf.get(off..off + size))?
    })
}

const BUNDLE_MAGIC: &[u8] = b"__CLANG_OFFLOAD_BUNDLE__";

/// One entry of a clang offload bundle: its target triple and its bytes.
#[derive(Debug, PartialEq)]
struct BundleEntry<'a> {
    triple: String,
    code: &'a [u8],
}

/// The bundles in a `.hip_fatbin` section: each starts (at an aligned
/// offset) with the magic, then a u64 entry count, then per entry u64
/// offset, u64 size, u64 triple length and the triple; offsets count from
/// the bundle's start.
fn bundles(fatbin: &[u8]) -> Result<Vec<Vec<BundleEntry<'_>>>, String> {
    let u64_at = |o: usize| -> Result<usize, String> {
        let b = fatbin
            .get(o..o + 8)
            .ok_or_else(|| format!("bundle header cut at {o}"))?;
        usize::try_from(u64::from_le_bytes(b.try_into().map_err(|_| "u64")?))
            .map_err(|e| e.to_string())
    };
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(start) = find(&fatbin[at..], BUNDLE_MAGIC).map(|i| at + i) {
        let n = u64_at(start + BUNDLE_MAGIC.len())?;
        if n > 1024 {
            return Err(format!("bundle at {start}: {n} entries"));
        }
        let mut h = start + BUNDLE_MAGIC.len() + 8;
        let mut entries = Vec::with_capacity(n);
        let mut end = h;
        for _ in 0..n {
            let (off, size, tlen) = (u64_at(h)?, u64_at(h + 8)?, u64_at(h + 16)?);
            let triple = fatbin
                .get(h + 24..h + 24 + tlen)
                .ok_or_else(|| format!("bundle at {start}: triple cut"))?;
            let code = fatbin
                .get(start + off..start + off + size)
                .ok_or_else(|| format!("bundle at {start}: entry past the section"))?;
            entries.push(BundleEntry {
                triple: String::from_utf8_lossy(triple).into_owned(),
                code,
            });
            end = end.max(start + off + size);
            h += 24 + tlen;
        }
        out.push(entries);
        at = end.max(h);
    }
    if out.is_empty() && find(fatbin, b"CCOB").is_some() {
        return Err("the bundles are compressed (CCOB): not read here".into());
    }
    Ok(out)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The gfx target of a device entry's triple
/// (`hipv4-amdgcn-amd-amdhsa--gfx1101`, maybe with `:xnack-` features).
fn gfx_of(triple: &str) -> Option<&str> {
    let t = triple
        .strip_prefix("hip")?
        .split_once("-amdgcn-amd-amdhsa-")?
        .1;
    let t = t.trim_start_matches('-');
    Some(t.split(':').next().unwrap_or(t))
}

/// Per kernel (function symbol) in `llvm-objdump -d` output: how many
/// `v_wmma` instructions it holds.
fn wmma_per_function(disassembly: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in disassembly.lines() {
        // "0000000000001a00 <_Z22flash_attn_ext_f16...>:"
        if let Some(name) = line
            .strip_suffix(">:")
            .and_then(|l| l.split_once(" <"))
            .map(|(_, n)| n)
        {
            current = Some(name.to_owned());
            out.entry(name.to_owned()).or_insert(0);
        } else if line.trim_start().starts_with("v_wmma")
            && let Some(f) = &current
        {
            *out.entry(f.clone()).or_insert(0) += 1;
        }
    }
    out
}

#[test]
fn bundle_and_disassembly_readers() {
    // A bundle as clang writes it: magic, count, entries, then the code.
    fn bundle(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let header: usize =
            BUNDLE_MAGIC.len() + 8 + entries.iter().map(|(t, _)| 24 + t.len()).sum::<usize>();
        let mut b = BUNDLE_MAGIC.to_vec();
        b.extend((entries.len() as u64).to_le_bytes());
        let mut off = header;
        for (t, code) in entries {
            b.extend((off as u64).to_le_bytes());
            b.extend((code.len() as u64).to_le_bytes());
            b.extend((t.len() as u64).to_le_bytes());
            b.extend(t.as_bytes());
            off += code.len();
        }
        for (_, code) in entries {
            b.extend(*code);
        }
        b
    }
    let mut fatbin = bundle(&[
        ("host-x86_64-unknown-linux-gnu-", b""),
        ("hipv4-amdgcn-amd-amdhsa--gfx1101", b"\x7fELF-one"),
    ]);
    fatbin.resize(4096, 0); // clang aligns each bundle
    fatbin.extend(bundle(&[(
        "hipv4-amdgcn-amd-amdhsa--gfx1100:xnack-",
        b"\x7fELF-two",
    )]));
    let got = bundles(&fatbin).unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0][1].code, b"\x7fELF-one");
    assert_eq!(got[1][0].code, b"\x7fELF-two");
    let gfx: Vec<Option<&str>> = got.iter().flatten().map(|e| gfx_of(&e.triple)).collect();
    assert_eq!(gfx, [None, Some("gfx1101"), Some("gfx1100")]);
    assert!(bundles(&fatbin[..40]).is_err(), "a cut header is an error");
    assert_eq!(bundles(b"nothing here").unwrap().len(), 0);
    assert!(bundles(b"CCOB\x01\x00compressed").is_err());

    let dis = "\
/tmp/x.co:\tfile format elf64-amdgpu

Disassembly of section .text:

0000000000001a00 <_Z22flash_attn_ext_f16ILi64EEvPKc>:
\ts_load_b64 s[0:1], s[0:1], 0x0
\tv_wmma_f32_16x16x16_f16 v[0:7], v[8:11], v[12:15], v[0:7]
\tv_wmma_f32_16x16x16_f16 v[0:7], v[8:11], v[12:15], v[0:7]
0000000000002b00 <_Z8mul_matPKf>:
\tv_add_f32_e32 v0, v1, v2
";
    let w = wmma_per_function(dis);
    assert_eq!(w["_Z22flash_attn_ext_f16ILi64EEvPKc"], 2);
    assert_eq!(w["_Z8mul_matPKf"], 0);
    assert_eq!(w.len(), 2);
}

// ---- the ROCm build -----------------------------------------------------------------

/// How to run a tool of the toolchain that built `server`: for a build in
/// the Debian root (its bin/llama-server is a wrapper beside llama-server.bin),
/// the root's tool through the root's loader; else the host's ROCm llvm.
fn llvm_tool(server: &Path, tool: &str) -> Command {
    if server.with_extension("bin").is_file() {
        let out = Command::new("bash")
            .arg(repo().join("scripts/debian-root.sh"))
            .arg("--check")
            .output()
            .expect("debian-root.sh --check");
        assert!(
            out.status.success(),
            "the Debian root that built {} is gone",
            server.display()
        );
        let root = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        let llvm = std::fs::read_dir(root.join("usr/lib"))
            .expect("root's /usr/lib")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("llvm-"))
            })
            .filter(|p| p.join("bin").join(tool).is_file())
            .max()
            .unwrap_or_else(|| panic!("no llvm-*/bin/{tool} in {}", root.display()));
        let libs = format!(
            "{0}/usr/lib/x86_64-linux-gnu:{1}/lib",
            root.display(),
            llvm.display()
        );
        let mut c = Command::new(root.join("usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"));
        c.arg("--library-path")
            .arg(libs)
            .arg(llvm.join("bin").join(tool));
        c
    } else {
        let dir = run(Command::new("hipconfig").arg("-l"));
        Command::new(Path::new(dir.trim()).join(tool))
    }
}

#[test]
fn rocm_build_targets_the_requested_gfx_with_wmma_flash_attention() {
    let test = "rocm_build_targets_the_requested_gfx_with_wmma_flash_attention";
    let Some(server) = common::backend_server("rocm") else {
        return skip(
            test,
            "no ROCm llama-server (scripts/llama-server.sh --backend rocm)",
        );
    };
    let elf_path = if server.with_extension("bin").is_file() {
        server.with_extension("bin")
    } else {
        server.clone()
    };
    let want: BTreeSet<String> = std::env::var("ROCM_LLM_HIP_TARGETS")
        .unwrap_or_else(|_| "gfx1101".into())
        .split(';')
        .map(str::to_owned)
        .collect();

    let version = Command::new(&server)
        .arg("--version")
        .output()
        .expect("--version");
    let version = String::from_utf8_lossy(&version.stderr).into_owned()
        + &String::from_utf8_lossy(&version.stdout);
    assert!(
        version.contains(&format!("(build {BUILD_NUMBER}, ")),
        "--version does not report build {BUILD_NUMBER}:\n{version}"
    );

    let elf = std::fs::read(&elf_path).expect("read the binary");
    let fatbin = elf_section(&elf, ".hip_fatbin")
        .unwrap_or_else(|| panic!("{} has no .hip_fatbin section", elf_path.display()));
    let bundles = bundles(fatbin).expect("read the offload bundles");
    let mut targets = BTreeSet::new();
    let mut code_objects = Vec::new();
    for entry in bundles.iter().flatten() {
        if entry.triple.starts_with("host-") {
            continue;
        }
        let gfx = gfx_of(&entry.triple)
            .unwrap_or_else(|| panic!("an entry for an unknown target: {}", entry.triple));
        targets.insert(gfx.to_owned());
        code_objects.push(entry.code);
    }
    assert_eq!(targets, want, "the code objects' targets");

    // Disassemble the code objects that hold flash-attention kernels (their
    // symbol names are in the object's string table), or every one with
    // ROCM_LLM_DISASSEMBLE_ALL=1 (for the figures in docs/nix.md), two at a
    // time, counting WMMA instructions per function.
    let all = std::env::var_os("ROCM_LLM_DISASSEMBLE_ALL").is_some_and(|v| v == "1");
    let picked: Vec<&[u8]> = code_objects
        .iter()
        .copied()
        .filter(|c| all || find(c, b"flash_attn").is_some())
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let started = Instant::now();
    let mcpu = want.iter().next().unwrap().clone();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let per_function: BTreeMap<String, usize> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..2)
            .map(|_| {
                scope.spawn(|| {
                    let mut out = BTreeMap::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(code) = picked.get(i) else { break out };
                        let path = dir.path().join(format!("co{i}.elf"));
                        std::fs::write(&path, code).expect("write a code object");
                        let dis = run(llvm_tool(&server, "llvm-objdump")
                            .arg("-d")
                            .arg("--no-show-raw-insn")
                            .arg(format!("--mcpu={mcpu}"))
                            .arg(&path));
                        for (name, n) in wmma_per_function(&dis) {
                            // Code objects are per source file: name them apart.
                            out.insert(format!("{i}:{name}"), n);
                        }
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("a disassembly worker panicked"))
            .collect()
    });
    let kernels = per_function.len();
    let wmma_total: usize = per_function.values().sum();
    let fa: Vec<usize> = per_function
        .iter()
        .filter(|(name, _)| name.contains("flash_attn"))
        .map(|(_, &n)| n)
        .collect();
    let fa_kernels = fa.len();
    let fa_wmma: usize = fa.iter().sum();
    let fa_kernels_with_wmma = fa.iter().filter(|&&n| n > 0).count();
    eprintln!(
        "ROCm build {}: {} bytes; .hip_fatbin {} bytes, {} bundles, {} code objects for {:?}; \
         disassembled {} of them ({:.0?}): {kernels} functions, {wmma_total} v_wmma; \
         {fa_kernels} flash-attention functions, {fa_kernels_with_wmma} of them with v_wmma \
         ({fa_wmma} in all)",
        elf_path.display(),
        elf.len(),
        fatbin.len(),
        bundles.len(),
        code_objects.len(),
        targets,
        picked.len(),
        started.elapsed(),
    );
    assert!(
        fa_kernels > 0,
        "no flash-attention kernels in the code objects"
    );
    if want.iter().any(|t| t.starts_with("gfx110")) {
        assert!(
            fa_kernels_with_wmma > 0,
            "no flash-attention kernel holds a WMMA instruction: the RDNA3 WMMA path is not compiled in"
        );
    }
}

/// A tiny llama with `layers` layers, written into `dir`.
fn tiny_model(dir: &Path, name: &str, layers: u32) -> PathBuf {
    let path = dir.join(format!("{name}.gguf"));
    let mut m = rocm_llm::gguf::TinyModel::with_seed(7, name);
    m.n_layer = layers;
    rocm_llm::gguf::write_tiny_llama(&path, &m).expect("write the tiny model");
    path
}

/// One chat completion through the daemon's endpoint; the answer's JSON.
fn chat(d: &Daemon, model: &str) -> serde_json::Value {
    use std::io::Read;
    let mut conn = d.send_chat(model);
    conn.set_read_timeout(Some(std::time::Duration::from_secs(120)))
        .expect("read timeout");
    let mut raw = String::new();
    conn.read_to_string(&mut raw).expect("read the answer");
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP answer: {raw:?}\n{}", d.log()));
    assert!(head.starts_with("HTTP/1.1 200"), "{raw}\n{}", d.log());
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("the answer is not JSON ({e}): {body}"))
}

/// The payload of a chunked HTTP/1.1 body.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).expect("chunk size");
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

fn rocm_llm_status_cli(d: &Daemon) -> String {
    run(Command::new(env!("CARGO_BIN_EXE_rocm-llm"))
        .args(["status", "--control"])
        .arg(&d.control))
}

#[test]
fn rocm_build_without_a_gpu_answers_on_the_cpu_and_status_warns() {
    let test = "rocm_build_without_a_gpu_answers_on_the_cpu_and_status_warns";
    let Some(server) = common::backend_server("rocm") else {
        return skip(
            test,
            "no ROCm llama-server (scripts/llama-server.sh --backend rocm)",
        );
    };
    if Path::new("/dev/kfd").exists() {
        // A machine with an AMD GPU: the fallback cannot be shown there.
        eprintln!("SKIPPED: {test}: /dev/kfd exists (this machine has a ROCm GPU)");
        return;
    }
    let Some(mut d) = Daemon::start(
        &["seed"],
        "  seed:\n    model: seed.gguf\n    enabled: false\n",
    ) else {
        return;
    };
    let spec = d.spec_text_with_server("  r:\n    model: r.gguf\n    gpu_layers: all\n", &server);
    tiny_model(d.dir.path(), "r", 2);
    common::daemon::write_by_rename(&d.spec, &spec);
    let s = d.wait_ready(&["r"]);
    assert_eq!(s.models["r"].warnings, [NO_GPU_WARNING], "{s:#?}");
    let answer = chat(&d, "r");
    assert!(
        answer["choices"][0]["message"]["content"].is_string(),
        "no answer from the CPU fallback: {answer:#?}"
    );
    let table = rocm_llm_status_cli(&d);
    assert!(
        table.contains(&format!("warning  r: {NO_GPU_WARNING}")),
        "rocm-llm status:\n{table}"
    );
    d.signal("TERM");
    d.wait_exit(common::PATIENCE);
}

// ---- the Vulkan build on lavapipe -------------------------------------------------------

#[test]
fn vulkan_on_lavapipe_takes_the_gpu_layers_asked_for() {
    let test = "vulkan_on_lavapipe_takes_the_gpu_layers_asked_for";
    let Some(server) = common::backend_server("vulkan") else {
        return skip(
            test,
            "no Vulkan llama-server (scripts/llama-server.sh --backend vulkan)",
        );
    };
    const LAYERS: u32 = 6;
    // gpu_layers -> layers offloaded, of LAYERS + 1, as llama.cpp b11434
    // counts them: the output layer first, then repeating layers from the
    // last (gpu_layers 1 offloads only the output layer). The buffer lines
    // are printed at -lv 4 only (the default, 3, prints none of them).
    let cases: &[(&str, u32)] = &[("0", 0), ("4", 4), ("all", LAYERS + 1)];
    let Some(mut d) = Daemon::start(
        &["seed"],
        "  seed:\n    model: seed.gguf\n    enabled: false\n",
    ) else {
        return;
    };
    tiny_model(d.dir.path(), "v", LAYERS);
    for &(gpu_layers, offloaded) in cases {
        let log = d.dir.path().join(format!("v-{gpu_layers}.log"));
        let models = format!(
            "  v:\n    model: v.gguf\n    gpu_layers: {gpu_layers}\n    \
             env: {{ GGML_VK_VISIBLE_DEVICES: \"0\" }}\n    \
             extra_args: [\"-lv\", \"4\", \"--log-file\", \"{}\"]\n",
            log.display()
        );
        common::daemon::write_by_rename(&d.spec, &d.spec_text_with_server(&models, &server));
        d.wait_status(&format!("v ready with gpu_layers {gpu_layers}"), |s| {
            state(s, "v") == Some(State::Ready) && log.is_file()
        });
        let answer = chat(&d, "v");
        assert!(
            answer["choices"][0]["message"]["content"].is_string(),
            "gpu_layers {gpu_layers}: no answer: {answer:#?}"
        );
        let text = std::fs::read_to_string(&log).expect("llama-server's log file");
        assert!(
            text.contains("Vulkan0") && text.contains("llvmpipe"),
            "gpu_layers {gpu_layers}: lavapipe is not Vulkan0:\n{text}"
        );
        let r = LogUsage::from_log(&text);
        assert_eq!(
            r.offloaded,
            Some((offloaded, LAYERS + 1)),
            "gpu_layers {gpu_layers}: layers offloaded\n{text}"
        );
        let gpu = r.devices.get("Vulkan0").cloned().unwrap_or_default();
        if offloaded == 0 {
            assert_eq!(gpu.weights, 0, "{text}");
        } else {
            assert!(gpu.weights > 0, "no Vulkan0 model buffer:\n{text}");
            assert!(gpu.kv > 0, "no Vulkan0 KV buffer:\n{text}");
            assert!(gpu.compute > 0, "no Vulkan0 compute buffer:\n{text}");
        }
        // Layers left on the host keep their KV cache there.
        let host_kv = r.devices.get("CPU").map_or(0, |p| p.kv);
        assert_eq!(
            host_kv > 0,
            offloaded < LAYERS,
            "host KV {host_kv} bytes:\n{text}"
        );
        eprintln!(
            "gpu_layers {gpu_layers}: offloaded {:?}; Vulkan0 model {} KV {} compute {} bytes; host KV {host_kv} bytes",
            r.offloaded, gpu.weights, gpu.kv, gpu.compute,
        );
    }
    d.signal("TERM");
    d.wait_exit(common::PATIENCE);
}
