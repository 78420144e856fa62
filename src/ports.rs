//! Published ports. The guest reports what its dockerd publishes; the host turns that
//! into QEMU user-network forwards from the outer loopback. `DIQID_PORTS` adds static
//! forwards that exist from the start.

use crate::error::Error;
use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;

/// The address QEMU's user network gives the guest.
pub const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    fn parse(s: &str) -> Option<Proto> {
        match s {
            "tcp" => Some(Proto::Tcp),
            "udp" => Some(Proto::Udp),
            _ => None,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(if *self == Proto::Tcp { "tcp" } else { "udp" })
    }
}

/// Whether `addr:port` can be bound on this side now (QEMU's forward would need it).
pub fn can_bind(proto: Proto, addr: Ipv4Addr, port: u16) -> bool {
    match proto {
        Proto::Tcp => std::net::TcpListener::bind((addr, port)).is_ok(),
        Proto::Udp => std::net::UdpSocket::bind((addr, port)).is_ok(),
    }
}

/// A port that the guest's dockerd publishes. `loopback`: bound to the guest's
/// 127.0.0.1 only (`-p 127.0.0.1:8080:80`), so the forward must go there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Published {
    pub proto: Proto,
    pub port: u16,
    pub loopback: bool,
}

impl Published {
    /// `8080/tcp`, or `127.0.0.1:8080/tcp` for a loopback one: the word on the channel.
    pub fn word(&self) -> String {
        let lo = if self.loopback { "127.0.0.1:" } else { "" };
        format!("{lo}{}/{}", self.port, self.proto)
    }

    pub fn parse(word: &str) -> Option<Published> {
        let (rest, proto) = word.split_once('/')?;
        let (loopback, port) = match rest.strip_prefix("127.0.0.1:") {
            Some(p) => (true, p),
            None => (false, rest),
        };
        Some(Published { proto: Proto::parse(proto)?, port: port.parse().ok().filter(|p| *p > 0)?, loopback })
    }

    fn guest_addr(&self) -> Ipv4Addr {
        if self.loopback {
            Ipv4Addr::LOCALHOST
        } else {
            GUEST_IP
        }
    }

    /// The forward from the outer loopback, in QEMU's `hostfwd` syntax.
    pub fn hostfwd(&self) -> String {
        format!("{}:127.0.0.1:{}-{}:{}", self.proto, self.port, self.guest_addr(), self.port)
    }

    /// What `hostfwd_remove` takes to undo `hostfwd`.
    pub fn hostfwd_key(&self) -> String {
        format!("{}:127.0.0.1:{}", self.proto, self.port)
    }
}

/// The published ports in dockerd's `GET /containers/json` answer. IPv4 and IPv6
/// bindings of one port are one forward.
pub fn published(containers: &serde_json::Value) -> BTreeSet<Published> {
    let mut out = BTreeSet::new();
    for c in containers.as_array().into_iter().flatten() {
        for p in c["Ports"].as_array().into_iter().flatten() {
            let (Some(port), Some(proto)) = (p["PublicPort"].as_u64(), p["Type"].as_str().and_then(Proto::parse)) else { continue };
            let Ok(port) = u16::try_from(port) else { continue };
            let ip = p["IP"].as_str().unwrap_or("");
            let loopback = ip.starts_with("127.") || ip == "::1";
            out.insert(Published { proto, port, loopback });
        }
    }
    // A port bound to all addresses and to loopback at once is reached through "all".
    let any: BTreeSet<(Proto, u16)> = out.iter().filter(|p| !p.loopback).map(|p| (p.proto, p.port)).collect();
    out.retain(|p| !p.loopback || !any.contains(&(p.proto, p.port)));
    out
}

/// A static forward of `DIQID_PORTS`: outer `addr:port` to the guest's `guest_port`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Static {
    pub proto: Proto,
    pub addr: Ipv4Addr,
    pub port: u16,
    pub guest_port: u16,
}

impl Static {
    pub fn hostfwd(&self) -> String {
        format!("{}:{}:{}-{}:{}", self.proto, self.addr, self.port, GUEST_IP, self.guest_port)
    }
}

