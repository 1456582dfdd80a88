//! CI verdicts, end to end in the emulated lab host: the guest's status is netvmm's exit
//! status (netvmm's own init, `-- CMD`, a foreign init writing the exit device), netvmm's
//! own failures are told apart on stderr, and a kernel built from `make tinyconfig` plus
//! `netvmm kconfig` boots, brings up eth0 and reports through the exit device.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

const SCENARIO: &str = r#"
G="--kernel $NETVMM_GUEST_KERNEL --initrd $NETVMM_GUEST_INITRD"
for v in 0 7 255; do
  netvmm run $G --timeout 300 --cmdline "quiet netvmm.run=\"exit $v\"" >/dev/null 2>/tmp/run$v.err
  echo "case=run$v status=$? said=$(grep -c "status $v through the exit device" /tmp/run$v.err)"
done

# The console says the command passed; the exit device says it did not.
netvmm run $G --timeout 300 \
  --cmdline 'quiet netvmm.run="echo netvmm-guest: command exited with status 0; exit 6"' >/dev/null 2>&1
echo "case=liar status=$?"

# Every argument after -- arrives intact: spaces, quotes, $, an empty one.
netvmm run $G --timeout 300 --cmdline quiet -- \
  sh -c 'printf "<%s>" "$@"; echo; exit 5' argv0 'two words' '$HOME' "it's" '' >/tmp/argv.out 2>&1
echo "case=argv status=$? out=$(tr -d '\r' </tmp/argv.out | grep -a '^<' | tr ' ' '_')"

# A kernel panic is netvmm's own status 3, and says so; not a command's status.
netvmm run $G --timeout 300 --cmdline 'quiet netvmm.run="echo c > /proc/sysrq-trigger"' \
  >/dev/null 2>/tmp/panic.err
echo "case=panic status=$? panicked=$(grep -c 'guest kernel panicked' /tmp/panic.err) device=$(grep -c 'exit device' /tmp/panic.err)"

# A foreign init (a few lines of busybox sh that know nothing of netvmm) on Debian's
# generic kernel, which has /dev/port.
for v in 0 3 124 200; do
  netvmm run --kernel /lab/files/vmlinuz --initrd /lab/files/foreign.cpio --timeout 300 \
    --cmdline "quiet status=$v" >/dev/null 2>/tmp/foreign$v.err
  echo "case=foreign$v status=$? said=$(grep -c "status $v through the exit device" /tmp/foreign$v.err)"
done

# --timeout is 124 too, and says it was the timeout.
netvmm run $G --timeout 20 --cmdline 'quiet netvmm.run="sleep 1000"' >/dev/null 2>/tmp/timeout.err
echo "case=timeout status=$? said=$(grep -c 'timeout expired' /tmp/timeout.err) device=$(grep -c 'exit device' /tmp/timeout.err)"
"#;

