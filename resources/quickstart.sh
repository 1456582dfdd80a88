#!/usr/bin/env bash
# netvmm's main job on a fresh Debian 12 machine, in one command: install what is missing,
# build netvmm, build the guest image, boot the guest with a tap NIC that pings the host,
# then compare tap, NAT, bridge, tc-redirect and macvtap side by side (netvmm compare --explain).
# Natively when this host's KVM boots stock kernels; in the emulated lab host otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
bash resources/install-host-packages.sh
echo "netvmm-setup: building netvmm (release)" >&2
cargo build --release --quiet
netvmm=target/release/netvmm
"$netvmm" image build >/dev/null
"$netvmm" doctor | sed -n 's/^kvm: */netvmm-setup: KVM: /p' >&2
guest_cmd='quiet netvmm.ip=192.0.2.2/24 netvmm.run="cat /proc/cpuinfo | grep -c ^processor; ping -c 3 192.0.2.1"'
if "$netvmm" doctor | grep -q '^verdict:.*natively'; then
	"$netvmm" run --kernel "$("$netvmm" image path kernel)" --initrd "$("$netvmm" image path initrd)" \
		--cpus 2 --timeout 120 --net tap,host-ip=192.0.2.1/24 --cmdline "$guest_cmd"
else
	"$netvmm" lab run --kernel "$("$netvmm" image path kernel)" --initrd "$("$netvmm" image path initrd)" \
		--cpus 2 --timeout 120 --net tap,host-ip=192.0.2.1/24 --cmdline "$guest_cmd"
fi
echo "netvmm-setup: the guest booted and powered off; now tap, NAT, bridge, tc-redirect and macvtap side by side (netvmm compare, a few minutes)" >&2
exec "$netvmm" compare --duration 3 --explain
