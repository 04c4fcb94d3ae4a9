//! How far a loading llama-server has got, from two real sources:
//!
//! - **the stage**, from its own log lines at the verbosity the daemon
//!   starts it with (`-lv 4`): `load_model: loading model` (reading the
//!   GGUF header), `load_tensors: loading model tensors` (the weights),
//!   `llama_context: constructing` (KV cache and compute buffers),
//!   `warming up the model` (one empty run), then ready;
//! - **the bytes**, from the kernel: how much of the model file the process
//!   has brought in. With `mmap` (llama-server's default) that is the
//!   resident size of its mappings of the GGUF in `/proc/<pid>/smaps`; with
//!   `--load-mode none`/`dio` the file is `read()` and `rchar` in
//!   `/proc/<pid>/io` counts it. The larger of the two, against the file's
//!   size.
//!
//! Why these: b11434 replaces llama.cpp's "progress dots" with a callback
//! that only router-mode children report (on a stdout protocol that also
//! makes the child exit when its stdin closes), so the log has no
//! percentage; `mincore` needs a mapping of our own (unsafe code); the page
//! cache says what is cached, not what the process loaded.
//!
//! Limits: `rchar` also counts the GGUF header and any other file the
//! process reads (a few MB); with mmap and a warm page cache, a CPU load
//! maps the weights in one step, so the bytes jump to the total; split
//! GGUFs (`-00001-of-0000N`) count only the first file; without `/proc`
//! (not Linux) there are no bytes, only the stage.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// One reading of a load in progress.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LoadProgress {
    /// `starting`, `reading metadata`, `reading tensors`, `creating context`
    /// or `warming up`.
    pub stage: &'static str,
    /// Bytes of the model file the process has brought in.
    pub bytes_done: u64,
    /// The model file's size; 0 when unknown.
    pub bytes_total: u64,
    /// `bytes_done / bytes_total` in percent, capped at 100.
    pub percent: Option<f64>,
}

/// The log lines that open each stage, latest stage last.
const STAGES: &[(&str, &str)] = &[
    ("load_model: loading model", "reading metadata"),
    ("load_tensors: loading model tensors", "reading tensors"),
    (
        "llama_context: constructing llama_context",
        "creating context",
    ),
    ("warming up the model", "warming up"),
];

/// The stage the latest run's lines reach (`lines` oldest first, from the
/// run's start): the last stage line seen, or `starting`.
pub fn stage_of<'a>(lines: impl IntoIterator<Item = &'a str>) -> &'static str {
    let mut stage = "starting";
    for line in lines {
        if let Some((_, s)) = STAGES.iter().find(|(needle, _)| line.contains(needle)) {
            stage = s;
        }
    }
    stage
}

/// The resident bytes of `model`'s mappings in a `/proc/<pid>/smaps` text.
pub fn mapped_bytes(smaps: &str, model: &Path) -> u64 {
    let model = model.to_string_lossy();
    let mut in_model = false;
    let mut total = 0;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            // A mapping's header: `start-end perms offset dev inode [path]`.
            in_model = words.nth(4).is_some_and(|path| path == model);
        } else if in_model && first == "Rss:" {
            let kb: u64 = words.next().and_then(|n| n.parse().ok()).unwrap_or(0);
            total += kb * 1024;
        }
    }
    total
}

