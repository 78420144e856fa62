//! Configuration: environment variables (the seed's names first, then `DIQID_*`),
//! overridden by flags. Every value is checked before anything is started; a bad one
//! is a usage error naming the variable, the value and an example.

use crate::error::Error;
use crate::size;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where values come from: flags first, then the environment.
pub struct Env {
    overrides: HashMap<String, String>,
    lookup: Box<dyn Fn(&str) -> Option<String>>,
}

impl Env {
    pub fn from_process() -> Env {
        Env::new(|k| std::env::var(k).ok())
    }

    pub fn new(lookup: impl Fn(&str) -> Option<String> + 'static) -> Env {
        Env { overrides: HashMap::new(), lookup: Box::new(lookup) }
    }

    /// A flag given on the command line wins over the variable it stands for.
    pub fn set(&mut self, var: &str, value: Option<String>) {
        if let Some(v) = value {
            self.overrides.insert(var.to_string(), v);
        }
    }

    /// The raw value; an empty variable counts as unset, as in the seed's shell.
    pub fn get(&self, var: &str) -> Option<String> {
        self.overrides.get(var).cloned().or_else(|| (self.lookup)(var)).filter(|v| !v.is_empty())
    }

    pub fn size(&self, var: &str, default: u64, min: u64, max: u64, example: &str) -> Result<u64, Error> {
        let Some(text) = self.get(var) else { return Ok(default) };
        match size::parse(&text) {
            Some(n) if (min..=max).contains(&n) => Ok(n),
            Some(_) => Err(bad(var, &text, &format!("must be between {} and {}", size::format(min), size::format(max)), example)),
            None => Err(bad(var, &text, "is not a size", example)),
        }
    }

    pub fn number(&self, var: &str, default: u64, min: u64, max: u64, example: &str) -> Result<u64, Error> {
        let Some(text) = self.get(var) else { return Ok(default) };
        match text.trim().parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            Ok(_) => Err(bad(var, &text, &format!("must be between {min} and {max}"), example)),
            Err(_) => Err(bad(var, &text, "is not a whole number", example)),
        }
    }

    /// A timeout in whole seconds, 1 s to a day.
    pub fn seconds(&self, var: &str, default: u64) -> Result<Duration, Error> {
        self.number(var, default, 1, 86_400, &format!("{var}={default}")).map(Duration::from_secs)
    }

    pub fn boolean(&self, var: &str) -> Result<Option<bool>, Error> {
        let Some(text) = self.get(var) else { return Ok(None) };
        match text.to_ascii_lowercase().as_str() {
            "true" | "yes" | "1" | "on" => Ok(Some(true)),
            "false" | "no" | "0" | "off" => Ok(Some(false)),
            _ => Err(bad(var, &text, "is not true or false", &format!("{var}=false"))),
        }
    }

    /// The runtime directory: `DIQID_RUNDIR`, else `$XDG_RUNTIME_DIR/diqid`, else
    /// `/tmp/diqid-UID`. It travels on the guest kernel's command line, hence the rules.
    pub fn rundir(&self) -> Result<PathBuf, Error> {
        let dir = match self.get("DIQID_RUNDIR") {
            Some(d) => PathBuf::from(d),
            None => match self.get("XDG_RUNTIME_DIR") {
                Some(x) => Path::new(&x).join("diqid"),
                None => PathBuf::from(format!("/tmp/diqid-{}", nix::unistd::getuid())),
            },
        };
        let text = dir.to_string_lossy().to_string();
        if !dir.is_absolute() || text.chars().any(|c| c.is_whitespace() || c == '"') || text.len() > 90 {
            return Err(bad("DIQID_RUNDIR", &text, "must be an absolute path of at most 90 characters without spaces or quotes", "DIQID_RUNDIR=/tmp/diqid"));
        }
        Ok(dir)
    }
}

pub fn bad(var: &str, value: &str, why: &str, example: &str) -> Error {
    Error::Usage(format!("{var}={value:?} {why} (for example {example})"))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    Auto,
    Kvm,
    Tcg,
}

/// The guest kernel and the modules that belong to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kernel {
    pub image: PathBuf,
    pub version: String,
    pub modules: PathBuf,
}

