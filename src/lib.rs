//! DiQiD: Docker-in-QEMU-in-Docker. One multi-call binary; the applet is chosen by the
//! basename of argv[0], or by the first argument when called as `diqid`.

pub mod applets;
pub mod config;
pub mod control;
pub mod cpio;
pub mod dockerd;
pub mod error;
pub mod initramfs;
pub mod modules;
pub mod ports;
pub mod qemu;
pub mod qmp;
pub mod rundir;
pub mod size;
pub mod tls;
pub mod vmlinux;

use error::Error;
use std::path::Path;

/// An applet's entry point: its name (for messages) and its arguments after argv[0].
pub type Entry = fn(name: &str, args: &[String]) -> Result<i32, Error>;

/// The dispatch table: every name the binary answers to.
pub const APPLETS: &[(&str, Entry)] = &[
    ("diqid-start", applets::start::main),
    ("diqid-wait", applets::wait::main),
    ("diqid-volume", applets::volume::main),
    ("diqid-console", applets::console::main),
    ("diqid-init", applets::init::main),
    ("docker", applets::docker::main),
];

/// Names that reach an applet without being listed: the initramfs runs us as /init.
const ALIASES: &[(&str, &str)] = &[("init", "diqid-init")];

/// Applets of the VM's inside, never listed or installed (an outer `runc` must stay
/// the outer one): diqid-init puts them where dockerd finds them.
const GUEST_ONLY: &[(&str, Entry)] =
    &[("runc", applets::runc::main), ("crun", applets::runc::main), (applets::runc::SETKEY, applets::runc::setkey), (applets::shim::NAME, applets::shim::main)];

pub fn lookup(name: &str) -> Option<(&'static str, Entry)> {
    let name = ALIASES.iter().find(|(a, _)| *a == name).map_or(name, |(_, n)| n);
    APPLETS.iter().chain(GUEST_ONLY).find(|(n, _)| *n == name).copied()
}

const USAGE: &str = "usage: diqid APPLET [ARGS...] | diqid --list | diqid --install DIR";

/// Runs the applet that argv names and returns the process exit status.
pub fn run(argv: Vec<String>) -> i32 {
    let argv0 = argv.first().map(String::as_str).unwrap_or("diqid");
    let base = Path::new(argv0).file_name().and_then(|s| s.to_str()).unwrap_or("diqid");
    if let Some((name, entry)) = lookup(base) {
        return report(name, entry(name, &argv[1..]));
    }
    match argv.get(1).map(String::as_str) {
        Some("--list") => {
            for (name, _) in APPLETS {
                println!("{name}");
            }
            0
        }
        Some("--install") => report("diqid", install(argv.get(2).map(String::as_str))),
        Some("--help") | Some("-h") => {
            println!("{USAGE}\n\napplets:");
            for (name, _) in APPLETS {
                println!("  {name}");
            }
            0
        }
        Some(applet) => match lookup(applet) {
            Some((name, entry)) => report(name, entry(name, &argv[2..])),
            None => report("diqid", Err(Error::Usage(format!("unknown applet '{applet}'; `diqid --list` shows them")))),
        },
        None => report("diqid", Err(Error::Usage(USAGE.into()))),
    }
}

/// Prints an applet's error with its name and turns the result into an exit status.
pub fn report(name: &str, result: Result<i32, Error>) -> i32 {
    match result {
        Ok(status) => status,
        Err(e) => {
            eprintln!("{name}: {e}");
            e.status()
        }
    }
}

/// The first `name` on `path` that is not this binary: the real program that an applet
/// stands in for (`docker`, and `runc` and `crun` in the VM). Compared by inode, because in the VM
/// this binary is the initramfs's, deleted, and has no path to compare.
pub fn next_on_path(name: &str, path: &std::ffi::OsStr) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let me = std::fs::metadata("/proc/self/exe").ok().map(|m| (m.dev(), m.ino()));
    std::env::split_paths(path)
        .map(|d| d.join(name))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && Some((m.dev(), m.ino())) != me))
}

/// `diqid --install DIR`: one symlink per applet, pointing at this binary.
fn install(dir: Option<&str>) -> Result<i32, Error> {
    let dir = dir.ok_or_else(|| Error::Usage("--install needs a directory, e.g. `diqid --install /usr/local/bin`".into()))?;
    let dir = Path::new(dir);
    if !dir.is_dir() {
        return Err(Error::Usage(format!("--install: {} is not a directory", dir.display())));
    }
    let exe = std::env::current_exe().map_err(|e| Error::Fail(format!("cannot find this binary: {e}")))?;
    for (name, _) in APPLETS {
        let link = dir.join(name);
        if link.symlink_metadata().is_ok() {
            std::fs::remove_file(&link).map_err(|e| Error::Fail(format!("cannot replace {}: {e}", link.display())))?;
        }
        std::os::unix::fs::symlink(&exe, &link).map_err(|e| Error::Fail(format!("cannot create {}: {e}", link.display())))?;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_applet_and_alias_resolves() {
        for (name, _) in APPLETS {
            assert_eq!(lookup(name).unwrap().0, *name);
        }
        assert_eq!(lookup("init").unwrap().0, "diqid-init");
        assert!(lookup("diqid").is_none());
        assert!(lookup("nope").is_none());
        assert_eq!(lookup("runc").unwrap().0, "runc");
        assert!(!APPLETS.iter().any(|(n, _)| *n == "runc"), "--install must not shadow the outer runc");
    }
}
