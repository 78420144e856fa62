//! A minimal QMP client: enough to see that QEMU answers and to ask it to quit.
//! Replies are single JSON lines; we only look for the keys we need.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Connects and leaves capabilities negotiation mode.
    pub fn connect(path: &Path, timeout: Duration) -> io::Result<Qmp> {
        let stream = UnixStream::connect(path)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let mut q = Qmp { reader: BufReader::new(stream.try_clone()?), writer: stream };
        let greeting = q.read_line()?;
        if !greeting.contains("\"QMP\"") {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("not a QMP greeting: {greeting}")));
        }
        q.execute("qmp_capabilities", None)?;
        Ok(q)
    }

    /// Runs a command and returns its reply line (`{"return": ...}`); errors become Err.
    pub fn execute(&mut self, command: &str, arguments: Option<&str>) -> io::Result<String> {
        let msg = match arguments {
            Some(a) => format!("{{\"execute\":\"{command}\",\"arguments\":{a}}}\n"),
            None => format!("{{\"execute\":\"{command}\"}}\n"),
        };
        self.writer.write_all(msg.as_bytes())?;
        loop {
            let line = self.read_line()?;
            if line.contains("\"return\"") {
                return Ok(line);
            }
            if line.contains("\"error\"") {
                return Err(io::Error::other(format!("QMP {command}: {line}")));
            }
            // Anything else is an asynchronous event: skip it.
        }
    }

    /// Runs a human-monitor command (such as `hostfwd_add`) and returns its output,
    /// which is empty when it succeeded.
    pub fn human(&mut self, command_line: &str) -> io::Result<String> {
        let reply = self.execute("human-monitor-command", Some(&format!("{{\"command-line\":{}}}", json_string(command_line))))?;
        let value: serde_json::Value = serde_json::from_str(&reply).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("QMP reply: {e}")))?;
        Ok(value["return"].as_str().unwrap_or_default().to_string())
    }

    /// True when the guest's CPUs run.
    pub fn running(&mut self) -> io::Result<bool> {
        Ok(self.execute("query-status", None)?.contains("\"running\": true"))
    }

    fn read_line(&mut self) -> io::Result<String> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "QMP closed"));
        }
        Ok(line)
    }
}

/// Escapes a string for a JSON string literal.
pub fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn talks_to_a_qmp_peer() {
        let t = tempfile::tempdir().unwrap();
        let sock = t.path().join("qmp.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let server = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut w = s;
            w.write_all(b"{\"QMP\": {\"version\": {}}}\n").unwrap();
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            assert!(line.contains("qmp_capabilities"));
            w.write_all(b"{\"return\": {}}\n").unwrap();
            line.clear();
            r.read_line(&mut line).unwrap();
            assert!(line.contains("query-status"));
            w.write_all(b"{\"event\": \"X\"}\n{\"return\": {\"status\": \"running\", \"running\": true}}\n").unwrap();
            line.clear();
            r.read_line(&mut line).unwrap();
            w.write_all(b"{\"error\": {\"class\": \"GenericError\"}}\n").unwrap();
        });
        let mut q = Qmp::connect(&sock, Duration::from_secs(5)).unwrap();
        assert!(q.running().unwrap());
        assert!(q.execute("bogus", None).is_err());
        server.join().unwrap();
    }

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_string("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
    }
}
