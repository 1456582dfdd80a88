#!/bin/sh
# A CI boot test with netvmm: boot a kernel with netvmm's guest image, run a
# test command inside the guest, and fail when it fails. With no KERNEL given,
# the kernel is built once from Debian's linux-source-6.1 with `make tinyconfig`
# plus `netvmm kconfig` (cached; a few minutes on 2 cores).
#
# Usage: ci-boot-test.sh [CMD [ARGS...]]
#   CMD      the guest's test (default: both vCPUs are there and eth0 reaches
#            the host through a tap)
#   KERNEL   a bzImage to boot instead, e.g. your tree's arch/x86/boot/bzImage
#            configured as `netvmm kconfig` says
#   NETVMM   the netvmm binary (default: netvmm on PATH)
# Exit status: the guest command's, or netvmm's own for a guest crash (3), a
# timeout (124) or an error (1); netvmm says on stderr which it was.
#
# netvmm's own tests run this script (tests/verdict_lab.rs), so it stays true.
set -eu
netvmm=${NETVMM:-netvmm}
kernel=${KERNEL:-$("$netvmm" image path tinykernel)}
initrd=$("$netvmm" image path initrd)
# A KVM that boots stock kernels runs the guest natively; any other host
# (no KVM, or PVM) runs it inside netvmm's emulated lab host.
if "$netvmm" doctor | grep -q '^verdict: *guests run natively'; then
	where=run
else
	where="lab run"
fi
[ "$#" -gt 0 ] ||
	set -- sh -c 'test "$(grep -c ^processor /proc/cpuinfo)" -eq 2 && ping -c 2 -W 5 192.0.2.1'
# shellcheck disable=SC2086 # $where is one or two words on purpose
exec "$netvmm" $where --kernel "$kernel" --initrd "$initrd" --cpus 2 --timeout 600 \
	--net tap,host-ip=192.0.2.1/24 --cmdline 'quiet netvmm.ip=192.0.2.2/24' -- "$@"
