//! Watching the spec file the way editors actually save it.
//!
//! Editors save by writing a temporary file and renaming it over the spec
//! (so the watch is on the parent directory: a watch on the file itself
//! would follow the old inode), or by truncating and rewriting in place (so
//! a reader can catch a valid but partial file). Events are debounced, and
//! then the content must read the same twice, `settle` apart, before it is
//! handed on.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// What a read of the spec found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpecRead {
    Text(String),
    Deleted,
    Unreadable(String),
    /// Read, but not UTF-8: the located error, as `validate` prints it.
    NotText(String),
}

/// Timing of the watcher.
#[derive(Clone, Copy, Debug)]
pub struct WatchTiming {
    /// Quiet time after the last file event before reading.
    pub debounce: Duration,
    /// The content must be unchanged this long after the read.
    pub settle: Duration,
}

impl Default for WatchTiming {
    fn default() -> Self {
        WatchTiming {
            debounce: Duration::from_millis(100),
            settle: Duration::from_millis(30),
        }
    }
}

pub fn read_spec(path: &Path) -> SpecRead {
    match std::fs::read(path) {
        Ok(bytes) => match crate::spec::validate::spec_text(bytes, path) {
            Ok(text) => SpecRead::Text(text),
            Err((errors, _)) => SpecRead::NotText(errors.to_string()),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => SpecRead::Deleted,
        Err(e) => SpecRead::Unreadable(e.to_string()),
    }
}

/// Keeps the watcher alive; dropping it stops watching.
pub struct SpecWatcher {
    _watcher: notify::RecommendedWatcher,
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot watch {dir}: {source}", dir = dir.display())]
    Watch { dir: PathBuf, source: notify::Error },
}

/// Starts watching `spec`; each stable change is sent on `out`.
pub fn watch_spec(
    spec: &Path,
    timing: WatchTiming,
    out: mpsc::UnboundedSender<SpecRead>,
) -> Result<SpecWatcher, WatchError> {
    let spec = std::path::absolute(spec).unwrap_or_else(|_| spec.to_owned());
    let dir = spec
        .parent()
        .map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from("/"));
    let name = spec.file_name().map(ToOwned::to_owned);
    let (raw_tx, mut raw_rx) = mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let Ok(event) = res else { return };
        if matches!(event.kind, EventKind::Access(_)) {
            return;
        }
        if event.paths.iter().any(|p| p.file_name() == name.as_deref()) {
            let _ = raw_tx.send(());
        }
    })
    .map_err(|source| WatchError::Watch {
        dir: dir.clone(),
        source,
    })?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(|source| WatchError::Watch {
            dir: dir.clone(),
            source,
        })?;

    tokio::spawn(async move {
        while raw_rx.recv().await.is_some() {
            // Debounce: wait for a quiet spell.
            loop {
                let quiet_until = Instant::now() + timing.debounce;
                match tokio::time::timeout_at(quiet_until, raw_rx.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_) => {}
                }
                // Settle: the content must not change under our feet.
                let first = read_spec(&spec);
                tokio::time::sleep(timing.settle).await;
                let mut changed = false;
                while raw_rx.try_recv().is_ok() {
                    changed = true;
                }
                if changed || read_spec(&spec) != first {
                    continue;
                }
                if out.send(first).is_err() {
                    return;
                }
                break;
            }
        }
    });
    Ok(SpecWatcher { _watcher: watcher })
}
