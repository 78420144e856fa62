//! The guest's `runc` and `crun` and the network hook they put in place; all run only
//! inside the VM, where diqid-init puts them first in dockerd's PATH.
//!
//! dockerd joins a container to its network with an OCI prestart hook that re-executes
//! dockerd itself (`/proc/PID/exe libnetwork-setkey ...`). Starting that 90 MB Go
//! binary costs most of a second under TCG, on every `docker run`. So before runc
//! creates a container, this wrapper points that one hook at this binary, whose
//! `libnetwork-setkey` sends dockerd the same message; then it runs the real runc with
//! the same arguments. Anything it does not recognise it leaves as it is.

use crate::error::Error;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where diqid-init links `runc` and `crun` to this binary; first in dockerd's PATH.
pub const BIN_DIR: &str = "/run/diqid/bin";
/// This binary as every guest process can run it: PID 1's (the init's) executable.
pub const SELF: &str = "/proc/1/exe";
pub const SETKEY: &str = "libnetwork-setkey";

/// `runc ARGS...` or `crun ARGS...`: the hook rewritten for `create` and `run`, then the
/// real program of that name.
pub fn main(name: &str, args: &[String]) -> Result<i32, Error> {
    if let Some(bundle) = bundle(args) {
        // Best effort: if this fails, dockerd's own hook stays and still works.
        let _ = use_fast_setkey(&bundle.join("config.json"));
    }
    Err(exec_real(name, args))
}

/// Runs the real `name` (the next on PATH past the wrappers) with `args` in this
/// process; returns only why it could not.
pub fn exec_real(name: &str, args: &[String]) -> Error {
    let path = std::env::var("PATH").unwrap_or_default();
    let Some(real) = real_runtime(name, &path) else {
        return Error::Fail(format!("no {name} in PATH ({path}) besides {BIN_DIR}/{name}"));
    };
    let err = Command::new(&real).arg0(name).args(args).exec();
    Error::Fail(format!("cannot run {}: {err}", real.display()))
}

/// runc's and crun's global options that take a value (`--root DIR`), as opposed to
/// switches.
const VALUE_OPTIONS: &[&str] = &["--root", "--log", "--log-format", "--log-level", "--criu", "--rootless", "--cgroup-manager"];

/// The bundle of a `create` or `run` command line: `--bundle DIR`, `-b DIR`, or the
/// working directory, as runc and crun read it. None for every other command.
fn bundle(args: &[String]) -> Option<PathBuf> {
    let mut rest = args.iter();
    let command = loop {
        let a = rest.next()?;
        if VALUE_OPTIONS.contains(&a.as_str()) {
            rest.next();
        } else if !a.starts_with('-') {
            break a;
        }
    };
    if command != "create" && command != "run" {
        return None;
    }
    while let Some(a) = rest.next() {
        if a == "--bundle" || a == "-b" {
            return rest.next().map(PathBuf::from);
        }
        if let Some(v) = a.strip_prefix("--bundle=").or_else(|| a.strip_prefix("-b=")) {
            return Some(PathBuf::from(v));
        }
    }
    Some(PathBuf::from("."))
}

/// Points dockerd's `libnetwork-setkey` prestart hook in an OCI config at this binary.
/// Returns whether the file was changed.
fn use_fast_setkey(config: &Path) -> std::io::Result<bool> {
    let text = std::fs::read_to_string(config)?;
    let mut spec: serde_json::Value = serde_json::from_str(&text)?;
    if !rewrite_hooks(&mut spec) {
        return Ok(false);
    }
    let tmp = config.with_extension("json.diqid");
    std::fs::write(&tmp, serde_json::to_vec(&spec)?)?;
    std::fs::rename(&tmp, config)?;
    Ok(true)
}

