//! A blocking HTTP/1.0 GET, enough to ask the status API (or a
//! llama-server's `/health`) one question without an async runtime, and
//! the typed `GET /status` on it: the CLI, the tests and the benchmarks use
//! them.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum GetError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("{addr}: {source}")]
    Io {
        addr: String,
        source: std::io::Error,
    },
    #[error("{addr} sent a malformed response")]
    Malformed { addr: String },
    #[error("{addr} answered: {status_line}")]
    Status { addr: String, status_line: String },
    #[error("{addr} sent a status this client cannot read: {source}")]
    Decode {
        addr: String,
        source: serde_json::Error,
    },
}

/// `GET /status` on the control address `addr`, read into its type.
pub fn status(addr: &str, bearer: Option<&str>) -> Result<super::status::StatusReport, GetError> {
    let body = get(addr, "/status", bearer)?;
    serde_json::from_str(&body).map_err(|source| GetError::Decode {
        addr: addr.to_owned(),
        source,
    })
}

/// The body of `GET path` on `addr`, which must answer 200 within 10 s.
pub fn get(addr: &str, path: &str, bearer: Option<&str>) -> Result<String, GetError> {
    let io = |source| GetError::Io {
        addr: addr.to_owned(),
        source,
    };
    let mut stream = TcpStream::connect(addr).map_err(|source| GetError::Connect {
        addr: addr.to_owned(),
        source,
    })?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(io)?;
    let auth = bearer
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n{auth}\r\n"
    )
    .map_err(io)?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(io)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| GetError::Malformed {
            addr: addr.to_owned(),
        })?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        let status_line = head.lines().next().unwrap_or_default().to_owned();
        return Err(GetError::Status {
            addr: addr.to_owned(),
            status_line,
        });
    }
    Ok(body.to_owned())
}
