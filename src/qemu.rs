//! The QEMU command line, and the check whether KVM can be opened at all.

use crate::config::Accel;
use crate::control;
use crate::ports::Static;
use crate::rundir::RunDir;
use std::path::{Path, PathBuf};

/// The port dockerd serves TLS on inside the guest (docker's convention).
pub const GUEST_DOCKER_PORT: u16 = 2376;
/// The 9p tag of the shared outer root.
pub const ROOT_TAG: &str = "diqidroot";
/// The 9p tag of the outer /usr, shared read-only so that the guest may cache it.
pub const USR_TAG: &str = "diqidusr";

pub struct Vm<'a> {
    pub accel: Accel,
    pub memory: u64,
    pub cpus: u64,
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    pub volume: &'a Path,
    pub rundir: &'a RunDir,
    /// Loopback port on the outer side that reaches dockerd.
    pub docker_port: u16,
    /// DIQID_PORTS: forwards that exist from the start.
    pub ports: &'a [Static],
}

/// The id of the user network, for `hostfwd_add` and `hostfwd_remove`.
pub const NETDEV: &str = "net";

impl Vm<'_> {
    /// The kernel command line; the guest's init reads its `diqid.*` entries.
    pub fn append(&self) -> String {
        // TCG finds a translation by guest address: with every process's binaries and
        // libraries at new random addresses, each exec translated its code afresh and
        // filled the translation cache every two `docker run`s. Without randomization
        // (`norandmaps`), one `docker run` takes about a third less, and the start a
        // tenth less. Under KVM nothing is translated, and randomization stays on.
        let randmaps = if self.accel == Accel::Kvm { "" } else { " norandmaps" };
        format!("console=ttyS0 quiet panic=-1{randmaps} diqid.rundir={}", self.rundir.path.display())
    }

    /// Arguments for qemu-system-x86_64. `accel` must be Kvm or Tcg by now.
    pub fn args(&self) -> Vec<String> {
        let r = self.rundir;
        let p = |p: PathBuf| p.to_string_lossy().to_string();
        let (accel, cpu) = match self.accel {
            Accel::Kvm => ("kvm", "host"),
            // Several vCPUs share one TCG thread: with one thread per vCPU, soak runs
            // hung with every vCPU bouncing between a static-key site in
            // kmem_cache_alloc and the int3 handler, a stale translation of code the
            // kernel had just patched live (text_poke_bp). One vCPU runs multi-threaded.
            _ if self.cpus > 1 => ("tcg,thread=single,tb-size=256", "max"),
            _ => ("tcg,thread=multi,tb-size=256", "max"),
        };
        let mut a: Vec<String> = vec![
            "-name".into(),
            "diqid".into(),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-display".into(),
            "none".into(),
            "-no-reboot".into(),
            "-machine".into(),
            "q35".into(),
            "-accel".into(),
            accel.into(),
            "-cpu".into(),
            cpu.into(),
            "-smp".into(),
            self.cpus.to_string(),
            "-m".into(),
            format!("{}M", self.memory >> 20),
            "-kernel".into(),
            p(self.kernel.to_path_buf()),
            "-initrd".into(),
            p(self.initrd.to_path_buf()),
            "-append".into(),
            self.append(),
            // The console: a unix socket for diqid-console, everything also logged.
            "-chardev".into(),
            format!("socket,id=console,path={},server=on,wait=off,logfile={}", p(r.console()), p(r.console_log())),
            "-serial".into(),
            "chardev:console".into(),
            "-chardev".into(),
            format!("socket,id=qmp,path={},server=on,wait=off", p(r.qmp())),
            "-mon".into(),
            "chardev=qmp,mode=control".into(),
            // The control channel: diqid-start listens, QEMU connects at start.
            "-device".into(),
            "virtio-serial-pci".into(),
            "-chardev".into(),
            format!("socket,id=control,path={}", p(r.control())),
            "-device".into(),
            format!("virtserialport,chardev=control,name={}", control::PORT_NAME),
            // The outer root is the guest's root.
            "-fsdev".into(),
            "local,id=root,path=/,security_model=none,multidevs=remap".into(),
            "-device".into(),
            format!("virtio-9p-pci,fsdev=root,mount_tag={ROOT_TAG}"),
            "-fsdev".into(),
            "local,id=usr,path=/usr,security_model=none,multidevs=remap,readonly=on".into(),
            "-device".into(),
            format!("virtio-9p-pci,fsdev=usr,mount_tag={USR_TAG}"),
            "-drive".into(),
            format!("file={},if=none,id=volume,format=qcow2,cache=writeback,discard=unmap,aio=threads", p(self.volume.to_path_buf())),
            "-device".into(),
            "virtio-blk-pci,drive=volume".into(),
            "-netdev".into(),
            format!(
                "user,id={NETDEV},hostfwd=tcp:127.0.0.1:{}-:{GUEST_DOCKER_PORT}{}",
                self.docker_port,
                self.ports.iter().map(|s| format!(",hostfwd={}", s.hostfwd())).collect::<String>()
            ),
            "-device".into(),
            "virtio-net-pci,netdev=net".into(),
            "-device".into(),
            "virtio-rng-pci".into(),
            "-device".into(),
            "virtio-balloon-pci,free-page-reporting=on".into(),
        ];
        a.shrink_to_fit();
        a
    }
}

