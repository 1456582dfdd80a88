#!/bin/sh
# /init of the netvmm guest initramfs (busybox ash, POSIX sh only).
#
# Contract with the VMM and the tests (see resources/README.md):
#   kernel cmdline keys  netvmm.ip=ADDR/PREFIX netvmm.iface=NAME (eth0)
#                        netvmm.gw=ADDR netvmm.hostname=NAME
#                        netvmm.run="shell command"
#                        netvmm.run64=BASE64 (the same, base64: `netvmm run -- CMD`)
#                        netvmm.exit=poweroff|reboot (poweroff)
#                        root=/dev/vdX|LABEL=..|UUID=.. rootfstype=TYPE ro|rw init=PATH:
#                        mount that root and switch_root to its init (/sbin/init)
#                        instead of all of the below, which the new root's own
#                        init does (build-rootfs.sh: netvmm-run.service)
#   console output       exactly one "netvmm-guest: ready ..." line, then for
#                        netvmm.run "netvmm-guest: command exited with status N"
#   exit device          the command's status N is written to I/O port 0xf4
#                        (/dev/port), which ends the VM: netvmm exits N
#
# This is PID 1: if it exits, the kernel panics. So no `set -e`, every step
# tolerates failure, and the end is always a power-off.

PATH=/sbin:/bin:/usr/sbin:/usr/bin
HOME=/root
export PATH HOME

say() { echo "netvmm-guest: $*"; }

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
# The kernel opened the console before /dev was replaced by devtmpfs; reopen
# it so everything below (and the user's command) writes to the real device.
[ -c /dev/console ] && exec </dev/console >/dev/console 2>&1

# Load drivers dependency-first, as listed by the image builder. A module that
# is already loaded or built in is not an error worth a line on the console.
# A kernel of another release (one built with `netvmm kconfig`) has its
# drivers built in and cannot load these.
if [ -r /etc/netvmm-modules ] && [ -d "/lib/modules/$(uname -r)" ]; then
	while read -r mod; do
		case $mod in '' | \#*) continue ;; esac
		if ! out=$(insmod "$mod" 2>&1); then
			case $out in
			*"File exists"* | *"already"*) ;;
			*) say "insmod $mod failed: $out" ;;
			esac
		fi
	done </etc/netvmm-modules
fi

# report_status N: write N to netvmm's exit device (I/O port 0xf4), which
# ends the VM with exit status N. Under a VMM without it the write does
# nothing (QEMU's isa-debug-exit, if present there, exits (N << 1) | 1).
# Through /dev/port where the kernel has it, else with netvmm-exit (ioperm
# and outb: Debian's cloud kernel has no /dev/port).
report_status() {
	# The device ends the VM at once: first let the console send what is still in
	# the tty and UART buffers (a no-op setting applied with TCSADRAIN waits for
	# that), or the command's last lines would be lost.
	stty -F /dev/console "$(stty -F /dev/console -g 2>/dev/null)" 2>/dev/null
	if [ -c /dev/port ]; then
		# shellcheck disable=SC2059 # the format is the octal escape of N
		printf "\\$(printf %o "$1")" | dd of=/dev/port bs=1 seek=244 count=1 2>/dev/null
	else
		/bin/netvmm-exit "$1"
	fi
}

