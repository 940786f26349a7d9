//! A tiny QMP client: connect, `qmp_capabilities`, then synchronous commands (events are skipped).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::GuestError;

/// A QMP connection in command mode.
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Connects to the QMP socket at `path` (retrying until it exists or `timeout` passes) and enters
    /// command mode.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Self, GuestError> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => {
                    return Err(GuestError::io(format!("connect QMP {}", path.display()), e))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        stream
            .set_read_timeout(Some(timeout))
            .map_err(|e| GuestError::io("QMP read timeout", e))?;
        let writer = stream
            .try_clone()
            .map_err(|e| GuestError::io("QMP clone", e))?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream),
            writer,
        };
        let greeting = qmp.read_message()?;
        if greeting.get("QMP").is_none() {
            return Err(GuestError::Qmp(format!("unexpected greeting {greeting}")));
        }
        qmp.execute("qmp_capabilities", json!({}))?;
        Ok(qmp)
    }

    /// Runs `command` with `arguments` and returns its `return` value.
    pub fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, GuestError> {
        let mut line = json!({ "execute": command, "arguments": arguments }).to_string();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .map_err(|e| GuestError::io(format!("QMP send {command}"), e))?;
        loop {
            let msg = self.read_message()?;
            if let Some(ret) = msg.get("return") {
                return Ok(ret.clone());
            }
            if let Some(err) = msg.get("error") {
                return Err(GuestError::Qmp(format!("{command}: {err}")));
            }
            // An asynchronous event: skip it.
        }
    }

    /// Asks QEMU to write what the guest shows as a PNG file at `path` (written when this returns).
    pub fn screendump(&mut self, path: &Path) -> Result<(), GuestError> {
        let filename = path.to_str().ok_or_else(|| {
            GuestError::Qmp(format!("screendump path {} is not UTF-8", path.display()))
        })?;
        self.execute(
            "screendump",
            json!({ "filename": filename, "format": "png" }),
        )?;
        Ok(())
    }

    fn read_message(&mut self) -> Result<Value, GuestError> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .map_err(|e| GuestError::io("QMP read", e))?;
        if n == 0 {
            return Err(GuestError::Qmp("QMP connection closed".into()));
        }
        serde_json::from_str(&line)
            .map_err(|e| GuestError::Qmp(format!("bad QMP line {line:?}: {e}")))
    }
}
