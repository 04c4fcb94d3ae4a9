//! Checking a model file before anything is launched: its header parses, its
//! tensor data fits in the file (the classic half-finished download), the
//! parts of a split model are all there and agree, and its architecture is
//! one this llama.cpp knows (a warning only: a newer file may still load).
//!
//! Every check reads headers only, under [`DEFAULT_HEADER_LIMIT`], so a
//! corrupt or hostile file costs bounded time and memory.

use std::fmt;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use super::read::{DEFAULT_HEADER_LIMIT, GgufHeader};
use super::{GgufError, GgufTensorInfo};

/// The architectures llama.cpp b11434 knows (`LLM_ARCH_NAMES` in its
/// `src/llama-arch.cpp`), `clip` included because projector files carry it.
#[rustfmt::skip]
pub const KNOWN_ARCHITECTURES: &[&str] = &[
    "clip", "llama", "llama4", "deci", "falcon", "grok", "gpt2", "gptj", "gptneox", "mpt",
    "baichuan", "starcoder", "refact", "bert", "modern-bert", "nomic-bert", "nomic-bert-moe",
    "neo-bert", "jina-bert-v2", "jina-bert-v3", "eurobert", "bloom", "stablelm", "qwen", "qwen2",
    "qwen2moe", "qwen2vl", "qwen3", "qwen3moe", "qwen3next", "qwen3vl", "qwen3vlmoe", "qwen35",
    "qwen35moe", "clef", "qwen4exp", "phi2", "phi3", "phimoe", "plamo", "plamo2", "plamo3",
    "codeshell", "orion", "internlm2", "minicpm", "minicpm3", "gemma", "gemma2", "gemma3",
    "gemma3n", "gemma4", "gemma4-assistant", "gemma-embedding", "starcoder2", "mamba", "mamba2",
    "maple", "jamba", "falcon-h1", "xverse", "command-r", "cohere2", "cohere2moe", "dbrx", "olmo",
    "olmo2", "olmoe", "muse-glimmer", "openelm", "arctic", "deepseek", "deepseek2",
    "deepseek2-ocr", "deepseek32", "deepseek4", "chatglm", "glm4", "glm4moe", "glm-dsa", "bitnet",
    "t5", "t5encoder", "jais", "jais2", "nemotron", "nemotron_h", "nemotron_h_moe", "exaone",
    "exaone4", "exaone-moe", "rwkv6", "rwkv6qwen2", "rwkv7", "arwkv7", "granite", "granitemoe",
    "granitehybrid", "graniteswitch", "granite_swa", "chameleon", "wavtokenizer-dec", "plm",
    "bailingmoe", "bailingmoe2", "bailingmoe3", "dots1", "dots3note", "arcee", "afmoe", "laguna",
    "ernie4_5", "ernie4_5-moe", "hunyuan-moe", "hunyuan-dense", "hunyuan_vl", "hy_v3", "hy_v4",
    "smollm3", "gpt-oss", "lfm2", "lfm2moe", "dream", "smallthinker", "llada", "llada-moe",
    "seed_oss", "grovemoe", "apertus", "minimax-01", "hrm_text", "minimax-m2", "minimax-m3",
    "cogvlm", "rnd1", "pangu-embedded", "mistral3", "eagle3", "dflash", "mistral4", "paddleocr",
    "mimo2", "step35", "spark2_5", "llama-embed", "maincoder", "kimi-linear", "kimi-k3",
    "glm5-next", "talkie", "mellum", "nanbeige", "qwen3tts", "pockettts",
];

