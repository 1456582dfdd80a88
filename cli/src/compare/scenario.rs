//! The one shell scenario behind `netvmm compare`: it builds the topology, and for each
//! backend boots the guests, sends the traffic and writes what it saw as `cmp ...` result
//! lines (parsed by `results`). The same text runs in the emulated lab host and, natively,
//! inside a fresh network and mount namespace.
//!
//! Topology (both labs):
//!
//! ```text
//!   netns "lan" (another machine):  LAN peer 203.0.113.1 on switch sw0 -- port lanB
//!                                                                            |  (veth: the wire)
//!   the host:                        NIC lanA, host address 203.0.113.10 (on lanA, or on br0)
//! ```
//!
//! Per backend: tap (guests 192.0.2.2/28 and .18/28 behind their own taps, host .1 and .17,
//! ip_forward on, the LAN peer routes 192.0.2.0/24 via the host), bridge (br0 holds lanA and
//! the host address; guests 203.0.113.2 and .3 on it), macvtap-<mode> on lanA (guests .2 and
//! .3; the LAN switch hairpins lanB for vepa and private).

use std::time::Duration;

use super::backend::Backend;

/// The scenario. Environment: `NETVMM` (the netvmm to run), `IP` and `BRIDGE` (iproute2's
/// `ip` and `bridge`), `W` (a work directory of its own), `T` (seconds per iperf3 run),
/// `BACKENDS` (names, in run order), `GT` (a guest's `--timeout`), and the guest image in
/// `NETVMM_GUEST_KERNEL` and `NETVMM_GUEST_INITRD`. For the tests, `NETVMM_COMPARE_CUT`
/// (`<backend>:<direction>`) sets the measured guest's host-side interfaces down before
/// that iperf3 run, as the nested lab has been seen to cut a guest off.
///
/// Result lines (`$W/results`), one fact each, `cmp <backend> <kind> ...`:
/// `netup <ok>:<uptime>`, `ready <the guest's ready line>`, `report <netvmm-report line>`,
/// `ping <direction> <a line of ping output>`, `iperf <direction> <iperf3 receiver or error
/// line>`, `iperf-status <direction> <status>`, `no-iperf <direction> <reason>`,
/// `cpu <direction> before|after <contents of /proc/<vmm pid>/stat>`,
/// `second-guest <status> <message>`, `note <text>`, `skip <reason>`, and `done` when the
/// backend is finished (measured or skipped). Each line also goes to stdout.
///
/// Quoting: the guest's init evaluates its command line once, so every `$` meant for the
/// guest's own shell is written `\$` (single-quoted here, so the scenario leaves it alone).
pub const SCENARIO: &str = r#"
R=$W/results
mkdir -p "$W"; : > "$R"
say() { echo "netvmm compare: $*"; }
# A result goes to the results file and to the console, which the caller reads as it comes
# (should the lab die, the figures of the backends that finished are not lost).
res() { printf 'cmp %s\n' "$*" >> "$R"; printf 'cmp %s\n' "$*"; }
tag() { while IFS= read -r l; do res "$1 $l"; done; }
LAN="$IP netns exec lan"
G="--kernel $NETVMM_GUEST_KERNEL --initrd $NETVMM_GUEST_INITRD --timeout $GT"
LAN_PEER=203.0.113.1
HOST_LAN=203.0.113.10

# alive PID: the process runs (a zombie that no wait reaped yet does not).
alive() { [ -e /proc/$1/stat ] && ! grep -q ') Z ' /proc/$1/stat 2>/dev/null; }
# wait_for FILE PATTERN PID SECONDS: until PATTERN shows in FILE; fails when PID ends first.
wait_for() {
  n=0
  while [ $n -lt $(($4 * 4)) ]; do
    grep -q "$2" "$1" 2>/dev/null && return 0
    if ! alive "$3"; then grep -q "$2" "$1" 2>/dev/null; return; fi
    sleep 0.25; n=$((n + 1))
  done
  return 1
}
stop() { kill -TERM "$1" 2>/dev/null; wait "$1" 2>/dev/null; }
# The last line netvmm wrote on stderr, its exit figures aside.
last_err() { grep -v '^netvmm-\(nic-\)\{0,1\}report:' "$1" 2>/dev/null | tail -n 1 | tr -d '\r'; }
# The last lines of a guest's console, on one line.
console_tail() { tr -d '\r' < "$1" 2>/dev/null | grep -v '^$' | tail -n 3 | tr '\n' '|'; }

