//! diqid-volume: the qcow2 disk that holds the VM's /var/lib/docker.

use crate::config::{Env, VolumeConfig};
use crate::error::{fail, parse_args, Context, Error};
use argh::FromArgs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Create, show or remove the qcow2 volume that holds the VM's /var/lib/docker.
/// The volume is DOCKER_VOLUME_FILE (default: DIQID_RUNDIR/volume.qcow2), of
/// DOCKER_VOLUME_SIZE (default 20G; sparse, it grows as it fills).
#[derive(FromArgs)]
struct Args {
    #[argh(subcommand)]
    cmd: Cmd,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum Cmd {
    Create(CreateArgs),
    Path(PathArgs),
    Info(InfoArgs),
    Remove(RemoveArgs),
}

/// Create the volume, or check and keep the one that is there.
#[derive(FromArgs)]
#[argh(subcommand, name = "create")]
struct CreateArgs {}

/// Print the volume's path.
#[derive(FromArgs)]
#[argh(subcommand, name = "path")]
struct PathArgs {}

/// Print what qemu-img knows of the volume.
#[derive(FromArgs)]
#[argh(subcommand, name = "info")]
struct InfoArgs {}

/// Delete the volume (only a qcow2 image, and only when no VM uses it).
#[derive(FromArgs)]
#[argh(subcommand, name = "remove")]
struct RemoveArgs {}

pub fn main(name: &str, args: &[String]) -> Result<i32, Error> {
    let args: Args = parse_args(name, args)?;
    let env = Env::from_process();
    let cfg = VolumeConfig::load(&env)?;
    let path = path_of(&cfg, &env.rundir()?);
    match args.cmd {
        Cmd::Path(_) => println!("{}", path.display()),
        Cmd::Create(_) => match ensure(&path, &cfg)? {
            Origin::Created => eprintln!("{name}: created {} ({})", path.display(), crate::size::format(cfg.size)),
            Origin::Existing => eprintln!("{name}: keeping {}", path.display()),
        },
        Cmd::Info(_) => {
            check_qcow2(&path)?;
            let status = Command::new(qemu_img()?).args(["info", "-U"]).arg(&path).status().ctx(|| "cannot run qemu-img".into())?;
            return Ok(if status.success() { 0 } else { 1 });
        }
        Cmd::Remove(_) => {
            check_qcow2(&path)?;
            let probe = Command::new(qemu_img()?).arg("info").arg(&path).stdout(Stdio::null()).output().ctx(|| "cannot run qemu-img".into())?;
            if !probe.status.success() && String::from_utf8_lossy(&probe.stderr).contains("lock") {
                return fail(format!("{} is in use by a running VM; stop it first", path.display()));
            }
            std::fs::remove_file(&path).ctx(|| format!("cannot remove {}", path.display()))?;
        }
    }
    Ok(0)
}

/// DOCKER_VOLUME_FILE, or the temporary volume in the runtime directory.
pub fn path_of(cfg: &VolumeConfig, rundir: &Path) -> PathBuf {
    cfg.file.clone().unwrap_or_else(|| rundir.join("volume.qcow2"))
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Origin {
    /// Made in this run.
    Created,
    /// Brought by the user (or kept from an earlier run).
    Existing,
}

/// A volume made in this run goes unless DOCKER_VOLUME_REMOVE=false; one the user
/// brought goes only with DOCKER_VOLUME_REMOVE=true.
pub fn should_remove(origin: Origin, remove: Option<bool>) -> bool {
    match origin {
        Origin::Created => remove != Some(false),
        Origin::Existing => remove == Some(true),
    }
}

pub fn qemu_img() -> Result<PathBuf, Error> {
    find_program("qemu-img").ok_or_else(|| Error::Usage("qemu-img not found on PATH; install it (apt-get install qemu-utils)".into()))
}

/// The first executable `name` on PATH.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| nix::unistd::access(p.as_path(), nix::unistd::AccessFlags::X_OK).is_ok() && p.is_file())
}

fn is_qcow2(path: &Path) -> std::io::Result<bool> {
    use std::io::Read;
    let mut magic = [0u8; 4];
    let n = std::fs::File::open(path)?.read(&mut magic)?;
    Ok(n == 4 && magic == *b"QFI\xfb")
}

fn check_qcow2(path: &Path) -> Result<(), Error> {
    match is_qcow2(path) {
        Ok(true) => Ok(()),
        Ok(false) => Err(Error::Usage(format!(
            "DOCKER_VOLUME_FILE={} is not a qcow2 image; refusing to use or overwrite it (point DOCKER_VOLUME_FILE at a new file name)",
            path.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::Usage(format!("no volume at {} (diqid-volume create makes one)", path.display()))),
        Err(e) => Err(Error::Usage(format!("DOCKER_VOLUME_FILE={} cannot be read: {e}", path.display()))),
    }
}

/// The virtual size a qcow2 header records (big-endian, at offset 24).
fn virtual_size(path: &Path) -> Option<u64> {
    use std::io::Read;
    let mut head = [0u8; 32];
    std::fs::File::open(path).ok()?.read_exact(&mut head).ok()?;
    Some(u64::from_be_bytes(head[24..32].try_into().ok()?))
}

/// Checks an existing volume: a qcow2 image this user may read and write, and not
/// smaller than a DOCKER_VOLUME_SIZE that was asked for (a filesystem cannot shrink).
pub fn check_existing(path: &Path, cfg: &VolumeConfig) -> Result<(), Error> {
    check_qcow2(path)?;
    if nix::unistd::access(path, nix::unistd::AccessFlags::R_OK | nix::unistd::AccessFlags::W_OK).is_err() {
        return Err(Error::Usage(format!("DOCKER_VOLUME_FILE={} is not readable and writable (read-only, or not this user's)", path.display())));
    }
    if let Some(have) = virtual_size(path).filter(|&have| cfg.size_given && cfg.size < have) {
        return Err(Error::Usage(format!(
            "DOCKER_VOLUME_SIZE={} is smaller than the volume {} already is ({}); a volume cannot shrink (leave DOCKER_VOLUME_SIZE unset to keep it)",
            crate::size::format(cfg.size),
            path.display(),
            crate::size::format(have)
        )));
    }
    Ok(())
}

/// Checks DOCKER_VOLUME_FILE before anything is made: an existing volume as
/// `check_existing` does, a missing one for a directory it can be created in.
pub fn check(path: &Path, cfg: &VolumeConfig) -> Result<(), Error> {
    if path.symlink_metadata().is_ok() {
        return check_existing(path, cfg);
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(Error::Usage(format!(
            "DOCKER_VOLUME_FILE={}: the directory {} does not exist; create it or choose another path",
            path.display(),
            dir.display()
        )));
    }
    // access(2) also sees a read-only filesystem, which root's rights do not lift.
    if nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK).is_err() {
        return Err(Error::Usage(format!(
            "DOCKER_VOLUME_FILE={}: the directory {} is not writable (read-only, or not this user's); choose another path",
            path.display(),
            dir.display()
        )));
    }
    Ok(())
}

/// Keeps a qcow2 volume that exists; creates one when there is none. Anything else at
/// that path is refused, never overwritten.
pub fn ensure(path: &Path, cfg: &VolumeConfig) -> Result<Origin, Error> {
    check(path, cfg)?;
    if path.symlink_metadata().is_ok() {
        return Ok(Origin::Existing);
    }
    let out = Command::new(qemu_img()?)
        .args(["create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on"])
        .arg(path)
        .arg(cfg.size.to_string())
        .stdin(Stdio::null())
        .output()
        .ctx(|| "cannot run qemu-img".into())?;
    if !out.status.success() {
        let _ = std::fs::remove_file(path);
        return fail(format!("qemu-img create {} failed: {}", path.display(), String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(Origin::Created)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(size: u64, size_given: bool) -> VolumeConfig {
        VolumeConfig { size, size_given, file: None, remove: None }
    }

    #[test]
    fn removal_rules() {
        assert!(should_remove(Origin::Created, None));
        assert!(should_remove(Origin::Created, Some(true)));
        assert!(!should_remove(Origin::Created, Some(false)));
        assert!(!should_remove(Origin::Existing, None));
        assert!(!should_remove(Origin::Existing, Some(false)));
        assert!(should_remove(Origin::Existing, Some(true)));
    }

    #[test]
    fn a_file_that_is_not_qcow2_is_never_touched() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("precious");
        std::fs::write(&p, "user data").unwrap();
        match ensure(&p, &cfg(1 << 30, false)) {
            Err(Error::Usage(m)) => assert!(m.contains("not a qcow2 image"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "user data");
    }

    #[test]
    fn a_missing_directory_is_a_usage_error() {
        match ensure(Path::new("/nonexistent-dir/v.qcow2"), &cfg(1 << 30, false)) {
            Err(Error::Usage(m)) => assert!(m.contains("does not exist"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn creates_then_keeps() {
        if qemu_img().is_err() {
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("v.qcow2");
        assert_eq!(ensure(&p, &cfg(1 << 30, true)).unwrap(), Origin::Created);
        assert!(is_qcow2(&p).unwrap());
        assert_eq!(virtual_size(&p), Some(1 << 30));
        assert_eq!(ensure(&p, &cfg(1 << 30, true)).unwrap(), Origin::Existing);
        assert_eq!(ensure(&p, &cfg(4 << 30, true)).unwrap(), Origin::Existing);
        assert_eq!(ensure(&p, &cfg(512 << 20, false)).unwrap(), Origin::Existing, "a default size is no request");
        match ensure(&p, &cfg(512 << 20, true)) {
            Err(Error::Usage(m)) => assert!(m.contains("cannot shrink") && m.contains("(1G)"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}
