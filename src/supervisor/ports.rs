//! Picking a loopback port for a llama-server.
//!
//! [`pick_free_port`] asks the kernel for an unused ephemeral port by binding
//! `127.0.0.1:0`, reads the port and closes the socket. Between that and
//! llama-server binding the port, another process could take it: the race
//! window is the child's exec and startup (milliseconds), and the kernel hands
//! out ephemeral ports in a pseudo-random order, so a collision is rare but
//! possible. It is detected, not prevented: llama-server then exits at once
//! logging `couldn't bind HTTP server socket` (b11434), which
//! [`ReadyError::is_bind_failure`](super::readiness::ReadyError::is_bind_failure)
//! recognises; the owner should pick a new port and spawn again immediately,
//! without counting it as a crash for the restart backoff (bounded, e.g. 3
//! tries). The listening socket is closed before the spawn, so it is not
//! inherited by the child and cannot keep the port busy.
//!
//! (llama-server also accepts `--port 0` and logs the port it bound, which
//! avoids the race, but parsing a log line is a worse contract than this.)

use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};

/// What went wrong picking a port.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error("could not find a free port on 127.0.0.1: {0}")]
    Bind(#[from] io::Error),
}

/// An unused TCP port on 127.0.0.1 (free at the time of the call; see the
/// module docs for the race).
pub fn pick_free_port() -> Result<u16, PortError> {
    let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
    Ok(listener.local_addr()?.port())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn picked_port_is_bindable() {
        let port = pick_free_port().unwrap();
        assert_ne!(port, 0);
        // Nothing holds it after the call.
        let l = TcpListener::bind(("127.0.0.1", port)).unwrap();
        assert_eq!(l.local_addr().unwrap().port(), port);
        // While it is held, the kernel does not hand it out again.
        for _ in 0..50 {
            assert_ne!(pick_free_port().unwrap(), port);
        }
    }
}