# gcmd HOST LAN [PEER]: the measured guest's command. It pings the LAN peer until the first
# reply (boot to a working network), starts an iperf3 server, then pings the host and the
# LAN peer 20 times each (after a warm-up ping, so that ARP is not among the samples) and
# the other guest 3 times, every reply line tagged for the results; then it waits.
gcmd() {
  c='n=0; ok=0; while [ \$n -lt 30 ]; do if ping -c 1 -W 1 '$2' >/dev/null 2>&1; then ok=1; break; fi; n=\$((n+1)); done;'
  c="$c"' read u r < /proc/uptime; echo cmp-netup=\$ok:\$u; iperf3 -s -D >/dev/null 2>&1;'
  c="$c"' ping -c 1 -W 1 '$1' >/dev/null 2>&1; ping -c 20 -i 0.2 -W 2 '$1' 2>&1 | sed s/^/cmp-ping-guest_to_host:/;'
  c="$c"' ping -c 1 -W 1 '$2' >/dev/null 2>&1; ping -c 20 -i 0.2 -W 2 '$2' 2>&1 | sed s/^/cmp-ping-guest_to_lan:/;'
  if [ -n "$3" ]; then
    c="$c"' ping -c 3 -i 0.2 -W 2 '$3' 2>&1 | sed s/^/cmp-ping-guest_to_guest:/;'
  fi
  printf '%s' "$c echo cmp-guest-done; sleep 100000"
}

setup() {
  HOST_T=$HOST_LAN; ADDR_A=203.0.113.2; ADDR_B=203.0.113.3
  IPA=$ADDR_A/24; IPB=$ADDR_B/24; GWA=; GWB=
  case $1 in
  tap)
    # L3: the host routes between the taps and the LAN.
    echo 1 > /proc/sys/net/ipv4/ip_forward
    $IP addr add $HOST_LAN/24 dev lanA
    $LAN $IP route add 192.0.2.0/24 via $HOST_LAN
    NA=tap,host-ip=192.0.2.1/28; NB=tap,host-ip=192.0.2.17/28
    HOST_T=192.0.2.1; ADDR_A=192.0.2.2; ADDR_B=192.0.2.18
    IPA=192.0.2.2/28; IPB=192.0.2.18/28; GWA=netvmm.gw=192.0.2.1; GWB=netvmm.gw=192.0.2.17 ;;
  bridge)
    $IP link add br0 type bridge; $IP link set lanA master br0; $IP link set br0 up
    $IP addr add $HOST_LAN/24 dev br0
    NA=bridge=br0; NB=bridge=br0 ;;
  macvtap-bridge+host)
    # The host's address on netvmm's host-access shim (a bridge-mode macvlan on lanA, shared
    # by both guests), not on lanA: host and guests are siblings on lanA.
    NA=macvtap=lanA,mode=bridge,host-access=$HOST_LAN/24; NB=$NA ;;
  macvtap-*)
    $IP addr add $HOST_LAN/24 dev lanA
    case $1 in macvtap-vepa|macvtap-private) $LAN $BRIDGE link set dev lanB hairpin on ;; esac
    NA=macvtap=lanA,mode=${1#macvtap-}; NB=$NA ;;
  esac
}

teardown() {
  case $1 in
  tap)
    $LAN $IP route del 192.0.2.0/24 2>/dev/null
    echo 0 > /proc/sys/net/ipv4/ip_forward
    $IP addr flush dev lanA ;;
  bridge) $IP link set lanA nomaster; $IP link del br0 ;;
  macvtap-*) $IP addr flush dev lanA; $LAN $BRIDGE link set dev lanB hairpin off ;;
  esac
}

# What the host knows of the measured guest, on one line: its neighbour entry, and the
# counters of netvmm's interfaces (a tap whose TX drops grow is one netvmm stopped reading).
host_view() {
  $IP neigh show $ADDR_A | tr '\n' ' '
  $IP -s -o link show 2>/dev/null | grep ' nv[a-z]*[0-9]*[@:]' | sed 's/  */ /g' | tr '\n' ' '
}

