//! The optional API key: a bearer token read from the spec's `api_key_file`,
//! checked on every proxy and status route except `/healthz`.
//!
//! The file is read at start and again inside every reload of the spec (and
//! on SIGHUP, so a rotated key file takes effect without a spec edit). A key
//! is an immutable value published in the same routing table as the models
//! it guards, so a request sees one consistent pair: the routes never change
//! without their key.
//! Surrounding whitespace is trimmed. Keys are compared as SHA-256 digests
//! with a constant-time comparison, so neither the key's content nor its
//! length leaks through timing.
//!
//! Failures fail closed: a key file that cannot be read (or is empty) keeps
//! the previous key; with no previous key, every protected request is refused
//! until the file is fixed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use hyper::HeaderMap;
use hyper::header::AUTHORIZATION;
use sha2::{Digest, Sha256};

type KeyDigest = [u8; 32];

#[derive(Clone, Debug, PartialEq, Eq)]
enum KeyState {
    /// No `api_key_file`: everything is open.
    Open,
    /// Requests must present this key.
    Key { path: PathBuf, digest: KeyDigest },
    /// `api_key_file` is set but was never readable: refuse everything.
    Broken { path: PathBuf, reason: String },
}

/// Why a request was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthError {
    /// No key, or the wrong one: 401.
    Unauthorized,
    /// The key file could not be read: 503 (fail closed).
    Unavailable(String),
}

/// The key of one routing table. Immutable and cheap to clone; a reload
/// makes a new one with [`ApiKey::reloaded`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKey {
    state: Arc<KeyState>,
}

impl Default for ApiKey {
    fn default() -> Self {
        ApiKey::disabled()
    }
}

fn digest(bytes: &[u8]) -> KeyDigest {
    Sha256::digest(bytes).into()
}

/// Equality of two digests in time that does not depend on where they differ.
fn ct_eq(a: &KeyDigest, b: &KeyDigest) -> bool {
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b.iter()) {
        diff |= x ^ y;
    }
    // Keep the optimiser from turning the fold into an early exit.
    std::hint::black_box(diff) == 0
}

fn read_key(path: &Path) -> Result<KeyDigest, String> {
    let text = std::fs::read(path)
        .map_err(|e| format!("cannot read the API key file {}: {e}", path.display()))?;
    if let Some(mode) = readable_by_others(path) {
        tracing::warn!(
            "the API key file {} can be read by other users (mode {mode:o}); chmod 600 it",
            path.display()
        );
    }
    let key = text.trim_ascii();
    if key.is_empty() {
        return Err(format!("the API key file {} is empty", path.display()));
    }
    Ok(digest(key))
}

/// The file's mode when group or others may read it.
fn readable_by_others(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o7777;
    (mode & 0o044 != 0).then_some(mode)
}

impl ApiKey {
    /// No key: every request is allowed.
    pub fn disabled() -> ApiKey {
        ApiKey {
            state: Arc::new(KeyState::Open),
        }
    }

    /// A key that must be `key` (for tests and embedding).
    pub fn fixed(key: &str) -> ApiKey {
        let state = KeyState::Key {
            path: PathBuf::new(),
            digest: digest(key.trim().as_bytes()),
        };
        ApiKey {
            state: Arc::new(state),
        }
    }

    /// Reads `path` now (`None`: no key).
    pub fn load(path: Option<&Path>) -> ApiKey {
        ApiKey::disabled().reloaded(path)
    }

    /// The key after reading the key file again (or switched off when the
    /// spec no longer names one). A failed read keeps this key when it came
    /// from the same file, so a half-written key file never opens the door.
    #[must_use]
    pub fn reloaded(&self, path: Option<&Path>) -> ApiKey {
        let state = &*self.state;
        let next = match path {
            None => KeyState::Open,
            Some(path) => match read_key(path) {
                Ok(digest) => KeyState::Key {
                    path: path.to_owned(),
                    digest,
                },
                Err(reason) => match state {
                    KeyState::Key { path: old, .. } if old == path => {
                        tracing::error!("{reason}; keeping the key read before");
                        return self.clone();
                    }
                    _ => {
                        tracing::error!("{reason}; refusing every request until it can be read");
                        KeyState::Broken {
                            path: path.to_owned(),
                            reason,
                        }
                    }
                },
            },
        };
        if *state != next {
            match &next {
                KeyState::Open => tracing::info!(
                    "no api_key_file: the endpoint and the status API are open to whoever can reach them"
                ),
                KeyState::Key { path, .. } => {
                    tracing::info!("API key read from {}", path.display())
                }
                KeyState::Broken { .. } => {}
            }
        }
        ApiKey {
            state: Arc::new(next),
        }
    }

