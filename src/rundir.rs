//! The private runtime directory (0700) of one instance: sockets, logs, TLS material,
//! the state file that other processes (diqid-wait, the docker shim) read.

use crate::error::{Context, Error};
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

pub struct RunDir {
    pub path: PathBuf,
}

/// What the instance is doing, as the state file says it.
#[derive(Debug, PartialEq, Eq)]
pub enum State {
    Booting,
    Ready,
    Failed(String),
    Stopping,
}

impl RunDir {
    pub fn at(path: &Path) -> RunDir {
        RunDir { path: path.to_path_buf() }
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
    pub fn qmp(&self) -> PathBuf {
        self.file("qmp.sock")
    }
    pub fn console(&self) -> PathBuf {
        self.file("console.sock")
    }
    pub fn console_log(&self) -> PathBuf {
        self.file("console.log")
    }
    pub fn control(&self) -> PathBuf {
        self.file("control.sock")
    }
    pub fn qemu_log(&self) -> PathBuf {
        self.file("qemu.log")
    }
    pub fn qemu_pid(&self) -> PathBuf {
        self.file("qemu.pid")
    }
    pub fn tls(&self) -> PathBuf {
        self.file("tls")
    }
    pub fn docker_env(&self) -> PathBuf {
        self.file("docker.env")
    }
    pub fn temp_volume(&self) -> PathBuf {
        self.file("volume.qcow2")
    }
    pub fn phases(&self) -> PathBuf {
        self.file("phases")
    }

    /// Creates (or takes over) the directory for a new instance, private to this user.
    /// A directory that another live instance holds is refused.
    pub fn create(path: &Path) -> Result<(RunDir, File), Error> {
        let var = || format!("DIQID_RUNDIR={}", path.display());
        if !path.exists() {
            fs::DirBuilder::new().recursive(true).mode(0o700).create(path).map_err(|e| {
                Error::Usage(format!("cannot create the runtime directory ({}): {e}; set DIQID_RUNDIR to a writable place", var()))
            })?;
        }
        let meta = fs::metadata(path).ctx(var)?;
        if !meta.is_dir() {
            return Err(Error::Usage(format!("{} is not a directory", var())));
        }
        if meta.uid() != nix::unistd::geteuid().as_raw() {
            return Err(Error::Usage(format!("{} belongs to another user; set DIQID_RUNDIR to a directory of your own", var())));
        }
        fs::set_permissions(path, fs::Permissions::from_mode(0o700)).ctx(var)?;
        let dir = RunDir::at(path);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.file("lock"))
            .map_err(|e| Error::Usage(format!("the runtime directory is not writable ({}): {e}; set DIQID_RUNDIR to a writable place", var())))?;
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(Error::Usage(format!(
                "another diqid-start runs in {}; give this one its own DIQID_RUNDIR",
                path.display()
            )));
        }
        dir.clean();
        Ok((dir, lock))
    }

    /// True while a diqid-start holds this directory.
    pub fn is_live(&self) -> bool {
        let Ok(f) = File::open(self.file("lock")) else { return false };
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0 {
            return false; // nobody holds it; our shared lock goes with `f`
        }
        true
    }

    pub fn write(&self, name: &str, contents: &str) -> Result<(), Error> {
        let tmp = self.file(&format!(".{name}.tmp"));
        fs::write(&tmp, contents).ctx(|| format!("cannot write {}", tmp.display()))?;
        fs::rename(&tmp, self.file(name)).ctx(|| format!("cannot write {}", self.file(name).display()))
    }

    pub fn set_state(&self, s: &State) -> Result<(), Error> {
        let text = match s {
            State::Booting => "booting".to_string(),
            State::Ready => "ready".to_string(),
            State::Failed(why) => format!("failed {why}"),
            State::Stopping => "stopping".to_string(),
        };
        self.write("state", &(text + "\n"))
    }

    pub fn state(&self) -> Option<State> {
        let text = fs::read_to_string(self.file("state")).ok()?;
        let text = text.trim_end();
        Some(match text {
            "booting" => State::Booting,
            "ready" => State::Ready,
            "stopping" => State::Stopping,
            t => State::Failed(t.strip_prefix("failed ").unwrap_or(t).to_string()),
        })
    }

    /// The last `n` lines the VM's console printed, for error messages.
    pub fn console_tail(&self, n: usize) -> String {
        let log = fs::read(self.console_log()).unwrap_or_default();
        let text = String::from_utf8_lossy(&log).replace('\r', "");
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// The guest kernel's panic message, when the console shows one.
    pub fn console_panic(&self) -> Option<String> {
        let log = fs::read(self.console_log()).ok()?;
        let text = String::from_utf8_lossy(&log);
        let line = text.lines().rev().find(|l| l.contains("Kernel panic - "))?;
        Some(line[line.find("Kernel panic - ")?..].trim().to_string())
    }

    /// Removes what an earlier instance left, except the lock (held by us now), the
    /// logs, and a kept temporary volume. Files we do not know stay.
    pub fn clean(&self) {
        for name in ["qmp.sock", "console.sock", "console.sock.lock", "control.sock", "qemu.pid", "state", "docker.env", "phases"] {
            let _ = fs::remove_file(self.file(name));
        }
        let _ = fs::remove_dir_all(self.tls());
    }

    /// At the end of a run: everything but a kept volume, logs and lock included; the
    /// directory too when nothing else is left in it.
    pub fn remove(&self) {
        self.clean();
        for name in ["console.log", "qemu.log", "lock"] {
            let _ = fs::remove_file(self.file(name));
        }
        let _ = fs::remove_dir(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_locked_and_stateful() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("run");
        let (dir, lock) = RunDir::create(&p).unwrap();
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o700);
        assert!(dir.is_live());
        match RunDir::create(&p) {
            Err(Error::Usage(m)) => assert!(m.contains("another diqid-start"), "{m}"),
            _ => panic!("a second instance must be refused"),
        }
        dir.set_state(&State::Failed("dockerd exited".into())).unwrap();
        assert_eq!(dir.state(), Some(State::Failed("dockerd exited".into())));
        dir.set_state(&State::Ready).unwrap();
        assert_eq!(dir.state(), Some(State::Ready));
        drop(lock);
        assert!(!dir.is_live());
        dir.remove();
        assert!(!p.exists());
    }

    #[test]
    fn console_tail_keeps_the_last_lines() {
        let t = tempfile::tempdir().unwrap();
        let dir = RunDir::at(t.path());
        fs::write(dir.console_log(), "a\r\nb\r\n\r\nc\n").unwrap();
        assert_eq!(dir.console_tail(2), "b\nc");
    }

    #[test]
    fn a_panic_on_the_console_is_found() {
        let t = tempfile::tempdir().unwrap();
        let dir = RunDir::at(t.path());
        assert_eq!(dir.console_panic(), None);
        fs::write(dir.console_log(), "[ 1.0] sysrq: Trigger a crash\r\n[ 1.1] Kernel panic - not syncing: sysrq triggered crash\r\n[ 1.2] CPU: 0\r\n").unwrap();
        assert_eq!(dir.console_panic().as_deref(), Some("Kernel panic - not syncing: sysrq triggered crash"));
    }
}
