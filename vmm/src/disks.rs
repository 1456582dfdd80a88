//! Guest disks: one virtio-blk device per `--disk PATH[,readonly]` (vda, vdb, ... in
//! order), on raw images (regular files or block devices), locked the way QEMU locks its
//! images so that two VMs never write one disk.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::PathBuf;
use std::str::FromStr;

use devices::virtio::blk::{Block, BlockStats};

use crate::image_lock::{self, LockError};
use crate::virtio_slot::{self, WireError};

/// One `--disk`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSpec {
    pub path: PathBuf,
    pub readonly: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DiskSpecError {
    #[error("--disk needs a path: --disk PATH[,readonly] (or path=\"PATH\" for one with a comma)")]
    NoPath,
    #[error("--disk {spec}: unknown option '{key}' (only readonly)")]
    Unknown { spec: String, key: String },
    #[error("--disk {spec}: {why}")]
    Syntax { spec: String, why: String },
}

impl FromStr for DiskSpec {
    type Err = DiskSpecError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        if spec.trim().is_empty() {
            return Err(DiskSpecError::NoPath);
        }
        let printable = net::spec::printable(spec);
        let pairs = net::spec::split_pairs(spec).map_err(|why| DiskSpecError::Syntax {
            spec: printable.clone(),
            why,
        })?;
        let mut pairs = pairs.into_iter();
        // PATH, or path="PATH" for a path with a comma in it.
        let path = match pairs.next() {
            Some((path, None)) => PathBuf::from(path),
            Some((key, Some(path))) if key == "path" && !path.is_empty() => PathBuf::from(path),
            _ => return Err(DiskSpecError::NoPath),
        };
        let mut readonly = false;
        for (key, value) in pairs {
            match (key.as_str(), value) {
                ("readonly", None) if !readonly => readonly = true,
                _ => {
                    return Err(DiskSpecError::Unknown {
                        spec: printable,
                        key: net::spec::printable(&key),
                    })
                }
            }
        }
        Ok(Self { path, readonly })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("--disk {}: {why}", path.display())]
    Image { path: PathBuf, why: String },
    #[error("{name}: {source}")]
    Lock { name: String, source: LockError },
    #[error("too many virtio devices: {nics} NICs and {disks} disks, at most {max} in all")]
    TooMany {
        nics: usize,
        disks: usize,
        max: usize,
    },
    #[error("{name}: {source}")]
    Wire { name: String, source: WireError },
}

/// The guest's name for disk `index`: vda, vdb, ..., vdz, vdaa, ...
pub fn guest_name(index: usize) -> String {
    let mut name = String::new();
    let mut n = index + 1;
    while n > 0 {
        n -= 1;
        name.insert(0, char::from(b'a' + (n % 26) as u8));
        n /= 26;
    }
    format!("vd{name}")
}

/// Opens a disk image, refusing what cannot be one, and takes its lock.
pub fn open(spec: &DiskSpec, name: &str) -> Result<(File, u64), DiskError> {
    let bad = |why: String| DiskError::Image {
        path: spec.path.clone(),
        why,
    };
    let meta = std::fs::metadata(&spec.path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => bad("does not exist".into()),
        _ => bad(format!("cannot be read: {e}")),
    })?;
    use std::os::unix::fs::FileTypeExt;
    let kind = meta.file_type();
    if kind.is_dir() {
        return Err(bad("is a directory, not a disk image".into()));
    }
    if !kind.is_file() && !kind.is_block_device() {
        return Err(bad("is neither a regular file nor a block device".into()));
    }
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(!spec.readonly)
        .open(&spec.path)
        .map_err(|e| bad(format!("cannot be opened: {e}")))?;
    // A block device's size is what seeking to its end says, not its metadata.
    let size = file
        .seek(SeekFrom::End(0))
        .map_err(|e| bad(format!("has no size: {e}")))?;
    if size < devices::virtio::blk::SECTOR_SIZE {
        return Err(bad(format!(
            "is {size} bytes: a disk needs at least one 512-byte sector"
        )));
    }
    image_lock::lock(&file, &spec.path, !spec.readonly).map_err(|source| DiskError::Lock {
        name: name.to_string(),
        source,
    })?;
    Ok((file, size))
}

/// What the user should know about one disk.
#[derive(Debug, Clone)]
pub struct DiskInfo {
    pub guest_name: String,
    pub path: PathBuf,
    pub size: u64,
    pub readonly: bool,
}

impl std::fmt::Display for DiskInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} <-> {} ({} MiB{})",
            self.guest_name,
            self.path.display(),
            self.size >> 20,
            if self.readonly { ", read-only" } else { "" }
        )
    }
}

