//! Errors in a spec, each pointing at a place a person can go and fix.

use std::fmt;
use std::path::{Path, PathBuf};

use super::tree::Pos;

/// One mistake in a spec file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    /// Where in the file, when known (a missing file has no place).
    pub pos: Option<Pos>,
    /// The key path, such as `models.qwen3-8b.ctx_size`; empty for the whole file.
    pub path: String,
    /// What was expected and what was found.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(pos) = self.pos {
            write!(f, ":{pos}")?;
        }
        if self.path.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": {}: {}", self.path, self.message)
        }
    }
}

impl Diagnostic {
    /// The error line followed by the source line it points at and a caret,
    /// the way compilers show it.
    pub fn render(&self, source: &str) -> String {
        let mut out = self.to_string();
        if let Some(pos) = self.pos
            && let Some(line) = usize::try_from(pos.line)
                .ok()
                .and_then(|l| l.checked_sub(1))
                .and_then(|l| source.lines().nth(l))
        {
            let number = pos.line.to_string();
            let pad = " ".repeat(number.len());
            let caret_at = usize::try_from(pos.column.saturating_sub(1)).unwrap_or(0);
            let indent: String = line
                .chars()
                .take(caret_at)
                .map(|c| if c == '\t' { '\t' } else { ' ' })
                .collect();
            out.push_str(&format!(
                "\n {pad} |\n {number} | {line}\n {pad} | {indent}^"
            ));
        }
        out
    }
}

/// Every mistake found in one spec file, in file order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecErrors {
    pub diagnostics: Vec<Diagnostic>,
}

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SpecErrors {}

impl SpecErrors {
    pub fn single(file: &Path, pos: Option<Pos>, path: &str, message: impl Into<String>) -> Self {
        SpecErrors {
            diagnostics: vec![Diagnostic {
                file: file.to_owned(),
                pos,
                path: path.to_owned(),
                message: message.into(),
            }],
        }
    }
}

/// Finds the closest known name, for "did you mean" hints.
pub fn suggest<'a>(typo: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    known
        .into_iter()
        .map(|k| (strsim::jaro_winkler(typo, k), k))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k)
}
