//! `--net tap,nat` and `--net tc=NIC` end to end: real guests in the emulated lab host.
//! The LAN is another network namespace (another host) with a switch (bridge sw0) whose
//! address 198.51.100.1 is the LAN peer. The lab host's uplink lanA (198.51.100.10, the
//! default route) is one port of it; for the tc part, ctrA and ctr2A, two veths with no
//! address, stand for containers' interfaces (as Kata has them) and become ports too. The LAN peer counts, in
//! an nftables table of its own, the pings it gets by source address, so what it saw as
//! the source is measured, not assumed. After every way out (normal exit, an error exit,
//! SIGKILL + `netvmm cleanup`) nothing may be left: no netvmm table, no ingress qdisc, no
//! tap, every forwarding sysctl as before.

mod common;

const SCENARIO: &str = r#"
IP=/sbin/ip
G="--kernel $NETVMM_GUEST_KERNEL --initrd $NETVMM_GUEST_INITRD --timeout 300"
ready() { i=0; while ! grep -q 'netvmm-guest: ready' "$1" 2>/dev/null && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; }
ping1() { echo "ping -c 2 -W 2 $1 >/dev/null; echo $2=\\\$?;"; }
# A guest that stays up until killed: IPADDR (and GW) are its address and gateway.
background() { log=$1; shift; netvmm run $G "$@" --serial-log $log --cmdline "quiet netvmm.ip=$IPADDR $GW netvmm.run=\"sleep 200\"" >/dev/null 2>$log.err & bg=$!; ready $log; }
sysctls() { grep -H . /proc/sys/net/ipv4/ip_forward /proc/sys/net/ipv4/conf/*/forwarding | grep -v nvtap | tr '\n' ' '; }
# What netvmm may leave: its nftables tables, ingress qdiscs on the NICs, taps.
tables() { nft list tables | grep -c netvmm; }
qdiscs() { tc qdisc show | grep -c 'qdisc ingress'; }
taps() { ls /sys/class/net | grep -c '^nvtap'; }
left() { echo "tables=$(tables) qdiscs=$(qdiscs) taps=$(taps) sysctls_same=$([ "$(sysctls)" = "$BEFORE" ] && echo 1 || echo 0)"; }
# The LAN peer's count of echo requests from source address $1.
seen() { $LAN nft list chain ip peer input | grep "saddr $1 " | sed -n 's/.*packets \([0-9]*\).*/\1/p'; }

LAN="$IP netns exec lan"
$IP netns add lan
$LAN $IP link set lo up
$LAN $IP link add sw0 type bridge; $LAN $IP link set sw0 up
$LAN $IP addr add 198.51.100.1/24 dev sw0
# A port of sw0: ${1}A here, ${1}B on the switch.
port() { $IP link add ${1}A type veth peer name ${1}B netns lan; $LAN $IP link set ${1}B master sw0; $LAN $IP link set ${1}B up; $IP link set ${1}A up; }
port lan
$IP addr add 198.51.100.10/24 dev lanA
$IP route add default via 198.51.100.1
$LAN nft -f - <<'EOF'
table ip peer {
  chain input {
    type filter hook input priority 0;
    icmp type echo-request ip saddr 198.51.100.10 counter
    icmp type echo-request ip saddr 203.0.113.2 counter
    icmp type echo-request ip saddr 198.51.100.3 counter
    icmp type echo-request ip saddr 203.0.113.6 counter
  }
}
EOF
# Unsolicited traffic from the LAN to the NAT subnet goes through the host.
$LAN $IP route add 203.0.113.0/24 via 198.51.100.10
BEFORE=$(sysctls)
echo "case=start $(left)"
echo "tc is $(readlink -f "$(command -v tc)")"

# --- NAT: default uplink (lanA, the default route's) and default subnet (203.0.113.0/30)
IPADDR=203.0.113.2/30 GW=netvmm.gw=203.0.113.1 background /tmp/n1.log --net tap,nat
bg1=$bg
during="during_tables=$(tables) during_uplink_fwd=$(cat /proc/sys/net/ipv4/conf/lanA/forwarding)"
ping -c 2 -W 2 203.0.113.2 >/dev/null; h2g=$?
$LAN ping -c 2 -W 2 203.0.113.2 >/dev/null; lan2g=$?
# A second NAT VM beside the first: the next /30.
lab_run n2 $G --net tap,nat --cmdline "quiet netvmm.ip=203.0.113.6/30 netvmm.gw=203.0.113.5 netvmm.run=\"$(ping1 198.51.100.1 lan)\""
s2=$s
fwd_one_left=$(cat /proc/sys/net/ipv4/conf/lanA/forwarding)
tables_one_left=$(tables)
kill $bg1; wait $bg1
echo "case=nat-two status=$s2 lan=$(v /tmp/n2.log lan) peer_saw_guest=$(seen 203.0.113.6) fwd_one_left=$fwd_one_left tables_one_left=$tables_one_left second_desc=$(grep -c 'host 203.0.113.5/30' /tmp/n2.err) $(left)"
lab_run n3 $G --net tap,nat --cmdline "quiet netvmm.ip=203.0.113.2/30 netvmm.gw=203.0.113.1 netvmm.run=\"$(ping1 198.51.100.1 lan)\""
echo "case=nat $during status=$s lan=$(v /tmp/n3.log lan) host_to_guest=$h2g lan_to_guest=$lan2g peer_saw_host=$(seen 198.51.100.10) peer_saw_guest=$(seen 203.0.113.2) desc=$(grep -c 'behind NAT out of lanA: host 203.0.113.1/30, guest netvmm.ip=203.0.113.2/30' /tmp/n3.err) $(left)"

# error exit: the second NIC fails after the first set NAT up
netvmm run $G --net tap,nat --net tc=nosuch0 >/dev/null 2>/tmp/ne.err; s=$?
echo "case=nat-error status=$s lines=$(wc -l < /tmp/ne.err) $(left)"
# SIGKILL: the table and the forwarding stay; cleanup removes and restores them
netvmm run $G --net tap,nat --cmdline 'quiet netvmm.run="sleep 100"' >/dev/null 2>&1 &
pid=$!; i=0; while [ "$(tables)" = 0 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
kill -KILL $pid; wait $pid
leftover="tables=$(tables) uplink_fwd=$(cat /proc/sys/net/ipv4/conf/lanA/forwarding)"
netvmm cleanup > /tmp/nc.out
echo "case=nat-kill leftover_$leftover removed=$(grep -c "^removed nftables table 'netvmm-nat," /tmp/nc.out) $(left)"
netvmm run $G --net tap,nat=nosuch0 >/dev/null 2>/tmp/nb.err; s=$?
echo "case=nat-bad status=$s lines=$(wc -l < /tmp/nb.err) msg=$(head -c 200 /tmp/nb.err | tr ' ' '_')"

# --- tc: the guest on the LAN segment through ctrA, with its own address and MAC. The
# container veths join the LAN only now: a host with three interfaces on one segment
# answers ARP for its LAN address on each (arp_ignore=0), and a LAN peer that learned
# ctrA's MAC for 198.51.100.10 sends the NAT replies where forwarding is off.
port ctr; port ctr2
BEFORE=$(sysctls)
IPADDR=198.51.100.3/24 GW= background /tmp/t1.log --net tc=ctrA
bg1=$bg
mac=$(sed -n 's/.*eth0 (mac \([0-9a-f:]*\)).*/\1/p' /tmp/t1.log.err)
$IP neigh flush all
ping -c 2 -W 2 198.51.100.3 >/dev/null; h2g=$?
$LAN ping -c 2 -W 2 198.51.100.3 >/dev/null; lan2g=$?
lan_mac=$($LAN $IP neigh show 198.51.100.3 | sed -n 's/.*lladdr \([0-9a-f:]*\).*/\1/p')
during="during_qdiscs=$(qdiscs) during_ctrA_qdisc=$(tc qdisc show dev ctrA | grep -c 'qdisc ingress')"
# A second VM on the same NIC is refused; one on another NIC runs beside the first.
netvmm run $G --net tc=ctrA >/dev/null 2>/tmp/t2.err; busy=$?
lab_run t3 $G --net tc=ctr2A --cmdline "quiet netvmm.ip=198.51.100.4/24 netvmm.run=\"$(ping1 198.51.100.1 lan) $(ping1 198.51.100.3 guest)\""
s3=$s
kill $bg1; wait $bg1
echo "case=tc-two busy=$busy busy_lines=$(wc -l < /tmp/t2.err) busy_msg=$(head -c 200 /tmp/t2.err | tr ' ' '_') status=$s3 lan=$(v /tmp/t3.log lan) guest=$(v /tmp/t3.log guest) $(left)"
lab_run t4 $G --net tc=ctrA --cmdline "quiet netvmm.ip=198.51.100.3/24 netvmm.run=\"$(ping1 198.51.100.1 lan) $(ping1 198.51.100.10 host)\""
echo "case=tc $during status=$s lan=$(v /tmp/t4.log lan) guest_to_host_lan_addr=$(v /tmp/t4.log host) host_to_guest=$h2g lan_to_guest=$lan2g peer_saw_guest=$(seen 198.51.100.3) guest_mac=$mac lan_mac=$lan_mac filter=$(sed -n 's/.*by tc (\([a-z0-9]*\) filters.*/\1/p' /tmp/t4.err) $(left)"
# The host's address on the NIC itself: the guest's frames leave by ctrA's egress and
# never come up ctrA's own stack.
$IP addr add 192.0.2.10/24 dev ctrA
lab_run t5 $G --net tc=ctrA --cmdline "quiet netvmm.ip=192.0.2.3/24 netvmm.run=\"$(ping1 192.0.2.10 nic)\""
echo "case=tc-nic-addr status=$s guest_to_nic_addr=$(v /tmp/t5.log nic)"
$IP addr flush dev ctrA

netvmm run $G --net tc=ctrA --net tap,nat=nosuch0 >/dev/null 2>/tmp/te.err; s=$?
echo "case=tc-error status=$s lines=$(wc -l < /tmp/te.err) $(left)"
netvmm run $G --net tc=ctrA --cmdline 'quiet netvmm.run="sleep 100"' >/dev/null 2>&1 &
pid=$!; i=0; while [ "$(qdiscs)" = 0 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
kill -KILL $pid; wait $pid
leftover=$(qdiscs)
netvmm cleanup > /tmp/tc.out
echo "case=tc-kill leftover=$leftover removed=$(grep -c '^removed ctrA (ingress qdisc)' /tmp/tc.out) $(left)"
netvmm run $G --net tc=nosuch0 >/dev/null 2>/tmp/tb.err; s=$?
echo "case=tc-bad status=$s lines=$(wc -l < /tmp/tb.err) msg=$(head -c 200 /tmp/tb.err | tr ' ' '_')"
"#;

fn clean(f: &dyn Fn(&str, &str) -> String, case: &str, dump: &str) {
    for (key, want) in [
        ("tables", "0"),
        ("qdiscs", "0"),
        ("taps", "0"),
        ("sysctls_same", "1"),
    ] {
        assert_eq!(f(case, key), want, "{case}: {key} after it\n{dump}");
    }
}

#[test]
fn nat_and_tc_reach_the_lan_and_leave_nothing_behind() {
    let out = common::lab(SCENARIO, 1500);
    let dump = out.dump();
    out.record_reruns("nat_and_tc_reach_the_lan_and_leave_nothing_behind");
    assert_eq!(out.status, 0, "{dump}");
    let f = |case: &str, key: &str| out.field(case, key).unwrap_or_default();
    clean(&f, "start", &dump);

    // NAT: the guest reaches the LAN, which sees the host's address, never the guest's.
    assert_eq!(f("nat", "status"), "0", "{dump}");
    assert_eq!(f("nat", "during_tables"), "1", "{dump}");
    assert_eq!(f("nat", "during_uplink_fwd"), "1", "{dump}");
    assert_eq!(f("nat", "lan"), "0", "NAT guest -> LAN peer\n{dump}");
    assert_ne!(f("nat", "peer_saw_host"), "0", "{dump}");
    assert_eq!(f("nat", "peer_saw_guest"), "0", "masqueraded\n{dump}");
    assert_eq!(
        f("nat", "host_to_guest"),
        "0",
        "the tap is the host's\n{dump}"
    );
    assert_ne!(f("nat", "lan_to_guest"), "0", "no port forward\n{dump}");
    assert_eq!(f("nat", "desc"), "1", "the address is printed\n{dump}");
    clean(&f, "nat", &dump);
    assert_eq!(f("nat-two", "status"), "0", "{dump}");
    assert_eq!(f("nat-two", "lan"), "0", "{dump}");
    assert_eq!(f("nat-two", "peer_saw_guest"), "0", "masqueraded\n{dump}");
    assert_eq!(f("nat-two", "second_desc"), "1", "the next /30\n{dump}");
    assert_eq!(f("nat-two", "tables_one_left"), "1", "{dump}");
    assert_eq!(f("nat-two", "fwd_one_left"), "1", "still needed\n{dump}");
    clean(&f, "nat-two", &dump);
    assert_ne!(f("nat-error", "status"), "0", "{dump}");
    clean(&f, "nat-error", &dump);
    assert_eq!(f("nat-kill", "leftover_tables"), "1", "{dump}");
    assert_eq!(f("nat-kill", "removed"), "1", "{dump}");
    clean(&f, "nat-kill", &dump);
    assert_ne!(f("nat-bad", "status"), "0", "{dump}");
    assert_eq!(f("nat-bad", "lines"), "1", "{dump}");
    assert!(f("nat-bad", "msg").contains("nosuch0"), "{dump}");

    // tc: the guest is on the segment with its own address and MAC.
    assert_eq!(f("tc", "status"), "0", "{dump}");
    assert_eq!(
        f("tc", "during_qdiscs"),
        "2",
        "the NIC's and the tap's, while it ran\n{dump}"
    );
    assert_eq!(f("tc", "during_ctrA_qdisc"), "1", "{dump}");
    // The lab kernel has cls_matchall; kernels without it get u32 (the net unit tests).
    assert_eq!(f("tc", "filter"), "matchall", "{dump}");
    assert_eq!(f("tc", "lan"), "0", "tc guest -> LAN peer\n{dump}");
    assert_ne!(f("tc", "peer_saw_guest"), "0", "its own address\n{dump}");
    assert_eq!(f("tc", "lan_to_guest"), "0", "{dump}");
    assert!(!f("tc", "guest_mac").is_empty(), "{dump}");
    assert_eq!(
        f("tc", "guest_mac"),
        f("tc", "lan_mac"),
        "its own MAC\n{dump}"
    );
    assert_eq!(
        f("tc", "host_to_guest"),
        "0",
        "host -> guest round the LAN switch\n{dump}"
    );
    assert_eq!(f("tc", "guest_to_host_lan_addr"), "0", "{dump}");
    assert_eq!(f("tc-nic-addr", "status"), "0", "{dump}");
    assert_ne!(
        f("tc-nic-addr", "guest_to_nic_addr"),
        "0",
        "the NIC's own stack never sees the guest\n{dump}"
    );
    clean(&f, "tc", &dump);
    assert_ne!(f("tc-two", "busy"), "0", "{dump}");
    assert_eq!(f("tc-two", "busy_lines"), "1", "{dump}");
    assert!(f("tc-two", "busy_msg").contains("ingress_qdisc"), "{dump}");
    assert_eq!(f("tc-two", "status"), "0", "{dump}");
    assert_eq!(f("tc-two", "lan"), "0", "{dump}");
    assert_eq!(
        f("tc-two", "guest"),
        "0",
        "guest <-> guest over the LAN\n{dump}"
    );
    clean(&f, "tc-two", &dump);
    assert_ne!(f("tc-error", "status"), "0", "{dump}");
    clean(&f, "tc-error", &dump);
    assert_eq!(f("tc-kill", "leftover"), "1", "{dump}");
    assert_eq!(f("tc-kill", "removed"), "1", "{dump}");
    clean(&f, "tc-kill", &dump);
    assert_ne!(f("tc-bad", "status"), "0", "{dump}");
    assert_eq!(f("tc-bad", "lines"), "1", "{dump}");
    assert!(f("tc-bad", "msg").contains("nosuch0"), "{dump}");
}
