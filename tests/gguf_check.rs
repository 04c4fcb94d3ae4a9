//! Broken model files, generated here one kind at a time, are each rejected
//! with their reason, by the library check and by `rocm-llm validate`/`plan`
//! at the `model:` key, exit 1. Nothing panics, hangs or allocates without
//! bound on a corrupt header.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use proptest::prelude::*;
use rocm_llm::gguf::{GgmlType, GgufValue, GgufWriter, check_model};

/// A small valid model header with two F32 tensors.
fn base() -> GgufWriter {
    let mut w = GgufWriter::new();
    w.add_kv("general.architecture", "llama")
        .add_kv("llama.block_count", 1u32)
        .add_kv("zz.kx", 7u32);
    w.add_tensor_f32("big", &[32, 1], &[0.5; 32]);
    w.add_tensor_f32("last", &[16], &[1.0; 16]);
    w
}

fn bytes(w: &GgufWriter) -> Vec<u8> {
    let mut out = Vec::new();
    w.write_to(&mut out).unwrap();
    out
}

/// The byte offset just after the first occurrence of `needle`.
fn after(b: &[u8], needle: &[u8]) -> usize {
    b.windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + needle.len())
        .unwrap()
}

fn put(b: &mut [u8], at: usize, value: &[u8]) {
    b[at..at + value.len()].copy_from_slice(value);
}

type Mutation = fn(&mut Vec<u8>);

/// (name, how to break the file, what the error says).
fn cases() -> Vec<(&'static str, Mutation, &'static str)> {
    vec![
        (
            "version 1",
            |b| put(b, 4, &1u32.to_le_bytes()),
            "GGUF version 1 is not supported (only versions 2 and 3 are)",
        ),
        (
            "version 4",
            |b| put(b, 4, &4u32.to_le_bytes()),
            "GGUF version 4 is not supported",
        ),
        (
            "big-endian",
            |b| put(b, 4, &3u32.to_be_bytes()),
            "this GGUF file is big-endian",
        ),
        (
            "tensor count",
            |b| put(b, 8, &(1u64 << 40).to_le_bytes()),
            "the header claims 1099511627776 tensors, more than the",
        ),
        (
            "metadata count",
            |b| put(b, 16, &u64::MAX.to_le_bytes()),
            "the header claims 18446744073709551615 metadata entries",
        ),
        (
            "key length",
            |b| put(b, 24, &(1u64 << 50).to_le_bytes()),
            "the header claims 1125899906842624 bytes in the key of metadata entry 0",
        ),
        (
            "unknown value type",
            |b| {
                let at = after(b, b"zz.kx");
                put(b, at, &99u32.to_le_bytes());
            },
            "GGUF metadata key \"zz.kx\" has unknown value type 99",
        ),
        (
            "invalid UTF-8 key",
            |b| {
                let at = after(b, b"zz.kx");
                b[at - 1] = 0xFF;
            },
            "the key of metadata entry 2 is not valid UTF-8",
        ),
        (
            "dimension overflow",
            |b| {
                let at = after(b, b"big") + 4;
                put(b, at, &(1u64 << 62).to_le_bytes());
                put(b, at + 8, &4u64.to_le_bytes());
            },
            "tensor \"big\" has shape [4611686018427387904, 4], whose element count overflows",
        ),
        (
            "five dimensions",
            |b| {
                let at = after(b, b"big");
                put(b, at, &5u32.to_le_bytes());
            },
            "tensor \"big\" has 5 dimensions; GGUF allows at most 4",
        ),
        (
            "unknown tensor type",
            |b| {
                let at = after(b, b"last") + 4 + 8;
                put(b, at, &77u32.to_le_bytes());
            },
            "tensor \"last\" has ggml type 77, which this build of rocm-llm does not know",
        ),
        (
            "offset out of order",
            |b| {
                let at = after(b, b"last") + 4 + 8 + 4;
                put(b, at, &64u64.to_le_bytes());
            },
            "tensor \"last\" starts at data offset 64, but the tensors before it end at 128",
        ),
        (
            "header cut short",
            |b| b.truncate(40),
            "the header claims 3 metadata entries, more than the 16 bytes left in the file can hold; \
             the file is truncated or corrupt",
        ),
        (
            "data cut short",
            |b| {
                let n = b.len();
                b.truncate(n - 40);
            },
            "truncated: the tensors end at",
        ),
        (
            "not GGUF",
            |b| put(b, 0, b"PK\x03\x04"),
            "is not a GGUF file: it starts with [50, 4b, 03, 04]",
        ),
        (
            "empty",
            |b| b.clear(),
            "is not a GGUF file: it starts with []",
        ),
    ]
}

