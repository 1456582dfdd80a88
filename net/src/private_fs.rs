//! Files netvmm makes in `$TMPDIR` (work directories, lock files, device nodes), made so
//! that nothing another local user prepared there can stand in for them. netvmm runs as
//! root: a predictable name that it creates with `create_dir_all` and then writes through
//! lets anyone who guessed the name first point it, by a symlink, at any file on the host.
//! So a private directory gets a fresh unpredictable name, made atomically with mode 0700
//! (mkdtemp), and a file is only ever created new, never through a symlink.

use std::ffi::{CString, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// A directory nobody but its owner can enter, under a name nobody could have guessed,
/// removed with its contents when dropped.
#[derive(Debug)]
pub struct PrivateDir {
    path: PathBuf,
}

impl PrivateDir {
    /// A fresh `<prefix>XXXXXX` directory in `std::env::temp_dir()`.
    pub fn new(prefix: &str) -> io::Result<Self> {
        Self::new_in(&std::env::temp_dir(), prefix)
    }

    /// A fresh `<prefix>XXXXXX` directory in `parent`, made by mkdtemp(3): the kernel's
    /// mkdir either makes a new directory of mode 0700 or fails, so neither an existing
    /// directory nor a symlink can be it.
    pub fn new_in(parent: &Path, prefix: &str) -> io::Result<Self> {
        let mut template = parent
            .join(format!("{prefix}XXXXXX"))
            .into_os_string()
            .into_vec();
        template.push(0);
        // SAFETY: `template` is a writable NUL-terminated buffer that mkdtemp fills in place;
        // it outlives the call.
        let made = unsafe { libc::mkdtemp(template.as_mut_ptr().cast()) };
        if made.is_null() {
            return Err(io::Error::last_os_error());
        }
        template.pop();
        Ok(Self {
            path: PathBuf::from(OsString::from_vec(template)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A new file `name` in this directory (see [`create_new`]).
    pub fn create_file(&self, name: &str) -> io::Result<File> {
        create_new(&self.path.join(name))
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        // remove_dir_all does not follow symlinks inside the tree.
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Creates `path` as a new file of mode 0600 for writing: never an existing file, never
/// through a symlink (O_EXCL with O_CREAT refuses both, and O_NOFOLLOW says so again).
pub fn create_new(path: &Path) -> io::Result<File> {
    File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Opens (creating it when missing) a lock file that netvmm processes share: never
/// through a symlink, and only a regular file of this user's, so that nobody else can
/// hold the lock or make netvmm write somewhere else.
pub fn open_lock(path: &Path) -> io::Result<File> {
    let f = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    let m = f.metadata()?;
    if !m.is_file() {
        return Err(io::Error::other("it is not a regular file"));
    }
    check_owner(&m)?;
    Ok(f)
}

/// An exclusive lock on `name` in this user's [`shared_dir`], held until dropped (closing
/// the file releases it): how concurrent netvmm processes serialise a read-modify-write
/// of shared host state. A predictable name in the shared `$TMPDIR` itself could be a
/// symlink someone planted, or a file they hold locked.
#[derive(Debug)]
pub struct ExclusiveLock {
    _file: File,
}

impl ExclusiveLock {
    /// Blocks until the lock is ours; the error names the lock file.
    pub fn take(name: &str) -> Result<Self, (String, io::Error)> {
        let dir = shared_dir().map_err(|e| (format!("$TMPDIR/{name}"), e))?;
        let path = dir.join(name);
        let shown = || path.display().to_string();
        let f = open_lock(&path).map_err(|e| (shown(), e))?;
        // SAFETY: flock on a descriptor we own; blocks until the lock is ours.
        if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&f), libc::LOCK_EX) } != 0 {
            return Err((shown(), io::Error::last_os_error()));
        }
        Ok(ExclusiveLock { _file: f })
    }
}

/// Makes a character device node at `path` (which must not exist; mknod never follows a
/// symlink), mode 0600, and opens it with `flags`; the node is removed again either way,
/// so only the returned descriptor remains.
pub fn open_private_node(path: &Path, dev: libc::dev_t, flags: i32) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: mknod with a valid NUL-terminated path; the result is checked.
    if unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o600, dev) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: opening a NUL-terminated path; the result is checked.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_NOFOLLOW | libc::O_CLOEXEC) };
    let opened = io::Error::last_os_error();
    let _ = std::fs::remove_file(path);
    if fd < 0 {
        return Err(opened);
    }
    // SAFETY: a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `$TMPDIR/netvmm-<uid>`: where this user's netvmm processes meet (lock files),
/// created with mode 0700 when missing, refused when it is not a directory of this user's
/// that only they can enter (someone else may have made it first).
pub fn shared_dir() -> io::Result<PathBuf> {
    shared_dir_in(&std::env::temp_dir())
}

fn shared_dir_in(parent: &Path) -> io::Result<PathBuf> {
    let uid = euid();
    let path = parent.join(format!("netvmm-{uid}"));
    match std::fs::DirBuilder::new().mode(0o700).create(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let m = std::fs::symlink_metadata(&path)?;
    let refuse = |why: String| io::Error::other(format!("{}: {why}", path.display()));
    if !m.is_dir() {
        return Err(refuse("is not a directory (a symlink?)".into()));
    }
    check_owner(&m).map_err(|e| refuse(e.to_string()))?;
    if m.permissions().mode() & 0o077 != 0 {
        return Err(refuse(format!(
            "is open to other users (mode {:o}); it must be 0700",
            m.permissions().mode() & 0o7777
        )));
    }
    Ok(path)
}

fn euid() -> u32 {
    // SAFETY: geteuid has no arguments and cannot fail.
    unsafe { libc::geteuid() }
}

fn check_owner(m: &std::fs::Metadata) -> io::Result<()> {
    let uid = euid();
    if m.uid() != uid {
        return Err(io::Error::other(format!(
            "it belongs to uid {}, not to this user ({uid})",
            m.uid()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PrivateDir {
        PrivateDir::new(&format!("netvmm-test-{tag}-")).unwrap()
    }

    #[test]
    fn a_private_dir_is_fresh_0700_and_goes_when_dropped() {
        let a = scratch("pd");
        let b = scratch("pd");
        assert_ne!(a.path(), b.path(), "every directory gets a new name");
        let m = std::fs::symlink_metadata(a.path()).unwrap();
        assert!(m.is_dir());
        assert_eq!(m.permissions().mode() & 0o7777, 0o700);
        let name = a.path().file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.starts_with("netvmm-test-pd-") && name.len() == 21,
            "{name}"
        );
        let kept = a.path().to_path_buf();
        drop(a);
        assert!(!kept.exists());
    }

    #[test]
    fn created_files_refuse_symlinks_and_existing_files() {
        let d = scratch("cn");
        let victim = d.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let link = d.path().join("status");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        assert!(d.create_file("status").is_err(), "through a symlink");
        assert!(d.create_file("victim").is_err(), "an existing file");
        let dangling = d.path().join("dangling");
        std::os::unix::fs::symlink(d.path().join("nowhere"), &dangling).unwrap();
        assert!(create_new(&dangling).is_err(), "through a dangling symlink");
        assert!(!d.path().join("nowhere").exists());
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        let f = d.create_file("fresh").unwrap();
        assert_eq!(f.metadata().unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn a_lock_file_is_reused_but_never_a_symlink() {
        let d = scratch("lk");
        let lock = d.path().join("x.lock");
        open_lock(&lock).unwrap();
        open_lock(&lock).unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let link = d.path().join("y.lock");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        assert!(open_lock(&link).is_err());
        let sub = d.path().join("z.lock");
        std::fs::create_dir(&sub).unwrap();
        assert!(open_lock(&sub).is_err(), "a directory");
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    }

    #[test]
    fn the_shared_dir_is_made_private_and_refused_when_someone_else_could_have_made_it() {
        let d = scratch("sd");
        let want = d.path().join(format!("netvmm-{}", euid()));
        assert_eq!(shared_dir_in(d.path()).unwrap(), want);
        let m = std::fs::symlink_metadata(&want).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, 0o700);
        assert_eq!(shared_dir_in(d.path()).unwrap(), want, "found again");

        std::fs::set_permissions(&want, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let e = shared_dir_in(d.path()).unwrap_err().to_string();
        assert!(
            e.contains("open to other users") && e.contains("1777"),
            "{e}"
        );

        std::fs::remove_dir(&want).unwrap();
        let elsewhere = scratch("sd-target");
        std::os::unix::fs::symlink(elsewhere.path(), &want).unwrap();
        let e = shared_dir_in(d.path()).unwrap_err().to_string();
        assert!(e.contains("not a directory"), "{e}");
    }

    #[test]
    fn a_node_is_made_opened_and_removed_and_never_over_a_symlink() {
        let d = scratch("nd");
        // /dev/null's device number: a node anyone may open.
        let null = std::fs::metadata("/dev/null").unwrap().rdev();
        let at = d.path().join("node");
        match open_private_node(&at, null, libc::O_RDWR) {
            Ok(_) => assert!(!at.exists(), "the node is removed once open"),
            // Without CAP_MKNOD there is nothing more to check.
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => return,
            Err(e) => panic!("{e}"),
        }
        let victim = d.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        std::os::unix::fs::symlink(&victim, &at).unwrap();
        assert!(open_private_node(&at, null, libc::O_RDWR).is_err());
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    }
}