# The measured guest's host-side interfaces down: a guest cut off from the network while it
# runs (for the tests; netvmm marks what it creates "netvmm pid=PID:START[:PIDNS]").
cut_guest() {
  for i in /sys/class/net/*; do
    case "$(cat $i/ifalias 2>/dev/null)" in
    "netvmm pid=$apid:"*) $IP link set ${i##*/} down ;;
    esac
  done
}

forget() { $IP neigh flush all >/dev/null 2>&1; $LAN $IP neigh flush all >/dev/null 2>&1; }

# boot_measured: starts measured guest number $gen of backend $b (console $A.log, netvmm's
# stderr $A.err, netvmm's pid $apid) and waits until it has done its pings. On failure $why
# says what happened.
boot_measured() {
  say "$b: booting the measured guest; it pings the host, the LAN peer${peer:+ and the other guest}"
  A=$W/$b-A$gen
  rm -f "$A.log"
  NETVMM_BOOT_REPORT=1 $NETVMM run $G --memory 384 --net $NA --serial-log "$A.log" \
    --cmdline "quiet netvmm.ip=$IPA $GWA netvmm.run=\"$(gcmd $HOST_T $LAN_PEER $peer)\"" </dev/null >/dev/null 2>"$A.err" &
  apid=$!
  # Anchored: the guest's command line, should a kernel print it, holds these words too.
  wait_for "$A.log" '^cmp-guest-done' $apid 180 && return 0
  if alive $apid; then
    why="the guest did not finish its pings within 180 s"
    stop $apid
    why="$why; the guest's console ended: $(console_tail "$A.log")"
  else
    ended
  fi
  return 1
}
# ended: $why becomes why the measured guest's netvmm ended (it has).
ended() {
  wait $apid
  why="its netvmm ended with status $?: $(last_err "$A.err"); the guest's console ended: $(console_tail "$A.log")"
}
# ensure_guest: the measured guest runs; once per backend a new one replaces a lost one (on
# the record: the nested lab has been seen to lose a guest mid-run). Fails, $lost saying why,
# when neither.
ensure_guest() {
  alive $apid && return 0
  [ -n "$lost" ] && return 1
  ended
  lost="the measured guest is gone: $why"
  [ $revived = 1 ] && return 1
  revived=1
  say "$b: the measured guest was lost ($why); a new one takes its place"
  res "$b note the measured guest was lost mid-run: $why; a new one took its place for the iperf3 runs left"
  gen=$((gen + 1))
  if boot_measured; then lost=; return 0; fi
  lost="the measured guest is gone, and its replacement did not come up: $why"
  return 1
}

