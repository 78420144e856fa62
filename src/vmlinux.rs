//! Unpacks the guest kernel for a direct boot. A bzImage decompresses itself, which
//! under TCG takes seconds (Debian's are XZ); QEMU can instead load the uncompressed
//! ELF `vmlinux` straight into memory and enter it through its PVH note. The result is
//! cached beside the initramfs. Anything unexpected: boot the bzImage as it is.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Returns a cached vmlinux for `image`, making it if needed; `None` when the image
/// cannot be unpacked or has no PVH entry (then the bzImage boots, slower).
pub fn get(image: &Path, version: &str, key: u64, cache: &Path) -> Option<PathBuf> {
    let path = cache.join(format!("vmlinux-{version}-{key:016x}"));
    if path.is_file() {
        return Some(path);
    }
    let elf = unpack(&std::fs::read(image).ok()?)?;
    if !has_pvh_note(&elf) {
        return None;
    }
    let mut tmp = tempfile::NamedTempFile::new_in(cache).ok()?;
    tmp.write_all(&elf).ok()?;
    tmp.persist(&path).ok()?;
    if let Ok(dir) = std::fs::read_dir(cache) {
        for e in dir.flatten() {
            if e.file_name().to_string_lossy().starts_with("vmlinux-") && e.path() != path {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    Some(path)
}

/// The payload of a bzImage, decompressed by the matching command-line tool.
pub fn unpack(bz: &[u8]) -> Option<Vec<u8>> {
    let u32_at = |o: usize| Some(u32::from_le_bytes(bz.get(o..o + 4)?.try_into().ok()?));
    if bz.get(0x202..0x206)? != b"HdrS" {
        return None;
    }
    let setup_sects = match *bz.get(0x1f1)? {
        0 => 4,
        n => n as usize,
    };
    let start = (setup_sects + 1) * 512 + u32_at(0x248)? as usize;
    let payload = bz.get(start..start + u32_at(0x24c)? as usize)?;
    let tool: &[&str] = match payload {
        [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => &["xz", "-dc", "--single-stream"],
        [0x1f, 0x8b, ..] => &["gzip", "-dc"],
        [0x28, 0xb5, 0x2f, 0xfd, ..] => &["zstd", "-dcq"],
        _ => return None,
    };
    let mut child = Command::new(tool[0]).args(&tool[1..]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().ok()?;
    let mut stdin = child.stdin.take()?;
    let owned = payload.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&owned));
    let out = child.wait_with_output().ok()?;
    let _ = feeder.join();
    // gzip and zstd complain about the size word after the stream; the ELF decides.
    (out.stdout.starts_with(b"\x7fELF")).then_some(out.stdout)
}

/// True when an ELF64 image carries the Xen PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY).
pub fn has_pvh_note(elf: &[u8]) -> bool {
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let u32_at = |o: usize| elf.get(o..o + 4).map(|b| u32::from_le_bytes(b.try_into().unwrap()) as usize);
    let u64_at = |o: usize| elf.get(o..o + 8).map(|b| u64::from_le_bytes(b.try_into().unwrap()) as usize);
    if !elf.starts_with(b"\x7fELF\x02\x01") {
        return false;
    }
    let (Some(phoff), Some(phsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38)) else { return false };
    for i in 0..phnum {
        let ph = phoff + i * phsize;
        if u32_at(ph) != Some(4) {
            continue; // not PT_NOTE
        }
        let (Some(off), Some(size)) = (u64_at(ph + 8), u64_at(ph + 32)) else { continue };
        let mut n = off;
        while n + 12 <= off + size {
            let (Some(namesz), Some(descsz), Some(kind)) = (u32_at(n), u32_at(n + 4), u32_at(n + 8)) else { break };
            let name = elf.get(n + 12..n + 12 + namesz).unwrap_or_default();
            if name == b"Xen\0" && kind == 18 {
                return true;
            }
            n += 12 + namesz.div_ceil(4) * 4 + descsz.div_ceil(4) * 4;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 with one PT_NOTE segment holding the given note.
    fn elf_with_note(name: &[u8], kind: u32) -> Vec<u8> {
        let mut e = vec![0u8; 64 + 56];
        e[..6].copy_from_slice(b"\x7fELF\x02\x01");
        e[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        e[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        e[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        let mut note = Vec::new();
        note.extend((name.len() as u32).to_le_bytes());
        note.extend(4u32.to_le_bytes());
        note.extend(kind.to_le_bytes());
        note.extend(name);
        note.resize(note.len().div_ceil(4) * 4, 0);
        note.extend([1, 2, 3, 4]);
        let off = e.len() as u64;
        e[64..68].copy_from_slice(&4u32.to_le_bytes());
        e[64 + 8..64 + 16].copy_from_slice(&off.to_le_bytes());
        e[64 + 32..64 + 40].copy_from_slice(&(note.len() as u64).to_le_bytes());
        e.extend(note);
        e
    }

    #[test]
    fn finds_the_pvh_note() {
        assert!(has_pvh_note(&elf_with_note(b"Xen\0", 18)));
        assert!(!has_pvh_note(&elf_with_note(b"Xen\0", 17)));
        assert!(!has_pvh_note(&elf_with_note(b"GNU\0", 18)));
        assert!(!has_pvh_note(b"\x7fELF\x02\x01"));
        assert!(!has_pvh_note(b"not an elf"));
    }

    #[test]
    fn refuses_what_is_not_a_bzimage() {
        assert!(unpack(b"").is_none());
        assert!(unpack(&[0u8; 4096]).is_none());
    }

    #[test]
    fn unpacks_the_installed_kernel() {
        let Some(k) = std::fs::read_dir("/boot").ok().and_then(|d| d.flatten().find(|e| e.file_name().to_string_lossy().starts_with("vmlinuz-"))) else {
            return;
        };
        let Ok(bz) = std::fs::read(k.path()) else { return };
        if let Some(elf) = unpack(&bz) {
            assert!(elf.len() > bz.len());
            assert!(has_pvh_note(&elf), "Debian's kernels have CONFIG_PVH=y");
        }
    }
}
