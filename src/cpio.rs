//! A writer for the "newc" cpio format, the one the kernel unpacks as an initramfs.
//! Entries are written with uid/gid 0 and fixed times, so the archive depends only on
//! its contents.

use std::io::{self, Write};

pub struct Writer<W: Write> {
    out: W,
    ino: u32,
}

const DIR: u32 = 0o040000;
const FILE: u32 = 0o100000;
const CHAR: u32 = 0o020000;

impl<W: Write> Writer<W> {
    pub fn new(out: W) -> Writer<W> {
        Writer { out, ino: 0 }
    }

    pub fn dir(&mut self, name: &str, perm: u32) -> io::Result<()> {
        self.entry(name, DIR | perm, 2, (0, 0), &[])
    }

    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        self.entry(name, FILE | perm, 1, (0, 0), data)
    }

    pub fn char_device(&mut self, name: &str, perm: u32, major: u32, minor: u32) -> io::Result<()> {
        self.entry(name, CHAR | perm, 1, (major, minor), &[])
    }

    /// Writes the trailer and returns the underlying writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.entry("TRAILER!!!", 0, 1, (0, 0), &[])?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn entry(&mut self, name: &str, mode: u32, nlink: u32, rdev: (u32, u32), data: &[u8]) -> io::Result<()> {
        if name.starts_with('/') || name.contains('\0') {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("bad cpio name {name:?}")));
        }
        self.ino += 1;
        let ino = if mode == 0 { 0 } else { self.ino };
        let fields = [ino, mode, 0, 0, nlink, 0, data.len() as u32, 0, 0, rdev.0, rdev.1, name.len() as u32 + 1, 0];
        let mut header = String::from("070701");
        for f in fields {
            header.push_str(&format!("{f:08x}"));
        }
        self.out.write_all(header.as_bytes())?;
        self.out.write_all(name.as_bytes())?;
        self.out.write_all(&[0])?;
        self.pad(110 + name.len() + 1)?;
        self.out.write_all(data)?;
        self.pad(data.len())
    }

    fn pad(&mut self, len: usize) -> io::Result<()> {
        let zeros = [0u8; 3];
        self.out.write_all(&zeros[..(4 - len % 4) % 4])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(entry: &[u8], i: usize) -> u32 {
        u32::from_str_radix(std::str::from_utf8(&entry[6 + i * 8..14 + i * 8]).unwrap(), 16).unwrap()
    }

    #[test]
    fn layout_matches_newc() {
        let mut w = Writer::new(Vec::new());
        w.file("init", 0o755, b"hello").unwrap();
        let out = w.finish().unwrap();
        assert_eq!(&out[..6], b"070701");
        assert_eq!(field(&out, 1), 0o100755);
        assert_eq!(field(&out, 6), 5);
        assert_eq!(field(&out, 11), 5);
        // header 110 + "init\0" = 115, padded to 116; data 5 padded to 8.
        assert_eq!(&out[110..115], b"init\0");
        assert_eq!(&out[116..121], b"hello");
        assert_eq!(out.len() % 4, 0);
        assert_eq!(&out[124..130], b"070701");
        assert!(out.windows(10).any(|w| w == b"TRAILER!!!"));
    }

    #[test]
    fn devices_and_dirs() {
        let mut w = Writer::new(Vec::new());
        w.char_device("dev/console", 0o600, 5, 1).unwrap();
        let out = w.finish().unwrap();
        assert_eq!(field(&out, 1), 0o020600);
        assert_eq!((field(&out, 9), field(&out, 10)), (5, 1));
        assert!(Writer::new(Vec::new()).dir("/abs", 0o755).is_err());
    }

    #[test]
    fn gnu_cpio_reads_it_back() {
        if std::process::Command::new("cpio").arg("--version").output().is_err() {
            eprintln!("cpio not installed; skipping");
            return;
        }
        let mut w = Writer::new(Vec::new());
        w.dir("d", 0o755).unwrap();
        w.file("d/f", 0o644, b"contents\n").unwrap();
        let archive = w.finish().unwrap();
        let t = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("cpio")
            .args(["-i", "-d", "--quiet"])
            .current_dir(t.path())
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&archive).unwrap();
        assert!(child.wait().unwrap().success());
        assert_eq!(std::fs::read_to_string(t.path().join("d/f")).unwrap(), "contents\n");
    }
}