measure() {
  b=$1
  say "$b: setting up"
  setup $b
  forget
  rm -f "$W/$b"-A*.log "$W/$b"-A*.err "$W/$b-B.log"
  bpid=
  try=0
  while [ $b != macvtap-passthru ] && [ $try -lt 2 ]; do
    try=$((try + 1))
    say "$b: booting the second guest (it answers the guest_to_guest ping)"
    rm -f "$W/$b-B.log"
    $NETVMM run $G --memory 256 --net $NB --serial-log "$W/$b-B.log" \
      --cmdline "quiet netvmm.ip=$IPB $GWB netvmm.run=\"sleep 100000\"" </dev/null >/dev/null 2>"$W/$b-B.err" &
    bpid=$!
    wait_for "$W/$b-B.log" 'netvmm-guest: ready' $bpid 120 && break
    if alive $bpid; then
      why="its guest printed no ready line within 120 s"
    else
      why="its netvmm ended: $(last_err "$W/$b-B.err")"
    fi
    say "$b: the second guest did not come up ($why)"
    res "$b note the second guest did not come up (attempt $try): $why"
    stop $bpid; bpid=
  done
  peer=; [ -n "$bpid" ] && peer=$ADDR_B
  # Two tries: the nested lab has been seen to lose a guest now and then; a lost first try
  # is on the record.
  gen=1
  until boot_measured; do
    if [ $gen -ge 2 ]; then
      res "$b skip $why"
      say "$b: skipped: $why"
      [ -n "$bpid" ] && stop $bpid
      teardown $b
      res "$b done"
      return
    fi
    say "$b: the measured guest did not come up ($why); once more"
    res "$b note the measured guest did not come up (attempt $gen): $why"
    gen=$((gen + 1))
  done
  # The guest whose boot and pings are the figures; a replacement only carries iperf3.
  first=$A
  revived=0; lost=
  [ -n "$bpid" ] && stop $bpid
  if [ $b = macvtap-passthru ]; then
    say "$b: trying a second guest on the same NIC"
    $NETVMM run $G --net $NA --cmdline 'quiet netvmm.run=true' </dev/null >/dev/null 2>"$W/$b-B.err"
    res "$b second-guest $? $(last_err "$W/$b-B.err")"
  fi

  say "$b: the host and the LAN peer ping the guest"
  forget
  ping -c 3 -i 0.2 -W 1 $ADDR_A 2>&1 | tag "$b ping host_to_guest"
  $LAN ping -c 3 -i 0.2 -W 1 $ADDR_A 2>&1 | tag "$b ping lan_to_guest"

  for d in lan_to_guest guest_to_lan host_to_guest guest_to_host; do
    case $d in
    lan_to_guest) via=lan_to_guest; cl="$LAN iperf3"; rev= ;;
    guest_to_lan) via=lan_to_guest; cl="$LAN iperf3"; rev=-R ;;
    host_to_guest) via=host_to_guest; cl=iperf3; rev= ;;
    guest_to_host) via=host_to_guest; cl=iperf3; rev=-R ;;
    esac
    if ! grep -q "^cmp $b ping $via .*time=" "$R"; then
      res "$b no-iperf $d no path: the $via ping got no reply"
      continue
    fi
    say "$b: iperf3 $d, $T s"
    ran=0
    for attempt in 1 2; do
      ensure_guest || break
      ran=1
      [ "$NETVMM_COMPARE_CUT" = "$b:$d" ] && [ $attempt = 1 ] && cut_guest
      before=$(cat /proc/$apid/stat 2>/dev/null)
      timeout $((T + 30)) $cl -c $ADDR_A -t $T -f m $rev --connect-timeout 5000 > "$W/iperf.out" 2>&1
      st=$?
      after=$(cat /proc/$apid/stat 2>/dev/null)
      # A summary from a guest that died under it is no measurement.
      if alive $apid; then
        grep receiver "$W/iperf.out" | grep -qv ' 0\.00 Mbits/sec' && break
        failed=$(grep -m 1 error "$W/iperf.out")
        [ -n "$failed" ] || failed="no data reached the receiver: $(grep -m 1 receiver "$W/iperf.out")"
      else
        failed="the measured guest ended during the run"
      fi
      # Once more, on the record: the nested lab has been seen to lose a run now and then.
      res "$b note iperf3 $d attempt $attempt failed (status $st): $failed"
      if [ $attempt = 1 ]; then
        res "$b note the guest's last console lines: $(console_tail "$A.log")"
        res "$b note the host's view of the guest: $(host_view)"
        # A guest cut off from the network (the nested lab has been seen to do that mid-run)
        # gets a replacement for the runs left; its netvmm's exit report, among the device
        # counters below, says where its rings stood.
        if alive $apid && ! ${cl%iperf3}ping -c 2 -W 1 $ADDR_A >/dev/null 2>&1; then
          res "$b note the measured guest no longer answers a ping from the $d client; it is replaced"
          stop $apid
        fi
      fi
      : > "$W/iperf.out"
      sleep 1
    done
    if [ $ran = 0 ]; then
      res "$b no-iperf $d $lost"
      continue
    fi
    res "$b cpu $d before $before"
    res "$b cpu $d after $after"
    grep -E 'receiver|error' "$W/iperf.out" | tag "$b iperf $d"
    res "$b iperf-status $d $st"
  done

  stop $apid
  shims=$(ls /sys/class/net | grep -c '^nvshim')
  [ "$shims" = 0 ] || res "$b note $shims host-access shim(s) left behind after the last guest"
  res "$b report $(grep 'netvmm-report:' "$first.err" | tail -n 1)"
  if grep -q "^cmp $b note \(iperf3\|the measured guest was lost\)" "$R"; then
    res "$b note the measured guests' device counters: $(grep -h 'netvmm-nic-report:' "$W/$b"-A*.err | tr '\n' ' ')"
  fi
  res "$b ready $(tr -d '\r' < "$first.log" | grep -m 1 'netvmm-guest: ready')"
  tr -d '\r' < "$first.log" | sed -n -e "s/^cmp-netup=/netup /p" \
    -e "s/^cmp-ping-\([a-z_]*\):/ping \1 /p" | tag "$b"
  teardown $b
  res "$b done"
  say "$b: done"
}