/// `rchar` of a `/proc/<pid>/io` text: bytes the process read from files.
pub fn read_chars(io: &str) -> u64 {
    io.lines()
        .find_map(|l| l.strip_prefix("rchar:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// The model path in a `/proc/<pid>/cmdline` (NUL-separated argv): the
/// value of `-m`/`--model`.
pub fn model_in_cmdline(cmdline: &[u8]) -> Option<PathBuf> {
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    args.windows(2)
        .find(|w| w[0] == b"-m" || w[0] == b"--model")
        .map(|w| PathBuf::from(String::from_utf8_lossy(w[1]).into_owned()))
}

/// Combines a stage and the kernel's counters into one reading.
pub fn combine(stage: &'static str, mapped: u64, read: u64, total: u64) -> LoadProgress {
    let done = mapped
        .max(read)
        .min(if total > 0 { total } else { u64::MAX });
    LoadProgress {
        stage,
        bytes_done: done,
        bytes_total: total,
        percent: (total > 0).then(|| (done as f64 * 100.0 / total as f64).min(100.0)),
    }
}

/// Reads the progress of process `pid` under `proc_root` (`/proc`), with
/// the run's log lines for the stage.
pub fn read(proc_root: &Path, pid: i32, run_lines: &[String]) -> LoadProgress {
    let dir = proc_root.join(pid.to_string());
    let stage = stage_of(run_lines.iter().map(String::as_str));
    let model = std::fs::read(dir.join("cmdline"))
        .ok()
        .and_then(|c| model_in_cmdline(&c));
    let total = model
        .as_deref()
        .and_then(|m| std::fs::metadata(m).ok())
        .map_or(0, |m| m.len());
    let mapped = match (&model, std::fs::read_to_string(dir.join("smaps"))) {
        (Some(m), Ok(text)) => {
            // smaps names the file by its resolved path.
            let resolved = std::fs::canonicalize(m).unwrap_or_else(|_| m.clone());
            mapped_bytes(&text, &resolved)
        }
        _ => 0,
    };
    let read = std::fs::read_to_string(dir.join("io"))
        .map(|t| read_chars(&t))
        .unwrap_or(0);
    combine(stage, mapped, read, total)
}

/// The lines of the current run in a model's log tail: those after the
/// last daemon line that announced a new process.
pub fn current_run(lines: &[super::LogLine]) -> Vec<String> {
    let start = lines
        .iter()
        .rposition(|l| l.stream == super::LogStream::Daemon && l.text.starts_with("started pid"))
        .map_or(0, |i| i + 1);
    lines[start..].iter().map(|l| l.text.clone()).collect()
}

/// "reading tensors 2.1/4.9 GB (43%)".
pub fn describe(p: &LoadProgress) -> String {
    let gb = |b: u64| b as f64 / 1e9;
    match p.percent {
        Some(pct) => format!(
            "{} {:.1}/{:.1} GB ({pct:.0}%)",
            p.stage,
            gb(p.bytes_done),
            gb(p.bytes_total)
        ),
        None => p.stage.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_follow_the_latest_marker_line() {
        for (lines, expected) in [
            (vec![], "starting"),
            (vec!["srv  llama_server: initializing ..."], "starting"),
            (
                vec!["I srv    load_model: loading model '/m.gguf'"],
                "reading metadata",
            ),
            (
                vec![
                    "I srv    load_model: loading model '/m.gguf'",
                    "I print_info: file type = Q4_1",
                    "I load_tensors: loading model tensors, this can take a while... (load_mode = mmap)",
                ],
                "reading tensors",
            ),
            (
                vec![
                    "I load_tensors: loading model tensors, this can take a while...",
                    "I llama_context: constructing llama_context",
                ],
                "creating context",
            ),
            (
                vec![
                    "I llama_context: constructing llama_context",
                    "I cmn  common_init_: warming up the model with an empty run - please wait ...",
                ],
                "warming up",
            ),
        ] {
            assert_eq!(stage_of(lines.iter().copied()), expected, "{lines:?}");
        }
    }

    #[test]
    fn smaps_counts_only_the_model_mappings() {
        let smaps = "\
55d0c0000000-55d0c0100000 r--p 00000000 08:01 1234 /usr/bin/llama-server
Rss:                1024 kB
7f0000000000-7f0005000000 r--s 00000000 08:01 99 /models/m.gguf
Size:              81920 kB
Rss:               40960 kB
7f1000000000-7f1000001000 rw-p 00000000 00:00 0
Rss:                   4 kB
7f2000000000-7f2000100000 r--s 05000000 08:01 99 /models/m.gguf
Rss:                 512 kB
7f3000000000-7f3000100000 r--s 00000000 08:01 98 /models/m.gguf.bak
Rss:                 999 kB
";
        assert_eq!(
            mapped_bytes(smaps, Path::new("/models/m.gguf")),
            (40960 + 512) * 1024
        );
        assert_eq!(mapped_bytes(smaps, Path::new("/models/other.gguf")), 0);
    }

    #[test]
    fn io_and_cmdline() {
        assert_eq!(
            read_chars("rchar: 3584472\nwchar: 10\nsyscr: 5\nread_bytes: 8192\n"),
            3584472
        );
        assert_eq!(read_chars(""), 0);
        for (argv, expected) in [
            (
                &b"llama-server\0-m\0/a b.gguf\0--port\x008080\0"[..],
                Some("/a b.gguf"),
            ),
            (&b"llama-server\0--model\0/m.gguf\0"[..], Some("/m.gguf")),
            (&b"llama-server\0--port\x008080\0"[..], None),
        ] {
            assert_eq!(
                model_in_cmdline(argv),
                expected.map(PathBuf::from),
                "{argv:?}"
            );
        }
    }

    #[test]
    fn combine_takes_the_larger_counter_capped_at_the_file() {
        for (mapped, read, total, done, percent) in [
            (0, 3_500_000, 100_000_000, 3_500_000, Some(3.5)),
            (93_000_000, 3_500_000, 100_000_000, 93_000_000, Some(93.0)),
            (0, 150_000_000, 100_000_000, 100_000_000, Some(100.0)),
            (5, 0, 0, 5, None),
        ] {
            let p = combine("reading tensors", mapped, read, total);
            assert_eq!((p.bytes_done, p.percent), (done, percent));
        }
        assert_eq!(
            describe(&combine("reading tensors", 2_100_000_000, 0, 4_900_000_000)),
            "reading tensors 2.1/4.9 GB (43%)"
        );
    }
}