/// Finds the guest kernel: the given image, or the newest `/boot/vmlinuz-*`; its
/// version is the part after `vmlinuz-`, its modules are `MODROOT/VERSION`.
pub fn find_kernel(given: Option<String>, boot: &Path, modroot: &Path) -> Result<Kernel, Error> {
    let image = match given {
        Some(p) => PathBuf::from(p),
        None => {
            let mut found: Vec<PathBuf> = std::fs::read_dir(boot)
                .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
                .unwrap_or_default();
            found.retain(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("vmlinuz-")));
            found.sort_by(|a, b| version_cmp(&a.to_string_lossy(), &b.to_string_lossy()));
            found.pop().ok_or_else(|| {
                Error::Usage(format!(
                    "no guest kernel: {}/vmlinuz-* does not exist; install one (apt-get install linux-image-amd64) or set DIQID_KERNEL=/boot/vmlinuz-VERSION",
                    boot.display()
                ))
            })?
        }
    };
    let text = image.to_string_lossy().to_string();
    if !image.is_file() {
        return Err(bad("DIQID_KERNEL", &text, "is not a file", "DIQID_KERNEL=/boot/vmlinuz-6.1.0-28-amd64"));
    }
    let version = image
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .ok_or_else(|| bad("DIQID_KERNEL", &text, "is not named vmlinuz-VERSION", "DIQID_KERNEL=/boot/vmlinuz-6.1.0-28-amd64"))?
        .to_string();
    let modules = modroot.join(&version);
    if !modules.join("modules.dep").is_file() {
        return Err(Error::Usage(format!(
            "the modules of kernel {version} are missing: {} has no modules.dep (reinstall the kernel package, or run depmod {version})",
            modules.display()
        )));
    }
    Ok(Kernel { image, version, modules })
}

/// Orders version strings the way `sort -V` does, near enough: digit runs as numbers.
fn version_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn parts(s: &str) -> Vec<(u64, String)> {
        let mut out = Vec::new();
        let mut rest = s;
        while !rest.is_empty() {
            let n = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
            let (text, tail) = rest.split_at(n);
            let d = tail.find(|c: char| !c.is_ascii_digit()).unwrap_or(tail.len());
            let (digits, tail) = tail.split_at(d);
            out.push((digits.parse().unwrap_or(0), text.to_string()));
            rest = tail;
        }
        out
    }
    let (pa, pb) = (parts(a), parts(b));
    pa.iter().map(|(n, t)| (t, n)).cmp(pb.iter().map(|(n, t)| (t, n)))
}

/// Everything `diqid-start` needs, checked.
#[derive(Clone, Debug)]
pub struct StartConfig {
    pub memory: u64,
    /// `None`: not set; the accelerator decides (see `StartConfig::cpus_for`).
    pub cpus: Option<u64>,
    pub volume: VolumeConfig,
    pub qemu_timeout_start: Duration,
    pub docker_timeout_start: Duration,
    pub qemu_timeout_stop: Duration,
    pub accel: Accel,
    pub kernel: Kernel,
    pub rundir: PathBuf,
    /// DIQID_PORTS: forwards from the start, beside those that follow containers.
    pub ports: Vec<crate::ports::Static>,
}

/// The volume's settings, shared by `diqid-start` and `diqid-volume`.
#[derive(Clone, Debug)]
pub struct VolumeConfig {
    pub size: u64,
    /// DOCKER_VOLUME_SIZE was set, rather than defaulted.
    pub size_given: bool,
    /// `None`: a temporary volume in the runtime directory.
    pub file: Option<PathBuf>,
    pub remove: Option<bool>,
}

pub const DEFAULT_VOLUME_SIZE: u64 = 20 << 30;

impl VolumeConfig {
    pub fn load(env: &Env) -> Result<VolumeConfig, Error> {
        let size = env.size("DOCKER_VOLUME_SIZE", DEFAULT_VOLUME_SIZE, 512 << 20, 64 << 40, "DOCKER_VOLUME_SIZE=20G")?;
        let file = env.get("DOCKER_VOLUME_FILE").map(PathBuf::from);
        if let Some(f) = &file {
            let text = f.to_string_lossy();
            if text.contains(',') || f.as_os_str().is_empty() {
                return Err(bad("DOCKER_VOLUME_FILE", &text, "must be a file path without commas", "DOCKER_VOLUME_FILE=/var/tmp/docker.qcow2"));
            }
        }
        Ok(VolumeConfig { size, size_given: env.get("DOCKER_VOLUME_SIZE").is_some(), file, remove: env.boolean("DOCKER_VOLUME_REMOVE")? })
    }
}

