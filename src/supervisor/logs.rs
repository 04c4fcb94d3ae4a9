//! A bounded ring buffer of a model's most recent llama-server output lines.
//!
//! One [`LogSink`] per model, created by the model's owner and handed (cloned)
//! to every [`spawn`](super::process::spawn) of that model, so the buffer
//! spans restarts: the lines that explain why the previous run died are still
//! there when the status API or an error message asks for them. Each spawn
//! adds a [`LogStream::Daemon`] marker line naming the new pid.
//!
//! Memory is bounded: at most `max_lines` lines of at most `max_line_bytes`
//! bytes each (longer lines are cut at a UTF-8 boundary and marked). Cloning
//! a `LogSink` is cheap (an `Arc`); the lock is held only to push one line or
//! to copy a tail out, never across an `.await`.
//!
//! Some lines mean the model runs other than the spec intends (a ROCm build
//! that found no GPU runs on the CPU). [`warning_in`] knows them; the buffer
//! keeps each one it saw since the current run began ([`LogSink::begin_run`])
//! even after the line itself has scrolled out, for status to show.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

/// Lines kept per model by [`LogSink::new`].
pub const DEFAULT_MAX_LINES: usize = 200;
/// Bytes kept per line by [`LogSink::new`]; longer lines are truncated.
pub const DEFAULT_MAX_LINE_BYTES: usize = 2048;

/// Appended to a line that was cut to the byte cap.
pub const TRUNCATED_MARK: &str = " [...truncated]";

/// llama-server output that means the model is not running the way the spec
/// intends: (a piece of the line, the warning status shows).
pub const KNOWN_WARNINGS: &[(&str, &str)] = &[
    // ggml-cuda's init in a HIP build: "ggml_cuda_init: failed to initialize
    // ROCm: no ROCm-capable device is detected". Every layer then runs on the CPU.
    (
        "no ROCm-capable device is detected",
        "the ROCm build found no GPU; running on the CPU",
    ),
];

/// The warning a llama-server output line means, if any.
pub fn warning_in(line: &str) -> Option<&'static str> {
    KNOWN_WARNINGS
        .iter()
        .find(|(needle, _)| line.contains(needle))
        .map(|&(_, warning)| warning)
}

/// Where a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LogStream {
    Stdout,
    Stderr,
    /// A line the daemon itself added (e.g. "started pid 1234").
    Daemon,
}

impl LogStream {
    pub fn as_str(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
            LogStream::Daemon => "daemon",
        }
    }
}

impl fmt::Display for LogStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One captured line (without its line terminator).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLine {
    pub at: SystemTime,
    pub stream: LogStream,
    pub text: String,
}

/// What went wrong with a log buffer. (Nothing can today: a poisoned lock is
/// recovered, since a half-pushed line cannot exist; the type exists so the
/// module follows the one-error-enum convention if that ever changes.)
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("log buffer capacity must be at least one line of at least one byte")]
    ZeroCapacity,
}

#[derive(Debug)]
struct Ring {
    lines: VecDeque<LogLine>,
    /// Lines dropped off the front since creation.
    dropped: u64,
    /// [`warning_in`] of the current run's lines, each once, in order seen.
    warnings: Vec<&'static str>,
}

/// A cheap-to-clone handle on one model's bounded line buffer.
#[derive(Clone, Debug)]
pub struct LogSink {
    model: Arc<str>,
    max_lines: usize,
    max_line_bytes: usize,
    ring: Arc<Mutex<Ring>>,
    /// The buffer sizes llama-server printed (at `-lv 4`), per device.
    memory: Arc<Mutex<crate::memory::log::LogUsage>>,
}

impl LogSink {
    /// A buffer of [`DEFAULT_MAX_LINES`] lines of [`DEFAULT_MAX_LINE_BYTES`].
    pub fn new(model: impl Into<Arc<str>>) -> LogSink {
        LogSink {
            model: model.into(),
            max_lines: DEFAULT_MAX_LINES,
            max_line_bytes: DEFAULT_MAX_LINE_BYTES,
            ring: Arc::new(Mutex::new(Ring {
                lines: VecDeque::with_capacity(DEFAULT_MAX_LINES),
                dropped: 0,
                warnings: Vec::new(),
            })),
            memory: Arc::default(),
        }
    }

    /// A buffer with explicit limits (both must be non-zero).
    pub fn with_capacity(
        model: impl Into<Arc<str>>,
        max_lines: usize,
        max_line_bytes: usize,
    ) -> Result<LogSink, LogError> {
        if max_lines == 0 || max_line_bytes == 0 {
            return Err(LogError::ZeroCapacity);
        }
        Ok(LogSink {
            model: model.into(),
            max_lines,
            max_line_bytes,
            ring: Arc::new(Mutex::new(Ring {
                lines: VecDeque::new(),
                dropped: 0,
                warnings: Vec::new(),
            })),
            memory: Arc::default(),
        })
    }

    /// The model this buffer belongs to (used to tag `tracing` events).
    pub fn model(&self) -> &str {
        &self.model
    }

    /// The per-line byte cap.
    pub fn max_line_bytes(&self) -> usize {
        self.max_line_bytes
    }

    /// Appends a line, truncating it to the byte cap and evicting the oldest
    /// line when full.
    pub fn push(&self, stream: LogStream, text: &str) {
        self.memory
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .feed(text);
        let text = truncate_line(text, self.max_line_bytes);
        let line = LogLine {
            at: SystemTime::now(),
            stream,
            text,
        };
        let warning = match stream {
            LogStream::Daemon => None,
            LogStream::Stdout | LogStream::Stderr => warning_in(&line.text),
        };
        let mut ring = self.lock();
        if let Some(w) = warning
            && !ring.warnings.contains(&w)
        {
            ring.warnings.push(w);
        }
        while ring.lines.len() >= self.max_lines {
            ring.lines.pop_front();
            ring.dropped += 1;
        }
        ring.lines.push_back(line);
    }