    /// Whether a key is required.
    pub fn enabled(&self) -> bool {
        *self.state != KeyState::Open
    }

    /// Checks a request's `Authorization: Bearer KEY` (or `X-Api-Key: KEY`).
    pub fn check(&self, headers: &HeaderMap) -> Result<(), AuthError> {
        let expected = match &*self.state {
            KeyState::Open => return Ok(()),
            KeyState::Broken { reason, .. } => return Err(AuthError::Unavailable(reason.clone())),
            KeyState::Key { digest, .. } => *digest,
        };
        let presented = headers
            .get(AUTHORIZATION)
            .and_then(|v| {
                v.as_bytes()
                    .strip_prefix(b"Bearer ")
                    .or_else(|| v.as_bytes().strip_prefix(b"bearer "))
            })
            .or_else(|| headers.get("x-api-key").map(|v| v.as_bytes()));
        match presented {
            Some(key) if ct_eq(&digest(key.trim_ascii()), &expected) => Ok(()),
            _ => Err(AuthError::Unauthorized),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn key_files_readable_by_others_are_noticed() {
        use std::os::unix::fs::PermissionsExt;
        let f = tempfile::NamedTempFile::new().unwrap();
        for (mode, noticed) in [
            (0o600, None),
            (0o400, None),
            (0o640, Some(0o640)),
            (0o644, Some(0o644)),
            (0o604, Some(0o604)),
        ] {
            std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(readable_by_others(f.path()), noticed, "{mode:o}");
        }
    }
    use hyper::header::HeaderValue;

    fn headers(name: &str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            hyper::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
        h
    }

    #[test]
    fn open_without_a_key_file() {
        let key = ApiKey::load(None);
        assert!(!key.enabled());
        assert_eq!(key.check(&HeaderMap::new()), Ok(()));
    }

    #[test]
    fn bearer_and_x_api_key_are_checked_and_whitespace_is_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "  s3cret\n").unwrap();
        let key = ApiKey::load(Some(&path));
        assert!(key.enabled());
        assert_eq!(
            key.check(&headers("authorization", "Bearer s3cret")),
            Ok(())
        );
        assert_eq!(key.check(&headers("x-api-key", "s3cret")), Ok(()));
        assert_eq!(
            key.check(&headers("authorization", "Bearer s3cre")),
            Err(AuthError::Unauthorized)
        );
        assert_eq!(
            key.check(&headers("authorization", "Bearer s3cret2")),
            Err(AuthError::Unauthorized)
        );
        assert_eq!(
            key.check(&headers("authorization", "Basic s3cret")),
            Err(AuthError::Unauthorized)
        );
        assert_eq!(key.check(&HeaderMap::new()), Err(AuthError::Unauthorized));
    }

    #[test]
    fn an_unreadable_file_keeps_the_old_key_or_fails_closed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "one").unwrap();
        let key = ApiKey::load(Some(&path));
        std::fs::write(&path, "").unwrap();
        let key = key.reloaded(Some(&path));
        assert_eq!(
            key.check(&headers("authorization", "Bearer one")),
            Ok(()),
            "an empty rewrite keeps the old key"
        );
        std::fs::write(&path, "two").unwrap();
        let key = key.reloaded(Some(&path));
        assert_eq!(
            key.check(&headers("authorization", "Bearer one")),
            Err(AuthError::Unauthorized)
        );
        assert_eq!(key.check(&headers("authorization", "Bearer two")), Ok(()));

        let missing = ApiKey::load(Some(&dir.path().join("missing")));
        assert!(matches!(
            missing.check(&headers("authorization", "Bearer two")),
            Err(AuthError::Unavailable(_))
        ));
        assert_eq!(key.reloaded(None).check(&HeaderMap::new()), Ok(()));
    }

    #[test]
    fn constant_time_equality() {
        assert!(ct_eq(&digest(b"a"), &digest(b"a")));
        assert!(!ct_eq(&digest(b"a"), &digest(b"b")));
    }
}
