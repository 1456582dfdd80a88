//! Capabilities, per thread: Linux keeps the capability sets, the bounding set, the ambient
//! set and `no_new_privs` for each thread on its own, so every thread drops its own.

use std::io;

/// The one capability a thread may keep: netlink changes to interfaces (re-enslaving a
/// bridge port, putting a given tap back as found, deleting what netvmm created).
pub const CAP_NET_ADMIN: u32 = 12;
/// Needed to shrink the bounding set.
const CAP_SETPCAP: u32 = 8;
/// <linux/capability.h>: 64-bit capability sets, as two 32-bit halves.
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    /// 0: the calling thread.
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn header() -> CapHeader {
    CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    }
}

/// The calling thread's (effective, permitted) sets.
fn current() -> io::Result<(u64, u64)> {
    let mut hdr = header();
    let mut data = [CapData::default(); 2];
    // SAFETY: capget writes two CapData (version 3) into `data`, which is that size and
    // lives across the call; `hdr` is a valid header.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut hdr, data.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let join = |lo: u32, hi: u32| u64::from(lo) | (u64::from(hi) << 32);
    Ok((
        join(data[0].effective, data[1].effective),
        join(data[0].permitted, data[1].permitted),
    ))
}

fn prctl(option: libc::c_int, arg: libc::c_ulong) -> io::Result<libc::c_int> {
    // SAFETY: the prctl options used here take integer arguments only.
    let rc = unsafe { libc::prctl(option, arg, 0, 0, 0) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Empties the bounding set (what an execve could ever grant back). Without CAP_SETPCAP
/// it cannot be changed; such a thread holds nothing worth bounding, and `no_new_privs`
/// already stops an execve from gaining anything.
fn clear_bounding_set(effective: u64) -> io::Result<()> {
    if effective & (1 << CAP_SETPCAP) == 0 {
        return Ok(());
    }
    for cap in 0..64 {
        match prctl(libc::PR_CAPBSET_READ, cap) {
            // Past the kernel's last capability.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => break,
            Err(e) => return Err(e),
            Ok(0) => {}
            Ok(_) => {
                prctl(libc::PR_CAPBSET_DROP, cap)?;
            }
        }
    }
    Ok(())
}

/// Leaves the calling thread with CAP_NET_ADMIN alone (when `keep_net_admin` and it had
/// it) or with no capability at all, an empty bounding and ambient set, and
/// `no_new_privs`. Returns the effective set it is left with.
pub fn restrict_thread(keep_net_admin: bool) -> io::Result<u64> {
    let (effective, permitted) = current()?;
    clear_bounding_set(effective)?;
    match prctl(
        libc::PR_CAP_AMBIENT,
        libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
    ) {
        // Kernels before 4.3 have no ambient set.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
        r => {
            r?;
        }
    }
    let net_admin = 1u64 << CAP_NET_ADMIN;
    let kept = if keep_net_admin {
        permitted & net_admin
    } else {
        0
    };
    // CAP_NET_ADMIN is below 32: only the low half can hold anything.
    let data = [
        CapData {
            effective: kept as u32,
            permitted: kept as u32,
            inheritable: 0,
        },
        CapData::default(),
    ];
    let mut hdr = header();
    // SAFETY: capset reads two CapData (version 3) from `data`, which is that size and
    // lives across the call; `hdr` is a valid header naming the calling thread.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut hdr, data.as_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    prctl(libc::PR_SET_NO_NEW_PRIVS, 1)?;
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_field(tid: libc::pid_t, key: &str) -> String {
        let s = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap()
            .trim()
            .to_string()
    }

    #[test]
    fn a_thread_drops_its_own_capabilities_only() {
        // SAFETY: gettid has no arguments and cannot fail.
        let me = unsafe { libc::gettid() };
        let before = status_field(me, "CapEff:");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let kept = restrict_thread(true).unwrap();
            // SAFETY: as above.
            let tid = unsafe { libc::gettid() };
            tx.send((
                kept,
                status_field(tid, "CapEff:"),
                status_field(tid, "NoNewPrivs:"),
            ))
            .unwrap();
        })
        .join()
        .unwrap();
        let (kept, eff, nnp) = rx.recv().unwrap();
        assert_eq!(nnp, "1");
        assert_eq!(u64::from_str_radix(&eff, 16).unwrap(), kept);
        assert_eq!(kept & !(1 << CAP_NET_ADMIN), 0);
        // The test's own thread is untouched.
        assert_eq!(status_field(me, "CapEff:"), before);
    }
}