/// Why a model file cannot be launched. Each message says what is wrong and
/// what to do.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("{}", header_message(path, source))]
    Header { path: PathBuf, source: GgufError },

    #[error(
        "{}: truncated: the tensors end at {}, the file has {}; \
         the download was interrupted: download it again",
        path.display(), decimal_bytes(*tensors_end), decimal_bytes(*file_len)
    )]
    Truncated {
        path: PathBuf,
        tensors_end: u64,
        file_len: u64,
    },

    #[error(
        "{}: tensor {tensor:?} starts at data offset {offset}, but the tensors before it end at \
         {expected}; the file is corrupt",
        path.display()
    )]
    BadOffset {
        path: PathBuf,
        tensor: String,
        offset: u64,
        expected: u64,
    },

    #[error(
        "{}: part {no} of {count} of a split model is missing ({} does not exist); \
         download every part into the same directory",
        first.display(), missing.display()
    )]
    SplitPartMissing {
        first: PathBuf,
        missing: PathBuf,
        no: u32,
        count: u32,
    },

    #[error("{}: split model: {reason}", path.display())]
    SplitMismatch { path: PathBuf, reason: String },
}

fn header_message(path: &Path, e: &GgufError) -> String {
    match e {
        // "x.txt is not a GGUF file: it starts with ..."
        GgufError::NotGguf { .. } => format!("{} is {e}", path.display()),
        _ => format!("{}: {e}", path.display()),
    }
}

/// A model file that passed: its header (for a split model the first part's
/// metadata with the tensors of every part), its parts and what to warn about.
#[derive(Debug, Clone)]
pub struct CheckedModel {
    pub header: GgufHeader,
    /// Every file of the model with its length, the first part first.
    pub parts: Vec<(PathBuf, u64)>,
    /// Problems that do not stop a launch (an unknown architecture).
    pub warnings: Vec<String>,
}

/// `4.92 GB`, `512.00 MB`, `3.10 kB`, `17 B` (decimal units, as download
/// sizes are written).
pub fn decimal_bytes(n: u64) -> String {
    let v = n as f64;
    if n >= 1_000_000_000 {
        format!("{:.2} GB", v / 1e9)
    } else if n >= 1_000_000 {
        format!("{:.2} MB", v / 1e6)
    } else if n >= 1_000 {
        format!("{:.2} kB", v / 1e3)
    } else {
        format!("{n} B")
    }
}

/// Where one part's tensor data ends, from the start of the file, checking
/// on the way that every tensor's size is computable and that the offsets
/// follow each other as llama.cpp's reader requires.
pub fn tensors_end(path: &Path, h: &GgufHeader) -> Result<u64, CheckError> {
    let mut expected = 0u64;
    let mut end = 0u64;
    for t in &h.tensors {
        let n = t.n_bytes().map_err(|source| CheckError::Header {
            path: path.to_owned(),
            source,
        })?;
        if t.offset != expected {
            return Err(CheckError::BadOffset {
                path: path.to_owned(),
                tensor: t.name.clone(),
                offset: t.offset,
                expected,
            });
        }
        end = t.offset.saturating_add(n);
        expected = n
            .div_ceil(h.alignment)
            .checked_mul(h.alignment)
            .and_then(|padded| expected.checked_add(padded))
            .ok_or_else(|| CheckError::Header {
                path: path.to_owned(),
                source: GgufError::DimensionOverflow {
                    name: t.name.clone(),
                    dims: t.dims.clone(),
                },
            })?;
    }
    // llama.cpp needs each tensor's bytes in the file, not the padding after
    // the last one.
    Ok(h.data_offset.saturating_add(end))
}

