//! A writer for the newc cpio format, the one the kernel unpacks as an initramfs. The lab
//! appends one such archive (scenario, netvmm, files) to the prebuilt lab image.

use std::collections::BTreeSet;
use std::io::{self, Write};

const NEWC_MAGIC: &str = "070701";
const TRAILER: &str = "TRAILER!!!";
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;

/// Builds an archive in memory, adding parent directories before their contents.
#[derive(Default)]
pub struct CpioWriter {
    out: Vec<u8>,
    dirs: BTreeSet<String>,
    ino: u32,
}

impl CpioWriter {
    pub fn new() -> Self {
        Self::default()
    }

    fn header(&mut self, name: &str, mode: u32, size: u32) {
        self.ino += 1;
        let fields = [
            self.ino,
            mode,
            0,
            0,
            if mode & S_IFDIR != 0 { 2 } else { 1 },
            0,
            size,
            0,
            0,
            0,
            0,
            name.len() as u32 + 1,
            0,
        ];
        self.out.extend_from_slice(NEWC_MAGIC.as_bytes());
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    fn ensure_parents(&mut self, path: &str) {
        let mut prefix = String::new();
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        for part in parts.iter().take(parts.len().saturating_sub(1)) {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            if self.dirs.insert(prefix.clone()) {
                let p = prefix.clone();
                self.header(&p, S_IFDIR | 0o755, 0);
            }
        }
    }

    /// Adds a regular file at `path` (relative to the archive root, no leading slash needed).
    pub fn add_file(&mut self, path: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        let path = path.trim_start_matches('/');
        let size = u32::try_from(data.len()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{path} is larger than cpio's 4 GiB limit"),
            )
        })?;
        self.ensure_parents(path);
        self.header(path, S_IFREG | (mode & 0o7777), size);
        self.out.extend_from_slice(data);
        self.pad();
        Ok(())
    }

    /// Ends the archive and writes it out.
    pub fn finish<W: Write>(mut self, w: &mut W) -> io::Result<()> {
        self.header(TRAILER, 0, 0);
        w.write_all(&self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_has_aligned_headers_parents_first_and_trailer() {
        let mut c = CpioWriter::new();
        c.add_file("/lab/bin/tool", 0o755, b"abc").unwrap();
        c.add_file("lab/scenario", 0o755, b"#!/bin/sh\n").unwrap();
        let mut out = Vec::new();
        c.finish(&mut out).unwrap();
        assert_eq!(out.len() % 4, 0);
        let text = String::from_utf8_lossy(&out);
        let lab = text.find("lab\0").unwrap();
        let bin = text.find("lab/bin\0").unwrap();
        let tool = text.find("lab/bin/tool\0").unwrap();
        assert!(lab < bin && bin < tool);
        assert_eq!(text.matches("lab\0").count(), 1, "directory added once");
        assert!(text.contains(TRAILER));
        assert!(out.starts_with(b"070701"));
        // The file size field of the first file header is 3.
        let hdr = text.rfind("070701").unwrap();
        assert!(hdr > tool);
    }
}