/// Parses `DIQID_PORTS`: a comma-separated list of `[ADDR:]OUTER[:GUEST][/udp|/tcp]`,
/// for example `8080:8080,5353/udp`. ADDR defaults to 0.0.0.0: these forwards serve the
/// outer container's own published ports, which arrive on its outer interface.
pub fn parse_static(text: &str) -> Result<Vec<Static>, Error> {
    let bad = |what: &str| {
        Error::Usage(format!(
            "DIQID_PORTS={text}: {what}; give a comma-separated list of [ADDR:]OUTER[:GUEST][/udp], for example DIQID_PORTS=8080:8080,127.0.0.1:5353/udp"
        ))
    };
    let mut out: Vec<Static> = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (spec, proto) = match item.split_once('/') {
            Some((s, p)) => (s, Proto::parse(p).ok_or_else(|| bad(&format!("{p:?} is not tcp or udp")))?),
            None => (item, Proto::Tcp),
        };
        let parts: Vec<&str> = spec.split(':').collect();
        let (addr, ports) = match parts.first().and_then(|a| a.parse::<Ipv4Addr>().ok()) {
            Some(a) => (a, &parts[1..]),
            None => (Ipv4Addr::UNSPECIFIED, &parts[..]),
        };
        let port = |s: &str| s.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| bad(&format!("{s:?} is not a port from 1 to 65535")));
        let (outer, guest) = match ports {
            [o] => (port(o)?, port(o)?),
            [o, g] => (port(o)?, port(g)?),
            [] => return Err(bad(&format!("{item:?} has no port"))),
            _ => return Err(bad(&format!("{item:?} has too many parts"))),
        };
        if out.iter().any(|s| s.proto == proto && s.port == outer) {
            return Err(bad(&format!("outer port {outer}/{proto} is given twice")));
        }
        out.push(Static { proto, addr, port: outer, guest_port: guest });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(proto: Proto, port: u16, loopback: bool) -> Published {
        Published { proto, port, loopback }
    }

    #[test]
    fn words_round_trip() {
        for x in [p(Proto::Tcp, 8080, false), p(Proto::Udp, 53, false), p(Proto::Tcp, 1, true)] {
            assert_eq!(Published::parse(&x.word()), Some(x));
        }
        assert_eq!(p(Proto::Tcp, 8080, true).word(), "127.0.0.1:8080/tcp");
        for bad in ["8080", "0/tcp", "8080/sctp", "70000/tcp", "1.2.3.4:80/tcp"] {
            assert_eq!(Published::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn forwards_go_to_the_guest_address_or_its_loopback() {
        assert_eq!(p(Proto::Tcp, 8080, false).hostfwd(), "tcp:127.0.0.1:8080-10.0.2.15:8080");
        assert_eq!(p(Proto::Udp, 5353, true).hostfwd(), "udp:127.0.0.1:5353-127.0.0.1:5353");
        assert_eq!(p(Proto::Udp, 5353, true).hostfwd_key(), "udp:127.0.0.1:5353");
    }

    #[test]
    fn reads_the_container_list() {
        let json = r#"[
          {"Id":"a","Ports":[{"IP":"0.0.0.0","PrivatePort":80,"PublicPort":8082,"Type":"tcp"},
                             {"IP":"::","PrivatePort":80,"PublicPort":8082,"Type":"tcp"},
                             {"IP":"127.0.0.1","PrivatePort":80,"PublicPort":8081,"Type":"tcp"},
                             {"PrivatePort":443,"Type":"tcp"}]},
          {"Id":"b","Ports":[{"IP":"0.0.0.0","PrivatePort":53,"PublicPort":5353,"Type":"udp"},
                             {"IP":"127.0.0.1","PrivatePort":53,"PublicPort":5353,"Type":"udp"}]},
          {"Id":"c","Ports":[]}, {"Id":"d"}]"#;
        let got: Vec<Published> = published(&serde_json::from_str(json).unwrap()).into_iter().collect();
        assert_eq!(got, [p(Proto::Tcp, 8081, true), p(Proto::Tcp, 8082, false), p(Proto::Udp, 5353, false)]);
        assert!(published(&serde_json::json!({"message": "not a list"})).is_empty());
    }

    #[test]
    fn static_ports() {
        let s = parse_static("8080:80, 5353/udp,127.0.0.1:9000").unwrap();
        assert_eq!(s[0], Static { proto: Proto::Tcp, addr: Ipv4Addr::UNSPECIFIED, port: 8080, guest_port: 80 });
        assert_eq!(s[1], Static { proto: Proto::Udp, addr: Ipv4Addr::UNSPECIFIED, port: 5353, guest_port: 5353 });
        assert_eq!(s[2].addr, Ipv4Addr::LOCALHOST);
        assert_eq!(s[0].hostfwd(), "tcp:0.0.0.0:8080-10.0.2.15:80");
        assert!(parse_static("").unwrap().is_empty());
        for bad in ["80/sctp", "0", "x", "1:2:3", "80,80", "65536", "1.2.3.4"] {
            let e = parse_static(bad).unwrap_err().to_string();
            assert!(e.starts_with(&format!("DIQID_PORTS={bad}: ")), "{e}");
        }
        assert!(parse_static("80,80/udp").is_ok());
    }
}
