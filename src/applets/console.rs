//! diqid-console: this terminal on the VM's serial console, instead of
//! `socat STDIO,cfmakeraw,rawer,escape=0x1d UNIX:console.sock`.

use crate::config::Env;
use crate::error::{fail, parse_args, Context, Error};
use crate::rundir::RunDir;
use argh::FromArgs;
use std::io::{IsTerminal, Read, Write};
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Attach this terminal to the VM's serial console; log in as root, no password.
/// ^] detaches. Without a terminal on stdin it works as a pipe: input is sent, the
/// console's output printed, and it ends once input ends and the console has been
/// quiet for --drain seconds, or when the VM goes away.
#[derive(FromArgs)]
struct Args {
    /// the console socket (default: DIQID_RUNDIR/console.sock)
    #[argh(option)]
    socket: Option<String>,
    /// the detach key: ^X, 0xNN or none (default ^])
    #[argh(option, default = "String::from(\"^]\")")]
    escape: String,
    /// print what the console has shown since the VM booted, then exit
    #[argh(switch)]
    log: bool,
    /// with --log: keep printing what the console prints, like tail -f
    #[argh(switch)]
    follow: bool,
    /// pipe mode: seconds of quiet after input ends before exiting (default 1)
    #[argh(option, default = "1.0")]
    drain: f64,
}

pub fn main(name: &str, args: &[String]) -> Result<i32, Error> {
    let args: Args = parse_args(name, args)?;
    let escape = parse_escape(&args.escape).ok_or_else(|| Error::Usage(format!("--escape {:?}: use ^X, 0xNN or none (for example --escape '^]')", args.escape)))?;
    if !(0.0..=3600.0).contains(&args.drain) {
        return Err(Error::Usage(format!("--drain {}: use seconds between 0 and 3600 (for example --drain 2)", args.drain)));
    }
    if args.follow && !args.log {
        return Err(Error::Usage("--follow goes with --log (diqid-console --log --follow)".into()));
    }
    let dir = RunDir::at(&Env::from_process().rundir()?);
    if args.log {
        return print_log(&dir, args.follow);
    }
    let socket = args.socket.map(PathBuf::from).unwrap_or_else(|| dir.console());
    let lock_path = PathBuf::from(format!("{}.lock", socket.display()));
    let stream = UnixStream::connect(&socket).map_err(|e| Error::Fail(format!("cannot reach the console at {}: {e}; is a VM running (diqid-start)?", socket.display())))?;
    // A serial line has room for one: a second client would hang, unseen by QEMU.
    let lock = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).ctx(|| format!("cannot open {}", lock_path.display()))?;
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return fail("another diqid-console is attached to this VM; a serial console takes one client at a time");
    }
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        let _raw = RawTerminal::enter(stdin.as_raw_fd())?;
        eprint!("diqid-console: attached; {} detaches\r\n", describe(escape));
        let end = pump(&stream, escape, None)?;
        drop(_raw);
        if end == End::Closed {
            eprintln!("{name}: the console closed (the VM stopped)");
        }
    } else {
        pump(&stream, None, Some(Duration::from_secs_f64(args.drain)))?;
    }
    Ok(0)
}

/// `^]` -> 0x1d, `^a` -> 0x01, `0x1d` -> 0x1d, `none` -> no escape.
pub fn parse_escape(text: &str) -> Option<Option<u8>> {
    if text == "none" {
        return Some(None);
    }
    if let Some(hex) = text.strip_prefix("0x") {
        return u8::from_str_radix(hex, 16).ok().map(Some);
    }
    match text.as_bytes() {
        [b'^', c] if (0x40..=0x7f).contains(&c.to_ascii_uppercase()) => Some(Some(c.to_ascii_uppercase() & 0x1f)),
        _ => None,
    }
}

fn describe(escape: Option<u8>) -> String {
    match escape {
        Some(b) if b < 0x20 => format!("^{}", (b + 0x40) as char),
        Some(b) => format!("0x{b:02x}"),
        None => "nothing".into(),
    }
}

/// The bytes to forward from a chunk of keyboard input, and whether it held the escape.
pub fn split_at_escape(buf: &[u8], escape: Option<u8>) -> (&[u8], bool) {
    match escape.and_then(|e| buf.iter().position(|&b| b == e)) {
        Some(i) => (&buf[..i], true),
        None => (buf, false),
    }
}

#[derive(PartialEq, Debug)]
enum End {
    Escape,
    Closed,
    InputDone,
    Signal,
}

static SIGNALLED: AtomicBool = AtomicBool::new(false);

