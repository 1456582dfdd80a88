//! `netvmm doctor`: what this host offers, one line per fact, and where netvmm will run.

use std::path::Path;

use vmm::kvm_kind::{self, KvmKind};

const NET_MODULES: [&str; 5] = ["tun", "bridge", "macvlan", "macvtap", "vhost_net"];
const CAP_NET_ADMIN: u32 = 12;

fn module_state(name: &str, release: &str) -> &'static str {
    if Path::new("/sys/module").join(name).exists() {
        return "loaded";
    }
    let builtin = std::fs::read_to_string(format!("/lib/modules/{release}/modules.builtin"))
        .unwrap_or_default();
    if builtin.lines().any(|l| l.ends_with(&format!("/{name}.ko"))) {
        return "built in";
    }
    let dep =
        std::fs::read_to_string(format!("/lib/modules/{release}/modules.dep")).unwrap_or_default();
    if dep.lines().any(|l| l.contains(&format!("/{name}.ko"))) {
        return "available (not loaded)";
    }
    "not found"
}

/// A module that /dev/net/tun, which opened, shows is there: a module built into a
/// kernel whose modules.builtin is not installed (a container without /lib/modules, a
/// custom kernel) is "not found" by name, yet works.
fn state_given_a_working_device(by_name: &'static str, device_works: bool) -> &'static str {
    if device_works && by_name == "not found" {
        "present (/dev/net/tun works)"
    } else {
        by_name
    }
}

/// Whether the effective capability set in /proc/self/status has `cap`.
pub fn has_capability(status: &str, cap: u32) -> bool {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << cap) != 0)
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

pub fn run() -> i32 {
    let kind = kvm_kind::detect();
    println!("kvm:        {}", kind.describe());
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun");
    let tun_works = tun.is_ok();
    println!(
        "tun:        /dev/net/tun {}",
        match tun {
            Ok(_) => "usable".to_string(),
            Err(e) => format!("not usable: {e}"),
        }
    );
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let release = release.trim();
    for m in NET_MODULES {
        let mut state = module_state(m, release);
        if m == "tun" {
            state = state_given_a_working_device(state, tun_works);
        }
        println!("module:     {m:<10} {state}");
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    println!(
        "privileges: CAP_NET_ADMIN {}",
        if has_capability(&status, CAP_NET_ADMIN) {
            "yes (can create interfaces)"
        } else {
            "no (only existing taps can be used)"
        }
    );
    println!(
        "lab:        qemu-system-x86_64 {}",
        if on_path("qemu-system-x86_64") {
            "found"
        } else {
            "missing (apt-get install qemu-system-x86)"
        }
    );
    let verdict = match kind {
        KvmKind::Hardware(_) | KvmKind::Unknown => "guests run natively: netvmm run ...",
        KvmKind::Pvm | KvmKind::Missing(_) => "guests run in the emulated lab: netvmm lab run ...",
    };
    println!("verdict:    {verdict}");
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_working_dev_net_tun_means_tun_is_there() {
        assert_eq!(
            state_given_a_working_device("not found", true),
            "present (/dev/net/tun works)"
        );
        assert_eq!(
            state_given_a_working_device("not found", false),
            "not found"
        );
        assert_eq!(state_given_a_working_device("loaded", true), "loaded");
    }

    #[test]
    fn capability_mask_is_read_from_status() {
        assert!(has_capability(
            "Name:\tx\nCapEff:\t000001ffffffffff\n",
            CAP_NET_ADMIN
        ));
        assert!(!has_capability(
            "CapEff:\t0000000000000000\n",
            CAP_NET_ADMIN
        ));
        assert!(!has_capability("", CAP_NET_ADMIN));
    }
}
