#!/usr/bin/env bash
# Build a Debian 12 root filesystem image for netvmm's --disk: systemd, udev, iproute2,
# iperf3, iputils-ping, a login on the serial console (systemd's serial-getty generator,
# console=ttyS0) and netvmm-run.service, which runs netvmm.run once the boot has finished
# and reports its status through netvmm's exit device. Packages come by name through
# mmdebstrap (Debian's own tool) as a tarball; `mke2fs -d` turns the unpacked tree into a
# raw ext4 image: no loop mounts. It has no kernel: boot it with the guest image's kernel
# and initramfs and root=/dev/vda (guest-init.sh mounts it and switches to its systemd).
#
# Usage: build-rootfs.sh [OUT_DIR]
#   OUT_DIR defaults to ${NETVMM_CACHE:-$HOME/.cache/netvmm}/rootfs; output rootfs.ext4,
#   sparse, sized to its contents plus 256 MiB free (NETVMM_ROOTFS_SIZE=4G etc. for another
#   size; or grow a copy later: truncate -s 4G COPY && resize2fs COPY). Cached, keyed by
#   this script and the files it installs; NETVMM_IMAGE_REBUILD=1 forces a rebuild.
#   Downloaded .debs are kept in $NETVMM_CACHE/debs/rootfs for the next build. Apt sources: the host's Debian 12
#   entries (/etc/apt/sources.list{,.d}), else mmdebstrap's default mirror.
#   As root mmdebstrap runs in root mode; otherwise in unshare mode, and the tree is
#   unpacked and written into the image inside `unshare --map-root-user --map-auto` so
#   that its files keep their owners (needs subuid/subgid ranges).
#
# Host packages (Debian 12): mmdebstrap e2fsprogs binutils tar util-linux
set -euo pipefail

HOST_PACKAGES="mmdebstrap e2fsprogs binutils tar util-linux"

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=resources/lib.sh
. "$HERE/lib.sh"

# populate TAR DIR IMAGE SIZE: unpack the mmdebstrap tarball, add netvmm's files, and
# write the tree into a fresh ext4 image. Runs as (possibly namespaced) root.
populate() {
	local tar=$1 root=$2 img=$3 size=$4
	mkdir -p "$root"
	tar -C "$root" --numeric-owner --xattrs --xattrs-include='*' -xpf "$tar"
	rm -f "$tar"
	printf 'netvmm-guest\n' >"$root/etc/hostname"
	printf '127.0.0.1\tlocalhost\n127.0.1.1\tnetvmm-guest\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
	# A test VM's console login: root without a password.
	sed -i 's/^root:[^:]*:/root::/' "$root/etc/shadow"
	# One machine id for every boot of the image: a missing or "uninitialized" one makes
	# each boot of a fresh copy a first boot (presets applied, ids generated: slower, and
	# different from the next boot).
	printf '%s\n' "$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')" >"$root/etc/machine-id"
	printf '# / is mounted by netvmm'"'"'s initramfs (root=, rootfstype=, ro/rw)\n' >"$root/etc/fstab"
	# Keep the kernel's eth0 (the initramfs guest's name, and netvmm.iface's default):
	# udev would otherwise rename it after the virtio-mmio platform device.
	mkdir -p "$root/etc/systemd/network"
	ln -sfn /dev/null "$root/etc/systemd/network/99-default.link"
	ln -sfn /lib/systemd/system/multi-user.target "$root/etc/systemd/system/default.target"
	# binfmt_misc's automount needs autofs4, a module the rootfs does not have (the
	# initramfs loaded what the guest needs): "UNSUPP" on the console at every boot.
	ln -sfn /dev/null "$root/etc/systemd/system/proc-sys-fs-binfmt_misc.automount"
	install -m 0644 "$HERE/netvmm-run.service" "$root/etc/systemd/system/netvmm-run.service"
	mkdir -p "$root/etc/systemd/system/multi-user.target.wants"
	ln -sfn ../netvmm-run.service "$root/etc/systemd/system/multi-user.target.wants/netvmm-run.service"
	install -m 0755 "$HERE/netvmm-guest.sh" "$root/usr/local/sbin/netvmm-guest"
	install -m 0755 "$WORK/netvmm-exit" "$root/usr/local/sbin/netvmm-exit"
	if [[ $size == auto ]]; then
		# Contents, 10% for the filesystem's own metadata, 256 MiB free; in 64 MiB steps.
		size=$(du -s --apparent-size -m "$root" | cut -f1)
		size=$(((size * 11 / 10 + 256 + 63) / 64 * 64))M
	fi
	rm -f "$img"
	truncate -s "$size" "$img"
	mke2fs -q -F -t ext4 -b 4096 -L netvmm-rootfs -d "$root" "$img"
	rm -rf "$root"
}

