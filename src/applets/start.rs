//! diqid-start: the entrypoint. Volume, initramfs, QEMU, wait, CMD, clean shutdown.

use crate::applets::volume::{self, Origin};
use crate::applets::wait::{wait_for, with_console, Poll};
use crate::config::{Accel, Env, StartConfig};
use crate::control::{Guest, Host};
use crate::error::{fail, parse_args, Context, Error};
use crate::ports::{self, Published, Static};
use crate::qemu::{self, Vm, NETDEV};
use crate::qmp::Qmp;
use crate::rundir::{RunDir, State};
use crate::{dockerd, initramfs, tls, vmlinux};
use argh::FromArgs;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};
use wait_timeout::ChildExt;

/// Boot a QEMU VM whose dockerd serves this machine, run CMD with docker pointed at
/// it, shut the VM down cleanly and exit with CMD's status. Without CMD: a shell when
/// stdin is a terminal, else serve until signalled. Flags override the environment
/// variables named in their help.
#[derive(FromArgs)]
struct Args {
    /// memory of the VM (MEMORY, default 1G)
    #[argh(option)]
    memory: Option<String>,
    /// virtual CPUs (CPUS, default: the CPUs this process may use under KVM, 1 under TCG)
    #[argh(option)]
    cpus: Option<String>,
    /// volume size (DOCKER_VOLUME_SIZE, default 20G)
    #[argh(option)]
    volume_size: Option<String>,
    /// volume file to use or create (DOCKER_VOLUME_FILE, default: a temporary one)
    #[argh(option)]
    volume_file: Option<String>,
    /// accelerator: auto, kvm or tcg (DIQID_ACCEL, default auto)
    #[argh(option)]
    accel: Option<String>,
    /// guest kernel image (DIQID_KERNEL, default: the newest /boot/vmlinuz-*)
    #[argh(option)]
    kernel: Option<String>,
    /// runtime directory (DIQID_RUNDIR, default $XDG_RUNTIME_DIR/diqid or /tmp/diqid-UID)
    #[argh(option)]
    rundir: Option<String>,
    /// the command to run, and its arguments
    #[argh(positional, greedy)]
    command: Vec<String>,
}

/// How long the guest may say nothing (it says `alive` every two seconds) before the
/// user is warned that it hangs.
const SILENCE: Duration = Duration::from_secs(30);

/// The most a guest that is not ready yet gets to power off.
const STOP_WHILE_BOOTING: Duration = Duration::from_secs(5);

/// How long a KVM that opens may take to show that the guest runs.
const KVM_PROBE: Duration = Duration::from_secs(4);

/// The pid of the running CMD, for signal forwarding (0: none).
static CMD_PID: AtomicI32 = AtomicI32::new(0);
/// Signals received while no CMD ran.
static SIGNALS: AtomicUsize = AtomicUsize::new(0);
static LAST_SIGNAL: AtomicI32 = AtomicI32::new(0);
/// The running QEMU's pid, so that the orphan reaper leaves it alone.
static QEMU_PID: AtomicI32 = AtomicI32::new(0);
/// Held while CMD is spawned and its pid not yet recorded.
static SPAWN: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub fn main(name: &str, args: &[String]) -> Result<i32, Error> {
    let args: Args = parse_args(name, args)?;
    let mut env = Env::from_process();
    for (var, value) in [
        ("MEMORY", args.memory),
        ("CPUS", args.cpus),
        ("DOCKER_VOLUME_SIZE", args.volume_size),
        ("DOCKER_VOLUME_FILE", args.volume_file),
        ("DIQID_ACCEL", args.accel),
        ("DIQID_KERNEL", args.kernel),
        ("DIQID_RUNDIR", args.rundir),
    ] {
        env.set(var, value);
    }
    let cfg = StartConfig::load(&env)?;
    let qemu = volume::find_program("qemu-system-x86_64")
        .ok_or_else(|| Error::Usage("qemu-system-x86_64 not found on PATH; install it (apt-get install qemu-system-x86)".into()))?;
    volume::qemu_img()?;
    if cfg.accel == Accel::Kvm && !qemu::kvm_openable() {
        return Err(Error::Usage("DIQID_ACCEL=kvm, but /dev/kvm cannot be opened for reading and writing; use DIQID_ACCEL=auto or tcg".into()));
    }
    let volume_path = volume::path_of(&cfg.volume, &cfg.rundir);
    if cfg.volume.file.is_some() {
        // Usage errors come first, before anything is created.
        volume::check(&volume_path, &cfg.volume)?;
    }
    dockerd::check_daemon_json(Path::new(dockerd::DAEMON_JSON))?;
    precheck_ports(&cfg.ports)?;
    install_signal_handlers()?;

    let (dir, _lock) = RunDir::create(&cfg.rundir)?;
    let mut inst = Instance { cfg, dir, qemu, volume: volume_path, origin: None, vm: None };
    let mut result = inst.run(name, &args.command);
    if let (Err(_), Some(sig)) = (&result, interrupted()) {
        // Stopped while booting (`docker stop`, ^C): no fault, the shell's status.
        eprintln!("{name}: signal {sig} while the VM booted; stopping it");
        result = Ok(128 + sig);
    }
    let stopped = inst.stop(name);
    inst.cleanup();
    match (result, stopped) {
        (Ok(status), Ok(())) => Ok(status),
        (Ok(_), Err(e)) | (Err(e), _) => Err(e),
    }
}

