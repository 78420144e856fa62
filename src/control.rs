//! The control channel between the two halves of diqid: a virtio-serial port named
//! `diqid.control`, a unix socket on the outer side. One text line per message.
//!
//! guest -> host: `hello` (init is alive), `phase NAME SECONDS` (boot timestamps,
//! seconds since the guest kernel started), `ready` (dockerd answers _ping),
//! `fail REASON`, `ports WORD...` (what dockerd publishes now, as `8080/tcp` or
//! `127.0.0.1:8080/tcp`; the whole set each time), `alive` (every `HEARTBEAT`, so that
//! the host notices a guest that hangs), `bye` (about to power off).
//! host -> guest: `shutdown SECONDS` (stop dockerd within that time, then power off).

use crate::ports::Published;

pub const PORT_NAME: &str = "diqid.control";
/// How often the guest says `alive`.
pub const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Debug, PartialEq)]
pub enum Guest {
    Hello,
    Alive,
    Phase(String, f64),
    Ready,
    Fail(String),
    Ports(Vec<Published>),
    Bye,
}

impl Guest {
    pub fn parse(line: &str) -> Option<Guest> {
        let line = line.trim_end();
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        Some(match word {
            "hello" => Guest::Hello,
            "alive" => Guest::Alive,
            "ready" => Guest::Ready,
            "bye" => Guest::Bye,
            "fail" => Guest::Fail(rest.to_string()),
            "ports" => Guest::Ports(rest.split_whitespace().map(Published::parse).collect::<Option<_>>()?),
            "phase" => {
                let (name, secs) = rest.split_once(' ')?;
                Guest::Phase(name.to_string(), secs.parse().ok()?)
            }
            _ => return None,
        })
    }

    pub fn line(&self) -> String {
        match self {
            Guest::Hello => "hello\n".into(),
            Guest::Alive => "alive\n".into(),
            Guest::Ready => "ready\n".into(),
            Guest::Bye => "bye\n".into(),
            Guest::Fail(why) => format!("fail {}\n", why.replace('\n', " ")),
            Guest::Phase(name, secs) => format!("phase {name} {secs:.3}\n"),
            Guest::Ports(ports) => format!("ports{}\n", ports.iter().map(|p| format!(" {}", p.word())).collect::<String>()),
        }
    }
}

#[derive(Debug, PartialEq)]
pub enum Host {
    Shutdown(u64),
}

impl Host {
    pub fn parse(line: &str) -> Option<Host> {
        let secs = line.trim_end().strip_prefix("shutdown ")?;
        Some(Host::Shutdown(secs.parse().ok()?))
    }

    pub fn line(&self) -> String {
        match self {
            Host::Shutdown(secs) => format!("shutdown {secs}\n"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        for m in [Guest::Hello, Guest::Alive, Guest::Ready, Guest::Bye, Guest::Fail("dockerd exited: 1".into()), Guest::Phase("root".into(), 1.25), Guest::Ports(vec![]), Guest::Ports(vec![Published::parse("127.0.0.1:80/tcp").unwrap(), Published::parse("53/udp").unwrap()])] {
            assert_eq!(Guest::parse(&m.line()), Some(m));
        }
        assert_eq!(Host::parse(&Host::Shutdown(25).line()), Some(Host::Shutdown(25)));
    }

    #[test]
    fn garbage_is_ignored() {
        assert_eq!(Guest::parse("phase x notanumber"), None);
        assert_eq!(Guest::parse("what"), None);
        assert_eq!(Guest::parse("ports 80/tcp nonsense"), None);
        assert_eq!(Host::parse("shutdown soon"), None);
        assert_eq!(Guest::parse("fail a\nb").unwrap(), Guest::Fail("a\nb".into()));
        assert_eq!(Guest::Fail("a\nb".into()).line(), "fail a b\n");
    }
}