case ${1:-} in
-h | --help)
	sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0"
	exit 0
	;;
--host-packages)
	echo "$HOST_PACKAGES"
	exit 0
	;;
--populate)
	# Internal: the unshare'd second half of a build without root.
	shift
	WORK=$1
	populate "${@:2}"
	exit 0
	;;
esac

OUT_DIR=${1:-$NETVMM_CACHE_ROOT/rootfs}
OUTPUTS=(rootfs.ext4)
# Small enough to carry into the lab host, whose RAM holds the files carried in.
SIZE=${NETVMM_ROOTFS_SIZE:-auto}
# udev: systemd's device units (the serial getty waits for dev-ttyS0.device); dbus:
# logind; passwd: /etc/shadow for the console login; kmod: modprobe for systemd and udev.
PACKAGES=(systemd-sysv udev dbus passwd kmod iproute2 iperf3 iputils-ping procps)

STAMP=$(sources_hash "$HERE/build-rootfs.sh" "$HERE/lib.sh" "$HERE/netvmm-run.service" \
	"$HERE/netvmm-guest.sh" "$HERE/netvmm-exit.S")
STAMP=$(printf '%s size=%s' "$STAMP" "$SIZE" | sha256sum | cut -d' ' -f1)
begin_build rootfs "$OUT_DIR" "$STAMP" "${OUTPUTS[@]}"
require_tools mmdebstrap mke2fs tar as ld
started=$(date +%s)

log "assembling netvmm-exit"
as --64 -o "$WORK/netvmm-exit.o" "$HERE/netvmm-exit.S"
ld -static -s -o "$WORK/netvmm-exit" "$WORK/netvmm-exit.o"

# The host's own Debian 12 sources, so the build uses the mirror this machine is set up
# for; mmdebstrap pastes each file into the chroot's sources.list.
mirrors=()
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
	[[ -f $f ]] && grep -qE '^[^#]*bookworm' "$f" && mirrors+=("$f")
done
((${#mirrors[@]})) || log "no Debian 12 entries in the host's apt sources: mmdebstrap's default mirror"

if ((EUID == 0)); then mode=root; else mode=unshare; fi
debs=$NETVMM_DEBS_DIR/rootfs
mkdir -p "$debs"
pkgs=$(
	IFS=,
	echo "${PACKAGES[*]}"
)
log "mmdebstrap ($mode mode): Debian 12 with $pkgs"
# Docs, man pages and translations are most of a minimal system's size and nobody reads
# them on a test VM. The .debs go back to $debs (essential/unlink skipped so that the
# essential ones are still there to copy out) and come in again next time.
mmdebstrap --mode="$mode" --variant=apt --format=tar --include="$pkgs" \
	--dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
	--dpkgopt='path-include=/usr/share/doc/*/copyright' --dpkgopt='path-exclude=/usr/share/info/*' \
	--dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
	--skip=essential/unlink \
	--setup-hook='mkdir -p "$1"/var/cache/apt/archives/' \
	--setup-hook="sync-in $debs /var/cache/apt/archives/" \
	--customize-hook="sync-out /var/cache/apt/archives $debs" \
	bookworm "$WORK/rootfs.tar" "${mirrors[@]}"
find "$debs" -name '*.deb' -mtime +30 -delete 2>/dev/null || true
log "mmdebstrap done in $(($(date +%s) - started)) s; writing the ext4 image (size $SIZE) with mke2fs -d"

STAGE=$WORK/out
mkdir -p "$STAGE"
if ((EUID == 0)); then
	populate "$WORK/rootfs.tar" "$WORK/root" "$STAGE/rootfs.ext4" "$SIZE"
else
	unshare --map-root-user --map-auto -- bash "$0" --populate "$WORK" \
		"$WORK/rootfs.tar" "$WORK/root" "$STAGE/rootfs.ext4" "$SIZE"
fi

install_outputs "$STAGE" "$OUT_DIR" "$STAMP" "${OUTPUTS[@]}"
log "rootfs image ready in $OUT_DIR in $(($(date +%s) - started)) s:"
log "  rootfs.ext4 $(human_size "$OUT_DIR/rootfs.ext4") ($(du -h "$OUT_DIR/rootfs.ext4" | cut -f1) used)"
