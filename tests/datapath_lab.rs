//! The data path end to end in the emulated lab host: `mtu=` gives the guest a jumbo MTU
//! that frames really cross at (through a tap, unfragmented both ways), and a bridge with
//! ports below it is named in one line; `vhost=on` carries traffic both ways on a tap, a
//! bridge port and a macvtap with netvmm's device moving no frame, survives the guest
//! unbinding and binding its virtio-net driver under traffic, and without /dev/vhost-net
//! is a one-line error (`vhost=auto`: the userspace path, and a line saying so);
//! `--cpus 2 --net tap,queues=2` gives the guest two queue pairs that both carry frames,
//! on the userspace path and with `vhost=on`, and so do a two-queue macvtap (vhost=on) and
//! bridge port (userspace). One lab boot for all cases.

mod common;

// The guest's init evaluates its command line once: every `$` meant for the guest is `\$`.
// Busybox's ping (guest and lab host) has no `-M do`; the IP counters say the same thing:
// a ping that is neither fragmented by its sender (FragCreates) nor reassembled by its
// receiver (ReasmReqds) crossed whole.
const SCENARIO: &str = r#"
IP=/sbin/ip
G0="--kernel $NETVMM_GUEST_KERNEL --initrd $NETVMM_GUEST_INITRD --memory 384"
G="$G0 --timeout 300"
# Field N of the "Ip:" counters line of /proc/net/snmp, from a line saved with _ for spaces.
ipf() { echo "$1" | tr _ ' ' | cut -d ' ' -f "$2"; }
snmp() { grep '^Ip: [0-9]' /proc/net/snmp | tr ' ' _; }

