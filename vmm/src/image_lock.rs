//! Disk image locking compatible with QEMU's (block/file-posix.c): open-file-description
//! (OFD) byte locks at offset 100 + P for each permission P a user holds, and 200 + P for
//! each permission it will not share with others. A second netvmm, or a QEMU, that wants
//! to write the image sees ours and refuses, and we see theirs.
//!
//! Permission bits, as QEMU numbers them: 0 consistent read, 1 write.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

const PERM_BASE: i64 = 100;
const SHARED_BASE: i64 = 200;
const CONSISTENT_READ: i64 = 0;
const WRITE: i64 = 1;

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{path} is in use by {holder}: refusing to open it{how}", how = if *.writable { " for writing" } else { "" })]
    InUse {
        path: String,
        holder: String,
        writable: bool,
    },
    #[error("cannot lock {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// Takes the locks a user of `image` holds: a writer holds read and write and shares
/// neither writing; a reader holds read and does not share writing either, as QEMU's
/// default is for a disk that must not change under it.
pub fn lock(image: &File, path: &Path, writable: bool) -> Result<(), LockError> {
    let held: &[i64] = if writable {
        &[CONSISTENT_READ, WRITE]
    } else {
        &[CONSISTENT_READ]
    };
    let unshared: &[i64] = &[WRITE];
    let io = |source| LockError::Io {
        path: path.display().to_string(),
        source,
    };
    // Someone refuses to share what we want to hold, or holds what we refuse to share.
    let conflicts = held
        .iter()
        .map(|p| SHARED_BASE + p)
        .chain(unshared.iter().map(|p| PERM_BASE + p));
    for byte in conflicts {
        if locked_by_another(image, byte).map_err(io)? {
            return Err(LockError::InUse {
                path: path.display().to_string(),
                holder: holders(path),
                writable,
            });
        }
    }
    for byte in held
        .iter()
        .map(|p| PERM_BASE + p)
        .chain(unshared.iter().map(|p| SHARED_BASE + p))
    {
        set_read_lock(image, byte).map_err(io)?;
    }
    Ok(())
}

fn flock_at(byte: i64, kind: i32) -> libc::flock {
    libc::flock {
        l_type: kind as i16,
        l_whence: libc::SEEK_SET as i16,
        l_start: byte,
        l_len: 1,
        l_pid: 0,
    }
}

/// Whether another open file description holds a lock on `byte` (ours never conflict).
fn locked_by_another(image: &File, byte: i64) -> std::io::Result<bool> {
    let mut fl = flock_at(byte, libc::F_WRLCK);
    // SAFETY: F_OFD_GETLK reads and writes the flock struct we pass, which lives for the
    // call; the fd is open (owned by `image`).
    let r = unsafe { libc::fcntl(image.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(i32::from(fl.l_type) != libc::F_UNLCK)
}

/// A shared lock on `byte`, held as long as the file description is open.
fn set_read_lock(image: &File, byte: i64) -> std::io::Result<()> {
    let fl = flock_at(byte, libc::F_RDLCK);
    // SAFETY: F_OFD_SETLK only reads the flock struct, which lives for the call; the fd is
    // open (owned by `image`).
    let r = unsafe { libc::fcntl(image.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Who has `path` open, as far as /proc shows (OFD locks carry no owner): "netvmm (pid
/// 1234)", or "another process" when nothing is visible.
fn holders(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let Ok(target) = std::fs::metadata(path) else {
        return "another process".into();
    };
    let me = std::process::id();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let fds = std::fs::read_dir(entry.path().join("fd"))
            .into_iter()
            .flatten();
        let opens = fds.flatten().any(|fd| {
            std::fs::metadata(fd.path())
                .is_ok_and(|m| m.dev() == target.dev() && m.ino() == target.ino())
        });
        if opens {
            let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            found.push(format!("{} (pid {pid})", comm.trim()));
        }
    }
    if found.is_empty() {
        "another process".into()
    } else {
        found.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(name: &str) -> (std::path::PathBuf, File) {
        let path = std::env::temp_dir().join(format!("netvmm-lock-{}-{name}", std::process::id()));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        (path, f)
    }

    fn reopen(path: &Path) -> File {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap()
    }

    #[test]
    fn a_second_writer_is_refused_and_named() {
        let (path, first) = image("writers");
        lock(&first, &path, true).unwrap();
        let second = reopen(&path);
        let e = lock(&second, &path, true).unwrap_err().to_string();
        assert!(
            e.contains("is in use by") && e.contains("for writing"),
            "{e}"
        );
        let e = lock(&second, &path, false).unwrap_err().to_string();
        assert!(e.contains("is in use by"), "{e}");
        drop(first);
        lock(&second, &path, true).unwrap();
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn readers_share_and_keep_writers_out() {
        let (path, a) = image("readers");
        lock(&a, &path, false).unwrap();
        let b = reopen(&path);
        lock(&b, &path, false).unwrap();
        let c = reopen(&path);
        assert!(lock(&c, &path, true).is_err());
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn the_bytes_are_qemus() {
        // QEMU's raw driver tests these very bytes before it takes write permission.
        let (path, a) = image("bytes");
        lock(&a, &path, true).unwrap();
        let probe = reopen(&path);
        for byte in [100, 101, 201] {
            assert!(locked_by_another(&probe, byte).unwrap(), "byte {byte}");
        }
        assert!(!locked_by_another(&probe, 200).unwrap());
        std::fs::remove_file(&path).unwrap();
    }
}
