//! The guest's `containerd-shim-runc-v2`, in front of the real one; it runs only inside
//! the VM, where diqid-init puts it first in containerd's PATH.
//!
//! containerd 1.6 runs `containerd-shim-runc-v2 ... delete` after every container, when
//! the shim's connection closes, even after a clean exit (its "dead shim" clean-up).
//! Under TCG that Go start plus a runtime `delete --force` cost about a third of a
//! second per `docker run`. This does the same clean-up itself: the runtime's forced
//! delete only while the runtime still has the container, the rootfs unmounted, and the
//! shim's answer on stdout. Every other command goes to the real shim unchanged.

use crate::error::Error;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub const NAME: &str = "containerd-shim-runc-v2";
/// The shim's default runtime root, when the bundle's options name none.
const RUNC_ROOT: &str = "/run/containerd/runc";

pub fn main(_name: &str, args: &[String]) -> Result<i32, Error> {
    if args.last().map(String::as_str) == Some("delete") {
        if let Some(d) = Delete::parse(args) {
            return d.run().map(|()| 0);
        }
    }
    Err(crate::applets::runc::exec_real(NAME, args))
}

/// `-namespace NS ... -id ID [-bundle DIR] delete`, as containerd runs it.
#[derive(Debug, PartialEq)]
struct Delete {
    namespace: String,
    id: String,
    bundle: PathBuf,
}

impl Delete {
    /// None for anything but the flags containerd 1.6 passes (then the real shim runs).
    fn parse(args: &[String]) -> Option<Delete> {
        let (mut namespace, mut id, mut bundle) = (None, None, None);
        let mut it = args[..args.len() - 1].iter();
        while let Some(flag) = it.next() {
            let (name, inline) = match flag.trim_start_matches('-').split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (flag.trim_start_matches('-'), None),
            };
            if name == "debug" {
                continue;
            }
            let value = match inline {
                Some(v) => v,
                None => it.next()?.clone(),
            };
            match name {
                "namespace" => namespace = Some(value),
                "id" => id = Some(value),
                "bundle" => bundle = Some(PathBuf::from(value)),
                "address" | "publish-binary" => {}
                _ => return None,
            }
        }
        let bundle = match bundle {
            Some(b) => b,
            None => std::env::current_dir().ok()?,
        };
        Some(Delete { namespace: namespace?, id: id?, bundle })
    }

    fn run(&self) -> Result<(), Error> {
        let runtime = std::fs::read_to_string(self.bundle.join("runtime")).map_err(|e| Error::Fail(format!("{}/runtime: {e}", self.bundle.display())))?;
        let runtime = match runtime.trim() {
            "" => "runc",
            r => r,
        };
        let root = runtime_root(std::fs::read_to_string(self.bundle.join("options.json")).ok().as_deref());
        let root = Path::new(&root).join(&self.namespace);
        // The runtime keeps a container's state in ROOT/ID; without it there is
        // nothing to delete (the usual case: the shim deleted it before it exited).
        if root.join(&self.id).exists() {
            let _ = Command::new(runtime)
                .arg("--root")
                .arg(&root)
                .arg("--log")
                .arg(self.bundle.join("log.json"))
                .args(["--log-format", "json", "delete", "--force", &self.id])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .status();
        }
        unmount_all(&self.bundle.join("rootfs"));
        // dockerd takes an exit for its container's only with the container's pid.
        let pid = std::fs::read_to_string(self.bundle.join("init.pid")).ok().and_then(|p| p.trim().parse().ok()).unwrap_or(0);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        use std::io::Write;
        std::io::stdout()
            .write_all(&delete_response(pid, 128 + libc::SIGKILL as u32, now))
            .map_err(|e| Error::Fail(format!("writing the answer: {e}")))
    }
}

/// `root` of the bundle's options.json (the shim's runtime options), else the default.
fn runtime_root(options: Option<&str>) -> String {
    options
        .and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok())
        .and_then(|v| v["root"].as_str().filter(|r| !r.is_empty()).map(str::to_string))
        .unwrap_or_else(|| RUNC_ROOT.to_string())
}

/// Unmounts what is mounted on `path`, layer by layer, until nothing is.
fn unmount_all(path: &Path) {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else { return };
    for _ in 0..64 {
        if unsafe { libc::umount2(c.as_ptr(), 0) } != 0 {
            return;
        }
    }
}

/// The shim API's DeleteResponse in protobuf: pid = 1, exit_status = 2, exited_at = 3
/// (a Timestamp: seconds = 1, nanos = 2). Zeros are left out, as protobuf does.
fn delete_response(pid: u32, exit_status: u32, exited_at: std::time::Duration) -> Vec<u8> {
    fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push(v as u8 | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    let mut ts = vec![0x08];
    varint(&mut ts, exited_at.as_secs());
    if exited_at.subsec_nanos() != 0 {
        ts.push(0x10);
        varint(&mut ts, exited_at.subsec_nanos().into());
    }
    let mut out = vec![];
    if pid != 0 {
        out.push(0x08);
        varint(&mut out, pid.into());
    }
    out.push(0x10);
    varint(&mut out, exit_status.into());
    out.push(0x1a);
    varint(&mut out, ts.len() as u64);
    out.extend(ts);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(args: &str) -> Vec<String> {
        args.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn containerds_delete_is_recognised_and_nothing_else() {
        let args = v("-namespace moby -address /var/run/docker/containerd/containerd.sock -publish-binary /usr/bin/containerd -id c1 -bundle /run/b/c1 delete");
        assert_eq!(Delete::parse(&args), Some(Delete { namespace: "moby".into(), id: "c1".into(), bundle: "/run/b/c1".into() }));
        let debug = v("-namespace moby -address /a -publish-binary /p -id c1 -bundle /b -debug delete");
        assert_eq!(Delete::parse(&debug).unwrap().bundle, PathBuf::from("/b"));
        assert_eq!(Delete::parse(&v("-namespace=moby -id=c2 -bundle=/b delete")).unwrap().id, "c2");
        assert_eq!(Delete::parse(&v("-namespace moby -id c1 -bundle /b -unknown x delete")), None, "unknown flags go to the real shim");
        assert_eq!(Delete::parse(&v("-id c1 -bundle /b delete")), None, "no namespace");
        assert_eq!(Delete::parse(&v("-namespace moby -id delete")), None, "a flag without its value");
    }

    #[test]
    fn the_runtime_root_comes_from_the_options() {
        assert_eq!(runtime_root(Some(r#"{"binary_name":"/run/diqid/bin/crun","root":"/var/run/docker/runtime-runc"}"#)), "/var/run/docker/runtime-runc");
        assert_eq!(runtime_root(Some("{}")), RUNC_ROOT);
        assert_eq!(runtime_root(None), RUNC_ROOT);
    }

    #[test]
    fn the_answer_is_a_delete_response() {
        // As Google's protobuf library (Python) serializes a DeleteResponse declared
        // with the shim API's numbers: pid 220 (then none), exit_status 137, exited_at
        // 1796396642.5 s.
        let at = std::time::Duration::new(1796396642, 500_000_000);
        let tail = [0x10, 0x89, 0x01, 0x1a, 0x0c, 0x08, 0xe2, 0xac, 0xcb, 0xd8, 0x06, 0x10, 0x80, 0xca, 0xb5, 0xee, 0x01];
        assert_eq!(delete_response(220, 137, at), [&[0x08, 0xdc, 0x01][..], &tail].concat());
        assert_eq!(delete_response(0, 137, at), tail);
    }
}
