#!/usr/bin/env bash
# Build the netvmm test guest: Debian 12's cloud kernel (bzImage and ELF
# vmlinux) and a busybox + iperf3 initramfs whose /init is guest-init.sh.
#
# Usage: build-guest.sh [OUT_DIR]
#   OUT_DIR defaults to ${NETVMM_CACHE:-$HOME/.cache/netvmm}/guest.
#   NETVMM_IMAGE_REBUILD=1 forces a rebuild; NETVMM_KERNEL_META names the
#   kernel metapackage (default linux-image-cloud-amd64; `netvmm image build
#   --flavour generic` uses linux-image-amd64); NETVMM_KERNEL_PACKAGE picks a
#   versioned linux-image-* package directly.
#
# Host packages (Debian 12): apt dpkg coreutils findutils grep sed util-linux
#   libc-bin cpio gzip xz-utils zstd lz4 kmod binutils
# (lz4: Debian's cloud kernel is LZ4-compressed; kmod: depmod, optional, the
# script falls back to Debian's kmod package; binutils: as and ld assemble
# netvmm-exit.S, the exit-device writer for kernels without /dev/port.)
set -euo pipefail

HOST_PACKAGES="apt dpkg coreutils findutils grep sed util-linux libc-bin cpio gzip xz-utils zstd lz4 kmod binutils"

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=resources/lib.sh
. "$HERE/lib.sh"

case ${1:-} in
-h | --help)
	sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0"
	exit 0
	;;
--host-packages)
	echo "$HOST_PACKAGES"
	exit 0
	;;
esac

OUT_DIR=${1:-$NETVMM_CACHE_ROOT/guest}
OUTPUTS=(vmlinuz vmlinux kernel-release initrd.cpio.gz)
# Modules the guest needs: the virtio-mmio transport (found through ACPI) and
# the virtio-pci one (netvmm run --transport pci), the NIC, the disks, and the
# pvpanic device so a guest panic reaches the VMM.
GUEST_MODULES=(virtio_mmio virtio_pci virtio_net virtio_blk pvpanic pvpanic_mmio)

# And for guest-init.sh's root=: the disk, and the root disk's filesystem (built into the
# cloud kernel, a module in the generic one). A module named twice is staged once.
GUEST_MODULES+=(virtio_blk ext4)

STAMP=$(sources_hash "$HERE/build-guest.sh" "$HERE/lib.sh" "$HERE/guest-init.sh" "$HERE/netvmm-exit.S")
begin_build guest "$OUT_DIR" "$STAMP" "${OUTPUTS[@]}"
KPKG=$(kernel_package)
lock_path "$NETVMM_DEBS_DIR/.lock"
DEBS_LOCK=$LOCK_FD
KDEB=$(fetch_deb "$KPKG")
USER_DEBS=$(fetch_with_libs busybox-static iperf3 libiperf0 libsctp1)
log "extracting $KPKG"
# Still under the deb lock: without a host depmod this downloads kmod.
REL=$(prepare_kernel "$KDEB" "$WORK/kernel")
unlock_fd "$DEBS_LOCK"
log "kernel release $REL"

PKGROOT=$WORK/pkgs
mkdir -p "$PKGROOT"
for deb in $USER_DEBS; do
	dpkg-deb -x "$deb" "$PKGROOT"
done
LIBPATH=$PKGROOT/lib/$NETVMM_MULTIARCH:$PKGROOT/usr/lib/$NETVMM_MULTIARCH

ROOT=$WORK/root
new_root "$ROOT"
stage_busybox "$ROOT" "$PKGROOT"
stage_elf "$ROOT" "$PKGROOT/usr/bin/iperf3" usr/bin/iperf3 "$LIBPATH"
stage_modules "$ROOT" "$WORK/kernel" "$REL" "${GUEST_MODULES[@]}"
install -m 0755 "$HERE/guest-init.sh" "$ROOT/init"
log "assembling netvmm-exit"
require_tools as ld
as --64 -o "$WORK/netvmm-exit.o" "$HERE/netvmm-exit.S"
ld -static -s -o "$ROOT/bin/netvmm-exit" "$WORK/netvmm-exit.o"
printf 'netvmm-guest\n' >"$ROOT/etc/hostname"
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$ROOT/etc/passwd"
printf 'root:x:0:\n' >"$ROOT/etc/group"

STAGE=$WORK/out
mkdir -p "$STAGE"
log "writing initrd.cpio.gz"
make_cpio "$ROOT" "$STAGE/initrd.cpio.gz"
cp "$WORK/kernel/boot/vmlinuz-$REL" "$STAGE/vmlinuz"
printf '%s\n' "$REL" >"$STAGE/kernel-release"
log "extracting vmlinux from the bzImage"
extract_vmlinux "$STAGE/vmlinuz" "$STAGE/vmlinux"

install_outputs "$STAGE" "$OUT_DIR" "$STAMP" "${OUTPUTS[@]}"
log "guest image ready in $OUT_DIR (kernel $REL):"
for f in "${OUTPUTS[@]}"; do
	log "  $f $(human_size "$OUT_DIR/$f")"
done