/// The change itself: only a hook that runs some process's `/proc/PID/exe` as
/// `libnetwork-setkey` (dockerd's) is touched; its arguments stay.
fn rewrite_hooks(spec: &mut serde_json::Value) -> bool {
    let Some(hooks) = spec.pointer_mut("/hooks/prestart").and_then(|h| h.as_array_mut()) else { return false };
    let mut changed = false;
    for hook in hooks {
        let is_dockerds = hook["args"][0] == SETKEY
            && hook["path"].as_str().is_some_and(|p| p.starts_with("/proc/") && p.ends_with("/exe") && p != SELF);
        if is_dockerds {
            hook["path"] = SELF.into();
            changed = true;
        }
    }
    changed
}

/// The first `name` (runc, crun, the shim) in PATH that is not this wrapper.
pub fn real_runtime(name: &str, path: &str) -> Option<PathBuf> {
    crate::next_on_path(name, std::ffi::OsStr::new(path))
}

/// `libnetwork-setkey [-exec-root=DIR] CONTAINER-ID CONTROLLER-ID`, with the OCI state
/// on stdin: asks dockerd to move the container's network into the namespace of the
/// state's pid, over the socket dockerd listens on for exactly this, as dockerd's own
/// hook does.
pub fn setkey(_name: &str, args: &[String]) -> Result<i32, Error> {
    let mut exec_root = "/run/docker".to_string();
    let mut ids = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.trim_start_matches('-').split_once('=') {
            Some(("exec-root", v)) => exec_root = v.to_string(),
            _ if a == "-exec-root" || a == "--exec-root" => exec_root = it.next().cloned().unwrap_or_default(),
            _ => ids.push(a.clone()),
        }
    }
    let [container, controller] = ids.as_slice() else {
        return Err(Error::Usage(format!("expects CONTAINER-ID CONTROLLER-ID, got {ids:?}")));
    };
    let mut state = String::new();
    std::io::stdin().read_to_string(&mut state).map_err(|e| Error::Fail(format!("reading the OCI state: {e}")))?;
    let state: serde_json::Value = serde_json::from_str(&state).map_err(|e| Error::Fail(format!("the OCI state on stdin: {e}")))?;
    let pid = state["pid"].as_u64().ok_or_else(|| Error::Fail("the OCI state on stdin has no pid".into()))?;
    let socket = Path::new(&exec_root).join("libnetwork").join(format!("{controller}.sock"));
    set_key(&socket, container, &format!("/proc/{pid}/ns/net")).map(|()| 0).map_err(Error::Fail)
}