/// True when /dev/kvm can be opened for reading and writing. It says nothing about
/// whether a guest will actually run under it; see the probe in diqid-start.
pub fn kvm_openable() -> bool {
    std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm<'a>(accel: Accel, r: &'a RunDir) -> Vm<'a> {
        Vm {
            accel,
            memory: 1 << 30,
            cpus: 2,
            kernel: Path::new("/boot/vmlinuz-6.1.0-9-amd64"),
            initrd: Path::new("/c/initramfs.cpio"),
            volume: Path::new("/v/vol.qcow2"),
            rundir: r,
            docker_port: 40001,
            ports: &[],
        }
    }

    fn after<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
        args.windows(2).filter(|w| w[0] == flag).map(|w| w[1].as_str()).collect()
    }

    #[test]
    fn command_line_has_every_part() {
        let r = RunDir::at(Path::new("/run/d"));
        let a = vm(Accel::Tcg, &r).args();
        assert_eq!(after(&a, "-accel"), ["tcg,thread=single,tb-size=256"], "2 vCPUs share one TCG thread");
        assert_eq!(after(&a, "-cpu"), ["max"]);
        let one = Vm { cpus: 1, ..vm(Accel::Tcg, &r) };
        assert_eq!(after(&one.args(), "-accel"), ["tcg,thread=multi,tb-size=256"]);
        assert_eq!(after(&a, "-m"), ["1024M"]);
        assert_eq!(after(&a, "-smp"), ["2"]);
        assert_eq!(after(&a, "-append"), ["console=ttyS0 quiet panic=-1 norandmaps diqid.rundir=/run/d"], "TCG reuses translations");
        assert!(after(&a, "-netdev")[0].contains("hostfwd=tcp:127.0.0.1:40001-:2376"));
        assert!(after(&a, "-drive")[0].starts_with("file=/v/vol.qcow2,"));
        assert!(after(&a, "-fsdev")[0].contains("path=/,"));
        let chardevs = after(&a, "-chardev");
        assert!(chardevs.iter().any(|c| c.contains("path=/run/d/console.sock") && c.contains("logfile=/run/d/console.log")));
        assert!(chardevs.iter().any(|c| c == &"socket,id=control,path=/run/d/control.sock"));
        assert!(after(&a, "-device").contains(&"virtserialport,chardev=control,name=diqid.control"));
        let k = vm(Accel::Kvm, &r).args();
        assert_eq!((after(&k, "-accel"), after(&k, "-cpu")), (vec!["kvm"], vec!["host"]));
        assert_eq!(after(&k, "-append"), ["console=ttyS0 quiet panic=-1 diqid.rundir=/run/d"], "KVM keeps randomization");
    }

    #[test]
    fn static_ports_are_forwarded_from_the_start() {
        let r = RunDir::at(Path::new("/run/d"));
        let ports = crate::ports::parse_static("8080:80,5353/udp").unwrap();
        let a = Vm { ports: &ports, ..vm(Accel::Tcg, &r) }.args();
        assert!(after(&a, "-netdev")[0].ends_with(",hostfwd=tcp:0.0.0.0:8080-10.0.2.15:80,hostfwd=udp:0.0.0.0:5353-10.0.2.15:5353"));
    }

    /// Only DIQID_PORTS, which the user asks for, may listen on other addresses.
    #[test]
    fn nothing_listens_beyond_loopback() {
        let r = RunDir::at(Path::new("/run/d"));
        let a = vm(Accel::Tcg, &r).args();
        for n in after(&a, "-netdev") {
            for fwd in n.split(',').filter(|o| o.starts_with("hostfwd=")) {
                assert!(fwd.starts_with("hostfwd=tcp:127.0.0.1:"), "{fwd}");
            }
        }
    }
}
