//! End-to-end networking through the tap backend: a real guest in the emulated lab host
//! pings and runs iperf3 against the lab host, with two NICs, across a device reset, through
//! an inherited fd, as an unprivileged user on a persistent tap; and bad `--net` input or a
//! signal leaves no interface behind. One lab boot for all cases.

mod common;

// Notes on quoting: the guest's init evaluates its command line once (to honour quotes), so
// every `$` meant for the guest command is written `\$`.
const SCENARIO: &str = r#"
IP=/sbin/ip
G="--kernel $NETVMM_GUEST_KERNEL --initrd $NETVMM_GUEST_INITRD --timeout 300 --memory 384"
ours() { ls /sys/class/net | grep -c -E '^(nvtap|vmnet1)' ; }

# A: two NICs, ping both, iperf3 both ways on eth0, then a device reset and ping again;
# once more after a fault of the emulated lab (`lab_try`, tests/common/prelude.sh), with an
# iperf3 server of its own: a guest that died mid-test leaves its server busy.
aport=5300
two_nics() {
aport=$((aport + 1)); iperf3 -s -D -p $aport >/dev/null 2>&1
lab_guest a $G --net tap,host-ip=192.0.2.1/24 --net tap=vmnet1,host-ip=198.51.100.1/24 \
  --cmdline 'quiet netvmm.ip=192.0.2.2/24 netvmm.run="
    ip addr add 198.51.100.2/24 dev eth1; ip link set eth1 up;
    ping -c 2 -W 3 192.0.2.1 >/dev/null; echo ping0=\$?;
    ping -c 2 -W 3 198.51.100.1 >/dev/null; echo ping1=\$?;
    echo up=\$(iperf3 -c 192.0.2.1 -p '$aport' -t 3 -f m | grep receiver | tr -s \" \" | cut -d \" \" -f 7);
    echo down=\$(iperf3 -c 192.0.2.1 -p '$aport' -t 3 -f m -R | grep receiver | tr -s \" \" | cut -d \" \" -f 7);
    rmmod virtio_net; insmod \$(grep virtio_net.ko /etc/netvmm-modules); sleep 1;
    ip addr add 192.0.2.2/24 dev eth0; ip link set eth0 up;
    ping -c 2 -W 3 192.0.2.1 >/dev/null; echo reset_ping=\$?"'
}
lab_try a two_nics
nic() { grep "netvmm-nic-report: $1 " /tmp/a.err | tr ' ' '\n' | sed -n "s/^$2=//p"; }
echo "case=nics status=$s rx0=$(nic eth0 rx_frames) tx0=$(nic eth0 tx_frames) rx1=$(nic eth1 rx_frames) drop0=$(nic eth0 rx_dropped) bad0=$(nic eth0 tx_invalid) ping0=$(v /tmp/a.log ping0) ping1=$(v /tmp/a.log ping1) up=$(v /tmp/a.log up) down=$(v /tmp/a.log down) reset_ping=$(v /tmp/a.log reset_ping) left=$(ours)"

# B: an inherited fd (a macvtap queue opened by the shell) on a veth whose peer answers.
$IP link add vpeer0 type veth peer name vpeer1
$IP addr add 203.0.113.1/24 dev vpeer1; $IP link set vpeer1 up; $IP link set vpeer0 up
$IP link add link vpeer0 name mvt0 address 52:54:00:00:00:42 type macvtap mode bridge
$IP link set mvt0 up
idx=$(cat /sys/class/net/mvt0/ifindex)
[ -e /dev/tap$idx ] || mknod /dev/tap$idx c $(cut -d: -f1 /sys/class/net/mvt0/macvtap/tap$idx/dev) $(cut -d: -f2 /sys/class/net/mvt0/macvtap/tap$idx/dev)
netvmm run $G --net fd=3,mac=52:54:00:00:00:42 --serial-log /tmp/b.log \
  --cmdline 'quiet netvmm.ip=203.0.113.2/24 netvmm.run="ping -c 2 -W 3 203.0.113.1 >/dev/null; echo ping=\$?"' \
  3<>/dev/tap$idx >/dev/null 2>/tmp/b.err
s=$?
echo "case=fd status=$s ping=$(v /tmp/b.log ping) mvt0=$(ls /sys/class/net | grep -c '^mvt0$')"
$IP link del mvt0; $IP link del vpeer0

# C: a persistent tap owned by an unprivileged user, used by that user.
$IP tuntap add mode tap user 65534 vnet_hdr name utap0
$IP addr add 203.0.113.1/24 dev utap0; $IP link set utap0 up
chmod 666 /dev/kvm
grep -q '^nobody:' /etc/passwd 2>/dev/null || echo 'nobody:x:65534:65534:nobody:/tmp:/bin/sh' >> /etc/passwd
grep -q '^nogroup:' /etc/group 2>/dev/null || echo 'nogroup:x:65534:' >> /etc/group
cat > /tmp/c.sh <<EOS
#!/bin/sh
export PATH=$PATH
exec netvmm run $G --net tap=utap0 --serial-log /tmp/c.log \\
  --cmdline 'quiet netvmm.ip=203.0.113.2/24 netvmm.run="ping -c 2 -W 3 203.0.113.1 >/dev/null; echo ping=\\\$?"'
EOS
chmod 755 /tmp/c.sh
# /dev/net/tun is root-only here: a clear refusal first, then the usual 0666 and success.
su -s /bin/sh nobody -c /tmp/c.sh >/dev/null 2>/tmp/c0.err
echo "case=tun-denied status=$? lines=$(wc -l < /tmp/c0.err) msg=$(tr ' ' '_' < /tmp/c0.err)"
chmod 666 /dev/net/tun
su -s /bin/sh nobody -c /tmp/c.sh >/dev/null 2>/tmp/c.err
s=$?
[ $s = 0 ] || cat /tmp/c.err
echo "case=unprivileged status=$s ping=$(v /tmp/c.log ping) utap0=$(ls /sys/class/net | grep -c '^utap0$') err=$(wc -l < /tmp/c.err)"
$IP tuntap del mode tap name utap0

# D: bad input: exit 1, one line naming the culprit, nothing left behind.
for spec in 'tap,mac=52:54:00:zz:00:01' 'tap=averyveryverylongname' 'fd=9' 'fd=0' 'tap,colour=red'; do
  netvmm run $G --net tap --net "$spec" >/dev/null 2>/tmp/d.err
  s=$?
  echo "case=bad:$spec status=$s lines=$(wc -l < /tmp/d.err) left=$(ours) msg=$(head -c 200 /tmp/d.err | tr ' ' '_')"
done

# E: SIGTERM while the guest runs: the VMM exits 143 and its tap is gone.
netvmm run $G --net tap,host-ip=192.0.2.1/24 --cmdline 'quiet netvmm.run="sleep 1000"' >/dev/null 2>&1 &
pid=$!
i=0; while [ "$(ours)" = 0 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
sleep 2
kill -TERM $pid; wait $pid; s=$?
echo "case=sigterm status=$s left=$(ours)"

# F: SIGKILL: no cleanup code runs at all, and still nothing is left.
netvmm run $G --net tap --cmdline 'quiet netvmm.run="sleep 1000"' >/dev/null 2>&1 &
pid=$!
i=0; while [ "$(ours)" = 0 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
kill -KILL $pid; wait $pid; s=$?
sleep 0.5
echo "case=sigkill status=$s left=$(ours)"
"#;

#[test]
fn tap_networking_end_to_end() {
    let out = common::lab(SCENARIO, 1500);
    let dump = out.dump();
    out.record_reruns("tap_networking_end_to_end");
    assert_eq!(out.status, 0, "{dump}");
    let f = |case: &str, key: &str| out.field(case, key).unwrap_or_default();

    assert_eq!(f("nics", "status"), "0", "{dump}");
    assert_eq!(f("nics", "ping0"), "0", "eth0 reaches the host\n{dump}");
    assert_eq!(f("nics", "ping1"), "0", "eth1 reaches the host\n{dump}");
    let mbps = |v: String| v.parse::<f64>().unwrap_or(0.0);
    assert!(mbps(f("nics", "up")) > 0.0, "iperf3 guest->host\n{dump}");
    assert!(mbps(f("nics", "down")) > 0.0, "iperf3 host->guest\n{dump}");
    assert_eq!(
        f("nics", "reset_ping"),
        "0",
        "NIC works after rmmod/insmod\n{dump}"
    );
    assert_eq!(f("nics", "left"), "0", "created taps are removed\n{dump}");
    // The device counters at exit saw the iperf3 runs (a 3 s run is thousands of frames
    // each way) and the pings on eth1; a well-behaved guest sends no invalid chain.
    let count = |k: &str| f("nics", k).parse::<u64>().unwrap_or(0);
    assert!(count("rx0") > 1000, "eth0 frames received\n{dump}");
    assert!(count("tx0") > 1000, "eth0 frames sent\n{dump}");
    assert!(count("rx1") >= 2, "eth1 ping replies\n{dump}");
    assert_eq!(f("nics", "bad0"), "0", "{dump}");

    assert_eq!(f("fd", "status"), "0", "{dump}");
    assert_eq!(
        f("fd", "ping"),
        "0",
        "inherited macvtap fd carries traffic\n{dump}"
    );
    assert_eq!(f("fd", "mvt0"), "1", "a given interface stays\n{dump}");

    assert_eq!(f("tun-denied", "status"), "1", "{dump}");
    assert_eq!(f("tun-denied", "lines"), "1", "{dump}");
    let msg = f("tun-denied", "msg");
    assert!(
        msg.contains("/dev/net/tun") && msg.contains("utap0") && msg.contains("Permission_denied"),
        "{msg}"
    );
    assert_eq!(f("unprivileged", "status"), "0", "{dump}");
    assert_eq!(f("unprivileged", "ping"), "0", "{dump}");
    assert_eq!(f("unprivileged", "utap0"), "1", "a given tap stays\n{dump}");

    for (spec, needle) in [
        ("tap,mac=52:54:00:zz:00:01", "52:54:00:zz:00:01"),
        ("tap=averyveryverylongname", "IFNAMSIZ"),
        ("fd=9", "fd=9:_no_such_open_file_descriptor"),
        ("fd=0", "not_a_tap"),
        ("tap,colour=red", "colour"),
    ] {
        let case = format!("bad:{spec}");
        assert_eq!(f(&case, "status"), "1", "{case}\n{dump}");
        assert_eq!(f(&case, "lines"), "1", "{case}\n{dump}");
        assert_eq!(f(&case, "left"), "0", "{case} leaves nothing\n{dump}");
        assert!(
            f(&case, "msg").contains(needle),
            "{case}: {}\n{dump}",
            f(&case, "msg")
        );
    }

    assert_eq!(f("sigterm", "status"), "143", "{dump}");
    assert_eq!(f("sigterm", "left"), "0", "{dump}");
    assert_eq!(f("sigkill", "status"), "137", "{dump}");
    assert_eq!(f("sigkill", "left"), "0", "{dump}");
}