/// One request, one answer: dockerd reads the JSON in a single read and answers
/// "success" or the error's text.
fn set_key(socket: &Path, container: &str, key: &str) -> Result<(), String> {
    let mut conn = UnixStream::connect(socket).map_err(|e| format!("{}: {e}", socket.display()))?;
    let mut request = serde_json::json!({"ContainerID": container, "Key": key}).to_string();
    request.push('\n');
    conn.write_all(request.as_bytes()).map_err(|e| format!("sending to {}: {e}", socket.display()))?;
    let mut answer = [0u8; 1024];
    let n = conn.read(&mut answer).map_err(|e| format!("reading from {}: {e}", socket.display()))?;
    match std::str::from_utf8(&answer[..n]) {
        Ok("success") => Ok(()),
        Ok(why) => Err(why.to_string()),
        Err(_) => Err("dockerd answered with something that is not text".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(args: &str) -> Vec<String> {
        args.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn the_bundle_of_create_and_run_only() {
        // As containerd's shim calls it.
        let create = v("--root /var/run/docker/runtime-runc/moby --log /run/x/log.json --log-format json create --bundle /run/b/abc --pid-file /run/b/abc/init.pid abc");
        assert_eq!(bundle(&create), Some(PathBuf::from("/run/b/abc")));
        assert_eq!(bundle(&v("--debug run -b /b x")), Some(PathBuf::from("/b")));
        assert_eq!(bundle(&v("create --bundle=/c x")), Some(PathBuf::from("/c")));
        assert_eq!(bundle(&v("create x")), Some(PathBuf::from(".")));
        assert_eq!(bundle(&v("--root /create start abc")), None, "a value is not the command");
        assert_eq!(bundle(&v("--log-format json delete --force abc")), None);
        assert_eq!(bundle(&v("--version")), None);
    }

    #[test]
    fn only_dockerds_setkey_hook_is_pointed_here() {
        let mut spec = serde_json::json!({"ociVersion": "1.0.2", "hooks": {"prestart": [
            {"path": "/proc/91/exe", "args": ["libnetwork-setkey", "-exec-root=/var/run/docker", "c1", "df80c4ee9dea"]},
            {"path": "/usr/bin/nvidia-hook", "args": ["nvidia-hook", "prestart"]},
        ]}, "process": {"user": {"uid": 0, "gid": 0}}});
        assert!(rewrite_hooks(&mut spec));
        let hooks = &spec["hooks"]["prestart"];
        assert_eq!(hooks[0]["path"], SELF);
        assert_eq!(hooks[0]["args"], serde_json::json!(["libnetwork-setkey", "-exec-root=/var/run/docker", "c1", "df80c4ee9dea"]));
        assert_eq!(hooks[1]["path"], "/usr/bin/nvidia-hook");
        assert!(!rewrite_hooks(&mut spec), "already done");
        assert!(!rewrite_hooks(&mut serde_json::json!({"ociVersion": "1.0.2"})), "no hooks (--network host)");
    }

    #[test]
    fn the_config_file_is_rewritten_in_place_or_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.json");
        std::fs::write(&config, r#"{"hooks":{"prestart":[{"path":"/proc/7/exe","args":["libnetwork-setkey","c","n"]}]},"linux":{"resources":{"memory":{"limit":9223372036854775807}}}}"#).unwrap();
        assert!(use_fast_setkey(&config).unwrap());
        let spec: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
        assert_eq!(spec["hooks"]["prestart"][0]["path"], SELF);
        assert_eq!(spec["linux"]["resources"]["memory"]["limit"], i64::MAX, "numbers survive exactly");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left");
        std::fs::write(&config, "not json").unwrap();
        assert!(use_fast_setkey(&config).is_err());
        assert_eq!(std::fs::read_to_string(&config).unwrap(), "not json");
    }

    #[test]
    fn the_real_runc_is_found_past_the_wrapper() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("runc");
        std::fs::write(&real, "").unwrap();
        let path = format!("{BIN_DIR}::{}:/nonexistent", dir.path().display());
        assert_eq!(real_runtime("runc", &path), Some(real));
        assert_eq!(real_runtime("runc", BIN_DIR), None);
        assert_eq!(real_runtime("crun", &path), None);
    }

    /// dockerd's side of the protocol, as libnetwork implements it: one read, one answer.
    fn dockerd_listener(answer: &'static str) -> (tempfile::TempDir, PathBuf, std::thread::JoinHandle<String>) {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("df80c4ee9dea.sock");
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let server = std::thread::spawn(move || {
            let (mut c, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1280];
            let n = c.read(&mut buf).unwrap();
            c.write_all(answer.as_bytes()).unwrap();
            String::from_utf8(buf[..n].to_vec()).unwrap()
        });
        (dir, socket, server)
    }

    #[test]
    fn setkey_speaks_dockerds_protocol() {
        let (_dir, socket, server) = dockerd_listener("success");
        set_key(&socket, "c1", "/proc/42/ns/net").unwrap();
        let request: serde_json::Value = serde_json::from_str(&server.join().unwrap()).unwrap();
        assert_eq!(request, serde_json::json!({"ContainerID": "c1", "Key": "/proc/42/ns/net"}));

        let (_dir, socket, server) = dockerd_listener("no sandbox present for c2");
        assert_eq!(set_key(&socket, "c2", "/proc/43/ns/net"), Err("no sandbox present for c2".to_string()));
        server.join().unwrap();

        let gone = Path::new("/nonexistent/x.sock");
        assert!(set_key(gone, "c", "k").unwrap_err().starts_with("/nonexistent/x.sock: "));
    }
}