/// Reads one disk's device counters.
pub struct DiskCounters(Box<dyn Fn() -> (BlockStats, Option<String>) + Send>);

impl DiskCounters {
    /// The counters, and what the hypervisor refused of the transport's setup if anything.
    pub fn read(&self) -> (BlockStats, Option<String>) {
        (self.0)()
    }
}

/// The built disks.
#[derive(Default)]
pub struct Disks {
    pub infos: Vec<DiskInfo>,
    pub counters: Vec<DiskCounters>,
}

/// Opens every image first (so a bad `--disk` fails before anything is wired), then wires
/// each disk after the NICs.
pub fn build(specs: &[DiskSpec], placer: &mut virtio_slot::Placer) -> Result<Disks, DiskError> {
    let first_slot = placer.count();
    if first_slot + specs.len() > virtio_slot::MAX_DEVICES {
        return Err(DiskError::TooMany {
            nics: first_slot,
            disks: specs.len(),
            max: virtio_slot::MAX_DEVICES,
        });
    }
    let mut opened = Vec::new();
    for (index, spec) in specs.iter().enumerate() {
        let name = guest_name(index);
        let (file, size) = open(spec, &name)?;
        opened.push((name, file, size, spec));
    }
    let mut disks = Disks::default();
    for (name, file, size, spec) in opened {
        let id = format!("netvmm-{name}");
        let placed = placer
            .place(&name, Block::new(file, size, spec.readonly, &id))
            .map_err(|source| DiskError::Wire {
                name: name.clone(),
                source,
            })?;
        disks.counters.push(DiskCounters(Box::new(move || {
            let fault = placed.fault();
            (placed.inspect(|d, _| d.stats()), fault)
        })));
        disks.infos.push(DiskInfo {
            guest_name: name,
            path: spec.path.clone(),
            size,
            readonly: spec.readonly,
        });
    }
    Ok(disks)
}

/// One report line per disk at exit (`NETVMM_BOOT_REPORT`).
pub fn counters_line(guest_name: &str, s: &BlockStats) -> String {
    format!(
        "netvmm-disk-report: {guest_name} reads={} read_bytes={} writes={} written_bytes={} flushes={} errors={} unsupported={} dropped={}",
        s.reads, s.read_bytes, s.writes, s.written_bytes, s.flushes, s.errors, s.unsupported, s.dropped
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn specs_parse_path_and_readonly() {
        let d: DiskSpec = "/img/a.raw".parse().unwrap();
        assert_eq!((d.path.to_str(), d.readonly), (Some("/img/a.raw"), false));
        let d: DiskSpec = "/img/b.raw,readonly".parse().unwrap();
        assert!(d.readonly);
        let d: DiskSpec = r#"path="/img/with,comma.raw",readonly"#.parse().unwrap();
        assert_eq!(d.path, PathBuf::from("/img/with,comma.raw"));
        assert_eq!("".parse::<DiskSpec>().unwrap_err(), DiskSpecError::NoPath);
        let e = "/a,rw".parse::<DiskSpec>().unwrap_err().to_string();
        assert!(e.contains("'rw'") && e.contains("readonly"), "{e}");
        assert!("/a,readonly,readonly".parse::<DiskSpec>().is_err());
    }

    #[test]
    fn guest_names_go_vda_to_vdz_then_vdaa() {
        assert_eq!(guest_name(0), "vda");
        assert_eq!(guest_name(1), "vdb");
        assert_eq!(guest_name(25), "vdz");
        assert_eq!(guest_name(26), "vdaa");
    }

    #[test]
    fn bad_images_are_one_clear_line() {
        let dir = std::env::temp_dir().join(format!("netvmm-disks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let spec = |p: &Path| DiskSpec {
            path: p.to_path_buf(),
            readonly: false,
        };
        let e = open(&spec(&dir.join("missing")), "vda")
            .unwrap_err()
            .to_string();
        assert!(e.ends_with("does not exist"), "{e}");
        let e = open(&spec(&dir), "vda").unwrap_err().to_string();
        assert!(e.contains("is a directory"), "{e}");
        let empty = dir.join("empty");
        std::fs::write(&empty, b"").unwrap();
        let e = open(&spec(&empty), "vda").unwrap_err().to_string();
        assert!(e.contains("is 0 bytes"), "{e}");
        let e = open(&spec(Path::new("/dev/null")), "vda")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("neither a regular file nor a block device"),
            "{e}"
        );
        let ok = dir.join("ok");
        std::fs::write(&ok, vec![0u8; 4096]).unwrap();
        let (_held, size) = open(&spec(&ok), "vda").unwrap();
        assert_eq!(size, 4096);
        let e = open(&spec(&ok), "vdb").unwrap_err().to_string();
        assert!(e.starts_with("vdb: ") && e.contains("in use"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