# A heartbeat for the caller's watchdog: a lab host that stops printing has hung.
(while sleep 15; do echo cmp-alive; done) &
hb=$!
say "building the topology: NIC lanA, its wire to the LAN host (netns lan: switch sw0, peer $LAN_PEER)"
$IP link set lo up
$IP netns add lan
$IP link add lanA type veth peer name lanB netns lan
$LAN $IP link set lo up
$LAN $IP link add sw0 type bridge
$LAN $IP link set sw0 up
$LAN $IP addr add $LAN_PEER/24 dev sw0
$LAN $IP link set lanB master sw0
$LAN $IP link set lanB up
$IP link set lanA up
for b in $BACKENDS; do measure $b; done
$IP netns del lan
kill $hb
"#;

/// What the measured guest may take at most: its boot and pings (the scenario waits 180 s
/// for them), then four iperf3 runs, each tried at most twice, of at most `iperf_seconds` +
/// 30 s (and a second's pause) each.
pub fn guest_timeout(iperf_seconds: u32) -> Duration {
    Duration::from_secs(240 + 8 * (u64::from(iperf_seconds) + 31))
}

/// How long the whole scenario may take for `n` backends: every wait in it at its limit (two
/// tries of the second guest, 120 s each, a lost first try of the measured guest and a
/// replacement for one lost mid-run, 180 s each, and the measured guest), plus the topology. A last resort: a lab host that hangs is
/// noticed sooner, by its missing heartbeat.
pub fn scenario_timeout(n: usize, iperf_seconds: u32) -> Duration {
    Duration::from_secs(120)
        + (Duration::from_secs(240 + 2 * 180) + guest_timeout(iperf_seconds)) * n.max(1) as u32
}

/// The scenario's environment, less the guest image and the tools' paths.
pub fn env(backends: &[Backend], iperf_seconds: u32, work: &str) -> Vec<(String, String)> {
    vec![
        ("W".into(), work.into()),
        ("T".into(), iperf_seconds.to_string()),
        (
            "BACKENDS".into(),
            backends
                .iter()
                .map(|b| b.name())
                .collect::<Vec<_>>()
                .join(" "),
        ),
        (
            "GT".into(),
            guest_timeout(iperf_seconds).as_secs().to_string(),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_names_backends_in_order() {
        let e = env(&[Backend::Tap, Backend::MacvtapPassthru], 3, "/tmp/cmp");
        let get = |k: &str| e.iter().find(|(n, _)| n == k).unwrap().1.clone();
        assert_eq!(get("BACKENDS"), "tap macvtap-passthru");
        assert_eq!(get("T"), "3");
        assert_eq!(get("W"), "/tmp/cmp");
        assert_eq!(get("GT"), "512");
        assert!(scenario_timeout(6, 3) > guest_timeout(3) * 6);
    }

    #[test]
    fn guest_command_escapes_every_dollar() {
        // Every `$` the guest's shell must see is written `\$` in the single-quoted parts.
        let start = SCENARIO.find("gcmd() {").unwrap();
        let end = start + SCENARIO[start..].find("\n}\n").unwrap();
        for line in SCENARIO[start..end]
            .lines()
            .filter(|l| l.trim_start().starts_with("c="))
        {
            let single: String = line.split('\'').skip(1).step_by(2).collect();
            for (i, _) in single.match_indices('$') {
                assert!(single[..i].ends_with('\\'), "unescaped $ in {line}");
            }
        }
    }
}
