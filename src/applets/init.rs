//! diqid-init: PID 1 inside the VM. Stage one runs from the initramfs: load the
//! modules, mount the outer root over 9p, switch to it. Stage two, in the same process,
//! makes the guest-local parts, brings up the network and the volume, starts dockerd,
//! reaps zombies, and powers off when the host asks over the control channel.

use crate::applets::runc;
use crate::control::{self, Guest, Host};
use crate::error::{parse_args, Error};
use crate::initramfs::MODULE_DIR;
use crate::dockerd::{self, OUTER_LOOPBACK};
use crate::ports;
use crate::qemu::{ROOT_TAG, USR_TAG};
use argh::FromArgs;
use std::ffi::CString;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// PID 1 of the DiQiD VM; the initramfs runs it as /init. Not for use elsewhere.
#[derive(FromArgs)]
struct Args {}

const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const VOLUME_DEVICE: &str = "/dev/vda";
const DOCKER_ROOT: &str = "/var/lib/docker";
/// Temporary files of dockerd and what it runs: in the VM, not in the outer /tmp.
const GUEST_TMP: &str = "/run/diqid/tmp";
/// The network QEMU's user-mode stack gives the guest.
const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
const NETMASK: Ipv4Addr = Ipv4Addr::new(255, 255, 255, 0);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
const DNS: &str = "10.0.2.3";

/// A daemon PID 1 starts and watches: its pid while it runs, its exit status once it
/// is gone (set by the reaper), and its log.
struct Daemon {
    name: &'static str,
    log: &'static str,
    pid: AtomicI32,
    exit: AtomicI32,
}

static CONTAINERD: Daemon = Daemon::new("containerd", "/run/diqid/containerd.log");
static DOCKERD: Daemon = Daemon::new("dockerd", "/run/diqid/dockerd.log");

impl Daemon {
    const fn new(name: &'static str, log: &'static str) -> Daemon {
        Daemon { name, log, pid: AtomicI32::new(0), exit: AtomicI32::new(i32::MIN) }
    }

    /// Starts it with its output in its log; the reaper collects it.
    fn spawn(&self, cmd: &mut Command) -> Result<(), String> {
        let log = File::create(self.log).map_err(|e| format!("{}: {e}", self.log))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e} (is docker.io installed?)", self.name))?;
        self.pid.store(child.id() as i32, Ordering::SeqCst);
        std::mem::forget(child);
        Ok(())
    }

    fn exited(&self) -> Option<i32> {
        let s = self.exit.load(Ordering::SeqCst);
        (s != i32::MIN).then_some(s)
    }

    /// Why it ended, for the host: its status and the last line it logged.
    fn ended(&self, when: &str) -> String {
        let last = fs::read_to_string(self.log).ok().and_then(|l| l.lines().rev().find(|l| !l.trim().is_empty()).map(str::to_string));
        let why = last.map_or(String::new(), |l| format!(": {l}"));
        format!("{} exited with status {}{when}{why}", self.name, self.exited().unwrap_or(-1))
    }

    /// The end of its log, onto the console, where the host shows it.
    fn show_log(&self) {
        let log = fs::read_to_string(self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        for l in &lines[lines.len().saturating_sub(10)..] {
            eprintln!("{}: {l}", self.name);
        }
    }
}

/// The daemon of the two that has died, if one has.
fn dead_daemon() -> Option<&'static Daemon> {
    [&DOCKERD, &CONTAINERD].into_iter().find(|d| d.exited().is_some())
}

/// Set by the reaper when PID 1 has no children left.
static NO_CHILDREN: AtomicBool = AtomicBool::new(false);

type Channel = Arc<Mutex<File>>;

pub fn main(name: &str, args: &[String]) -> Result<i32, Error> {
    let _: Args = parse_args(name, args)?;
    if std::process::id() != 1 {
        return Err(Error::Usage("diqid-init is the VM's PID 1 and runs only there (the initramfs starts it as /init)".into()));
    }
    std::env::set_var("PATH", PATH);
    let mut channel = None;
    if let Err(e) = boot(&mut channel) {
        eprintln!("diqid-init: {e}");
        if let Some(c) = &channel {
            send(c, &Guest::Fail(e));
        }
        std::thread::sleep(Duration::from_secs(1));
        power_off();
    }
    reap_forever()
}

