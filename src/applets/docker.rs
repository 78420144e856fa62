//! The `docker` shim: points the real docker CLI at the running VM and execs it.
//! A DOCKER_HOST that the user set is respected untouched.

use crate::applets::wait::{dockerd_ready, wait_for, Poll};
use crate::config::Env;
use crate::error::Error;
use crate::rundir::{RunDir, State};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

pub fn main(_name: &str, args: &[String]) -> Result<i32, Error> {
    // No argh here: every argument belongs to the real docker CLI.
    let real = real_docker().ok_or_else(|| Error::Usage("no docker CLI on PATH besides this shim; install one (apt-get install docker.io)".into()))?;
    let mut cmd = Command::new(&real);
    cmd.args(args);
    let env = Env::from_process();
    // Inside the VM (diqid-console), dockerd is local: the real CLI finds it unaided.
    let in_vm = std::fs::read_to_string("/proc/cmdline").is_ok_and(|c| c.split_whitespace().any(|w| w.starts_with("diqid.rundir=")));
    if env.get("DOCKER_HOST").is_none() && !in_vm {
        let dir = RunDir::at(&env.rundir()?);
        if !dir.is_live() {
            return Err(Error::Fail(format!("no DiQiD VM runs (nothing in {}); start one with diqid-start", dir.path.display())));
        }
        if dir.state() == Some(State::Stopping) {
            return Err(Error::Fail(format!("the DiQiD VM in {} is shutting down", dir.path.display())));
        }
        if dir.state() != Some(State::Ready) {
            // Booting: wait as diqid-wait does, with its timeout, rather than fail.
            let timeout = env.seconds("DOCKER_TIMEOUT_START", 300)?;
            wait_for(&dir, "the DiQiD VM", timeout, || match dir.state() {
                Some(State::Stopping) => Poll::Dead("the VM is shutting down".into()),
                _ => dockerd_ready(&dir),
            })?;
        }
        for (k, v) in docker_env(&dir)? {
            cmd.env(k, v);
        }
    }
    Err(Error::Fail(format!("cannot run {}: {}", real.display(), cmd.exec())))
}

/// The variables that point a docker client at the VM, as diqid-start wrote them.
pub fn docker_env(dir: &RunDir) -> Result<Vec<(String, String)>, Error> {
    let text = std::fs::read_to_string(dir.docker_env()).map_err(|e| Error::Fail(format!("cannot read {}: {e}", dir.docker_env().display())))?;
    Ok(parse_env(&text))
}

pub fn parse_env(text: &str) -> Vec<(String, String)> {
    text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// The next `docker` on PATH that is not this binary.
fn real_docker() -> Option<PathBuf> {
    crate::next_on_path("docker", &std::env::var_os("PATH")?)
}

#[cfg(test)]
mod tests {
    #[test]
    fn env_file_format() {
        assert_eq!(
            super::parse_env("DOCKER_HOST=tcp://127.0.0.1:1\nDOCKER_TLS_VERIFY=1\n"),
            [("DOCKER_HOST".to_string(), "tcp://127.0.0.1:1".to_string()), ("DOCKER_TLS_VERIFY".into(), "1".into())]
        );
    }
}
