//! The inner dockerd: the flags DiQiD gives it, and the check that the outer
//! `/etc/docker/daemon.json` (which the guest sees as its own) does not fight them.

use crate::error::Error;
use crate::qemu::GUEST_DOCKER_PORT;
use std::path::Path;

/// The outer configuration file; in the guest the same path holds the same file.
pub const DAEMON_JSON: &str = "/etc/docker/daemon.json";
/// The outer side's loopback, as QEMU's user network shows it to the guest.
pub const OUTER_LOOPBACK: &str = "10.0.2.2";

/// containerd's socket, where dockerd would have put the containerd it starts itself.
pub const CONTAINERD_SOCKET: &str = "/var/run/docker/containerd/containerd.sock";

/// containerd's configuration: dockerd's own paths for it, so that a volume made
/// before stays good, and none of the plugins dockerd 20.10 does not use (the
/// snapshotters that probe for their filesystems, Kubernetes' CRI).
pub const CONTAINERD_CONFIG: &str = r#"version = 2
root = "/var/lib/docker/containerd/daemon"
state = "/var/run/docker/containerd/daemon"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]

[grpc]
  address = "/var/run/docker/containerd/containerd.sock"
"#;

/// dockerd's flags. `rundir` holds the server's TLS files (shared over 9p).
pub fn args(rundir: &str) -> Vec<String> {
    let tls = format!("{rundir}/tls/server");
    vec![
        format!("--containerd={CONTAINERD_SOCKET}"),
        "--host=unix:///run/docker.sock".into(),
        format!("--host=tcp://0.0.0.0:{GUEST_DOCKER_PORT}"),
        "--tlsverify".into(),
        format!("--tlscacert={tls}/ca.pem"),
        format!("--tlscert={tls}/cert.pem"),
        format!("--tlskey={tls}/key.pem"),
        // `--add-host host.docker.internal:host-gateway` reaches the outer loopback.
        format!("--host-gateway-ip={OUTER_LOOPBACK}"),
    ]
}

/// The flags that make crun, behind DiQiD's wrapper, the default runtime: its C start
/// costs a fraction of runc's Go one under TCG, on every `docker run`. None when crun
/// is not installed, or when daemon.json chooses runtimes itself (dockerd would refuse
/// a flag and a file that both set them).
pub fn runtime_args(daemon_json: Option<&str>, crun_installed: bool) -> Vec<String> {
    let chooses = |text: &str| {
        serde_json::from_str::<serde_json::Value>(text)
            .ok()
            .and_then(|v| v.as_object().map(|m| m.contains_key("runtimes") || m.contains_key("default-runtime")))
            .unwrap_or(true)
    };
    if !crun_installed || daemon_json.is_some_and(chooses) {
        return vec![];
    }
    vec![format!("--add-runtime=crun={}/crun", crate::applets::runc::BIN_DIR), "--default-runtime=crun".into()]
}

/// Settings of daemon.json that DiQiD owns, and why. dockerd itself refuses to start
/// when a flag is also in the file; `data-root` would put images on the shared root.
const OWNED: &[(&str, &str)] = &[
    ("hosts", "DiQiD serves the API on a unix socket and on TLS port 2376 in the VM"),
    ("tls", "DiQiD sets up TLS with its own certificates"),
    ("tlsverify", "DiQiD sets up TLS with its own certificates"),
    ("tlscacert", "DiQiD sets up TLS with its own certificates"),
    ("tlscert", "DiQiD sets up TLS with its own certificates"),
    ("tlskey", "DiQiD sets up TLS with its own certificates"),
    ("host-gateway-ip", "DiQiD points host-gateway at the outer side's loopback"),
    ("data-root", "the VM keeps docker's data on its volume, /var/lib/docker"),
    ("containerd", "DiQiD starts containerd itself, before dockerd"),
];

/// Checks daemon.json's text: valid JSON, an object, none of the settings DiQiD owns.
pub fn check_config(text: &str) -> Result<(), String> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("is not valid JSON: {e}"))?;
    let map = value.as_object().ok_or("is not a JSON object")?;
    for (key, why) in OWNED {
        if map.contains_key(*key) {
            return Err(format!("sets \"{key}\", which DiQiD needs to set itself ({why}); remove it from the file"));
        }
    }
    Ok(())
}

/// The check on the outer file, as a usage error that names it. No file is fine.
pub fn check_daemon_json(path: &Path) -> Result<(), Error> {
    match std::fs::read_to_string(path) {
        Ok(text) => check_config(&text).map_err(|e| Error::Usage(format!("{} {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::Usage(format!("cannot read {}: {e}; the VM's dockerd reads it as its own configuration", path.display()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_serve_tls_and_point_host_gateway_outside() {
        let a = args("/run/d");
        assert!(a.contains(&"--tlscacert=/run/d/tls/server/ca.pem".to_string()));
        assert!(a.contains(&"--host=tcp://0.0.0.0:2376".to_string()));
        assert!(a.contains(&"--host-gateway-ip=10.0.2.2".to_string()));
        let socket = format!("\"{}\"", CONTAINERD_SOCKET);
        assert!(a.contains(&format!("--containerd={CONTAINERD_SOCKET}")) && CONTAINERD_CONFIG.contains(&socket), "dockerd dials where containerd listens");
    }

    #[test]
    fn crun_is_the_default_unless_absent_or_the_user_chooses() {
        let ours = vec!["--add-runtime=crun=/run/diqid/bin/crun".to_string(), "--default-runtime=crun".to_string()];
        assert_eq!(runtime_args(None, true), ours);
        assert_eq!(runtime_args(Some(r#"{"debug": true}"#), true), ours);
        assert_eq!(runtime_args(None, false), Vec::<String>::new());
        assert_eq!(runtime_args(Some(r#"{"default-runtime": "runc"}"#), true), Vec::<String>::new());
        assert_eq!(runtime_args(Some(r#"{"runtimes": {"kata": {"path": "/k"}}}"#), true), Vec::<String>::new());
    }

    #[test]
    fn daemon_json_settings_of_the_user_pass_and_ours_are_named() {
        assert_eq!(check_config(r#"{"registry-mirrors": ["http://m:5000"], "insecure-registries": ["r:5000"], "log-driver": "local"}"#), Ok(()));
        assert_eq!(check_config("{}"), Ok(()));
        let e = check_config(r#"{"debug": true, "hosts": ["tcp://0.0.0.0:2375"]}"#).unwrap_err();
        assert!(e.starts_with("sets \"hosts\", which DiQiD needs"), "{e}");
        assert!(check_config(r#"{"data-root": "/srv/docker"}"#).unwrap_err().contains("data-root"));
        assert!(check_config("{\"debug\": tru").unwrap_err().starts_with("is not valid JSON: "));
        assert_eq!(check_config("[1]").unwrap_err(), "is not a JSON object");
    }

    #[test]
    fn a_missing_file_is_fine_and_a_bad_one_is_a_usage_error() {
        assert!(check_daemon_json(Path::new("/nonexistent/daemon.json")).is_ok());
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("daemon.json");
        std::fs::write(&f, r#"{"tlsverify": false}"#).unwrap();
        match check_daemon_json(&f) {
            Err(Error::Usage(m)) => assert!(m.starts_with(&format!("{} sets \"tlsverify\"", f.display())), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}
