//! systemd readiness notification (`sd_notify(3)`), without libsystemd.
//!
//! When systemd starts the daemon with `Type=notify` or `Type=notify-reload`
//! it sets `NOTIFY_SOCKET` to a unix datagram socket: a path, or an abstract
//! socket written with a leading `@`. The daemon sends newline-separated
//! `KEY=value` assignments there: `READY=1` once it serves, `RELOADING=1`
//! (with `MONOTONIC_USEC=`, which `notify-reload` requires) when it starts
//! applying a new spec, followed by `READY=1` when done, `STOPPING=1` on
//! shutdown, and `STATUS=` free text for `systemctl status`. Without
//! `NOTIFY_SOCKET` every call is a no-op. Children never see the variable
//! (the supervisor removes it from their environment).
//!
//! Sending is synchronous and non-blocking: a datagram to a local socket,
//! which systemd drains promptly; if its queue is full the message is
//! dropped with an error rather than stalling the caller.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::PathBuf;

/// The environment variable systemd sets.
pub const NOTIFY_SOCKET_ENV: &str = "NOTIFY_SOCKET";

/// What went wrong notifying systemd.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error(
        "NOTIFY_SOCKET={0:?} is not a usable socket address (want an absolute path or @abstract-name)"
    )]
    BadAddress(String),
    #[error("could not send {message:?} to systemd's notification socket {socket}: {source}")]
    Send {
        socket: String,
        message: String,
        #[source]
        source: io::Error,
    },
}

/// A handle for notifying systemd; a no-op when not started by systemd.
#[derive(Debug, Default)]
pub struct SdNotify {
    target: Option<(String, SocketAddr)>,
}

impl SdNotify {
    /// From `NOTIFY_SOCKET`; no-op if unset or empty.
    pub fn from_env() -> Result<SdNotify, NotifyError> {
        match std::env::var_os(NOTIFY_SOCKET_ENV) {
            Some(v) if !v.is_empty() => SdNotify::new(&v.to_string_lossy()),
            _ => Ok(SdNotify::disabled()),
        }
    }

    /// Notifying the socket at `address` (`/path` or `@abstract`).
    pub fn new(address: &str) -> Result<SdNotify, NotifyError> {
        let bad = || NotifyError::BadAddress(address.to_owned());
        let addr = if let Some(name) = address.strip_prefix('@') {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name.as_bytes()).map_err(|_| bad())?
        } else if address.starts_with('/') {
            SocketAddr::from_pathname(PathBuf::from(address)).map_err(|_| bad())?
        } else {
            return Err(bad());
        };
        Ok(SdNotify {
            target: Some((address.to_owned(), addr)),
        })
    }

    /// A notifier that sends nothing.
    pub fn disabled() -> SdNotify {
        SdNotify { target: None }
    }

    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// `READY=1` (plus a status line).
    pub fn ready(&self, status: &str) -> Result<(), NotifyError> {
        self.send(&format!("READY=1\nSTATUS={}", one_line(status)))
    }

    /// `RELOADING=1` with the `MONOTONIC_USEC=` systemd requires; send
    /// [`SdNotify::ready`] when the reload is done.
    pub fn reloading(&self, status: &str) -> Result<(), NotifyError> {
        self.send(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS={}",
            monotonic_usec(),
            one_line(status)
        ))
    }

    /// `STOPPING=1`.
    pub fn stopping(&self, status: &str) -> Result<(), NotifyError> {
        self.send(&format!("STOPPING=1\nSTATUS={}", one_line(status)))
    }

    /// `STATUS=...` (newlines are replaced by spaces).
    pub fn status(&self, status: &str) -> Result<(), NotifyError> {
        self.send(&format!("STATUS={}", one_line(status)))
    }

    /// `WATCHDOG=1`, for `WatchdogSec=`.
    pub fn watchdog(&self) -> Result<(), NotifyError> {
        self.send("WATCHDOG=1")
    }

    /// Sends raw `KEY=value` lines; no-op when disabled.
    pub fn send(&self, message: &str) -> Result<(), NotifyError> {
        let Some((name, addr)) = &self.target else {
            return Ok(());
        };
        let err = |source| NotifyError::Send {
            socket: name.clone(),
            message: message.to_owned(),
            source,
        };
        let sock = UnixDatagram::unbound().map_err(err)?;
        sock.set_nonblocking(true).map_err(err)?;
        sock.send_to_addr(message.as_bytes(), addr).map_err(err)?;
        Ok(())
    }
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// CLOCK_MONOTONIC in microseconds, as `MONOTONIC_USEC=` wants.
fn monotonic_usec() -> u128 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let secs = u128::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u128::try_from(ts.tv_nsec).unwrap_or(0);
    secs * 1_000_000 + nanos / 1_000
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn recv(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 4096];
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn sends_to_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let listener = UnixDatagram::bind(&path).unwrap();
        listener
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let n = SdNotify::new(path.to_str().unwrap()).unwrap();
        assert!(n.is_enabled());

        n.ready("serving 2 models").unwrap();
        assert_eq!(recv(&listener), "READY=1\nSTATUS=serving 2 models");

        let before = monotonic_usec();
        n.reloading("applying\nnew spec").unwrap();
        let msg = recv(&listener);
        let lines: Vec<&str> = msg.lines().collect();
        assert_eq!(lines[0], "RELOADING=1");
        let usec: u128 = lines[1]
            .strip_prefix("MONOTONIC_USEC=")
            .unwrap()
            .parse()
            .unwrap();
        assert!(usec >= before && usec <= monotonic_usec());
        assert_eq!(lines[2], "STATUS=applying new spec");

        n.stopping("bye").unwrap();
        assert_eq!(recv(&listener), "STOPPING=1\nSTATUS=bye");
        n.status("x").unwrap();
        assert_eq!(recv(&listener), "STATUS=x");
        n.watchdog().unwrap();
        assert_eq!(recv(&listener), "WATCHDOG=1");
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!(
            "rocm-llm-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        );
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixDatagram::bind_addr(&addr).unwrap();
        listener
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let n = SdNotify::new(&format!("@{name}")).unwrap();
        n.ready("ok").unwrap();
        assert_eq!(recv(&listener), "READY=1\nSTATUS=ok");
    }

    #[test]
    fn disabled_and_bad_addresses() {
        let n = SdNotify::disabled();
        assert!(!n.is_enabled());
        n.ready("nothing happens").unwrap();
        assert!(matches!(
            SdNotify::new("relative/path"),
            Err(NotifyError::BadAddress(_))
        ));
        // A socket nobody listens on: an error, not a hang.
        let dir = tempfile::tempdir().unwrap();
        let n = SdNotify::new(dir.path().join("nobody").to_str().unwrap()).unwrap();
        assert!(matches!(n.ready("x"), Err(NotifyError::Send { .. })));
    }
}
