//! Kernel modules: which files to load, and in which order, resolved from the
//! kernel's own `modules.dep` (each line: `path: dependency paths...`).

use std::collections::{HashMap, HashSet};

/// A module's name as the kernel knows it: file stem, `-` spelled `_`.
pub fn name_of(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

pub struct Deps {
    /// name -> (path, dependency paths)
    by_name: HashMap<String, (String, Vec<String>)>,
    builtin: HashSet<String>,
}

impl Deps {
    /// `dep` is the text of modules.dep, `builtin` that of modules.builtin.
    pub fn parse(dep: &str, builtin: &str) -> Deps {
        let mut by_name = HashMap::new();
        for line in dep.lines() {
            if let Some((path, deps)) = line.split_once(':') {
                let deps = deps.split_whitespace().map(str::to_string).collect();
                by_name.insert(name_of(path), (path.trim().to_string(), deps));
            }
        }
        let builtin = builtin.lines().map(name_of).collect();
        Deps { by_name, builtin }
    }

    /// The module files to load, dependencies first, each once. Built-in modules are
    /// skipped; an unknown module is an error that names it.
    pub fn load_order(&self, wanted: &[&str]) -> Result<Vec<String>, String> {
        self.load_order_after(wanted, &mut HashSet::new())
    }

    /// Like `load_order`, leaving out what `seen` holds (an earlier group's files),
    /// and adding this group's files to it.
    pub fn load_order_after(&self, wanted: &[&str], seen: &mut HashSet<String>) -> Result<Vec<String>, String> {
        let mut order = Vec::new();
        for want in wanted {
            let name = want.replace('-', "_");
            if self.builtin.contains(&name) {
                continue;
            }
            let (path, _) = self.by_name.get(&name).ok_or_else(|| format!("module {want} is neither in modules.dep nor built in"))?;
            self.visit(path, seen, &mut order);
        }
        Ok(order)
    }

    fn visit(&self, path: &str, seen: &mut HashSet<String>, order: &mut Vec<String>) {
        if !seen.insert(path.to_string()) {
            return;
        }
        if let Some((_, deps)) = self.by_name.get(&name_of(path)) {
            for d in deps {
                self.visit(d, seen, order);
            }
        }
        order.push(path.to_string());
    }
}

/// The guest's module list (guest/modules): one name a line, `#` comments.
pub fn list(text: &str) -> Vec<&str> {
    text.lines().map(|l| l.split('#').next().unwrap_or("").trim()).filter(|l| !l.is_empty()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko kernel/fs/netfs/netfs.ko kernel/fs/fscache/fscache.ko
kernel/net/9p/9pnet.ko:
kernel/fs/netfs/netfs.ko:
kernel/fs/fscache/fscache.ko: kernel/fs/netfs/netfs.ko
kernel/net/9p/9pnet_virtio.ko: kernel/net/9p/9pnet.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/block/virtio-blk.ko: kernel/drivers/virtio/virtio_ring.ko
";

    #[test]
    fn dependencies_come_first_and_once() {
        let d = Deps::parse(DEP, "kernel/drivers/virtio/virtio.ko\n");
        let order = d.load_order(&["9pnet_virtio", "9p", "virtio"]).unwrap();
        assert_eq!(
            order,
            [
                "kernel/net/9p/9pnet.ko",
                "kernel/drivers/virtio/virtio_ring.ko",
                "kernel/net/9p/9pnet_virtio.ko",
                "kernel/fs/netfs/netfs.ko",
                "kernel/fs/fscache/fscache.ko",
                "kernel/fs/9p/9p.ko",
            ]
        );
        for (i, m) in order.iter().enumerate() {
            assert!(order[i + 1..].iter().all(|later| later != m));
        }
    }

    #[test]
    fn a_later_group_skips_what_an_earlier_one_loads() {
        let d = Deps::parse(DEP, "");
        let mut seen = HashSet::new();
        d.load_order_after(&["9pnet_virtio"], &mut seen).unwrap();
        assert_eq!(d.load_order_after(&["9p"], &mut seen).unwrap(), ["kernel/fs/netfs/netfs.ko", "kernel/fs/fscache/fscache.ko", "kernel/fs/9p/9p.ko"]);
    }

    #[test]
    fn names_are_normalised_and_unknowns_named() {
        let d = Deps::parse(DEP, "");
        assert_eq!(d.load_order(&["virtio_blk"]).unwrap().last().unwrap(), "kernel/drivers/block/virtio-blk.ko");
        assert_eq!(name_of("kernel/x/virtio-blk.ko.xz"), "virtio_blk");
        assert!(d.load_order(&["nosuch"]).unwrap_err().contains("nosuch"));
    }

    #[test]
    fn list_skips_comments() {
        assert_eq!(list("# c\n9p\n\n ext4 # fs\n"), ["9p", "ext4"]);
    }

    #[test]
    fn resolves_the_guest_list_against_the_installed_kernel() {
        let Some(dir) = std::fs::read_dir("/lib/modules").ok().and_then(|mut d| d.next()).and_then(|e| e.ok()) else { return };
        let dep = std::fs::read_to_string(dir.path().join("modules.dep")).unwrap_or_default();
        let builtin = std::fs::read_to_string(dir.path().join("modules.builtin")).unwrap_or_default();
        if dep.is_empty() {
            return;
        }
        let deps = Deps::parse(&dep, &builtin);
        let mut seen = HashSet::new();
        let boot = deps.load_order_after(&list(crate::initramfs::BOOT_MODULES), &mut seen).unwrap();
        let late = deps.load_order_after(&list(crate::initramfs::LATE_MODULES), &mut seen).unwrap();
        assert!(boot.iter().any(|p| p.ends_with("/9p.ko")));
        assert!(late.iter().any(|p| p.ends_with("/bridge.ko")));
        assert!(late.iter().all(|p| !boot.contains(p)), "no module twice");
    }
}