fn boot(channel: &mut Option<Channel>) -> Result<(), String> {
    // Stage one: from the initramfs.
    mount("proc", "/proc", "proc", 0, "")?;
    mount("sysfs", "/sys", "sysfs", 0, "")?;
    mount("devtmpfs", "/dev", "devtmpfs", 0, "")?;
    load_modules(&module_files("boot")?)?;
    let late = module_files("late")?;
    let c = open_channel()?;
    send(&c, &Guest::Hello);
    let beat = c.clone();
    std::thread::spawn(move || loop {
        std::thread::sleep(control::HEARTBEAT);
        send(&beat, &Guest::Alive);
    });
    phase(&c, "modules");
    *channel = Some(c.clone());
    mount_root()?;
    switch_root()?;
    phase(&c, "root");

    // Stage two: in the outer root, keeping every write of ours inside the VM.
    let rundir = kernel_arg("diqid.rundir").ok_or("no diqid.rundir= on the kernel command line")?;
    // What dockerd's networking needs loads meanwhile (the files are open already).
    let loader = std::thread::spawn(move || load_modules(&late));
    mount_usr()?;
    guest_local_mounts()?;
    phase(&c, "mounts");
    network()?;
    phase(&c, "network");
    volume()?;
    phase(&c, "volume");
    start_containerd()?;
    phase(&c, "containerd-started");
    loader.join().map_err(|_| "the module loader panicked".to_string())??;
    phase(&c, "modules-late");
    start_dockerd(&rundir)?;
    phase(&c, "dockerd-started");
    let pinger = c.clone();
    std::thread::spawn(move || wait_ready(&pinger));
    let commands = c.clone();
    std::thread::spawn(move || serve_channel(&commands));
    Ok(())
}

fn uptime() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

fn send(c: &Channel, msg: &Guest) {
    if let Ok(mut f) = c.lock() {
        let _ = f.write_all(msg.line().as_bytes());
    }
}

fn phase(c: &Channel, name: &str) {
    send(c, &Guest::Phase(name.into(), uptime()));
}

fn cstr(s: &str) -> CString {
    CString::new(s).expect("no NUL in paths")
}

