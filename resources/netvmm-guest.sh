#!/bin/sh
# /usr/local/sbin/netvmm-guest in the Debian rootfs (build-rootfs.sh), started by
# netvmm-run.service. The same kernel command-line keys and console lines as the
# initramfs's /init (resources/guest-init.sh, the reference for their meaning):
#   netvmm.ip=ADDR/PREFIX netvmm.iface=NAME (eth0) netvmm.gw=ADDR netvmm.hostname=NAME
#   netvmm.run="shell command" | netvmm.run64=BASE64   netvmm.exit=poweroff|reboot
# Once systemd has finished booting (multi-user.target and everything queued with it) it
# prints one "netvmm-guest: ready ... state=running" line. With a command it runs it,
# prints "netvmm-guest: command exited with status N", writes N to netvmm's exit device
# (I/O port 0xf4: netvmm exits N) and otherwise powers off; without one the system stays
# up with a login on the serial console (root, no password).

PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
HOME=/root
export PATH HOME
cd /

say() { echo "netvmm-guest: $*"; }

ip_addr=
iface=eth0
gw=
host_name=
run=
exit_mode=poweroff
cmdline=$(cat "${NETVMM_GUEST_CMDLINE:-/proc/cmdline}")
# As in guest-init.sh: evaluated once as shell words, tried in a subshell first.
if (eval "set -- $cmdline") >/dev/null 2>&1; then
	eval "set -- $cmdline"
else
	say "cannot parse /proc/cmdline (unbalanced quotes?); ignoring netvmm.* keys"
	set --
fi
for arg in "$@"; do
	case $arg in
	netvmm.ip=*) ip_addr=${arg#netvmm.ip=} ;;
	netvmm.iface=*) iface=${arg#netvmm.iface=} ;;
	netvmm.gw=*) gw=${arg#netvmm.gw=} ;;
	netvmm.hostname=*) host_name=${arg#netvmm.hostname=} ;;
	netvmm.run=*) run=${arg#netvmm.run=} ;;
	netvmm.run64=*)
		if ! run=$(printf '%s' "${arg#netvmm.run64=}" | base64 -d); then
			say "cannot decode netvmm.run64"
			run="exit 125"
		fi
		;;
	netvmm.exit=*) exit_mode=${arg#netvmm.exit=} ;;
	esac
done
# NETVMM_GUEST_CMDLINE: the tests check the parsing on the build host, without a VM.
if [ -n "${NETVMM_GUEST_PRINT_ONLY:-}" ]; then
	printf 'ip=%s iface=%s gw=%s hostname=%s exit=%s\nrun=%s\n' \
		"$ip_addr" "$iface" "$gw" "$host_name" "$exit_mode" "$run"
	exit 0
fi

[ -n "$host_name" ] && hostname "$host_name"

if [ -n "$ip_addr" ]; then
	i=0
	while [ ! -e "/sys/class/net/$iface" ] && [ "$i" -lt 50 ]; do
		sleep 0.1
		i=$((i + 1))
	done
	if [ -e "/sys/class/net/$iface" ]; then
		ip addr add "$ip_addr" dev "$iface" || say "cannot add $ip_addr to $iface"
		ip link set "$iface" up || say "cannot bring $iface up"
	else
		say "interface $iface did not appear within 5 s"
	fi
fi
if [ -n "$gw" ]; then
	ip route add default via "$gw" || say "cannot add default route via $gw"
fi

# "running", or "degraded" when a unit failed (listed, so the console says which).
state=$(systemctl is-system-running --wait 2>/dev/null)
[ "$state" = running ] || systemctl --failed --no-legend --plain 2>/dev/null | sed 's/^/netvmm-guest: failed unit: /'
read -r uptime _ </proc/uptime
cpus=$(grep -c '^processor' /proc/cpuinfo)
mem_kb=$(sed -n 's/^MemTotal: *\([0-9]*\) kB$/\1/p' /proc/meminfo)
say "ready uptime=$uptime cpus=$cpus mem_kb=$mem_kb state=$state"

[ -n "$run" ] || exit 0

/bin/sh -c "$run" </dev/null
status=$?
say "command exited with status $status"
sync
# The exit device ends the VM at once: first let the console send what is still in the
# tty and UART buffers (a no-op setting applied with TCSADRAIN waits for it).
stty -F /dev/console "$(stty -F /dev/console -g 2>/dev/null)" 2>/dev/null
# Debian's cloud kernel has no /dev/port; netvmm-exit does ioperm + outb instead.
if [ -c /dev/port ]; then
	# shellcheck disable=SC2059 # the format is the octal escape of N
	printf "\\$(printf %o "$status")" | dd of=/dev/port bs=1 seek=244 count=1 2>/dev/null
else
	/usr/local/sbin/netvmm-exit "$status"
fi
# Still running: no exit device here. As guest-init does, a failure must not pass as a
# clean power-off, so a non-zero status crashes the kernel (a panic).
if [ "$status" != 0 ]; then
	say "no exit device took the status: crashing the kernel so that the failure is seen"
	echo c >/proc/sysrq-trigger
fi
if [ "$exit_mode" = reboot ]; then
	systemctl reboot
else
	systemctl poweroff
fi