# mtu: a 9000-byte MTU through a tap; an 8000-byte ping each way crosses whole.
h0=$(snmp)
netvmm run $G --net tap=mtutap,host-ip=192.0.2.1/24,mtu=9000 --serial-log /tmp/m.log \
  --cmdline 'quiet netvmm.ip=192.0.2.2/24 netvmm.run="
    echo mtu=\$(cat /sys/class/net/eth0/mtu);
    ping -c 3 -W 3 -s 8000 192.0.2.1 >/dev/null; echo ping=\$?;
    echo snmp=\$(grep \"^Ip: [0-9]\" /proc/net/snmp | tr \" \" _)"' >/dev/null 2>/tmp/m.err
s=$?
[ $s = 0 ] || cat /tmp/m.err
h1=$(snmp)
g=$(v /tmp/m.log snmp)
echo "case=mtu status=$s mtu=$(v /tmp/m.log mtu) ping=$(v /tmp/m.log ping) g_frag=$(ipf "$g" 20) g_reasm=$(ipf "$g" 15) h_frag=$(( $(ipf "$h1" 20) - $(ipf "$h0" 20) )) h_reasm=$(( $(ipf "$h1" 15) - $(ipf "$h0" 15) )) left=$(ls /sys/class/net | grep -c '^mtutap$')"

# bridge: a port at 1500 on br0: one line names it (and br0), the guest still comes up.
$IP link add br0 type bridge; $IP link add vb0 type veth peer name vb1
$IP link set vb0 master br0; $IP link set br0 up; $IP link set vb0 up
netvmm run $G --net bridge=br0,mtu=9000 --cmdline 'quiet netvmm.run="cat /sys/class/net/eth0/mtu"' \
  >/tmp/b.out 2>/tmp/b.err
s=$?
note=$(grep -c 'eth0: bridge br0: .*vb0 (1500)' /tmp/b.err)
echo "case=bridge status=$s notes=$note guest_mtu=$(tr -d '\r' < /tmp/b.out | grep -x -c 9000) line=$(grep 'eth0: bridge br0' /tmp/b.err | tr ' ' _)"
$IP link del vb0; $IP link del br0

# vhost: the guest's traffic: ping, then iperf3 both ways. HOST is the peer's address.
iperf3 -s -D >/dev/null 2>&1
iperf3 -s -D -p 5202 >/dev/null 2>&1
T='ping -c 2 -W 3 HOST >/dev/null; echo ping=\$?;
  echo up=\$(iperf3 -c HOST -t 2 -f m | grep receiver | tr -s \" \" | cut -d \" \" -f 7);
  echo down=\$(iperf3 -c HOST -t 2 -f m -R | grep receiver | tr -s \" \" | cut -d \" \" -f 7)'
traffic() { printf "%s\n" "$T" | sed "s/HOST/$1/g"; }
# Then, with iperf3 running in the background, the driver is unbound and bound again
# through sysfs (a virtio reset and a new negotiation), and the NIC must carry traffic.
R='(iperf3 -c HOST -p 5202 -t 6 >/dev/null 2>&1 &); sleep 2;
  d=\$(basename \$(readlink /sys/class/net/eth0/device));
  echo \$d > /sys/bus/virtio/drivers/virtio_net/unbind; echo gone=\$(ls /sys/class/net | grep -c eth0);
  echo \$d > /sys/bus/virtio/drivers/virtio_net/bind;
  sleep 1; ip addr add GUEST/24 dev eth0; ip link set eth0 up; sleep 1;
  ping -c 2 -W 3 HOST >/dev/null; echo reset_ping=\$?;
  echo after=\$(iperf3 -c HOST -t 2 -f m | grep receiver | tr -s \" \" | cut -d \" \" -f 7)'
report() { echo "status=$2 ping=$(v $1.log ping) up=$(v $1.log up) down=$(v $1.log down) path=$(nic $1.err datapath) frames=$(( $(nic $1.err rx_frames) + $(nic $1.err tx_frames) )) said=$(grep -c 'data path: vhost-net' $1.err)"; }

lab_guest vt $G --net tap,host-ip=192.0.2.1/24,vhost=on \
  --cmdline "quiet netvmm.ip=192.0.2.2/24 netvmm.run=\"$(traffic 192.0.2.1); $(printf '%s\n' "$R" | sed 's/HOST/192.0.2.1/g; s/GUEST/192.0.2.2/g')\""
s=$?
[ $s = 0 ] || cat /tmp/vt.err
echo "case=vhost-tap $(report /tmp/vt $s) gone=$(v /tmp/vt.log gone) reset_ping=$(v /tmp/vt.log reset_ping) after=$(v /tmp/vt.log after)"

$IP link add br0 type bridge; $IP addr add 198.51.100.1/24 dev br0; $IP link set br0 up
lab_guest vb $G --net bridge=br0,vhost=on \
  --cmdline "quiet netvmm.ip=198.51.100.2/24 netvmm.run=\"$(traffic 198.51.100.1)\""
s=$?
[ $s = 0 ] || cat /tmp/vb.err
echo "case=vhost-bridge $(report /tmp/vb $s)"
$IP link del br0

$IP link add vpeer0 type veth peer name vpeer1; $IP link set vpeer1 up; $IP link set vpeer0 up
lab_guest vm $G --net macvtap=vpeer0,mode=bridge,host-access=203.0.113.1/24,vhost=on \
  --cmdline "quiet netvmm.ip=203.0.113.2/24 netvmm.run=\"$(traffic 203.0.113.1)\""
s=$?
[ $s = 0 ] || cat /tmp/vm.err
echo "case=vhost-macvtap $(report /tmp/vm $s)"

# queues=2 with 2 vCPUs, userspace and vhost: the guest sets 2 pairs itself (VQ_PAIRS_SET)
# and has rx-0, rx-1, tx-0, tx-1; two iperf3 clients, one pinned to each vCPU (-A), send
# (XPS maps vCPU i to tx queue i; the tap answers a flow on the queue it came from), so
# both pairs carry frames both ways: netvmm's per-pair counters say so on the userspace
# path, the used indices in guest memory (rx1_used, tx1_used) under vhost.
# Each try gets two one-off iperf3 servers of its own: a guest that died mid-test leaves
# its server waiting for it, and the next guest would find that server busy.
mqport=5203
MQ='echo queues=\$(ls /sys/class/net/eth0/queues);
  iperf3 -c PEER -p PORTA -t 3 -P FLOWS -A 0 >/dev/null 2>&1 &
  iperf3 -c PEER -p PORTB -t 3 -P FLOWS -A 1 -f m >/tmp/i2 2>&1; wait;
  echo up=\$(grep SUM.*receiver /tmp/i2 | tr -s \" \" | cut -d \" \" -f 6)'
mq() { echo "status=$2 queues=$(v $1.log queues | tr ' ' ,) up=$(v $1.log up) path=$(nic $1.err datapath) nq=$(nic $1.err queues) active=$(nic $1.err active_pairs) ctrl_ok=$(nic $1.err ctrl_ok) ctrl_err=$(nic $1.err ctrl_err) q0rx=$(nic $1.err q0_rx_frames) q0tx=$(nic $1.err q0_tx_frames) q1rx=$(nic $1.err q1_rx_frames) q1tx=$(nic $1.err q1_tx_frames) rx0u=$(nic $1.err rx_used) tx0u=$(nic $1.err tx_used) rx1u=$(nic $1.err rx1_used) tx1u=$(nic $1.err tx1_used) said=$(grep -c 'eth0 .*; 2 queue pairs' $1.err)"; }
# mqrun CASE NET GUEST-IP PEER FLOWS: one two-pair guest on the --net NET, FLOWS streams
# per client, through `lab_try` (tests/common/prelude.sh: run once more after a fault of
# the emulated lab, anything else fails at once).
mqrun_once() {
  a=$mqport; b=$((mqport + 1)); mqport=$((mqport + 2))
  iperf3 -s -D -1 -p $a >/dev/null 2>&1
  iperf3 -s -D -1 -p $b >/dev/null 2>&1
  lab_guest $1 $G0 --timeout 90 --cpus 2 --net "$2" \
    --cmdline "quiet netvmm.ip=$3 netvmm.run=\"$(printf %s "$MQ" | sed "s/PEER/$4/g; s/FLOWS/$5/g; s/PORTA/$a/; s/PORTB/$b/")\""
}
mqrun() {
  lab_try $1 mqrun_once "$@"
  echo "case=$1 $(mq /tmp/$1 $s) tries=$try"
}
for path in off on; do
  mqrun mq-vhost-$path tap,host-ip=192.0.2.1/24,queues=2,vhost=$path 192.0.2.2/24 192.0.2.1 2
done
# The other backends' queues: macvtap opens its /dev/tapN twice (here with vhost-net, one
# instance per pair); a bridge port is a multi-queue tap enslaved to a bridge. A macvtap
# picks the receive queue by flow hash, not by the queue the flow left on as a tap does:
# 16 streams, so that all of them landing on one queue is a 1 in 30000 chance.
mqrun mq-macvtap macvtap=vpeer0,mode=bridge,host-access=203.0.113.1/24,queues=2,vhost=on \
  203.0.113.3/24 203.0.113.1 8
$IP link add mqbr type bridge; $IP addr add 198.51.100.1/24 dev mqbr; $IP link set mqbr up
mqrun mq-bridge bridge=mqbr,queues=2 198.51.100.2/24 198.51.100.1 2
$IP link del mqbr

# No /dev/vhost-net: vhost=on is one line and status 1; vhost=auto runs on the userspace path.
mv /dev/vhost-net /dev/vhost-net.off
netvmm run $G --net tap,vhost=on --cmdline 'quiet' >/dev/null 2>/tmp/vn.err
s=$?
echo "case=vhost-missing status=$s lines=$(wc -l < /tmp/vn.err) msg=$(head -n 1 /tmp/vn.err | tr ' ' _)"
lab_run va $G --net tap,host-ip=192.0.2.1/24,vhost=auto \
  --cmdline 'quiet netvmm.ip=192.0.2.2/24 netvmm.run="ping -c 2 -W 3 192.0.2.1 >/dev/null; echo ping=\$?"'
mv /dev/vhost-net.off /dev/vhost-net
echo "case=vhost-auto status=$s ping=$(v /tmp/va.log ping) path=$(nic /tmp/va.err datapath) notes=$(grep -c 'eth0: vhost=auto: .*userspace' /tmp/va.err)"
"#;

#[test]
fn datapath_end_to_end() {
    let out = common::lab(SCENARIO, 1500);
    let dump = out.dump();
    // A rerun after a fault of the emulated lab is said, and kept with the lab host hangs.
    out.record_reruns("datapath_end_to_end");
    assert_eq!(out.status, 0, "{dump}");
    let f = |case: &str, key: &str| out.field(case, key).unwrap_or_default();

    assert_eq!(f("mtu", "status"), "0", "{dump}");
    assert_eq!(f("mtu", "mtu"), "9000", "guest eth0 MTU\n{dump}");
    assert_eq!(f("mtu", "ping"), "0", "8000-byte ping\n{dump}");
    for k in ["g_frag", "g_reasm", "h_frag", "h_reasm"] {
        assert_eq!(f("mtu", k), "0", "{k}: the ping was fragmented\n{dump}");
    }
    assert_eq!(f("mtu", "left"), "0", "the created tap is removed\n{dump}");

    assert_eq!(f("bridge", "status"), "0", "{dump}");
    assert_eq!(f("bridge", "notes"), "1", "one line names the port\n{dump}");
    assert_eq!(f("bridge", "guest_mtu"), "1", "{dump}");

    let mbps = |v: String| v.parse::<f64>().unwrap_or(0.0);
    for case in ["vhost-tap", "vhost-bridge", "vhost-macvtap"] {
        assert_eq!(f(case, "status"), "0", "{case}\n{dump}");
        assert_eq!(f(case, "ping"), "0", "{case}: ping\n{dump}");
        assert!(mbps(f(case, "up")) > 0.0, "{case}: guest->host\n{dump}");
        assert!(mbps(f(case, "down")) > 0.0, "{case}: host->guest\n{dump}");
        assert_eq!(f(case, "path"), "vhost", "{case}: exit report\n{dump}");
        // The kernel moved every frame: netvmm's own device none.
        assert_eq!(f(case, "frames"), "0", "{case}\n{dump}");
        assert_eq!(f(case, "said"), "1", "{case}: the NIC line\n{dump}");
    }
    assert_eq!(
        f("vhost-tap", "gone"),
        "0",
        "the driver was unbound\n{dump}"
    );
    assert_eq!(
        f("vhost-tap", "reset_ping"),
        "0",
        "traffic after the driver was unbound and bound under traffic\n{dump}"
    );
    assert!(mbps(f("vhost-tap", "after")) > 0.0, "{dump}");

    assert_eq!(f("vhost-missing", "status"), "1", "{dump}");
    assert_eq!(f("vhost-missing", "lines"), "1", "{dump}");
    let msg = f("vhost-missing", "msg");
    assert!(
        msg.contains("eth0:_vhost=on:") && msg.contains("/dev/vhost-net"),
        "{msg}"
    );
    assert_eq!(f("vhost-auto", "status"), "0", "{dump}");
    assert_eq!(f("vhost-auto", "ping"), "0", "{dump}");
    assert_eq!(f("vhost-auto", "path"), "user", "{dump}");
    assert_eq!(f("vhost-auto", "notes"), "1", "{dump}");

    let n = |case: &str, key: &str| f(case, key).parse::<u64>().unwrap_or(0);
    for (case, path) in [
        ("mq-vhost-off", "user"),
        ("mq-vhost-on", "vhost"),
        ("mq-macvtap", "vhost"),
        ("mq-bridge", "user"),
    ] {
        assert_eq!(f(case, "status"), "0", "{case}\n{dump}");
        assert_eq!(
            f(case, "queues"),
            "rx-0,rx-1,tx-0,tx-1",
            "{case}: the guest's queues\n{dump}"
        );
        assert_eq!(f(case, "path"), path, "{case}\n{dump}");
        assert_eq!(
            f(case, "nq"),
            "2",
            "{case}: queues= in the exit report\n{dump}"
        );
        assert_eq!(f(case, "active"), "2", "{case}: VQ_PAIRS_SET 2\n{dump}");
        assert!(n(case, "ctrl_ok") >= 1, "{case}\n{dump}");
        assert_eq!(f(case, "ctrl_err"), "0", "{case}\n{dump}");
        assert_eq!(f(case, "said"), "1", "{case}: the NIC line\n{dump}");
        assert!(mbps(f(case, "up")) > 0.0, "{case}: iperf3\n{dump}");
        // Both rings of both pairs returned buffers (the used index in guest memory: the
        // device's or the kernel's).
        for ring in ["rx0u", "tx0u", "rx1u", "tx1u"] {
            assert!(n(case, ring) > 0, "{case}: {ring}\n{dump}");
        }
    }
    // The userspace path moved frames on both pairs, each way.
    for (case, k) in ["mq-vhost-off", "mq-bridge"]
        .into_iter()
        .flat_map(|c| ["q0rx", "q0tx", "q1rx", "q1tx"].map(|k| (c, k)))
    {
        assert!(n(case, k) > 0, "{case}: {k}\n{dump}");
    }
    // Under vhost the kernel did: netvmm's device moved none.
    for (case, k) in ["mq-vhost-on", "mq-macvtap"]
        .into_iter()
        .flat_map(|c| ["q0rx", "q0tx", "q1rx", "q1tx"].map(|k| (c, k)))
    {
        assert_eq!(f(case, k), "0", "{case}: {k}\n{dump}");
    }
}
