//! The data path end to end in the emulated lab host: `mtu=` gives the guest a jumbo MTU
//! that frames really cross at (through a tap, unfragmented both ways), and a bridge with
//! ports below it is named in one line. One lab boot for all cases.

mod common;

// The guest's init evaluates its command line once: every `$` meant for the guest is `\$`.
// Busybox's ping (guest and lab host) has no `-M do`; the IP counters say the same thing:
// a ping that is neither fragmented by its sender (FragCreates) nor reassembled by its
// receiver (ReasmReqds) crossed whole.
const SCENARIO: &str = r#"
IP=/sbin/ip
G="--kernel $NETVMM_GUEST_KERNEL --initrd $NETVMM_GUEST_INITRD --timeout 300 --memory 384"
v() { tr -d '\r' < "$1" | sed -n "s/^$2=//p" | head -n 1; }
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
"#;

#[test]
fn datapath_end_to_end() {
    let out = common::lab(SCENARIO, 1500);
    let dump = out.dump();
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
}