    /// A new process starts: forget the previous run's warnings.
    pub fn begin_run(&self) {
        self.lock().warnings.clear();
    }

    /// The warnings of the current run's output (see [`warning_in`]).
    pub fn warnings(&self) -> Vec<String> {
        self.lock()
            .warnings
            .iter()
            .map(|w| (*w).to_owned())
            .collect()
    }

    /// What the latest llama-server said it allocated, per device (empty
    /// until its buffer lines arrive; they are kept when the lines scroll
    /// out of the buffer).
    pub fn memory(&self) -> crate::memory::log::LogUsage {
        self.memory
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The last `n` lines (fewer if fewer were kept), oldest first.
    pub fn tail(&self, n: usize) -> Vec<LogLine> {
        let ring = self.lock();
        let skip = ring.lines.len().saturating_sub(n);
        ring.lines.iter().skip(skip).cloned().collect()
    }

    /// The texts of the last `n` lines, oldest first: handy for error messages.
    pub fn tail_text(&self, n: usize) -> Vec<String> {
        self.tail(n).into_iter().map(|l| l.text).collect()
    }

    /// Every kept line, oldest first.
    pub fn snapshot(&self) -> Vec<LogLine> {
        self.tail(usize::MAX)
    }

    /// Number of lines currently kept.
    pub fn len(&self) -> usize {
        self.lock().lines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Lines evicted since creation (how much history is missing).
    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        // A panic while holding the lock cannot leave a half-written line,
        // so a poisoned lock is safe to keep using.
        self.ring.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// `text` cut to at most `max_bytes` bytes (at a char boundary) plus
/// [`TRUNCATED_MARK`] when it was longer.
pub fn truncate_line(text: &str, max_bytes: usize) -> String {
    if text.len() <= max_bytes {
        return text.to_owned();
    }
    let mut end = max_bytes;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut s = String::with_capacity(end + TRUNCATED_MARK.len());
    s.push_str(&text[..end]);
    s.push_str(TRUNCATED_MARK);
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_lines_in_order() {
        let sink = LogSink::with_capacity("m", 3, 100).unwrap();
        for i in 0..5 {
            sink.push(LogStream::Stderr, &format!("line {i}"));
        }
        assert_eq!(sink.len(), 3);
        assert_eq!(sink.dropped(), 2);
        assert_eq!(sink.tail_text(10), ["line 2", "line 3", "line 4"]);
        assert_eq!(sink.tail_text(2), ["line 3", "line 4"]);
        assert_eq!(sink.tail_text(0), Vec::<String>::new());
        assert_eq!(sink.snapshot().len(), 3);
    }

    #[test]
    fn clones_share_the_buffer() {
        let a = LogSink::new("m");
        let b = a.clone();
        a.push(LogStream::Stdout, "x");
        b.push(LogStream::Daemon, "y");
        let t = a.tail(2);
        assert_eq!(t[0].stream, LogStream::Stdout);
        assert_eq!(t[1].stream, LogStream::Daemon);
        assert_eq!(b.model(), "m");
    }

    #[test]
    fn long_lines_are_cut_at_a_char_boundary() {
        let sink = LogSink::with_capacity("m", 2, 5).unwrap();
        sink.push(LogStream::Stderr, "abcdefgh");
        sink.push(LogStream::Stderr, "abcdé"); // 'é' is 2 bytes: 6 bytes total
        assert_eq!(
            sink.tail_text(2),
            [
                format!("abcde{TRUNCATED_MARK}"),
                format!("abcd{TRUNCATED_MARK}")
            ]
        );
        assert_eq!(truncate_line("short", 5), "short");
    }

    #[test]
    fn known_lines_mean_warnings() {
        let cases: &[(&str, Option<&str>)] = &[
            (
                "ggml_cuda_init: failed to initialize ROCm: no ROCm-capable device is detected",
                Some("the ROCm build found no GPU; running on the CPU"),
            ),
            ("ggml_cuda_init: found 1 ROCm devices:", None),
            ("load_tensors: offloaded 20/31 layers to GPU", None),
            ("", None),
        ];
        for (line, want) in cases {
            assert_eq!(warning_in(line), *want, "{line:?}");
        }
    }

    #[test]
    fn warnings_outlive_their_line_until_the_next_run() {
        let sink = LogSink::with_capacity("m", 2, 200).unwrap();
        let no_gpu =
            "ggml_cuda_init: failed to initialize ROCm: no ROCm-capable device is detected";
        sink.push(LogStream::Stderr, no_gpu);
        sink.push(LogStream::Stderr, no_gpu); // kept once
        for i in 0..5 {
            sink.push(LogStream::Stderr, &format!("line {i}"));
        }
        assert!(!sink.tail_text(10).iter().any(|l| l == no_gpu));
        assert_eq!(
            sink.warnings(),
            ["the ROCm build found no GPU; running on the CPU"]
        );
        sink.begin_run();
        assert!(sink.warnings().is_empty());
        // A daemon line quoting it (a command line, an error) is not llama-server's.
        sink.push(LogStream::Daemon, no_gpu);
        assert!(sink.warnings().is_empty());
        sink.push(LogStream::Stdout, no_gpu);
        assert_eq!(sink.warnings().len(), 1);
    }

    #[test]
    fn zero_capacity_is_rejected() {
        assert!(LogSink::with_capacity("m", 0, 10).is_err());
        assert!(LogSink::with_capacity("m", 10, 0).is_err());
    }
}
