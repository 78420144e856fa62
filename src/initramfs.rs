//! The guest's initramfs: this very binary as /init, plus the kernel modules of
//! guest/modules.{boot,late} and their dependencies. Built from the installed kernel at start and
//! cached; the cache key covers the binary, the kernel and the module list.

use crate::config::Kernel;
use crate::cpio;
use crate::error::{Context, Error};
use crate::modules;
use std::hash::{Hash, Hasher};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

pub const BOOT_MODULES: &str = include_str!("../guest/modules.boot");
pub const LATE_MODULES: &str = include_str!("../guest/modules.late");

/// Where the initramfs' modules sit, in `boot/` and `late/`; the init loads each
/// group in file-name order.
pub const MODULE_DIR: &str = "mods";

/// Returns the path of an initramfs for `kernel`, building it when the cache has none.
pub fn get(kernel: &Kernel, cache: &Path) -> Result<PathBuf, Error> {
    let exe = std::env::current_exe().ctx(|| "cannot find this binary".into())?;
    let key = cache_key(&exe, kernel)?;
    let path = cache.join(format!("initramfs-{}-{key:016x}.cpio", kernel.version));
    if path.is_file() {
        return Ok(path);
    }
    let image = build(&exe, kernel)?;
    std::fs::create_dir_all(cache).ctx(|| format!("cannot create the cache directory {}", cache.display()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(cache).ctx(|| format!("cannot write in {}", cache.display()))?;
    std::io::Write::write_all(&mut tmp, &image).ctx(|| format!("cannot write the initramfs in {}", cache.display()))?;
    tmp.persist(&path).ctx(|| format!("cannot store {}", path.display()))?;
    // Older images of this cache are of no more use.
    if let Ok(dir) = std::fs::read_dir(cache) {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with("initramfs-") && e.path() != path {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    Ok(path)
}

/// The default cache: `$XDG_CACHE_HOME/diqid`, else `~/.cache/diqid`.
pub fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").filter(|v| !v.is_empty()).map(|h| Path::new(&h).join(".cache")))?;
    Some(base.join("diqid"))
}

/// The identity of a file, as far as a cache cares: path, size, times, inode.
fn identity(p: &Path, h: &mut impl Hasher) -> Result<(), Error> {
    let m = std::fs::metadata(p).ctx(|| format!("cannot read {}", p.display()))?;
    (p, m.len(), m.mtime(), m.mtime_nsec(), m.ino()).hash(h);
    Ok(())
}

/// The guest kernel's identity (image, modules, our module lists): it keys the
/// unpacked kernel and the KVM verdict, which do not depend on this binary.
pub fn kernel_key(kernel: &Kernel) -> Result<u64, Error> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    identity(&kernel.image, &mut h)?;
    identity(&kernel.modules.join("modules.dep"), &mut h)?;
    (BOOT_MODULES, LATE_MODULES).hash(&mut h);
    Ok(h.finish())
}

/// The initramfs' key: the kernel's, and this binary, which is its /init.
fn cache_key(exe: &Path, kernel: &Kernel) -> Result<u64, Error> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    identity(exe, &mut h)?;
    kernel_key(kernel)?.hash(&mut h);
    Ok(h.finish())
}

/// Builds the archive in memory (a few MiB).
pub fn build(exe: &Path, kernel: &Kernel) -> Result<Vec<u8>, Error> {
    let read = |p: &Path| std::fs::read(p).ctx(|| format!("cannot read {}", p.display()));
    let dep = std::fs::read_to_string(kernel.modules.join("modules.dep")).ctx(|| format!("cannot read {}/modules.dep", kernel.modules.display()))?;
    let builtin = std::fs::read_to_string(kernel.modules.join("modules.builtin")).unwrap_or_default();
    let deps = modules::Deps::parse(&dep, &builtin);
    let mut seen = std::collections::HashSet::new();
    let mut groups = Vec::new();
    for (group, list) in [("boot", BOOT_MODULES), ("late", LATE_MODULES)] {
        let order = deps.load_order_after(&modules::list(list), &mut seen).map_err(|e| Error::Usage(format!("kernel {}: {e}", kernel.version)))?;
        groups.push((group, order));
    }

    let mut w = cpio::Writer::new(Vec::new());
    let io = |e: std::io::Error| Error::Fail(format!("cannot build the initramfs: {e}"));
    for d in ["dev", "proc", "sys", "newroot", MODULE_DIR, "mods/boot", "mods/late"] {
        w.dir(d, 0o755).map_err(io)?;
    }
    w.char_device("dev/console", 0o600, 5, 1).map_err(io)?;
    w.file("init", 0o755, &read(exe)?).map_err(io)?;
    for (group, order) in groups {
        for (i, rel) in order.iter().enumerate() {
            let file = rel.rsplit('/').next().unwrap_or(rel);
            w.file(&format!("{MODULE_DIR}/{group}/{i:03}-{file}"), 0o644, &read(&kernel.modules.join(rel))?).map_err(io)?;
        }
    }
    w.finish().map_err(io)
}
