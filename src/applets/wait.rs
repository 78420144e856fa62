//! diqid-wait: wait for QEMU, then for dockerd, the way the seed's entrypoint did.

use crate::config::Env;
use crate::error::{parse_args, Error};
use crate::qmp::Qmp;
use crate::rundir::{RunDir, State};
use argh::FromArgs;
use std::io::Write;
use std::time::{Duration, Instant};

/// Wait until the VM of DIQID_RUNDIR runs (QEMU_TIMEOUT_START, default 60 s) and its
/// dockerd answers (DOCKER_TIMEOUT_START, default 300 s). Exit 1 on a timeout, or at
/// once when QEMU or diqid-start dies, showing the console's last lines. A diqid-start
/// that has not begun yet is waited for.
#[derive(FromArgs)]
struct Args {}

pub fn main(name: &str, args: &[String]) -> Result<i32, Error> {
    let _: Args = parse_args(name, args)?;
    let env = Env::from_process();
    let qemu_timeout = env.seconds("QEMU_TIMEOUT_START", 60)?;
    let docker_timeout = env.seconds("DOCKER_TIMEOUT_START", 300)?;
    let dir = RunDir::at(&env.rundir()?);
    // diqid-start may still be on its way (a script starts it in the background and
    // waits at once): its absence is fatal only once it has been seen.
    let seen = std::cell::Cell::new(false);
    // Whether diqid-start lives is told by its lock, not by pids: in a pod, a sidecar
    // shares the runtime directory but not the pid namespace.
    let gone = |dir: &RunDir| -> Option<String> {
        if !dir.is_live() {
            return seen.get().then(|| format!("diqid-start has stopped (nothing runs in {})", dir.path.display()));
        }
        seen.set(true);
        None
    };
    wait_for(&dir, "QEMU", qemu_timeout, || {
        if let Some(why) = gone(&dir) {
            return Poll::Dead(why);
        }
        match Qmp::connect(&dir.qmp(), Duration::from_secs(1)).and_then(|mut q| q.running()) {
            Ok(true) => Poll::Done,
            _ => Poll::Pending,
        }
    })?;
    wait_for(&dir, "dockerd", docker_timeout, || dockerd_ready(&dir))?;
    Ok(0)
}

/// Whether the dockerd of a VM whose diqid-start has been seen answers: the state file
/// says, and the lock tells whether diqid-start still lives.
pub fn dockerd_ready(dir: &RunDir) -> Poll {
    match dir.state() {
        Some(State::Ready) => Poll::Done,
        Some(State::Failed(why)) => Poll::Dead(why),
        _ if !dir.is_live() => Poll::Dead(format!("diqid-start has stopped (nothing runs in {})", dir.path.display())),
        _ => Poll::Pending,
    }
}

pub enum Poll {
    Pending,
    Done,
    Dead(String),
}

/// Prints `Waiting for WHAT...`, a dot a second, then ` [OK]`; ` [TIMEOUT]` or
/// ` [FAILED]` end it with an error that carries the console's last lines.
pub fn wait_for(dir: &RunDir, what: &str, timeout: Duration, mut check: impl FnMut() -> Poll) -> Result<(), Error> {
    let mut err = std::io::stderr();
    let _ = write!(err, "Waiting for {what}...");
    let start = Instant::now();
    let mut dots = 0;
    loop {
        match check() {
            Poll::Done => {
                let _ = writeln!(err, " [OK]");
                return Ok(());
            }
            Poll::Dead(why) => {
                let _ = writeln!(err, " [FAILED]");
                return Err(Error::Fail(with_console(dir, &why)));
            }
            Poll::Pending => {}
        }
        let elapsed = start.elapsed();
        if elapsed >= timeout {
            let _ = writeln!(err, " [TIMEOUT]");
            return Err(Error::Fail(with_console(dir, &format!("{what} did not answer within {} s", timeout.as_secs()))));
        }
        while dots < elapsed.as_secs() {
            let _ = write!(err, ".");
            dots += 1;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A failure's reason followed by what the VM's console showed last.
pub fn with_console(dir: &RunDir, why: &str) -> String {
    let tail = dir.console_tail(15);
    if tail.is_empty() {
        why.to_string()
    } else {
        format!("{why}; the console's last lines:\n{tail}")
    }
}
