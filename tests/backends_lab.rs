//! The bridge and macvtap backends end to end: real guests in the emulated lab host, on a
//! "NIC" (a veth) whose far side is the LAN: another network namespace (another host) with
//! a switch (a bridge) and a LAN peer on it. What each
//! method lets talk to what is observed with pings, never assumed:
//! - bridge: guest <-> LAN, guest <-> host (address on the bridge), guest <-> guest, and the
//!   guest's network survives the bridge being deleted and created again;
//! - macvtap bridge: guest <-> LAN and guest <-> guest, but not host (parent) <-> guest;
//! - macvtap private: no guest <-> guest, even through a hairpinning switch;
//! - macvtap vepa: guest <-> guest only when the switch hairpins;
//! - passthru: one guest owns the NIC; a second is refused;
//! - a SIGKILLed netvmm leaves its macvtap; `netvmm run` warns, `netvmm cleanup` removes it.

mod common;

const SCENARIO: &str = r#"
IP=/sbin/ip
G="--kernel $NETVMM_GUEST_KERNEL --initrd $NETVMM_GUEST_INITRD --timeout 300"
ready() { i=0; while ! grep -q 'netvmm-guest: ready' "$1" 2>/dev/null && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; }
ping1() { echo "ping -c 2 -W 2 $1 >/dev/null; echo $2=\\\$?;"; }
# The guests that run a command and exit go through `lab_run` (tests/common/prelude.sh):
# once more after a fault of the emulated lab.
# A guest that stays up (answering pings) until killed.
background() { log=$1; shift; netvmm run $G "$@" --serial-log $log --cmdline "quiet netvmm.ip=$IPADDR netvmm.run=\"sleep 120\"" >/dev/null 2>&1 & bg=$!; ready $log; }

# --- the LAN, a host of its own (netns lan): switch sw0 with the LAN peer's address on it.
# This host's NIC is veth lanA; its other end lanB is a port of sw0.
LAN="$IP netns exec lan"
$IP netns add lan
$IP link add lanA type veth peer name lanB netns lan
$LAN $IP link set lo up
$LAN $IP link add sw0 type bridge; $LAN $IP link set sw0 up
$LAN $IP addr add 203.0.113.1/24 dev sw0
$LAN $IP link set lanB master sw0; $LAN $IP link set lanB up; $IP link set lanA up

# --- bridge backend: host bridge br0 with the NIC enslaved, host address on br0
$IP link add br0 type bridge; $IP link set lanA master br0; $IP link set br0 up
$IP addr add 203.0.113.10/24 dev br0
before=$($IP -o link show master br0 | wc -l)
IPADDR=203.0.113.2/24 background /tmp/b1.log --net bridge=br0
lab_run b2 $G --net bridge=br0 --cmdline "quiet netvmm.ip=203.0.113.3/24 netvmm.run=\"$(ping1 203.0.113.1 lan) $(ping1 203.0.113.10 host) $(ping1 203.0.113.2 guest)\""
kill $bg; wait $bg
after=$($IP -o link show master br0 | wc -l)
echo "case=bridge status=$s lan=$(v /tmp/b2.log lan) host=$(v /tmp/b2.log host) guest=$(v /tmp/b2.log guest) ports_before=$before ports_after=$after taps=$(ls /sys/class/net | grep -c '^nvtap')"