#[test]
fn every_kind_of_broken_header_is_rejected_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let good = bytes(&base());
    let path = dir.path().join("m.gguf");
    std::fs::write(&path, &good).unwrap();
    let ok = check_model(&path).unwrap();
    assert_eq!(ok.header.tensors.len(), 2);
    assert!(ok.warnings.is_empty(), "{:?}", ok.warnings);
    for (name, mutate, expected) in cases() {
        let mut b = good.clone();
        mutate(&mut b);
        std::fs::write(&path, &b).unwrap();
        let err = check_model(&path).expect_err(name).to_string();
        assert!(
            err.contains(expected),
            "{name}: expected {expected:?} in\n{err}"
        );
        assert!(
            err.starts_with(&path.display().to_string()),
            "{name}: {err}"
        );
    }
}

#[test]
fn truncation_reports_both_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = base();
    w.add_tensor_raw("huge", &[1 << 20], GgmlType::F16, vec![0; 2 << 20]);
    let b = bytes(&w);
    let path = dir.path().join("half.gguf");
    std::fs::write(&path, &b[..b.len() / 2]).unwrap();
    let full_end = b.len() as u64;
    let err = check_model(&path).unwrap_err().to_string();
    let expected = format!(
        "{}: truncated: the tensors end at {}, the file has {}; the download was interrupted: download it again",
        path.display(),
        rocm_llm::gguf::decimal_bytes(full_end),
        rocm_llm::gguf::decimal_bytes(full_end / 2),
    );
    assert_eq!(err, expected);
    assert!(err.contains("the tensors end at 2.10 MB"), "{err}");

    // The padding after the last tensor may be missing: llama.cpp does not
    // need it either.
    let mut w = base();
    w.add_tensor_f32("odd", &[3], &[1.0; 3]);
    let b = bytes(&w);
    std::fs::write(&path, &b[..b.len() - 20]).unwrap();
    check_model(&path).unwrap();
    std::fs::write(&path, &b[..b.len() - 21]).unwrap();
    assert!(check_model(&path).is_err());
}

#[test]
fn an_unknown_architecture_is_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = GgufWriter::new();
    w.add_kv("general.architecture", "llama99");
    let path = dir.path().join("new.gguf");
    w.write_file(&path).unwrap();
    let ok = check_model(&path).unwrap();
    assert_eq!(
        ok.warnings,
        vec![format!(
            "{}: architecture \"llama99\" is not one llama.cpp b11434 knows; llama-server may refuse it",
            path.display()
        )]
    );
}

/// Writes a model split into `count` parts, one tensor each, under `prefix`.
fn write_split(dir: &Path, prefix: &str, count: u16) -> Vec<PathBuf> {
    (0..count)
        .map(|i| {
            let mut w = GgufWriter::new();
            if i == 0 {
                w.add_kv("general.architecture", "llama");
            }
            w.add_kv("split.no", GgufValue::U16(i))
                .add_kv("split.count", GgufValue::U16(count))
                .add_kv("split.tensors.count", GgufValue::I32(i32::from(count)));
            w.add_tensor_f32(format!("t{i}"), &[8], &[0.0; 8]);
            let p = dir.join(format!("{prefix}-{:05}-of-{count:05}.gguf", i + 1));
            w.write_file(&p).unwrap();
            p
        })
        .collect()
}