/// Parses one file's header and checks its tensors fit in it.
fn check_part(path: &Path) -> Result<(GgufHeader, u64), CheckError> {
    let header_err = |source: GgufError| CheckError::Header {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(|e| header_err(e.into()))?;
    let len = file.metadata().map_err(|e| header_err(e.into()))?.len();
    let h = GgufHeader::read_sized(BufReader::new(file), DEFAULT_HEADER_LIMIT, Some(len))
        .map_err(header_err)?;
    let end = tensors_end(path, &h)?;
    if end > len {
        return Err(CheckError::Truncated {
            path: path.to_owned(),
            tensors_end: end,
            file_len: len,
        });
    }
    Ok((h, len))
}

/// `(prefix, no, count)` of a split file name `PREFIX-00001-of-00003.gguf`.
pub fn split_name(path: &Path) -> Option<(String, u32, u32)> {
    let name = path.file_name()?.to_str()?;
    let stem = name.strip_suffix(".gguf")?;
    let (rest, count) = stem.rsplit_once("-of-")?;
    let (prefix, no) = rest.rsplit_once('-')?;
    let digits = |s: &str| s.len() == 5 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(no) || !digits(count) {
        return None;
    }
    Some((prefix.to_owned(), no.parse().ok()?, count.parse().ok()?))
}

/// The path of part `no` (1-based) of `count` beside `first`.
fn part_path(first: &Path, prefix: &str, no: u32, count: u32) -> PathBuf {
    first.with_file_name(format!("{prefix}-{no:05}-of-{count:05}.gguf"))
}

/// Checks the model file at `path` (the first part, for a split model).
pub fn check_model(path: &Path) -> Result<CheckedModel, CheckError> {
    let (mut header, len) = check_part(path)?;
    let mut parts = vec![(path.to_owned(), len)];
    let mismatch = |reason: String| CheckError::SplitMismatch {
        path: path.to_owned(),
        reason,
    };
    let split_count = header.get_u64("split.count").unwrap_or(0);
    let from_name = split_name(path);
    if split_count > 1 || from_name.as_ref().is_some_and(|(_, _, c)| *c > 1) {
        let Some((prefix, no, count)) = from_name else {
            return Err(mismatch(format!(
                "the header says it is one of {split_count} parts, but the file name is not \
                 PREFIX-00001-of-{split_count:05}.gguf, so the other parts cannot be found"
            )));
        };
        if no != 1 {
            return Err(mismatch(format!(
                "this is part {no} of {count}; point `model` at the first part, {}",
                part_path(path, &prefix, 1, count).display()
            )));
        }
        if split_count != u64::from(count) {
            return Err(mismatch(format!(
                "the file name says {count} parts, its header (split.count) says {split_count}"
            )));
        }
        let declared = header.get_u64("split.tensors.count");
        for i in 2..=count {
            let p = part_path(path, &prefix, i, count);
            if !p.exists() {
                return Err(CheckError::SplitPartMissing {
                    first: path.to_owned(),
                    missing: p,
                    no: i,
                    count,
                });
            }
            let (h, len) = check_part(&p)?;
            if h.get_u64("split.no") != Some(u64::from(i - 1))
                || h.get_u64("split.count") != Some(u64::from(count))
            {
                return Err(mismatch(format!(
                    "{} does not say it is part {i} of {count} (split.no {:?}, split.count {:?}); \
                     the parts come from different downloads",
                    p.display(),
                    h.get_u64("split.no").map(|n| n + 1),
                    h.get_u64("split.count"),
                )));
            }
            header.tensors.extend(h.tensors);
            parts.push((p, len));
        }
        if let Some(n) = declared
            && n != header.tensors.len() as u64
        {
            return Err(mismatch(format!(
                "the parts hold {} tensors together, the first part says {n} \
                 (split.tensors.count); the parts come from different downloads",
                header.tensors.len()
            )));
        }
        let mut names: Vec<&GgufTensorInfo> = header.tensors.iter().collect();
        names.sort_by(|a, b| a.name.cmp(&b.name));
        if let Some(w) = names.windows(2).find(|w| w[0].name == w[1].name) {
            return Err(mismatch(format!(
                "tensor {:?} is in two parts; the parts come from different downloads",
                w[0].name
            )));
        }
    }
    let mut warnings = Vec::new();
    match header.architecture() {
        None => warnings.push(format!(
            "{}: the header has no general.architecture; llama-server will refuse it",
            path.display()
        )),
        Some(a) if !KNOWN_ARCHITECTURES.contains(&a) => warnings.push(format!(
            "{}: architecture {a:?} is not one llama.cpp b11434 knows; llama-server may refuse it",
            path.display()
        )),
        Some(_) => {}
    }
    Ok(CheckedModel {
        header,
        parts,
        warnings,
    })
}

impl fmt::Display for CheckedModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes: u64 = self.parts.iter().map(|(_, n)| n).sum();
        write!(
            f,
            "{} tensors in {} file{}, {}",
            self.header.tensors.len(),
            self.parts.len(),
            if self.parts.len() == 1 { "" } else { "s" },
            decimal_bytes(bytes)
        )
    }
}