# host -> guest on the bridge, while the guest runs
IPADDR=203.0.113.2/24 background /tmp/b3.log --net bridge=br0
$IP neigh flush all
ping -c 2 -W 2 203.0.113.2 >/dev/null; h2g=$?
# the bridge goes away and comes back: the tap is put back on it
tap=$(ls /sys/class/net | grep '^nvtap' | head -n 1)
$IP link del br0
$IP link add br0 type bridge; $IP link set lanA master br0; $IP link set br0 up; $IP addr add 203.0.113.10/24 dev br0
i=0; while [ "$(cat /sys/class/net/$tap/master/uevent 2>/dev/null | grep -c INTERFACE=br0)" = 0 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
sleep 1
ping -c 3 -W 2 203.0.113.2 >/dev/null; back=$?
kill $bg; wait $bg
echo "case=bridge-recreate host_to_guest=$h2g after_recreate=$back"

# --- macvtap on the NIC (host address on the NIC itself)
$IP link set lanA nomaster; $IP link del br0
$IP addr add 203.0.113.10/24 dev lanA
for mode in bridge private vepa; do
  IPADDR=203.0.113.2/24 background /tmp/m1-$mode.log --net macvtap=lanA,mode=$mode
  lab_run m2-$mode $G --net macvtap=lanA,mode=$mode --cmdline "quiet netvmm.ip=203.0.113.3/24 netvmm.run=\"$(ping1 203.0.113.1 lan) $(ping1 203.0.113.10 host) $(ping1 203.0.113.2 guest)\""
  s2=$s
  $IP neigh flush all
  ping -c 2 -W 2 203.0.113.2 >/dev/null; h2g=$?
  # the same, with the switch port hairpinning
  $LAN /sbin/bridge link set dev lanB hairpin on
  lab_run m3-$mode $G --net macvtap=lanA,mode=$mode --cmdline "quiet netvmm.ip=203.0.113.4/24 netvmm.run=\"$(ping1 203.0.113.2 guest)\""
  $LAN /sbin/bridge link set dev lanB hairpin off
  kill $bg; wait $bg
  echo "case=macvtap-$mode status=$s2 hairpin_status=$s lan=$(v /tmp/m2-$mode.log lan) host=$(v /tmp/m2-$mode.log host) guest=$(v /tmp/m2-$mode.log guest) host_to_guest=$h2g guest_hairpin=$(v /tmp/m3-$mode.log guest) left=$(ls /sys/class/net | grep -c '^nvmvt')"
done

# --- passthru: one guest owns the NIC, a second is refused
$IP addr flush dev lanA
IPADDR=203.0.113.2/24 background /tmp/p1.log --net macvtap=lanA,mode=passthru
netvmm run $G --net macvtap=lanA,mode=passthru >/dev/null 2>/tmp/p2.err; s2=$?
# Earlier guests used 203.0.113.2 with other MACs: forget them.
$LAN $IP neigh flush all
$LAN ping -c 2 -W 2 203.0.113.2 >/dev/null; lan2g=$?
kill $bg; wait $bg
echo "case=passthru lan_to_guest=$lan2g second=$s2 msg=$(tr ' ' '_' < /tmp/p2.err) left=$(ls /sys/class/net | grep -c '^nvmvt')"

# --- host access through a shared macvlan shim (the parent itself has no address now)
IPADDR=203.0.113.2/24 background /tmp/h1.log --net macvtap=lanA,host-access=203.0.113.20/24
bg1=$bg
$IP neigh flush all
ping -c 2 -W 2 203.0.113.2 >/dev/null; h2g=$?
lab_run h2 $G --net macvtap=lanA,host-access=203.0.113.20/24 --cmdline "quiet netvmm.ip=203.0.113.3/24 netvmm.run=\"$(ping1 203.0.113.20 host)\""
shims_while_one_left=$(ls /sys/class/net | grep -c '^nvshim')
kill $bg1; wait $bg1
netvmm run $G --net macvtap=lanA,mode=vepa,host-access=203.0.113.20/24 >/dev/null 2>/tmp/h3.err; refused=$?
echo "case=shim status=$s host_to_guest=$h2g guest_to_host=$(v /tmp/h2.log host) shims_while_one_left=$shims_while_one_left shims_after=$(ls /sys/class/net | grep -c '^nvshim') lanA_addrs=$($IP -4 -o addr show dev lanA | wc -l) vepa_refused=$refused vepa_lines=$(wc -l < /tmp/h3.err)"

# --- crash safety: SIGKILL leaves the macvtap; run warns; cleanup removes it
netvmm run $G --net macvtap=lanA --cmdline 'quiet netvmm.run="sleep 100"' >/dev/null 2>&1 &
pid=$!; i=0; while [ "$(ls /sys/class/net | grep -c '^nvmvt')" = 0 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
kill -KILL $pid; wait $pid
leftover=$(ls /sys/class/net | grep -c '^nvmvt')
netvmm run $G --net tap --cmdline 'quiet netvmm.run="true"' >/dev/null 2>/tmp/w.err
warned=$(grep -c 'netvmm cleanup' /tmp/w.err)
netvmm cleanup > /tmp/c.out
echo "case=crash leftover=$leftover warned=$warned removed=$(grep -c '^removed nvmvt' /tmp/c.out) left=$(ls /sys/class/net | grep -c '^nvmvt')"
"#;

#[test]
fn what_each_backend_reaches() {
    let out = common::lab(SCENARIO, 1500);
    let dump = out.dump();
    out.record_reruns("what_each_backend_reaches");
    assert_eq!(out.status, 0, "{dump}");
    let f = |case: &str, key: &str| out.field(case, key).unwrap_or_default();

    // bridge: the guest is a port on the LAN segment like any other.
    assert_eq!(f("bridge", "status"), "0", "{dump}");
    assert_eq!(f("bridge", "lan"), "0", "bridge: guest -> LAN\n{dump}");
    assert_eq!(
        f("bridge", "host"),
        "0",
        "bridge: guest -> host on the bridge\n{dump}"
    );
    assert_eq!(f("bridge", "guest"), "0", "bridge: guest -> guest\n{dump}");
    assert_eq!(
        f("bridge", "ports_before"),
        f("bridge", "ports_after"),
        "bridge ports as found\n{dump}"
    );
    assert_eq!(f("bridge", "taps"), "0", "no tap left\n{dump}");
    assert_eq!(f("bridge-recreate", "host_to_guest"), "0", "{dump}");
    assert_eq!(
        f("bridge-recreate", "after_recreate"),
        "0",
        "re-enslaved after re-creation\n{dump}"
    );

    // macvtap bridge: LAN and sibling yes, the parent's own stack no.
    assert_eq!(f("macvtap-bridge", "status"), "0", "{dump}");
    assert_eq!(f("macvtap-bridge", "lan"), "0", "{dump}");
    assert_eq!(f("macvtap-bridge", "guest"), "0", "{dump}");
    assert_ne!(
        f("macvtap-bridge", "host"),
        "0",
        "macvtap guest must not reach its parent's host\n{dump}"
    );
    assert_ne!(f("macvtap-bridge", "host_to_guest"), "0", "{dump}");

    // private: never a sibling, hairpin or not.
    assert_eq!(f("macvtap-private", "lan"), "0", "{dump}");
    assert_ne!(f("macvtap-private", "guest"), "0", "{dump}");
    assert_ne!(
        f("macvtap-private", "guest_hairpin"),
        "0",
        "private stays private with hairpin\n{dump}"
    );

    // vepa: a sibling only through a hairpinning switch.
    assert_eq!(f("macvtap-vepa", "lan"), "0", "{dump}");
    assert_ne!(
        f("macvtap-vepa", "guest"),
        "0",
        "vepa without hairpin\n{dump}"
    );
    assert_eq!(
        f("macvtap-vepa", "guest_hairpin"),
        "0",
        "vepa with hairpin\n{dump}"
    );
    for m in ["bridge", "private", "vepa"] {
        assert_eq!(f(&format!("macvtap-{m}"), "hairpin_status"), "0", "{dump}");
        assert_eq!(
            f(&format!("macvtap-{m}"), "left"),
            "0",
            "macvtap removed\n{dump}"
        );
    }

    assert_eq!(f("passthru", "lan_to_guest"), "0", "{dump}");
    assert_eq!(f("passthru", "second"), "1", "{dump}");
    assert!(f("passthru", "msg").contains("passthru"), "{dump}");
    assert_eq!(f("passthru", "left"), "0", "{dump}");

    // host-access: the host reaches a bridge-mode macvtap guest through the shim, which
    // stays while a guest uses it and goes with the last; the parent gets no address, and
    // a mode the shim cannot serve is one line of refusal.
    assert_eq!(f("shim", "status"), "0", "{dump}");
    assert_eq!(
        f("shim", "host_to_guest"),
        "0",
        "host -> guest via the shim\n{dump}"
    );
    assert_eq!(
        f("shim", "guest_to_host"),
        "0",
        "guest -> host via the shim\n{dump}"
    );
    assert_eq!(f("shim", "shims_while_one_left"), "1", "{dump}");
    assert_eq!(f("shim", "shims_after"), "0", "shim removed\n{dump}");
    assert_eq!(f("shim", "lanA_addrs"), "0", "{dump}");
    assert_eq!(f("shim", "vepa_refused"), "1", "{dump}");
    assert_eq!(f("shim", "vepa_lines"), "1", "{dump}");

    assert_eq!(
        f("crash", "leftover"),
        "1",
        "SIGKILL cannot clean up\n{dump}"
    );
    assert_eq!(f("crash", "warned"), "1", "{dump}");
    assert_eq!(f("crash", "removed"), "1", "{dump}");
    assert_eq!(f("crash", "left"), "0", "{dump}");
}