/// A DIQID_PORTS port that is taken would make QEMU fail; say so before we start.
fn precheck_ports(ports: &[Static]) -> Result<(), Error> {
    for s in ports {
        if !ports::can_bind(s.proto, s.addr, s.port) {
            return Err(Error::Usage(format!(
                "DIQID_PORTS: the outer port {}:{}/{} is in use or may not be bound here; free it or choose another",
                s.addr, s.port, s.proto
            )));
        }
    }
    Ok(())
}

fn install_signal_handlers() -> Result<(), Error> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP, SIGQUIT]).ctx(|| "cannot install signal handlers".into())?;
    let tty = std::io::stdin().is_terminal();
    std::thread::spawn(move || {
        for sig in signals.forever() {
            let pid = CMD_PID.load(Ordering::SeqCst);
            // A terminal already sent SIGINT and SIGQUIT to CMD, which shares its group.
            let from_tty = tty && (sig == SIGINT || sig == SIGQUIT);
            if pid > 0 {
                if !from_tty {
                    unsafe { libc::kill(pid, sig) };
                }
            } else {
                LAST_SIGNAL.store(sig, Ordering::SeqCst);
                SIGNALS.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    Ok(())
}

fn interrupted() -> Option<i32> {
    (SIGNALS.load(Ordering::SeqCst) > 0).then(|| LAST_SIGNAL.load(Ordering::SeqCst))
}

struct Instance {
    cfg: StartConfig,
    dir: RunDir,
    qemu: PathBuf,
    volume: PathBuf,
    origin: Option<Origin>,
    vm: Option<Running>,
}

/// A QEMU process and its end of the control channel.
struct Running {
    child: Child,
    control: UnixStream,
    events: Receiver<Guest>,
    hello: bool,
    ready: bool,
    failed: Option<String>,
    exit: Option<String>,
}

impl Running {
    /// Takes in what the guest said since the last call.
    fn pump(&mut self) {
        while let Ok(ev) = self.events.try_recv() {
            match ev {
                Guest::Hello => self.hello = true,
                Guest::Ready => self.ready = true,
                Guest::Fail(why) => self.failed = Some(why),
                Guest::Phase(..) | Guest::Ports(_) | Guest::Alive | Guest::Bye => {}
            }
        }
    }

    /// Why the VM can no longer serve, once that is so: QEMU is gone, or the guest
    /// said `fail` (dockerd or containerd died, ...).
    fn fault(&mut self, dir: &RunDir) -> Option<String> {
        self.pump();
        self.gone(dir).or_else(|| self.failed.clone())
    }

    /// Why QEMU is gone, once it is.
    fn gone(&mut self, dir: &RunDir) -> Option<String> {
        if self.exit.is_none() {
            if let Ok(Some(status)) = self.child.try_wait() {
                let log = std::fs::read_to_string(dir.qemu_log()).unwrap_or_default();
                let log: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
                let log = log[log.len().saturating_sub(5)..].join("\n");
                let mut why = if log.is_empty() { format!("QEMU exited ({status})") } else { format!("QEMU exited ({status}): {log}") };
                if let Some(panic) = dir.console_panic() {
                    why = format!("{why}: the guest kernel panicked: {panic}");
                }
                self.exit = Some(why);
            }
        }
        self.exit.clone()
    }
}

impl Instance {
    fn run(&mut self, name: &str, command: &[String]) -> Result<i32, Error> {
        let started = Instant::now();
        self.origin = Some(volume::ensure(&self.volume, &self.cfg.volume)?);
        tls::generate(&self.dir.tls())?;
        let cache = initramfs::default_cache_dir().filter(|d| std::fs::create_dir_all(d).is_ok()).unwrap_or_else(|| self.dir.path.clone());
        let initrd = initramfs::get(&self.cfg.kernel, &cache)?;
        let key = initramfs::kernel_key(&self.cfg.kernel)?;
        let kernel = vmlinux::get(&self.cfg.kernel.image, &self.cfg.kernel.version, key, &cache).unwrap_or_else(|| self.cfg.kernel.image.clone());
        let port = free_port()?;
        self.dir.set_state(&State::Booting)?;

        let accel = match self.cfg.accel {
            Accel::Auto if qemu::kvm_openable() => Accel::Auto,
            Accel::Auto => Accel::Tcg,
            a => a,
        };
        if accel == Accel::Auto {
            // A KVM that hung the guest once on this boot of the machine, with this
            // QEMU and kernel, will again: remember it rather than pay the probe.
            let verdict = cache.join(format!("kvm-hangs-{:016x}", kvm_key(&self.qemu, key)));
            if verdict.exists() {
                eprintln!("{name}: KVM hung the guest earlier since this machine booted; using TCG (remove {} to probe again)", verdict.display());
                self.vm = Some(self.spawn(Accel::Tcg, &kernel, &initrd, port, started)?);
            } else {
                self.vm = Some(self.spawn(Accel::Kvm, &kernel, &initrd, port, started)?);
                if !self.probe_kvm() {
                    eprintln!("{name}: KVM opens but the guest does not start under it within {} s; using TCG", KVM_PROBE.as_secs());
                    self.kill();
                    if interrupted().is_none() {
                        let _ = std::fs::write(&verdict, "");
                    }
                    self.vm = Some(self.spawn(Accel::Tcg, &kernel, &initrd, port, started)?);
                }
            }
        } else {
            self.vm = Some(self.spawn(accel, &kernel, &initrd, port, started)?);
        }

        let dir = &self.dir;
        let vm = self.vm.as_mut().expect("spawned");
        let booted = wait_for(dir, "QEMU", self.cfg.qemu_timeout_start, || {
            vm.pump();
            if let Some(s) = interrupted() {
                return Poll::Dead(format!("interrupted by signal {s}"));
            }
            match vm.gone(dir) {
                Some(why) => Poll::Dead(why),
                None if vm.hello => Poll::Done,
                None => Poll::Pending,
            }
        });
        if let Err(e) = booted {
            return Err(self.volume_in_use().unwrap_or(e));
        }
        let dir = &self.dir;
        let vm = self.vm.as_mut().expect("spawned");
        wait_for(dir, "dockerd", self.cfg.docker_timeout_start, || {
            if let Some(s) = interrupted() {
                return Poll::Dead(format!("interrupted by signal {s}"));
            }
            if let Some(why) = vm.fault(dir) {
                return Poll::Dead(why);
            }
            if vm.ready {
                Poll::Done
            } else {
                Poll::Pending
            }
        })?;
        let env = [
            ("DOCKER_HOST".to_string(), format!("tcp://127.0.0.1:{port}")),
            ("DOCKER_TLS_VERIFY".to_string(), "1".to_string()),
            ("DOCKER_CERT_PATH".to_string(), dir.tls().join("client").to_string_lossy().to_string()),
        ];
        let text: String = env.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        dir.write("docker.env", &text)?;
        dir.set_state(&State::Ready)?;
        // CMD may run the docker shim or diqid-wait itself: they find this instance.
        let mut cmd_env = env.to_vec();
        cmd_env.push(("DIQID_RUNDIR".into(), dir.path.to_string_lossy().to_string()));
        self.run_command(name, command, &cmd_env)
    }

    /// QEMU's image locking keeps a second VM off a volume; say so in our words.
    fn volume_in_use(&self) -> Option<Error> {
        let log = std::fs::read_to_string(self.dir.qemu_log()).unwrap_or_default();
        log.contains("Failed to get \"write\" lock").then(|| {
            Error::Usage(format!(
                "the volume {} is in use by another VM (QEMU holds a lock on it); give each instance its own DOCKER_VOLUME_FILE",
                self.volume.display()
            ))
        })
    }

    /// Under auto, with a /dev/kvm that opens: true once the guest's init says hello.
    fn probe_kvm(&mut self) -> bool {
        let deadline = Instant::now() + KVM_PROBE;
        let vm = self.vm.as_mut().expect("spawned");
        while Instant::now() < deadline && interrupted().is_none() {
            vm.pump();
            if vm.hello {
                return true;
            }
            if vm.gone(&self.dir).is_some() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn spawn(&self, accel: Accel, kernel: &Path, initrd: &Path, port: u16, started: Instant) -> Result<Running, Error> {
        for s in [self.dir.qmp(), self.dir.console(), self.dir.control()] {
            let _ = std::fs::remove_file(s);
        }
        let listener = UnixListener::bind(self.dir.control()).ctx(|| format!("cannot listen on {}", self.dir.control().display()))?;
        let vm = Vm {
            accel,
            memory: self.cfg.memory,
            cpus: self.cfg.cpus_for(accel),
            kernel,
            initrd,
            volume: &self.volume,
            rundir: &self.dir,
            docker_port: port,
            ports: &self.cfg.ports,
        };
        let log = std::fs::File::create(self.dir.qemu_log()).ctx(|| "cannot create qemu.log".into())?;
        let mut cmd = Command::new(&self.qemu);
        cmd.args(vm.args()).stdin(Stdio::null()).stdout(log.try_clone().ctx(|| "qemu.log".into())?).stderr(log);
        // Its own process group keeps a terminal's ^C away from QEMU; the death signal
        // takes it down with us, even when we are killed without a chance to clean up.
        cmd.process_group(0);
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().ctx(|| format!("cannot start {}", self.qemu.display()))?;
        QEMU_PID.store(child.id() as i32, Ordering::SeqCst);
        std::fs::write(self.dir.qemu_pid(), format!("{}\n", child.id())).ctx(|| "cannot write qemu.pid".into())?;

        // QEMU connects to the control socket while it starts up.
        listener.set_nonblocking(true).ctx(|| "control socket".into())?;
        let deadline = Instant::now() + self.cfg.qemu_timeout_start;
        let control = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return fail(format!("control socket: {e}")),
            }
            if let Ok(Some(status)) = child.try_wait() {
                if let Some(e) = self.volume_in_use() {
                    return Err(e);
                }
                let log = std::fs::read_to_string(self.dir.qemu_log()).unwrap_or_default();
                return fail(format!("QEMU exited at once ({status}): {}", log.trim()));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return fail("QEMU did not connect to the control channel");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        control.set_nonblocking(false).ctx(|| "control socket".into())?;
        let (tx, events) = mpsc::channel();
        let reader = control.try_clone().ctx(|| "control socket".into())?;
        let phases = self.dir.phases();
        let mut log = std::fs::OpenOptions::new().create(true).append(true).open(phases).ok();
        if let Some(f) = log.as_mut() {
            let _ = writeln!(f, "qemu-{} host={:.3}", if accel == Accel::Kvm { "kvm" } else { "tcg" }, started.elapsed().as_secs_f64());
        }
        let mut forwards = Forwards { qmp: self.dir.qmp(), fixed: self.cfg.ports.clone(), current: BTreeSet::new(), warned: BTreeSet::new() };
        let dir = RunDir::at(&self.dir.path);
        reader.set_read_timeout(Some(Duration::from_secs(1))).ctx(|| "control socket".into())?;
        std::thread::spawn(move || {
            let mut reader = BufReader::new(reader);
            let mut buf = Vec::new();
            let mut heard = Instant::now();
            let mut hello = false;
            let mut silent = false;
            loop {
                // A timeout leaves what was read of a line in `buf`; the next call goes on.
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) => break,
                    Ok(_) if !buf.ends_with(b"\n") => break,
                    Ok(_) => {}
                    Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                        // The guest says `alive` every two seconds: silence means it hangs.
                        if hello && !silent && heard.elapsed() >= SILENCE {
                            silent = true;
                            eprintln!("{}", with_console(&dir, &format!("diqid-start: warning: the VM has said nothing for {} s; its kernel or init may hang", SILENCE.as_secs())));
                        }
                        continue;
                    }
                    Err(_) => break,
                }
                let line = String::from_utf8_lossy(&buf).to_string();
                buf.clear();
                if silent {
                    eprintln!("diqid-start: the VM answers again, after {} s", heard.elapsed().as_secs());
                    silent = false;
                }
                heard = Instant::now();
                let Some(ev) = Guest::parse(&line) else { continue };
                hello |= ev == Guest::Hello;
                if let Guest::Ports(want) = &ev {
                    forwards.apply(want);
                    continue;
                }
                if let (Guest::Phase(name, secs), Some(f)) = (&ev, log.as_mut()) {
                    let _ = writeln!(f, "{name} guest={secs:.3} host={:.3}", started.elapsed().as_secs_f64());
                }
                if ev != Guest::Alive && tx.send(ev).is_err() {
                    break;
                }
            }
        });
        Ok(Running { child, control, events, hello: false, ready: false, failed: None, exit: None })
    }

    fn run_command(&mut self, name: &str, command: &[String], env: &[(String, String)]) -> Result<i32, Error> {
        if std::process::id() == 1 {
            // Started only now: before, our own helpers (qemu-img, openssl) must reap theirs.
            std::thread::spawn(reap_orphans);
        }
        let mut cmd = match command.split_first() {
            Some((prog, rest)) => {
                let mut c = Command::new(prog);
                c.args(rest);
                c
            }
            None if std::io::stdin().is_terminal() => Command::new(std::env::var("SHELL").ok().filter(|s| !s.is_empty()).unwrap_or_else(|| "/bin/sh".into())),
            None => return self.serve(name),
        };
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        let spawning = SPAWN.lock().unwrap_or_else(|e| e.into_inner());
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                eprintln!("{name}: {}: command not found", command[0]);
                return Ok(127);
            }
            Err(e) => {
                eprintln!("{name}: cannot run {}: {e}", command[0]);
                return Ok(126);
            }
        };
        CMD_PID.store(child.id() as i32, Ordering::SeqCst);
        drop(spawning);
        let status = child.wait();
        CMD_PID.store(0, Ordering::SeqCst);
        let status = status.ctx(|| "waiting for the command".into())?;
        if let Some(why) = self.vm.as_mut().and_then(|vm| vm.fault(&self.dir)) {
            eprintln!("{name}: the VM failed while the command ran: {}", with_console(&self.dir, &why));
        }
        Ok(status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
    }

    /// No CMD and no terminal: keep the VM up until a signal comes or QEMU goes.
    fn serve(&mut self, name: &str) -> Result<i32, Error> {
        eprintln!("{name}: serving; DOCKER_HOST and the rest are in {}", self.dir.docker_env().display());
        let vm = self.vm.as_mut().expect("running");
        loop {
            if let Some(sig) = interrupted() {
                eprintln!("{name}: signal {sig}, stopping");
                return Ok(0);
            }
            if let Some(why) = vm.fault(&self.dir) {
                return fail(with_console(&self.dir, &why));
            }
            if !self.dir.file("lock").exists() {
                return fail(format!("the runtime directory {} vanished; stopping the VM", self.dir.path.display()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Asks the guest to power off; kills QEMU if it overstays QEMU_TIMEOUT_STOP.
    fn stop(&mut self, name: &str) -> Result<(), Error> {
        let Some(vm) = self.vm.as_mut() else { return Ok(()) };
        if vm.gone(&self.dir).is_some() {
            return Ok(());
        }
        let _ = self.dir.set_state(&State::Stopping);
        // A guest stopped while it boots runs no container yet: it gets a few seconds
        // to unmount the volume, so that `docker stop` (ten seconds) never has to kill.
        let timeout = if vm.ready { self.cfg.qemu_timeout_stop } else { self.cfg.qemu_timeout_stop.min(STOP_WHILE_BOOTING) };
        let guest_budget = timeout.as_secs().saturating_sub(2).max(1);
        let asked = vm.control.write_all(Host::Shutdown(guest_budget).line().as_bytes()).is_ok();
        let signals_before = SIGNALS.load(Ordering::SeqCst);
        let deadline = Instant::now() + timeout;
        while asked && Instant::now() < deadline {
            // A signal while we stop (the second one, when the first began the stop)
            // skips the graceful part.
            if SIGNALS.load(Ordering::SeqCst) > signals_before {
                eprintln!("{name}: signal during shutdown; stopping QEMU now");
                self.kill();
                return Ok(());
            }
            if let Ok(Some(_)) = vm.child.wait_timeout(Duration::from_millis(50)) {
                return Ok(());
            }
        }
        eprintln!("{name}: the VM did not power off within {} s; stopping QEMU", timeout.as_secs());
        if let Ok(mut q) = Qmp::connect(&self.dir.qmp(), Duration::from_secs(1)) {
            let _ = q.execute("quit", None);
        }
        if !matches!(vm.child.wait_timeout(Duration::from_secs(2)), Ok(Some(_))) {
            self.kill();
        }
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut vm) = self.vm.take() {
            let _ = vm.child.kill();
            let _ = vm.child.wait();
        }
    }

    fn cleanup(&mut self) {
        self.kill();
        if let Some(origin) = self.origin {
            if volume::should_remove(origin, self.cfg.volume.remove) {
                let _ = std::fs::remove_file(&self.volume);
            }
        }
        self.dir.remove();
    }
}

/// Keeps QEMU's forwards from the outer loopback equal to the ports that the guest's
/// dockerd publishes (the guest sends the whole set whenever it changes).
struct Forwards {
    qmp: PathBuf,
    /// DIQID_PORTS: already forwarded, from every outer address.
    fixed: Vec<Static>,
    current: BTreeSet<Published>,
    /// Wanted but not forwarded, and said so once.
    warned: BTreeSet<Published>,
}

impl Forwards {
    fn apply(&mut self, want: &[Published]) {
        let want: BTreeSet<Published> = want.iter().filter(|p| !self.fixed.iter().any(|s| s.proto == p.proto && s.port == p.port)).copied().collect();
        self.warned.retain(|p| want.contains(p));
        if want == self.current {
            return;
        }
        let mut qmp = match Qmp::connect(&self.qmp, Duration::from_secs(2)) {
            Ok(q) => q,
            Err(e) => return eprintln!("diqid-start: cannot change the published ports: QMP: {e}"),
        };
        let (gone, new): (Vec<Published>, Vec<Published>) =
            (self.current.difference(&want).copied().collect(), want.difference(&self.current).copied().collect());
        for p in gone {
            let _ = qmp.human(&format!("hostfwd_remove {NETDEV} {}", p.hostfwd_key()));
            self.current.remove(&p);
        }
        for p in new {
            match qmp.human(&format!("hostfwd_add {NETDEV} {}", p.hostfwd())) {
                Ok(reply) if reply.trim().is_empty() => {
                    self.current.insert(p);
                }
                reply if self.warned.insert(p) => {
                    let why = match reply {
                        _ if !ports::can_bind(p.proto, Ipv4Addr::LOCALHOST, p.port) => "the port is in use on this side".to_string(),
                        Ok(text) => text.trim().to_string(),
                        Err(e) => e.to_string(),
                    };
                    eprintln!("diqid-start: warning: a container publishes {}, but 127.0.0.1:{} cannot forward to it: {why}", p.word(), p.port);
                }
                _ => {}
            }
        }
    }
}

/// As a container's PID 1 we inherit every orphan: reap those that are not our own
/// children (CMD and QEMU are waited for by their owners). `WNOWAIT` peeks first.
fn reap_orphans() {
    let ours = |pid: i32| pid == CMD_PID.load(Ordering::SeqCst) || QEMU_PID.load(Ordering::SeqCst) == pid;
    loop {
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::waitid(libc::P_ALL, 0, &mut info, libc::WEXITED | libc::WNOWAIT) };
        if rc != 0 {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        let pid = unsafe { info.si_pid() };
        let _spawning = SPAWN.lock().unwrap_or_else(|e| e.into_inner());
        if ours(pid) || pid == 0 {
            drop(_spawning);
            std::thread::sleep(Duration::from_millis(50)); // its owner reaps it
            continue;
        }
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
    }
}

/// Identifies this boot of the machine, this QEMU and this guest kernel.
fn kvm_key(qemu: &Path, kernel_key: u64) -> u64 {
    use std::hash::{Hash, Hasher};
    use std::os::unix::fs::MetadataExt;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default().hash(&mut h);
    if let Ok(m) = std::fs::metadata(qemu) {
        (m.len(), m.mtime(), m.ino()).hash(&mut h);
    }
    kernel_key.hash(&mut h);
    h.finish()
}

/// A loopback port that is free now, for the docker API forward.
fn free_port() -> Result<u16, Error> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").ctx(|| "cannot find a free loopback port".into())?;
    Ok(l.local_addr().ctx(|| "cannot find a free loopback port".into())?.port())
}