#[test]
fn split_models_need_every_part_and_agreeing_parts() {
    let dir = tempfile::tempdir().unwrap();
    let parts = write_split(dir.path(), "m", 3);
    let ok = check_model(&parts[0]).unwrap();
    assert_eq!(ok.parts.len(), 3);
    let names: Vec<_> = ok.header.tensors.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["t0", "t1", "t2"]);

    let err = check_model(&parts[1]).unwrap_err().to_string();
    assert!(
        err.ends_with(&format!(
            "split model: this is part 2 of 3; point `model` at the first part, {}",
            parts[0].display()
        )),
        "{err}"
    );

    std::fs::remove_file(&parts[2]).unwrap();
    let err = check_model(&parts[0]).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "{}: part 3 of 3 of a split model is missing ({} does not exist); download every part into the same directory",
            parts[0].display(),
            parts[2].display()
        )
    );

    // A part from another split (of 4) where part 3 of 3 belongs.
    let other = write_split(dir.path(), "o", 4);
    std::fs::copy(&other[2], &parts[2]).unwrap();
    let err = check_model(&parts[0]).unwrap_err().to_string();
    assert!(
        err.contains("does not say it is part 3 of 3 (split.no Some(3), split.count Some(4))"),
        "{err}"
    );

    // A truncated part is reported as that part.
    write_split(dir.path(), "m", 3);
    let len = std::fs::metadata(&parts[1]).unwrap().len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&parts[1])
        .unwrap();
    f.set_len(len - 20).unwrap();
    let err = check_model(&parts[0]).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!("{}: truncated", parts[1].display())),
        "{err}"
    );

    // A single file that says it is split but has no split name.
    let lone = dir.path().join("lone.gguf");
    std::fs::copy(&parts[0], &lone).unwrap();
    let err = check_model(&lone).unwrap_err().to_string();
    assert!(
        err.contains("the file name is not PREFIX-00001-of-00003.gguf"),
        "{err}"
    );
}

fn rocm_llm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rocm-llm"))
}

#[test]
fn validate_and_plan_report_a_broken_model_at_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = bytes(&base());
    b.truncate(b.len() - 40);
    std::fs::write(dir.path().join("cut.gguf"), &b).unwrap();
    let spec = dir.path().join("spec.yaml");
    std::fs::write(&spec, "models:\n  cut:\n    model: cut.gguf\n").unwrap();
    for cmd in ["validate", "plan"] {
        let out = rocm_llm().arg(cmd).arg(&spec).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{cmd}: {stderr}");
        let expected = format!(
            "{}:3:12: models.cut.model: {}: truncated: the tensors end at",
            spec.display(),
            dir.path().join("cut.gguf").display()
        );
        assert!(stderr.contains(&expected), "{cmd}: {stderr}");
    }

    let mut w = GgufWriter::new();
    w.add_kv("general.architecture", "llama99");
    w.write_file(&dir.path().join("cut.gguf")).unwrap();
    let out = rocm_llm().arg("validate").arg(&spec).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("warning: models.cut.model: ") && stderr.contains("\"llama99\" is not one"),
        "{stderr}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Any corruption of a header is an error or a clean parse, never a
    /// panic, and it never reads or allocates past the file.
    #[test]
    fn corrupt_bytes_never_panic(edits in proptest::collection::vec((0usize..200, any::<u8>()), 1..8), cut in 0usize..400) {
        let good = bytes(&base());
        let mut b = good.clone();
        for (at, v) in edits {
            if at < b.len() {
                b[at] = v;
            }
        }
        b.truncate(cut.max(1).min(b.len()));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.gguf");
        std::fs::write(&path, &b).unwrap();
        let _ = check_model(&path);
    }
}
