//! `rocm-llm status --watch`: the status table, redrawn in place.
//!
//! No flicker: the screen is never cleared. Each frame moves the cursor
//! home, rewrites every line with an erase-to-end-of-line after it, and
//! erases below the last one, all in one write. On a terminal it uses the
//! alternate screen (the shell's scrollback is left as it was) and reads
//! keys unbuffered: `q` or Ctrl-C quits and restores the terminal. With
//! stdin a pipe, a `q` line quits too.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

/// One frame for `text`: home, each line then erase-to-end-of-line, then
/// erase below.
pub fn frame(text: &str) -> String {
    let mut out = String::from("\x1b[H");
    for line in text.lines() {
        out.push_str(line);
        out.push_str("\x1b[K\r\n");
    }
    out.push_str("\x1b[J");
    out
}

/// Whether an input byte asks to quit: `q`, `Q`, Ctrl-C (read as a byte
/// when the terminal's signals are off) or Ctrl-D.
pub fn quits(byte: u8) -> bool {
    matches!(byte, b'q' | b'Q' | 0x03 | 0x04)
}

/// The terminal as it was, put back on drop.
struct RawTerminal {
    saved: Option<rustix::termios::Termios>,
    alternate: bool,
}

impl RawTerminal {
    fn enter() -> RawTerminal {
        let stdin = std::io::stdin();
        let saved = rustix::termios::isatty(stdin.as_fd())
            .then(|| rustix::termios::tcgetattr(stdin.as_fd()).ok())
            .flatten();
        if let Some(t) = &saved {
            use rustix::termios::LocalModes;
            let mut raw = t.clone();
            // Keys one at a time, not echoed; Ctrl-C as a byte, so quitting
            // always goes through the restore below.
            raw.local_modes
                .remove(LocalModes::ICANON | LocalModes::ECHO | LocalModes::ISIG);
            let _ = rustix::termios::tcsetattr(
                stdin.as_fd(),
                rustix::termios::OptionalActions::Now,
                &raw,
            );
        }
        let alternate = rustix::termios::isatty(std::io::stdout().as_fd());
        if alternate {
            // Alternate screen, cursor hidden.
            super::emit("\x1b[?1049h\x1b[?25l");
        }
        RawTerminal { saved, alternate }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if self.alternate {
            super::emit("\x1b[?25h\x1b[?1049l");
        }
        if let Some(t) = &self.saved {
            let _ = rustix::termios::tcsetattr(
                std::io::stdin().as_fd(),
                rustix::termios::OptionalActions::Now,
                t,
            );
        }
    }
}

pub fn run(control: &str, interval: Duration) -> ExitCode {
    let (quit_tx, quit_rx) = mpsc::channel::<()>();
    {
        let quit = quit_tx.clone();
        std::thread::spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut byte = [0u8; 1];
            // EOF (stdin /dev/null) is no reason to quit: keep watching.
            while let Ok(1) = stdin.read(&mut byte) {
                if quits(byte[0]) {
                    let _ = quit.send(());
                    return;
                }
            }
        });
    }
    // SIGINT when the terminal still sends it (stdin not a terminal).
    std::thread::spawn(move || {
        if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            rt.block_on(async {
                if tokio::signal::ctrl_c().await.is_ok() {
                    let _ = quit_tx.send(());
                }
            });
        }
    });
    let terminal = RawTerminal::enter();
    loop {
        let now = SystemTime::now();
        let body = match super::status::get(control, "/status")
            .and_then(|b| serde_json::from_str(&b).map_err(|e| format!("not JSON: {e}")))
        {
            Ok(status) => super::status::render(&status, now),
            Err(e) => format!("error: {e}\n"),
        };
        let clock = humantime::format_rfc3339_seconds(now);
        let text = format!(
            "rocm-llm status  {control}  {clock}  (every {}; q to quit)\n\n{body}",
            humantime::format_duration(interval)
        );
        let mut out = std::io::stdout().lock();
        if out
            .write_all(frame(&text).as_bytes())
            .and_then(|()| out.flush())
            .is_err()
        {
            break; // stdout closed
        }
        drop(out);
        match quit_rx.recv_timeout(interval) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    drop(terminal);
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_overwrite_in_place() {
        for (text, expected) in [
            ("", "\x1b[H\x1b[J"),
            ("a\n", "\x1b[Ha\x1b[K\r\n\x1b[J"),
            ("a\nbb\n", "\x1b[Ha\x1b[K\r\nbb\x1b[K\r\n\x1b[J"),
        ] {
            assert_eq!(frame(text), expected, "{text:?}");
        }
    }

    #[test]
    fn keys_that_quit() {
        for (byte, expected) in [
            (b'q', true),
            (b'Q', true),
            (0x03, true),
            (0x04, true),
            (b' ', false),
            (b'\n', false),
        ] {
            assert_eq!(quits(byte), expected, "{byte:#x}");
        }
    }
}