fn mount(src: &str, target: &str, fstype: &str, flags: libc::c_ulong, data: &str) -> Result<(), String> {
    let (s, t, f, d) = (cstr(src), cstr(target), cstr(fstype), cstr(data));
    let data_ptr = if data.is_empty() { std::ptr::null() } else { d.as_ptr() as *const libc::c_void };
    if unsafe { libc::mount(s.as_ptr(), t.as_ptr(), f.as_ptr(), flags, data_ptr) } != 0 {
        return Err(format!("mount {fstype} {src} on {target}: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

fn move_mount(from: &str, to: &str) -> Result<(), String> {
    mount(from, to, "", libc::MS_MOVE, "")
}

/// The module files of one group of the initramfs, opened, in load order.
fn module_files(group: &str) -> Result<Vec<(String, File)>, String> {
    let dir = format!("/{MODULE_DIR}/{group}");
    let mut names: Vec<_> = fs::read_dir(&dir).map_err(|e| format!("{dir}: {e}"))?.flatten().map(|e| e.path()).collect();
    names.sort();
    names.iter().map(|p| File::open(p).map(|f| (p.display().to_string(), f)).map_err(|e| format!("{}: {e}", p.display()))).collect()
}

fn load_modules(files: &[(String, File)]) -> Result<(), String> {
    for (name, file) in files {
        let rc = unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), c"".as_ptr(), 0) };
        let err = std::io::Error::last_os_error();
        if rc != 0 && err.raw_os_error() != Some(libc::EEXIST) {
            return Err(format!("loading {name}: {err}"));
        }
    }
    Ok(())
}

/// Polls `f` until it gives a value or `limit` passes.
fn retry<T>(limit: Duration, mut f: impl FnMut() -> Result<T, String>) -> Result<T, String> {
    let deadline = Instant::now() + limit;
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn open_channel() -> Result<Channel, String> {
    let dev = retry(Duration::from_secs(5), || {
        for e in fs::read_dir("/sys/class/virtio-ports").map_err(|e| e.to_string())?.flatten() {
            if fs::read_to_string(e.path().join("name")).is_ok_and(|n| n.trim() == control::PORT_NAME) {
                return Ok(Path::new("/dev").join(e.file_name()));
            }
        }
        Err(format!("no virtio port named {}", control::PORT_NAME))
    })?;
    let f = retry(Duration::from_secs(2), || fs::OpenOptions::new().read(true).write(true).open(&dev).map_err(|e| format!("{}: {e}", dev.display())))?;
    Ok(Arc::new(Mutex::new(f)))
}

/// The shared root is uncached (`cache=mmap`): what users write through bind mounts
/// reaches the outer side at once, and outer changes show at once.
fn mount_root() -> Result<(), String> {
    retry(Duration::from_secs(5), || mount(ROOT_TAG, "/newroot", "9p", 0, "trans=virtio,version=9p2000.L,msize=512000,cache=mmap"))
}

/// /usr comes read-only over a second 9p device with the page cache on
/// (`cache=loose`): every binary and library the guest runs lives there, and
/// re-reading them over 9p at each exec is what made dockerd slow to start.
fn mount_usr() -> Result<(), String> {
    mount(USR_TAG, "/usr", "9p", libc::MS_RDONLY, "trans=virtio,version=9p2000.L,msize=512000,cache=loose")
}

/// Like switch_root(8): free the initramfs, make /newroot the root, keep this process.
fn switch_root() -> Result<(), String> {
    let _ = fs::remove_file("/init");
    let _ = fs::remove_dir_all(format!("/{MODULE_DIR}"));
    for m in ["/dev", "/proc", "/sys"] {
        move_mount(m, &format!("/newroot{m}"))?;
    }
    std::env::set_current_dir("/newroot").map_err(|e| format!("chdir /newroot: {e}"))?;
    move_mount(".", "/")?;
    std::os::unix::fs::chroot(".").map_err(|e| format!("chroot: {e}"))?;
    std::env::set_current_dir("/").map_err(|e| format!("chdir /: {e}"))
}

fn kernel_arg(key: &str) -> Option<String> {
    let cmdline = fs::read_to_string("/proc/cmdline").ok()?;
    cmdline.split_whitespace().find_map(|w| w.strip_prefix(key)?.strip_prefix('=').map(str::to_string))
}

fn mkdir(p: &str) -> Result<(), String> {
    fs::create_dir_all(p).map_err(|e| format!("mkdir {p}: {e}"))
}

/// Replaces a file of the guest's overlays. Removing it first means no copy-up, which
/// would read the outer file (unreadable when QEMU runs as an ordinary user) and would
/// write through a symlink such as /etc/resolv.conf.
/// The new file keeps the old one's mode (0640 for /etc/shadow).
fn write(p: &str, contents: &str) -> Result<(), String> {
    let mode = fs::metadata(p).ok().map(|m| m.permissions());
    let _ = fs::remove_file(p);
    fs::write(p, contents).map_err(|e| format!("write {p}: {e}"))?;
    match mode {
        Some(m) => fs::set_permissions(p, m).map_err(|e| format!("chmod {p}: {e}")),
        None => Ok(()),
    }
}

/// Everything the guest's daemons write lives in the VM: /run, /dev, and overlays
/// with a tmpfs upper layer on /etc, /var/lib and /var/log (login's records).
fn guest_local_mounts() -> Result<(), String> {
    let nosuid = libc::MS_NOSUID | libc::MS_NODEV;
    mount("tmpfs", "/run", "tmpfs", nosuid, "mode=755")?;
    mkdir("/dev/pts")?;
    mount("devpts", "/dev/pts", "devpts", libc::MS_NOSUID | libc::MS_NOEXEC, "gid=5,mode=620,ptmxmode=666")?;
    mkdir("/dev/shm")?;
    mount("tmpfs", "/dev/shm", "tmpfs", nosuid, "mode=1777")?;
    mount("cgroup2", "/sys/fs/cgroup", "cgroup2", nosuid | libc::MS_NOEXEC, "")?;
    for dir in ["/etc", "/var/lib", "/var/log"] {
        let base = format!("/run/diqid/overlay{}", dir.replace('/', "-"));
        mkdir(&format!("{base}/upper"))?;
        mkdir(&format!("{base}/work"))?;
        mount("overlay", dir, "overlay", 0, &format!("lowerdir={dir},upperdir={base}/upper,workdir={base}/work"))?;
    }
    write("/etc/hostname", "diqid\n")?;
    write("/etc/hosts", &format!("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\tdiqid\n{OUTER_LOOPBACK}\thost.docker.internal\n"))?;
    write("/etc/resolv.conf", &format!("nameserver {DNS}\n"))?;
    console_login_files()?;
    let host = b"diqid";
    if unsafe { libc::sethostname(host.as_ptr() as *const libc::c_char, host.len()) } != 0 {
        return Err(format!("sethostname: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

const ROOT_HOME: &str = "/run/diqid/root";
const MOTD: &str = include_str!("../../guest/motd");

/// Root logs in on the console without a password, in the guest's /etc only, and
/// with a home in the VM so that a shell's history never lands in the outer /root.
fn console_login_files() -> Result<(), String> {
    let read = |path: &str| fs::read_to_string(path).map_err(|e| format!("{path}: {e}"));
    let edit = |path: &str, text: String, f: &dyn Fn(&str) -> String| -> Result<(), String> {
        let out: String = text.lines().map(|l| if l.starts_with("root:") { f(l) } else { l.to_string() } + "\n").collect();
        write(path, &out)
    };
    // An outer /etc/shadow that QEMU may not read (it runs as an ordinary user) is
    // replaced by one with every account locked but root's.
    let shadow = read("/etc/shadow").or_else(|_| read("/etc/passwd").map(|p| locked_shadow(&p)))?;
    edit("/etc/shadow", shadow, &|l| root_without_password(l))?;
    edit("/etc/passwd", read("/etc/passwd")?, &|l| root_home(l, ROOT_HOME))?;
    mkdir(ROOT_HOME)?;
    write("/etc/motd", MOTD)
}

/// A shadow file for the accounts of `passwd`, each with its password locked.
pub fn locked_shadow(passwd: &str) -> String {
    passwd.lines().filter_map(|l| l.split(':').next().filter(|n| !n.is_empty())).map(|n| format!("{n}:*:1:0:99999:7:::\n")).collect()
}

/// `root:HASH:rest` -> `root::rest`.
pub fn root_without_password(line: &str) -> String {
    let mut f: Vec<&str> = line.split(':').collect();
    if f.len() > 1 {
        f[1] = "";
    }
    f.join(":")
}

/// `root:x:0:0:gecos:HOME:shell` with HOME replaced.
pub fn root_home(line: &str, home: &str) -> String {
    let mut f: Vec<&str> = line.split(':').collect();
    if f.len() == 7 {
        f[5] = home;
    }
    f.join(":")
}

static GETTY_PID: AtomicI32 = AtomicI32::new(0);

/// A login prompt on the serial console (`diqid login:`), started again after logout.
fn spawn_getty() {
    let mut cmd = Command::new("agetty");
    cmd.args(["--noclear", "--local-line", "--8bits", "ttyS0", "115200", "xterm"]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    // A session of its own, so that ttyS0 can become the login's controlling terminal
    // (job control); PID 1 holds the console without one.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            libc::setsid();
            Ok(())
        });
    }
    let child = cmd.spawn();
    match child {
        Ok(c) => {
            GETTY_PID.store(c.id() as i32, Ordering::SeqCst);
            std::mem::forget(c);
        }
        Err(e) => eprintln!("diqid-init: no login on the console: agetty: {e}"),
    }
}

fn sockaddr(ip: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: u32::from(ip).to_be() },
        sin_zero: [0; 8],
    };
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn ifreq(name: &str) -> libc::ifreq {
    let mut r: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in r.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    r
}

fn ioctl<T>(fd: i32, req: libc::c_ulong, arg: &mut T, what: &str) -> Result<(), String> {
    if unsafe { libc::ioctl(fd, req as _, arg as *mut T) } != 0 {
        return Err(format!("{what}: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// lo up; eth0 with QEMU user networking's fixed address; a default route.
fn network() -> Result<(), String> {
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        return Err(format!("socket: {}", std::io::Error::last_os_error()));
    }
    let up = |name: &str| -> Result<(), String> {
        let mut r = ifreq(name);
        retry(Duration::from_secs(3), || ioctl(sock, libc::SIOCGIFFLAGS, &mut r, &format!("{name} flags")))?;
        unsafe { r.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
        ioctl(sock, libc::SIOCSIFFLAGS, &mut r, &format!("{name} up"))
    };
    up("lo")?;
    let mut r = ifreq("eth0");
    r.ifr_ifru.ifru_addr = sockaddr(GUEST_IP);
    retry(Duration::from_secs(3), || ioctl(sock, libc::SIOCSIFADDR, &mut r, "eth0 address"))?;
    r.ifr_ifru.ifru_netmask = sockaddr(NETMASK);
    ioctl(sock, libc::SIOCSIFNETMASK, &mut r, "eth0 netmask")?;
    up("eth0")?;
    let mut route: libc::rtentry = unsafe { std::mem::zeroed() };
    route.rt_dst = sockaddr(Ipv4Addr::UNSPECIFIED);
    route.rt_genmask = sockaddr(Ipv4Addr::UNSPECIFIED);
    route.rt_gateway = sockaddr(GATEWAY);
    route.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
    ioctl(sock, libc::SIOCADDRT, &mut route, "default route")?;
    unsafe { libc::close(sock) };
    // The host forwards ports published on the VM's 127.0.0.1 to that address: only
    // QEMU's user network, which forwards only what we ask, can send such packets.
    for conf in ["all", "eth0"] {
        let f = format!("/proc/sys/net/ipv4/conf/{conf}/route_localnet");
        fs::write(&f, "1").map_err(|e| format!("{f}: {e}"))?;
    }
    Ok(())
}

/// What the first blocks of the volume say it holds.
#[derive(Debug, PartialEq)]
pub enum Contents {
    Blank,
    Ext4,
    Other,
}

pub fn identify(head: &[u8]) -> Contents {
    if head.len() > 1081 && head[1080] == 0x53 && head[1081] == 0xEF {
        Contents::Ext4
    } else if head.iter().all(|&b| b == 0) {
        Contents::Blank
    } else {
        Contents::Other
    }
}

/// Mounts the volume on /var/lib/docker, formatting it only when it is blank.
fn volume() -> Result<(), String> {
    let mut head = vec![0u8; 64 << 10];
    let mut dev = retry(Duration::from_secs(5), || File::open(VOLUME_DEVICE).map_err(|e| format!("{VOLUME_DEVICE}: {e}")))?;
    dev.read_exact(&mut head).map_err(|e| format!("reading {VOLUME_DEVICE}: {e}"))?;
    drop(dev);
    match identify(&head) {
        Contents::Ext4 => {}
        Contents::Blank => {
            let out = Command::new("mkfs.ext4")
                .args(["-q", "-F", "-m", "0", "-L", "diqid-docker", "-E", "lazy_itable_init=1,lazy_journal_init=1", VOLUME_DEVICE])
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("mkfs.ext4: {e} (is e2fsprogs installed?)"))?;
            if !out.status.success() {
                return Err(format!("mkfs.ext4 {VOLUME_DEVICE}: {}", String::from_utf8_lossy(&out.stderr).trim()));
            }
        }
        Contents::Other => return Err("the volume holds something that is not an ext4 filesystem; refusing to format it".into()),
    }
    mkdir(DOCKER_ROOT)?;
    // discard: space freed inside goes back to the qcow2 file's host.
    mount(VOLUME_DEVICE, DOCKER_ROOT, "ext4", 0, "discard")
}

/// A daemon's command with the environment both daemons and what they run share.
fn daemon_command(program: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.env("HOME", "/root")
        // Our runc and crun first: they spare every container start a re-execution of
        // dockerd; our shim, the clean-up after it. And the iptables dockerd is to use.
        .env("PATH", format!("{}:{PATH}", runc::BIN_DIR))
        // The guest's /tmp is the outer one, over 9p, where unix sockets cannot be
        // made (the shim's console socket for `docker run -t` is one).
        .env("TMPDIR", GUEST_TMP);
    cmd
}

/// containerd starts first, on its own: had dockerd started it, dockerd's first dial
/// would time out while containerd starts and wait a second before the next.
fn start_containerd() -> Result<(), String> {
    mkdir("/run/diqid")?;
    mkdir(GUEST_TMP)?;
    mkdir(runc::BIN_DIR)?;
    for name in ["runc", "crun", crate::applets::shim::NAME] {
        let wrapper = format!("{}/{name}", runc::BIN_DIR);
        std::os::unix::fs::symlink(runc::SELF, &wrapper).map_err(|e| format!("{wrapper}: {e}"))?;
    }
    // dockerd's iptables: the legacy backend where it is installed. Each of dockerd's
    // ~70 calls at its start then reads one small table, not the whole nft ruleset.
    for (name, legacy) in [("iptables", "/usr/sbin/iptables-legacy"), ("ip6tables", "/usr/sbin/ip6tables-legacy")] {
        if Path::new(legacy).exists() {
            let link = format!("{}/{name}", runc::BIN_DIR);
            std::os::unix::fs::symlink(legacy, &link).map_err(|e| format!("{link}: {e}"))?;
        }
    }
    let config = "/run/diqid/containerd.toml";
    fs::write(config, dockerd::CONTAINERD_CONFIG).map_err(|e| format!("write {config}: {e}"))?;
    CONTAINERD.spawn(daemon_command("containerd").args(["--config", config]))
}

fn start_dockerd(rundir: &str) -> Result<(), String> {
    // Read earlier by diqid-start, which refused a file that does not parse.
    let daemon_json = fs::read_to_string(dockerd::DAEMON_JSON).ok();
    let crun = runc::real_runtime("crun", PATH).is_some();
    let runtimes = dockerd::runtime_args(daemon_json.as_deref(), crun);
    DOCKERD.spawn(daemon_command("dockerd").args(dockerd::args(rundir)).args(runtimes))
}

/// Answers when dockerd answers _ping on its socket, or says why it never will.
fn wait_ready(c: &Channel) {
    let mut containerd_up = false;
    loop {
        if let Some(dead) = dead_daemon() {
            dead.show_log();
            let when = if std::ptr::eq(dead, &DOCKERD) { " before it answered" } else { " before dockerd answered" };
            send(c, &Guest::Fail(dead.ended(when)));
            return;
        }
        if !containerd_up && std::os::unix::net::UnixStream::connect(dockerd::CONTAINERD_SOCKET).is_ok() {
            phase(c, "containerd");
            containerd_up = true;
        }
        if ping() {
            phase(c, "ready");
            send(c, &Guest::Ready);
            spawn_getty();
            let ports = c.clone();
            std::thread::spawn(move || watch_ports(&ports));
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Afterwards, only a death of dockerd or containerd is news.
    let dead = loop {
        match dead_daemon() {
            Some(d) => break d,
            None => std::thread::sleep(Duration::from_millis(200)),
        }
    };
    if !SHUTTING_DOWN.load(Ordering::SeqCst) {
        dead.show_log();
        send(c, &Guest::Fail(dead.ended("")));
    }
}

const DOCKER_SOCKET: &str = "/run/docker.sock";

/// Sends an HTTP/1.0 GET to dockerd's socket, so that the reply ends where the
/// connection does (no chunking). The stream is returned unread.
fn docker_get(uri: &str, timeout: Option<Duration>) -> Option<std::os::unix::net::UnixStream> {
    let mut s = std::os::unix::net::UnixStream::connect(DOCKER_SOCKET).ok()?;
    s.set_read_timeout(timeout).ok()?;
    s.write_all(format!("GET {uri} HTTP/1.0\r\nHost: docker\r\n\r\n").as_bytes()).ok()?;
    Some(s)
}

/// The body of a 200 reply to GET `uri`.
fn docker_body(uri: &str) -> Option<String> {
    let mut reply = String::new();
    docker_get(uri, Some(Duration::from_secs(5)))?.read_to_string(&mut reply).ok()?;
    let (head, body) = reply.split_once("\r\n\r\n")?;
    (head.starts_with("HTTP/1.") && head.lines().next()?.contains(" 200 ")).then(|| body.to_string())
}

fn ping() -> bool {
    docker_body("/_ping").is_some_and(|b| b == "OK")
}

/// Tells the host, whenever it changes, which ports dockerd publishes: the container
/// list is read again at every container event that dockerd reports, and twice more
/// within a second after it, since a `die` can be reported before the list shows it.
/// While nothing is published, only a `start` can change that: the other events are
/// let by, sparing a plain `docker run` four of the five readings (CPU under TCG).
fn watch_ports(c: &Channel) {
    const EVENTS: &str = "/events?filters=%7B%22type%22%3A%5B%22container%22%5D%2C%22event%22%3A%5B%22start%22%2C%22die%22%2C%22stop%22%2C%22destroy%22%5D%7D";
    let mut last = None;
    let update = |last: &mut Option<std::collections::BTreeSet<ports::Published>>| {
        let Some(body) = docker_body("/containers/json") else { return };
        let Ok(list) = serde_json::from_str(&body) else { return };
        let now = ports::published(&list);
        if last.as_ref() != Some(&now) {
            send(c, &Guest::Ports(now.iter().copied().collect()));
            *last = Some(now);
        }
    };
    while DOCKERD.exited().is_none() && !SHUTTING_DOWN.load(Ordering::SeqCst) {
        let Some(mut events) = docker_get(EVENTS, Some(Duration::from_millis(400))) else {
            std::thread::sleep(Duration::from_secs(1));
            continue;
        };
        // Subscribed first, listed second: no start can fall between the two.
        update(&mut last);
        let mut again = 0;
        let mut buf = [0u8; 4096];
        loop {
            match events.read(&mut buf) {
                Ok(0) => break,
                Ok(n) if !starts(&buf[..n]) && last.as_ref().is_some_and(|l| l.is_empty()) => continue,
                Ok(_) => again = 2,
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => match again {
                    0 => continue,
                    _ => again -= 1,
                },
                Err(_) => break,
            }
            update(&mut last);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Whether a read from dockerd's event stream holds a `start` (or the start of one,
/// cut by the read: then it is better read as one).
fn starts(events: &[u8]) -> bool {
    !events.ends_with(b"\n") || events.windows(16).any(|w| w == br#""Action":"start""#)
}

static SHUTTING_DOWN: AtomicBool = AtomicBool::new(false);

fn serve_channel(c: &Channel) {
    let reader = match c.lock().ok().and_then(|f| f.try_clone().ok()) {
        Some(f) => f,
        None => return,
    };
    for line in BufReader::new(reader).lines() {
        let Ok(line) = line else { break };
        if let Some(Host::Shutdown(secs)) = Host::parse(&line) {
            shutdown(c, Duration::from_secs(secs));
        }
    }
}

/// Stops dockerd (which stops its containers), then everything else, then writes the
/// volume out, unmounts it and powers off.
fn shutdown(c: &Channel, budget: Duration) {
    SHUTTING_DOWN.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + budget;
    phase(c, "stopping");
    let pid = DOCKERD.pid.load(Ordering::SeqCst);
    if pid > 0 && DOCKERD.exited().is_none() {
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let dockerd_deadline = deadline.checked_sub(Duration::from_secs(2)).unwrap_or(deadline);
        while DOCKERD.exited().is_none() && Instant::now() < dockerd_deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    for (sig, wait) in [(libc::SIGTERM, Duration::from_millis(1000)), (libc::SIGKILL, Duration::from_millis(500))] {
        NO_CHILDREN.store(false, Ordering::SeqCst);
        unsafe { libc::kill(-1, sig) };
        let until = Instant::now() + wait;
        while !NO_CHILDREN.load(Ordering::SeqCst) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    unsafe { libc::sync() };
    unmount_volume();
    phase(c, "stopped");
    send(c, &Guest::Bye);
    power_off();
}

/// Unmounts /var/lib/docker and what is mounted below it, innermost first; if the
/// volume stays busy, it is at least made read-only so that its journal is clean.
fn unmount_volume() {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let targets: Vec<&str> = mounts.lines().filter_map(|l| l.split_whitespace().nth(1)).filter(|t| t.starts_with(DOCKER_ROOT) || t.starts_with("/run/docker")).collect();
    for t in targets.iter().rev() {
        let _ = unsafe { libc::umount2(cstr(t).as_ptr(), libc::MNT_DETACH) };
    }
    let root = cstr(DOCKER_ROOT);
    if unsafe { libc::umount2(root.as_ptr(), 0) } != 0 {
        let _ = mount(VOLUME_DEVICE, DOCKER_ROOT, "ext4", libc::MS_REMOUNT | libc::MS_RDONLY, "");
    }
}

fn power_off() -> ! {
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// PID 1's other duty: collect every child, dockerd's status included.
fn reap_forever() -> ! {
    let mut last_getty = Instant::now();
    loop {
        let mut status = 0;
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        if pid < 0 {
            NO_CHILDREN.store(true, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        for daemon in [&DOCKERD, &CONTAINERD] {
            if pid == daemon.pid.load(Ordering::SeqCst) {
                let code = if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { 128 + libc::WTERMSIG(status) };
                daemon.exit.store(code, Ordering::SeqCst);
            }
        }
        if pid == GETTY_PID.load(Ordering::SeqCst) && !SHUTTING_DOWN.load(Ordering::SeqCst) {
            // After a logout; the pause keeps a getty that fails at once from spinning.
            if last_getty.elapsed() < Duration::from_secs(2) {
                std::thread::sleep(Duration::from_secs(1));
            }
            last_getty = Instant::now();
            spawn_getty();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_logs_in_without_a_password_and_with_a_home_in_the_vm() {
        assert_eq!(root_without_password("root:$y$j9T$abc:20228:0:99999:7:::"), "root::20228:0:99999:7:::");
        assert_eq!(root_without_password("root:*:1::::::"), "root::1::::::");
        assert_eq!(root_home("root:x:0:0:root:/root:/bin/bash", "/run/diqid/root"), "root:x:0:0:root:/run/diqid/root:/bin/bash");
        assert_eq!(root_home("odd", "/h"), "odd");
    }

    #[test]
    fn an_unreadable_shadow_is_made_from_passwd() {
        let s = locked_shadow("root:x:0:0:root:/root:/bin/bash\nuser:x:1000:1000::/home/user:/bin/sh\n");
        assert_eq!(s, "root:*:1:0:99999:7:::\nuser:*:1:0:99999:7:::\n");
        assert_eq!(root_without_password(s.lines().next().unwrap()), "root::1:0:99999:7:::");
    }

    #[test]
    fn only_a_start_can_publish_a_port() {
        let start = br#"{"status":"start","id":"4f2","from":"b","Type":"container","Action":"start","Actor":{"ID":"4f2"}}"#;
        assert!(starts(&[&start[..], b"\n"].concat()));
        let die = br#"{"status":"die","id":"4f2","Type":"container","Action":"die","Actor":{"ID":"4f2","Attributes":{"exitCode":"0"}}}"#;
        assert!(!starts(&[&die[..], b"\n"].concat()));
        assert!(starts(&die[..40]), "a cut read may be a start");
    }

    #[test]
    fn identifies_what_the_volume_holds() {
        let mut head = vec![0u8; 64 << 10];
        assert_eq!(identify(&head), Contents::Blank);
        head[1080] = 0x53;
        head[1081] = 0xEF;
        assert_eq!(identify(&head), Contents::Ext4);
        head[1080] = 0;
        assert_eq!(identify(&head), Contents::Other);
        let mut xfs = vec![0u8; 64 << 10];
        xfs[..4].copy_from_slice(b"XFSB");
        assert_eq!(identify(&xfs), Contents::Other);
    }
}