/// The CPUs this process may use (affinity and cgroup quota included).
pub fn available_cpus() -> u64 {
    std::thread::available_parallelism().map(|n| n.get() as u64).unwrap_or(1)
}

/// Physical memory in bytes, from /proc/meminfo.
pub fn total_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().find(|l| l.starts_with("MemTotal:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok()))
        .map_or(u64::MAX, |kib| kib << 10)
}

impl StartConfig {
    /// The vCPUs: CPUS when set; otherwise every CPU we may use under KVM, and one
    /// under TCG, where a second vCPU was no faster in a side-by-side check and
    /// multi-threaded TCG can livelock on the kernel's live code patching.
    pub fn cpus_for(&self, accel: Accel) -> u64 {
        self.cpus.unwrap_or(if accel == Accel::Kvm { available_cpus() } else { 1 })
    }

    pub fn load(env: &Env) -> Result<StartConfig, Error> {
        let memory = env.size("MEMORY", 1 << 30, 256 << 20, total_memory(), "MEMORY=1G")?;
        if memory % (1 << 20) != 0 {
            return Err(bad("MEMORY", &env.get("MEMORY").unwrap_or_default(), "must be a whole number of MiB", "MEMORY=1536M"));
        }
        let host_cpus = available_cpus();
        let cpus = match env.get("CPUS") {
            Some(_) => Some(env.number("CPUS", host_cpus, 1, host_cpus.max(1) * 4, &format!("CPUS={host_cpus}"))?),
            None => None,
        };
        let accel = match env.get("DIQID_ACCEL").as_deref() {
            None | Some("auto") => Accel::Auto,
            Some("kvm") => Accel::Kvm,
            Some("tcg") => Accel::Tcg,
            Some(other) => return Err(bad("DIQID_ACCEL", other, "is not auto, kvm or tcg", "DIQID_ACCEL=tcg")),
        };
        Ok(StartConfig {
            memory,
            cpus,
            volume: VolumeConfig::load(env)?,
            qemu_timeout_start: env.seconds("QEMU_TIMEOUT_START", 60)?,
            docker_timeout_start: env.seconds("DOCKER_TIMEOUT_START", 300)?,
            qemu_timeout_stop: env.seconds("QEMU_TIMEOUT_STOP", 30)?,
            accel,
            kernel: find_kernel(env.get("DIQID_KERNEL"), Path::new("/boot"), Path::new("/lib/modules"))?,
            rundir: env.rundir()?,
            ports: crate::ports::parse_static(&env.get("DIQID_PORTS").unwrap_or_default())?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Env::new(move |k| map.get(k).cloned())
    }

    fn usage(r: Result<impl std::fmt::Debug, Error>) -> String {
        match r {
            Err(Error::Usage(m)) => m,
            other => panic!("expected a usage error, got {other:?}"),
        }
    }

    #[test]
    fn sizes_are_checked_and_named() {
        let e = env(&[("MEMORY", "lots")]);
        let m = usage(e.size("MEMORY", 1 << 30, 256 << 20, 8 << 30, "MEMORY=1G"));
        assert!(m.contains("MEMORY=\"lots\"") && m.contains("not a size") && m.contains("MEMORY=1G"), "{m}");
        let m = usage(env(&[("MEMORY", "0")]).size("MEMORY", 1, 256 << 20, 8 << 30, "MEMORY=1G"));
        assert!(m.contains("between 256M and 8G"), "{m}");
        assert_eq!(env(&[("MEMORY", "2GiB")]).size("MEMORY", 1, 1, 8 << 30, "").unwrap(), 2 << 30);
        assert_eq!(env(&[("MEMORY", "")]).size("MEMORY", 7, 1, 8, "").unwrap(), 7);
    }

    #[test]
    fn flags_override_the_environment() {
        let mut e = env(&[("CPUS", "1")]);
        e.set("CPUS", Some("2".into()));
        e.set("MEMORY", None);
        assert_eq!(e.get("CPUS").as_deref(), Some("2"));
        assert_eq!(e.get("MEMORY"), None);
    }

    #[test]
    fn numbers_and_timeouts() {
        assert!(usage(env(&[("CPUS", "-1")]).number("CPUS", 1, 1, 8, "CPUS=2")).contains("not a whole number"));
        assert!(usage(env(&[("CPUS", "0")]).number("CPUS", 1, 1, 8, "CPUS=2")).contains("between 1 and 8"));
        assert_eq!(env(&[("QEMU_TIMEOUT_STOP", "5")]).seconds("QEMU_TIMEOUT_STOP", 30).unwrap(), Duration::from_secs(5));
        assert!(usage(env(&[("QEMU_TIMEOUT_STOP", "0")]).seconds("QEMU_TIMEOUT_STOP", 30)).contains("QEMU_TIMEOUT_STOP=30"));
        assert!(usage(env(&[("DOCKER_TIMEOUT_START", "1e9")]).seconds("DOCKER_TIMEOUT_START", 300)).contains("whole number"));
    }

    #[test]
    fn booleans() {
        assert_eq!(env(&[("DOCKER_VOLUME_REMOVE", "false")]).boolean("DOCKER_VOLUME_REMOVE").unwrap(), Some(false));
        assert_eq!(env(&[("DOCKER_VOLUME_REMOVE", "TRUE")]).boolean("DOCKER_VOLUME_REMOVE").unwrap(), Some(true));
        assert_eq!(env(&[]).boolean("DOCKER_VOLUME_REMOVE").unwrap(), None);
        assert!(usage(env(&[("DOCKER_VOLUME_REMOVE", "maybe")]).boolean("DOCKER_VOLUME_REMOVE")).contains("maybe"));
    }

    #[test]
    fn rundir_defaults_and_rules() {
        assert_eq!(env(&[("XDG_RUNTIME_DIR", "/run/user/7")]).rundir().unwrap(), PathBuf::from("/run/user/7/diqid"));
        assert_eq!(env(&[("DIQID_RUNDIR", "/x/y"), ("XDG_RUNTIME_DIR", "/r")]).rundir().unwrap(), PathBuf::from("/x/y"));
        assert!(env(&[]).rundir().unwrap().starts_with("/tmp"));
        assert!(usage(env(&[("DIQID_RUNDIR", "relative")]).rundir()).contains("DIQID_RUNDIR"));
        assert!(usage(env(&[("DIQID_RUNDIR", "/a b")]).rundir()).contains("without spaces"));
    }

    #[test]
    fn volume_settings() {
        let v = VolumeConfig::load(&env(&[("DOCKER_VOLUME_SIZE", "4G"), ("DOCKER_VOLUME_FILE", "/v.qcow2")])).unwrap();
        assert_eq!((v.size, v.file, v.remove), (4 << 30, Some(PathBuf::from("/v.qcow2")), None));
        assert!(usage(VolumeConfig::load(&env(&[("DOCKER_VOLUME_SIZE", "1M")]))).contains("DOCKER_VOLUME_SIZE"));
        assert!(usage(VolumeConfig::load(&env(&[("DOCKER_VOLUME_FILE", "/a,b")]))).contains("commas"));
    }

    #[test]
    fn newest_kernel_wins_and_needs_its_modules() {
        let t = tempfile::tempdir().unwrap();
        let (boot, mods) = (t.path().join("boot"), t.path().join("modules"));
        std::fs::create_dir_all(&boot).unwrap();
        for v in ["6.1.0-9-amd64", "6.1.0-10-amd64", "5.10.0-30-amd64"] {
            std::fs::write(boot.join(format!("vmlinuz-{v}")), "").unwrap();
        }
        let m = usage(find_kernel(None, &boot, &mods));
        assert!(m.contains("6.1.0-10-amd64") && m.contains("modules.dep"), "{m}");
        std::fs::create_dir_all(mods.join("6.1.0-10-amd64")).unwrap();
        std::fs::write(mods.join("6.1.0-10-amd64/modules.dep"), "").unwrap();
        let k = find_kernel(None, &boot, &mods).unwrap();
        assert_eq!(k.version, "6.1.0-10-amd64");
        assert!(usage(find_kernel(None, &t.path().join("none"), &mods)).contains("linux-image-amd64"));
        assert!(usage(find_kernel(Some("/nonexistent/vmlinuz-1".into()), &boot, &mods)).contains("DIQID_KERNEL"));
    }
}
