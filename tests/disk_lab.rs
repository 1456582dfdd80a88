//! Guest disks end to end in the emulated lab host: virtio-blk on raw images, what the guest
//! writes is in the host file and the other way round, read-only disks stay unchanged,
//! synced data survives SIGKILL, two disks are vda and vdb, and a busy image is refused.
//! Then `netvmm lab run --disk` from this host: the host file holds what the guest wrote.

mod common;

use std::path::PathBuf;

const SCENARIO: &str = r#"
G="--kernel $NETVMM_GUEST_KERNEL --initrd $NETVMM_GUEST_INITRD"
run() { netvmm run $G --timeout 300 "$@"; }

# The guest writes, the host reads.
truncate -s 8M /tmp/a.img
run --disk /tmp/a.img --cmdline quiet -- sh -c 'echo guest-wrote-this | dd of=/dev/vda bs=512 seek=100 conv=notrunc 2>/dev/null; sync' >/dev/null 2>/tmp/a.err
s=$?; got=$(dd if=/tmp/a.img bs=512 skip=100 count=1 2>/dev/null | head -n 1)
echo "case=write status=$s got=$got"

# The host writes, the guest reads; both disks, in order, with their sizes.
truncate -s 16M /tmp/b.img
echo host-wrote-this | dd of=/tmp/b.img bs=512 seek=7 conv=notrunc 2>/dev/null
run --disk /tmp/a.img --disk /tmp/b.img --serial-log /tmp/b.log --cmdline quiet -- \
  sh -c 'echo sizes=$(cat /sys/block/vda/size):$(cat /sys/block/vdb/size); echo read=$(dd if=/dev/vdb bs=512 skip=7 count=1 2>/dev/null | head -n 1)' >/dev/null 2>&1
echo "case=read status=$? $(tr -d '\r' </tmp/b.log | grep -a '^sizes=') $(tr -d '\r' </tmp/b.log | grep -a '^read=')"

# Read-only: the guest sees it, a write fails, the file is unchanged byte for byte.
before=$(sha256sum /tmp/b.img | cut -d' ' -f1)
run --disk /tmp/b.img,readonly --serial-log /tmp/ro.log --cmdline quiet -- \
  sh -c 'echo ro=$(blockdev --getro /dev/vda); if echo x | dd of=/dev/vda conv=notrunc,fsync 2>/dev/null; then echo write=ok; else echo write=failed; fi' >/dev/null 2>&1
after=$(sha256sum /tmp/b.img | cut -d' ' -f1)
echo "case=readonly status=$? $(tr -d '\r' </tmp/ro.log | grep -a '^ro=') $(tr -d '\r' </tmp/ro.log | grep -a '^write=') same=$([ "$before" = "$after" ] && echo 1 || echo 0)"

# A guest sync, then SIGKILL: the synced data is in the file. Meanwhile a second netvmm
# on the same image is refused and names the holder.
truncate -s 8M /tmp/k.img
run --disk /tmp/k.img --serial-log /tmp/k.log --cmdline quiet -- \
  sh -c 'echo synced-before-kill | dd of=/dev/vda bs=512 seek=3 conv=notrunc 2>/dev/null; sync; echo synced-now; sleep 1000' >/dev/null 2>&1 &
pid=$!
i=0; while ! grep -q synced-now /tmp/k.log 2>/dev/null && [ $i -lt 600 ]; do sleep 0.5; i=$((i+1)); done
run --disk /tmp/k.img --cmdline quiet -- true >/dev/null 2>/tmp/second.err
second=$?
kill -9 $pid; wait $pid 2>/dev/null
got=$(dd if=/tmp/k.img bs=512 skip=3 count=1 2>/dev/null | head -n 1)
echo "case=kill got=$got second=$second named=$(grep -c 'in use by netvmm (pid' /tmp/second.err)"

# Bad images: one line each, status 1.
mkdir -p /tmp/dir; : > /tmp/empty.img
for bad in /tmp/nope.img /tmp/dir /tmp/empty.img; do
  run --disk $bad >/dev/null 2>/tmp/bad.err
  echo "case=bad$(basename $bad) status=$? lines=$(wc -l </tmp/bad.err)"
done
"#;

#[test]
fn disks_carry_data_both_ways_and_refuse_what_they_must() {
    let out = common::lab(SCENARIO, 1500);
    let dump = out.dump();
    assert_eq!(out.status, 0, "{dump}");
    let field = |case: &str, key: &str| out.field(case, key);
    assert_eq!(field("write", "status").as_deref(), Some("0"), "{dump}");
    assert_eq!(
        field("write", "got").as_deref(),
        Some("guest-wrote-this"),
        "{dump}"
    );
    assert_eq!(field("read", "status").as_deref(), Some("0"), "{dump}");
    // 8 MiB and 16 MiB in 512-byte sectors.
    assert_eq!(
        field("read", "sizes").as_deref(),
        Some("16384:32768"),
        "{dump}"
    );
    assert_eq!(
        field("read", "read").as_deref(),
        Some("host-wrote-this"),
        "{dump}"
    );
    assert_eq!(field("readonly", "ro").as_deref(), Some("1"), "{dump}");
    assert_eq!(
        field("readonly", "write").as_deref(),
        Some("failed"),
        "{dump}"
    );
    assert_eq!(field("readonly", "same").as_deref(), Some("1"), "{dump}");
    assert_eq!(
        field("kill", "got").as_deref(),
        Some("synced-before-kill"),
        "{dump}"
    );
    assert_eq!(field("kill", "second").as_deref(), Some("1"), "{dump}");
    assert_eq!(field("kill", "named").as_deref(), Some("1"), "{dump}");
    for bad in ["nope.img", "dir", "empty.img"] {
        let case = format!("bad{bad}");
        assert_eq!(field(&case, "status").as_deref(), Some("1"), "{dump}");
        assert_eq!(field(&case, "lines").as_deref(), Some("1"), "{dump}");
    }
}

#[test]
fn lab_run_leaves_what_the_guest_wrote_in_the_host_file() {
    let image: PathBuf =
        std::env::temp_dir().join(format!("netvmm-disk-lab-{}.img", std::process::id()));
    std::fs::write(&image, vec![0u8; 4 << 20]).unwrap();
    let (kernel, initrd) = (
        common::image_path(&["kernel"]),
        common::image_path(&["initrd"]),
    );
    let (k, i, d) = (
        kernel.display().to_string(),
        initrd.display().to_string(),
        image.display().to_string(),
    );
    let out = common::netvmm_in_lab(&[
        "lab",
        "run",
        "--kernel",
        &k,
        "--initrd",
        &i,
        "--disk",
        &d,
        "--timeout",
        "300",
        "--cmdline",
        "quiet",
        "--",
        "sh",
        "-c",
        "echo written-in-the-lab | dd of=/dev/vda conv=notrunc 2>/dev/null; sync",
    ]);
    let data = std::fs::read(&image).unwrap();
    let _ = std::fs::remove_file(&image);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        data.starts_with(b"written-in-the-lab\n"),
        "{:?}",
        &data[..32]
    );
    assert_eq!(data.len(), 4 << 20, "the image keeps its size");
}
