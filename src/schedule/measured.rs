//! What each launch measured once it loaded, remembered in the state
//! directory by launch identity, so the next start of the same launch
//! reserves what it really took instead of the estimate
//! (`<state_dir>/measured.json`). The file is replaced atomically (a
//! temporary file renamed over it); a missing or corrupt file is an empty
//! memory, never an error that stops a start. The arbiter
//! ([`super::arbiter`]) reads and writes it (docs/scheduler.md).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::ledger::Bytes;

/// The remembered figures: launch identity to bytes per device.
#[derive(Clone, Debug)]
pub struct Measured {
    path: PathBuf,
}

impl Measured {
    pub fn new(state_dir: &Path) -> Measured {
        Measured {
            path: state_dir.join("measured.json"),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every remembered launch; empty when the file is missing or unreadable.
    pub fn all(&self) -> BTreeMap<String, Bytes> {
        std::fs::read(&self.path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// What `launch_id` measured last, if it ever loaded.
    pub fn get(&self, launch_id: &str) -> Option<Bytes> {
        self.all().remove(launch_id)
    }

    /// Remembers what `launch_id` measured, replacing an earlier figure.
    pub fn record(&self, launch_id: &str, bytes: &Bytes) -> std::io::Result<()> {
        let mut all = self.all();
        all.insert(launch_id.to_owned(), bytes.clone());
        let text = serde_json::to_vec_pretty(&all).map_err(std::io::Error::other)?;
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = self
            .path
            .with_extension(format!("json.{}.tmp", std::process::id()));
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &self.path)
    }

    /// Keeps only the launches in `keep` (the spec's current ones), so the
    /// file does not grow with every edit.
    pub fn retain(&self, keep: &[&str]) -> std::io::Result<()> {
        let mut all = self.all();
        let before = all.len();
        all.retain(|id, _| keep.contains(&id.as_str()));
        if all.len() == before {
            return Ok(());
        }
        let text = serde_json::to_vec_pretty(&all).map_err(std::io::Error::other)?;
        let tmp = self
            .path
            .with_extension(format!("json.{}.tmp", std::process::id()));
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &self.path)
    }
}