/// Moves bytes both ways until the escape, the console closing, a signal, or (with
/// `drain`) the end of input followed by that much quiet.
fn pump(stream: &UnixStream, escape: Option<u8>, drain: Option<Duration>) -> Result<End, Error> {
    for sig in [libc::SIGTERM, libc::SIGHUP, libc::SIGINT, libc::SIGQUIT] {
        let _ = unsafe { signal_hook::low_level::register(sig, || SIGNALLED.store(true, Ordering::SeqCst)) };
    }
    let sock = stream.as_raw_fd();
    let mut input_open = true;
    let mut last_output = Instant::now();
    let mut buf = [0u8; 4096];
    let mut out = std::io::stdout();
    let mut conn = stream;
    loop {
        if SIGNALLED.load(Ordering::SeqCst) {
            return Ok(End::Signal);
        }
        if !input_open {
            if let Some(d) = drain {
                if last_output.elapsed() >= d {
                    return Ok(End::InputDone);
                }
            }
        }
        let mut fds = vec![libc::pollfd { fd: sock, events: libc::POLLIN, revents: 0 }];
        if input_open {
            fds.push(libc::pollfd { fd: 0, events: libc::POLLIN, revents: 0 });
        }
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 100) };
        if n < 0 {
            continue; // EINTR: the signal flag is checked at the top
        }
        if fds[0].revents != 0 {
            let got = match conn.read(&mut buf) {
                Ok(0) | Err(_) => return Ok(End::Closed),
                Ok(g) => g,
            };
            out.write_all(&buf[..got]).ctx(|| "writing to stdout".into())?;
            out.flush().ctx(|| "writing to stdout".into())?;
            last_output = Instant::now();
        }
        if input_open && fds[1].revents != 0 {
            let got = read_fd(0, &mut buf);
            if got == 0 {
                input_open = false;
                last_output = Instant::now();
                if drain.is_none() {
                    return Ok(End::InputDone);
                }
                continue;
            }
            let (forward, detach) = split_at_escape(&buf[..got], escape);
            if conn.write_all(forward).is_err() {
                return Ok(End::Closed);
            }
            if detach {
                return Ok(End::Escape);
            }
        }
    }
}

fn read_fd(fd: RawFd, buf: &mut [u8]) -> usize {
    let n = unsafe { libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
    n.max(0) as usize
}

/// The terminal's settings from before raw mode, for every way out (panics too).
static SAVED: Mutex<Option<(RawFd, libc::termios)>> = Mutex::new(None);

/// Raw mode for as long as it lives; dropping it (or a panic) restores the terminal.
pub struct RawTerminal;

impl RawTerminal {
    pub fn enter(fd: RawFd) -> Result<RawTerminal, Error> {
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        if unsafe { libc::tcgetattr(fd, &mut t) } != 0 {
            return fail(format!("cannot read the terminal's settings: {}", std::io::Error::last_os_error()));
        }
        *SAVED.lock().unwrap_or_else(|e| e.into_inner()) = Some((fd, t));
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
        let mut raw = t;
        unsafe { libc::cfmakeraw(&mut raw) };
        if unsafe { libc::tcsetattr(fd, libc::TCSAFLUSH, &raw) } != 0 {
            return fail(format!("cannot put the terminal in raw mode: {}", std::io::Error::last_os_error()));
        }
        Ok(RawTerminal)
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        restore();
    }
}

/// Puts the saved settings back, once.
pub fn restore() {
    if let Some((fd, t)) = SAVED.lock().unwrap_or_else(|e| e.into_inner()).take() {
        unsafe { libc::tcsetattr(fd, libc::TCSAFLUSH, &t) };
    }
}

fn print_log(dir: &RunDir, follow: bool) -> Result<i32, Error> {
    let path = dir.console_log();
    let mut f = std::fs::File::open(&path).map_err(|e| Error::Fail(format!("no console log at {}: {e}; is a VM running (diqid-start)?", path.display())))?;
    let mut out = std::io::stdout();
    let mut buf = [0u8; 8192];
    loop {
        let n = f.read(&mut buf).ctx(|| format!("reading {}", path.display()))?;
        if n > 0 {
            out.write_all(&buf[..n]).ctx(|| "writing to stdout".into())?;
            continue;
        }
        if !follow || !dir.is_live() {
            return Ok(0);
        }
        out.flush().ctx(|| "writing to stdout".into())?;
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_spellings() {
        assert_eq!(parse_escape("^]"), Some(Some(0x1d)));
        assert_eq!(parse_escape("^a"), Some(Some(0x01)));
        assert_eq!(parse_escape("^A"), Some(Some(0x01)));
        assert_eq!(parse_escape("0x1d"), Some(Some(0x1d)));
        assert_eq!(parse_escape("none"), Some(None));
        for bad in ["", "]", "^", "^]]", "0xzz", "ctrl-]"] {
            assert_eq!(parse_escape(bad), None, "{bad:?}");
        }
        assert_eq!(describe(Some(0x1d)), "^]");
    }

    #[test]
    fn the_escape_ends_forwarding_where_it_stands() {
        assert_eq!(split_at_escape(b"ls\r", Some(0x1d)), (&b"ls\r"[..], false));
        assert_eq!(split_at_escape(b"ab\x1dcd", Some(0x1d)), (&b"ab"[..], true));
        assert_eq!(split_at_escape(b"\x1d", Some(0x1d)), (&b""[..], true));
        assert_eq!(split_at_escape(b"ab\x1dcd", None), (&b"ab\x1dcd"[..], false));
    }

    #[test]
    fn raw_mode_is_undone_on_drop_and_on_panic() {
        let (mut master, mut slave) = (0, 0);
        let rc = unsafe { libc::openpty(&mut master, &mut slave, std::ptr::null_mut(), std::ptr::null(), std::ptr::null()) };
        assert_eq!(rc, 0);
        let get = |fd| {
            let mut t: libc::termios = unsafe { std::mem::zeroed() };
            unsafe { libc::tcgetattr(fd, &mut t) };
            (t.c_iflag, t.c_oflag, t.c_cflag, t.c_lflag)
        };
        let before = get(slave);
        {
            let _raw = RawTerminal::enter(slave).unwrap();
            assert_ne!(get(slave), before, "raw mode changes the settings");
        }
        assert_eq!(get(slave), before);
        let r = std::panic::catch_unwind(|| {
            let _raw = RawTerminal::enter(slave).unwrap();
            std::mem::forget(_raw); // only the panic hook can restore now
            panic!("boom");
        });
        assert!(r.is_err());
        assert_eq!(get(slave), before);
        unsafe {
            libc::close(master);
            libc::close(slave);
        }
    }
}
