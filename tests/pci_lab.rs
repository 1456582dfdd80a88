//! `--transport pci` end to end in the emulated lab host: the guest's stock virtio_pci
//! driver finds the NIC and the disk on PCI bus 0, gives each queue an MSI-X vector of its
//! own, and the network carries traffic both ways on the userspace path and with
//! vhost=on (the kernel's used-buffer eventfds on the queues' vectors); two queue pairs
//! with two vCPUs interrupt on four vectors; unbinding virtio-pci from the function and
//! binding it again (MSI-X torn down and set up anew, a reset) under traffic leaves a
//! working NIC. One lab boot for all cases; a case that met a fault of the emulated lab
//! (`lab_fault`, tests/common/prelude.sh) runs once more, and says so.

mod common;

// The guest's init evaluates its command line once: every `$` meant for the guest is `\$`.
const SCENARIO: &str = r#"
G="--kernel $NETVMM_GUEST_KERNEL --initrd $NETVMM_GUEST_INITRD --timeout 300 --memory 384 --transport pci"
printf 'netvmm-pci-disk' > /tmp/disk.img; truncate -s 1M /tmp/disk.img
# Interrupts a vector took on every vCPU, by its name in /proc/interrupts.
IRQ='irq() { awk -v n=\$1 \"\\\$NF == n { s = 0; for (i = 2; i < NF; i++) if (\\\$i ~ /^[0-9]+\\\$/) s += \\\$i; print s }\" /proc/interrupts; };'
# What the guest checks: where eth0 and vda sit, what kind of interrupt the NIC's vectors
# are, traffic both ways, and the interrupts each vector took.
T='echo where=\$(readlink -f /sys/class/net/eth0/device | cut -d / -f 4-5);
  echo disk_where=\$(readlink -f /sys/block/vda/device | cut -d / -f 4-5);
  echo disk=\$(head -c 15 /dev/vda);
  echo msix=\$(grep virtio0- /proc/interrupts | grep -c MSI);
  ping -c 2 -W 3 192.0.2.1 >/dev/null; echo ping=\$?;
  echo up=\$(iperf3 -c 192.0.2.1 -p PORTA -t 2 -f m | grep receiver | tr -s \" \" | cut -d \" \" -f 7);
  echo down=\$(iperf3 -c 192.0.2.1 -p PORTA -t 2 -f m -R | grep receiver | tr -s \" \" | cut -d \" \" -f 7);
  echo in0=\$(irq virtio0-input.0) out0=\$(irq virtio0-output.0)'
# The PCI driver unbound from the function and bound again while iperf3 sends.
R='(iperf3 -c 192.0.2.1 -p PORTB -t 6 >/dev/null 2>&1 &); sleep 2;
  f=\$(basename \$(readlink -f /sys/class/net/eth0/device/..));
  echo \$f > /sys/bus/pci/drivers/virtio-pci/unbind; echo gone=\$(ls /sys/class/net | grep -c eth0);
  echo \$f > /sys/bus/pci/drivers/virtio-pci/bind;
  sleep 1; ip addr add 192.0.2.2/24 dev eth0; ip link set eth0 up; sleep 1;
  ping -c 2 -W 3 192.0.2.1 >/dev/null; echo reset_ping=\$?;
  echo after=\$(iperf3 -c 192.0.2.1 -p PORTA -t 2 -f m | grep receiver | tr -s \" \" | cut -d \" \" -f 7)'
# Two queue pairs, two vCPUs: an iperf3 client pinned to each vCPU (XPS: vCPU i sends on
# tx queue i), and every queue's vector took interrupts.
MQ='echo queues=\$(ls /sys/class/net/eth0/queues);
  iperf3 -c 192.0.2.1 -p PORTA -t 3 -P 2 -A 0 >/dev/null 2>&1 &
  iperf3 -c 192.0.2.1 -p PORTB -t 3 -P 2 -A 1 -f m >/tmp/i2 2>&1; wait;
  echo up=\$(grep SUM.*receiver /tmp/i2 | tr -s \" \" | cut -d \" \" -f 6);
  for q in input.0 output.0 input.1 output.1; do echo \$q=\$(irq virtio0-\$q); done'

# pcirun CASE SCRIPT NETVMM-ARGS...: one guest (192.0.2.2 on the host's 192.0.2.1) that
# runs SCRIPT (one line to the guest's kernel: its commands end in `;`), its console in
# /tmp/CASE.log and netvmm's stderr in /tmp/CASE.err, through `lab_try` (run again after
# a fault of the emulated lab; $s and $try). Each try has two iperf3 servers of its own
# (PORTA, PORTB): a guest that died mid-test leaves its server busy waiting for it.
port=5201
pcirun_once() {
  c=$1; script=$2; shift 2
  a=$port; b=$((port + 1)); port=$((port + 2))
  iperf3 -s -D -p $a >/dev/null 2>&1
  iperf3 -s -D -p $b >/dev/null 2>&1
  lab_guest $c $G "$@" \
    --cmdline "quiet netvmm.ip=192.0.2.2/24 netvmm.run=\"$(printf '%s\n' "$script" | sed "s/PORTA/$a/g; s/PORTB/$b/g")\""
}
pcirun() { lab_try $1 pcirun_once "$@"; }
# (`+0`: a guest that never reported leaves `nic` empty, and the sum still parses.)
report() { echo "status=$s tries=$try where=$(v $1.log where) disk_where=$(v $1.log disk_where) disk=$(v $1.log disk) msix=$(v $1.log msix) ping=$(v $1.log ping) up=$(v $1.log up) down=$(v $1.log down) in0=$(v $1.log in0 | cut -d ' ' -f 1) out0=$(tr -d '\r' < $1.log | sed -n 's/.*out0=//p' | head -n 1) path=$(nic $1.err datapath) frames=$(( $(nic $1.err rx_frames)+0 + $(nic $1.err tx_frames)+0 ))"; }

for path in off on; do
  pcirun p$path "$(printf '%s\n%s; %s\n' "$IRQ" "$T" "$R")" \
    --net tap,host-ip=192.0.2.1/24,vhost=$path --disk /tmp/disk.img
  echo "case=pci-vhost-$path $(report /tmp/p$path) gone=$(v /tmp/p$path.log gone) reset_ping=$(v /tmp/p$path.log reset_ping) after=$(v /tmp/p$path.log after)"
done

pcirun mq "$(printf '%s\n%s\n' "$IRQ" "$MQ")" --cpus 2 --net tap,host-ip=192.0.2.1/24,queues=2
echo "case=pci-mq status=$s tries=$try queues=$(v /tmp/mq.log queues | tr ' ' ,) up=$(v /tmp/mq.log up) in0=$(v /tmp/mq.log input.0) out0=$(v /tmp/mq.log output.0) in1=$(v /tmp/mq.log input.1) out1=$(v /tmp/mq.log output.1) q1rx=$(nic /tmp/mq.err q1_rx_frames) q1tx=$(nic /tmp/mq.err q1_tx_frames)"
"#;

#[test]
fn pci_transport_end_to_end() {
    let out = common::lab(SCENARIO, 1200);
    let dump = out.dump();
    out.record_reruns("pci_transport_end_to_end");
    assert_eq!(out.status, 0, "{dump}");
    let f = |case: &str, key: &str| out.field(case, key).unwrap_or_default();
    let n = |case: &str, key: &str| f(case, key).parse::<u64>().unwrap_or(0);
    let mbps = |v: String| v.parse::<f64>().unwrap_or(0.0);
    for (case, path) in [("pci-vhost-off", "user"), ("pci-vhost-on", "vhost")] {
        assert_eq!(f(case, "status"), "0", "{case}\n{dump}");
        // /sys/devices/pci0000:00/0000:00:0N.0/virtioM: the NIC and the disk are PCI
        // functions on bus 0.
        assert!(
            f(case, "where").starts_with("pci0000:00/0000:00:"),
            "{case}: eth0 is not on PCI\n{dump}"
        );
        assert!(
            f(case, "disk_where").starts_with("pci0000:00/0000:00:"),
            "{case}: vda is not on PCI\n{dump}"
        );
        assert_eq!(f(case, "disk"), "netvmm-pci-disk", "{case}\n{dump}");
        // A vector per queue and one for configuration: input.0, output.0, config.
        assert_eq!(f(case, "msix"), "3", "{case}: MSI-X vectors\n{dump}");
        assert_eq!(f(case, "ping"), "0", "{case}\n{dump}");
        assert!(mbps(f(case, "up")) > 0.0, "{case}: guest->host\n{dump}");
        assert!(mbps(f(case, "down")) > 0.0, "{case}: host->guest\n{dump}");
        assert!(n(case, "in0") > 0, "{case}: no RX interrupt\n{dump}");
        assert!(n(case, "out0") > 0 || path == "vhost", "{case}\n{dump}");
        assert_eq!(f(case, "path"), path, "{case}: exit report\n{dump}");
        assert_eq!(f(case, "gone"), "0", "{case}: driver not unbound\n{dump}");
        assert_eq!(f(case, "reset_ping"), "0", "{case}: after rebind\n{dump}");
        assert!(mbps(f(case, "after")) > 0.0, "{case}: after rebind\n{dump}");
    }
    assert_eq!(
        f("pci-vhost-on", "frames"),
        "0",
        "the kernel moved the frames\n{dump}"
    );
    assert_ne!(f("pci-vhost-off", "frames"), "0", "{dump}");
    assert_eq!(f("pci-mq", "status"), "0", "{dump}");
    assert_eq!(f("pci-mq", "queues"), "rx-0,rx-1,tx-0,tx-1", "{dump}");
    assert!(mbps(f("pci-mq", "up")) > 0.0, "{dump}");
    for k in ["in0", "out0", "in1", "out1", "q1rx", "q1tx"] {
        assert!(n("pci-mq", k) > 0, "pci-mq: {k}\n{dump}");
    }
}