/// The foreign init: busybox sh, /dev/port and dd, as README.md documents it.
const FOREIGN_INIT: &str = r#"#!/bin/busybox sh
/bin/busybox mkdir -p /proc /dev
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t devtmpfs dev /dev
for w in $(/bin/busybox cat /proc/cmdline); do
  case $w in status=*) v=${w#status=} ;; esac
done
echo "foreign init: writing $v to port 0xf4" >/dev/ttyS0
/bin/busybox printf "\\$(/bin/busybox printf %o "$v")" | /bin/busybox dd of=/dev/port bs=1 seek=244 count=1
echo "foreign init: still running after the write" >/dev/ttyS0
/bin/busybox poweroff -f
"#;

fn foreign_initrd(dir: &Path) -> PathBuf {
    let busybox = std::fs::read("/bin/busybox").expect("/bin/busybox (busybox-static) on the host");
    let mut c = lab::cpio::CpioWriter::new();
    c.add_file("bin/busybox", 0o755, &busybox).unwrap();
    c.add_file("init", 0o755, FOREIGN_INIT.as_bytes()).unwrap();
    let path = dir.join("foreign.cpio");
    let mut f = std::fs::File::create(&path).unwrap();
    c.finish(&mut f).unwrap();
    path
}

#[test]
fn the_guests_verdict_is_netvmms_exit_status() {
    let dir = std::env::temp_dir().join(format!("netvmm-verdict-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let initrd = foreign_initrd(&dir);
    let generic = common::image_path(&["kernel", "--flavour", "generic"]);
    let out = common::lab_with_files(SCENARIO, 1500, &[&generic, &initrd]);
    let _ = std::fs::remove_dir_all(&dir);
    let dump = out.dump();
    assert_eq!(out.status, 0, "{dump}");
    let field = |case: &str, key: &str| out.field(case, key);

    for v in ["0", "7", "255"] {
        let case = format!("run{v}");
        assert_eq!(field(&case, "status").as_deref(), Some(v), "{dump}");
        // Status 0 is a clean end and says nothing; any other names the exit device.
        let said = if v == "0" { "0" } else { "1" };
        assert_eq!(field(&case, "said").as_deref(), Some(said), "{dump}");
    }
    assert_eq!(field("liar", "status").as_deref(), Some("6"), "{dump}");
    assert_eq!(field("argv", "status").as_deref(), Some("5"), "{dump}");
    assert_eq!(
        field("argv", "out").as_deref(),
        Some("<two_words><$HOME><it's><>"),
        "{dump}"
    );
    assert_eq!(field("panic", "status").as_deref(), Some("3"), "{dump}");
    assert_eq!(field("panic", "panicked").as_deref(), Some("1"), "{dump}");
    assert_eq!(field("panic", "device").as_deref(), Some("0"), "{dump}");
    for v in ["0", "3", "124", "200"] {
        let case = format!("foreign{v}");
        assert_eq!(field(&case, "status").as_deref(), Some(v), "{dump}");
    }
    assert_eq!(field("foreign124", "said").as_deref(), Some("1"), "{dump}");
    assert_eq!(field("timeout", "status").as_deref(), Some("124"), "{dump}");
    assert_eq!(field("timeout", "said").as_deref(), Some("1"), "{dump}");
    assert_eq!(field("timeout", "device").as_deref(), Some("0"), "{dump}");
}

#[test]
fn lab_run_passes_the_command_and_its_status_through() {
    let kernel = common::image_path(&["kernel"]);
    let initrd = common::image_path(&["initrd"]);
    let (k, i) = (kernel.to_str().unwrap(), initrd.to_str().unwrap());
    let out = common::netvmm_in_lab(&[
        "lab",
        "run",
        "--kernel",
        k,
        "--initrd",
        i,
        "--timeout",
        "300",
        "--cmdline",
        "quiet",
        "--",
        "sh",
        "-c",
        r#"echo "two words"; exit 5"#,
    ]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(5), "{stdout}\n{stderr}");
    assert!(
        stdout.lines().any(|l| l.trim_end() == "two words"),
        "{stdout}"
    );
    // netvmm inside the lab host writes to the lab's console, which comes out on either.
    assert!(
        format!("{stdout}{stderr}").contains("status 5 through the exit device"),
        "{stdout}\n{stderr}"
    );
}

/// examples/ci-boot-test.sh, as a CI job runs it: the tinyconfig kernel (built once from
/// linux-source-6.1 with `netvmm kconfig`), 2 vCPUs, eth0 through a tap, the verdict
/// through /dev/port; a failing test fails the job with its own status.
#[test]
fn a_tinyconfig_kernel_boots_with_the_fragment_and_the_example_job_works() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/ci-boot-test.sh");
    let run = |args: &[&str]| {
        common::command_in_lab(|| {
            Command::new("sh")
                .arg(&script)
                .args(args)
                .env("NETVMM", common::NETVMM)
                .stdin(std::process::Stdio::null())
                .output()
                .expect("sh runs the example")
        })
    };
    let text = |o: &std::process::Output| {
        format!(
            "status {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            o.status.code(),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };

    // The default test: both vCPUs, and eth0 pings the host's tap.
    let pass = run(&[]);
    assert_eq!(pass.status.code(), Some(0), "{}", text(&pass));
    let stdout = String::from_utf8_lossy(&pass.stdout);
    assert!(stdout.contains("2 packets received"), "{}", text(&pass));
    assert!(stdout.contains("cpus=2"), "{}", text(&pass));

    let fail = run(&["sh", "-c", "echo failing-test; exit 7"]);
    assert_eq!(fail.status.code(), Some(7), "{}", text(&fail));
    assert!(
        String::from_utf8_lossy(&fail.stdout).contains("failing-test"),
        "{}",
        text(&fail)
    );
}
