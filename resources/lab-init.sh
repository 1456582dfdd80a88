#!/bin/sh
# /init of the netvmm lab host: an emulated machine (QEMU TCG, -cpu max) whose
# kvm_amd gives a hardware-style /dev/kvm for real guests.
#
# Contract with the lab runner (see resources/README.md):
#   - the runner appends a second cpio archive holding /lab/scenario (and
#     whatever it needs under /lab); it runs with cwd /lab, stdin/stdout/stderr
#     on /dev/console (ttyS0);
#   - the scenario's exit status is written as the single line
#     "netvmm-lab-exit=<status>" to /dev/ttyS1, then the lab powers off;
#   - it writes a line to /dev/ttyS2 every 5 s while it lives (its pid is in
#     /run/netvmm-lab-heartbeat.pid);
#   - status 125: /dev/kvm did not appear (kvm_amd did not load),
#     status 127: there is no /lab/scenario.
#
# PID 1: no `set -e`, and every path ends in finish().

PATH=/sbin:/bin:/usr/sbin:/usr/bin
HOME=/root
export PATH HOME

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
[ -c /dev/console ] && exec </dev/console >/dev/console 2>&1

finish() {
	# Raw mode: the runner reads the file verbatim, without the \r that the
	# tty's output processing would add.
	stty -F /dev/ttyS1 raw -echo 2>/dev/null
	if ! echo "netvmm-lab-exit=$1" >/dev/ttyS1; then
		echo "netvmm-lab: cannot write to /dev/ttyS1 (no second serial port?); exit status $1"
	fi
	sync
	poweroff -f
	while :; do sleep 3600; done
}

if [ -r /etc/netvmm-modules ]; then
	while read -r mod; do
		case $mod in '' | \#*) continue ;; esac
		if ! out=$(insmod "$mod" 2>&1); then
			case $out in
			*"File exists"* | *"already"*) ;;
			*) echo "netvmm-lab: insmod $mod failed: $out" ;;
			esac
		fi
	done </etc/netvmm-modules
fi

hostname netvmm-lab
/sbin/ip link set lo up

# The lab kernel is quiet (loglevel=1): of a soft lockup only the one EMERG line
# reaches the console, and an RCU stall or hung-task report not at all. Copy
# those reports, with the backtrace lines that follow them, to the console, so a
# hang of the emulated nested virtualization says where the CPU was. cat, not
# the shell's read, reads /dev/kmsg: each read(2) must take a whole record.
watch_kernel_reports() {
	left=0
	cat /dev/kmsg | while IFS= read -r rec; do
		case $rec in " "*) continue ;; esac # a record's key=value continuation
		msg=${rec#*;}
		case $msg in
		*"soft lockup"* | *"rcu: INFO:"* | *"self-detected stall"* | *"blocked for more than"*)
			left=60
			;;
		esac
		if [ "$left" -gt 0 ]; then
			echo "netvmm-lab: kernel: $msg"
			left=$((left - 1))
		fi
	done
}
watch_kernel_reports >/dev/console 2>&1 &

# The heartbeat on the third serial port: the runner stops a lab host that falls
# silent there (both CPUs stuck, which no watchdog in here can report).
heartbeat() {
	while :; do
		echo . || return
		sleep 5
	done
}
heartbeat >/dev/ttyS2 2>/dev/null &
echo $! >/run/netvmm-lab-heartbeat.pid

if [ ! -c /dev/kvm ]; then
	echo "netvmm-lab: /dev/kvm is missing in the lab host (kvm_amd did not load)"
	finish 125
fi
if [ ! -e /lab/scenario ]; then
	echo "netvmm-lab: /lab/scenario is missing (the runner appends it as a second cpio archive)"
	finish 127
fi

cd /lab || finish 127
# A scenario without the x bit (e.g. written by a cpio tool that dropped the
# mode) still runs as a shell script.
if [ -x ./scenario ]; then
	./scenario </dev/console >/dev/console 2>&1
else
	/bin/sh ./scenario </dev/console >/dev/console 2>&1
fi
finish $?