ip_addr=
iface=eth0
gw=
host_name=
run=
exit_mode=poweroff
root=
rootfstype=
root_mode=rw
new_init=/sbin/init
# eval honours the quotes of netvmm.run="a b; c". An unbalanced quote would
# be a syntax error that kills PID 1, so try it in a subshell first.
cmdline=$(cat /proc/cmdline)
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
		# base64 carries any command through the kernel's and this shell's
		# parsing of the command line untouched.
		if ! run=$(printf '%s' "${arg#netvmm.run64=}" | base64 -d); then
			say "cannot decode netvmm.run64"
			run="exit 125"
		fi
		;;
	netvmm.exit=*) exit_mode=${arg#netvmm.exit=} ;;
	root=*) root=${arg#root=} ;;
	rootfstype=*) rootfstype=${arg#rootfstype=} ;;
	ro | rw) root_mode=$arg ;;
	init=*) new_init=${arg#init=} ;;
	esac
done

# fail_boot MESSAGE: the root could not be booted. Said on the console and reported as
# status 125 through the exit device (as an undecodable command is), so that a missing
# or broken disk ends the VM with a failure at once instead of hanging or passing.
fail_boot() {
	say "$*"
	report_status 125
	say "no exit device took the status: crashing the kernel so that the failure is seen"
	echo c >/proc/sysrq-trigger
	poweroff -f
	while :; do sleep 3600; done
}

if [ -n "$root" ]; then
	# virtio_blk (loaded above with the other modules) probes the disk asynchronously:
	# give the device up to 5 s. findfs resolves LABEL= and UUID=.
	i=0
	dev=
	while [ "$i" -lt 50 ]; do
		case $root in
		/dev/*) [ -b "$root" ] && dev=$root ;;
		*) dev=$(findfs "$root" 2>/dev/null) ;;
		esac
		[ -n "$dev" ] && break
		sleep 0.1
		i=$((i + 1))
	done
	[ -n "$dev" ] || fail_boot "root device $root did not appear within 5 s (no --disk, or no virtio_blk driver?)"
	mkdir -p /newroot
	if ! out=$(mount ${rootfstype:+-t "$rootfstype"} -o "$root_mode" "$dev" /newroot 2>&1); then
		fail_boot "cannot mount $dev on /newroot: $out"
	fi
	[ -e "/newroot$new_init" ] || [ -L "/newroot$new_init" ] || fail_boot "$dev has no $new_init"
	# switch_root wants the new root's /dev, /proc, /sys and /run in place; /tmp goes.
	umount /tmp
	for m in /dev /proc /sys /run; do
		mkdir -p "/newroot$m"
		mount --move "$m" "/newroot$m" || say "cannot move $m to the new root"
	done
	exec switch_root -c /dev/console /newroot "$new_init"
	# exec failed; the console is still open, but /dev and /proc are gone from here.
	say "switch_root to $dev failed"
	poweroff -f
	while :; do sleep 3600; done
fi

[ -n "$host_name" ] && hostname "$host_name"

# Debian's busybox-static runs its own applets before anything in PATH; the
# explicit /bin/busybox makes that visible rather than surprising.
/bin/busybox ip link set lo up

if [ -n "$ip_addr" ]; then
	# virtio_net binds asynchronously after insmod: give it up to 5 s.
	i=0
	while [ ! -e "/sys/class/net/$iface" ] && [ "$i" -lt 50 ]; do
		sleep 0.1
		i=$((i + 1))
	done
	if [ -e "/sys/class/net/$iface" ]; then
		/bin/busybox ip addr add "$ip_addr" dev "$iface" || say "cannot add $ip_addr to $iface"
		/bin/busybox ip link set "$iface" up || say "cannot bring $iface up"
	else
		say "interface $iface did not appear within 5 s"
	fi
fi
if [ -n "$gw" ]; then
	/bin/busybox ip route add default via "$gw" || say "cannot add default route via $gw"
fi

read -r uptime _ </proc/uptime
cpus=$(grep -c '^processor' /proc/cpuinfo)
mem_kb=$(sed -n 's/^MemTotal: *\([0-9]*\) kB$/\1/p' /proc/meminfo)
echo "netvmm-guest: ready uptime=$uptime cpus=$cpus mem_kb=$mem_kb" >/dev/console

if [ -n "$run" ]; then
	/bin/sh -c "$run"
	status=$?
	say "command exited with status $status"
	sync
	report_status "$status"
	# Still running: no exit device here. A failure must not pass as a clean
	# power-off, so a non-zero status crashes the kernel instead (a panic).
	if [ "$status" != 0 ]; then
		say "no exit device took the status: crashing the kernel so that the failure is seen"
		echo c >/proc/sysrq-trigger
	fi
else
	setsid cttyhack /bin/sh
fi

sync
# reboot -f is for VMMs that turn an i8042 reset into an exit but offer no
# ACPI power-off; poweroff -f is the default.
if [ "$exit_mode" = reboot ]; then
	reboot -f
fi
poweroff -f
# Only reached if the power-off request itself failed; never let PID 1 exit.
while :; do sleep 3600; done
