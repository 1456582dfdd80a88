#!/usr/bin/env bash
# Build the netvmm lab host: Debian 12's cloud kernel plus an initramfs that
# loads kvm + kvm_amd and the host-side network modules, then runs the
# scenario the lab runner appends (see lab-init.sh and README.md).
#
# Usage: build-lab.sh [OUT_DIR]
#   OUT_DIR defaults to ${NETVMM_CACHE:-$HOME/.cache/netvmm}/lab.
#   NETVMM_IMAGE_REBUILD=1 forces a rebuild; NETVMM_KERNEL_PACKAGE picks a
#   different linux-image-* package.
#
# Host packages (Debian 12): apt dpkg coreutils findutils grep sed util-linux
#   libc-bin cpio gzip xz-utils zstd kmod
# (xz-utils/zstd: only for kernels with compressed modules, Debian 12's are
# not; kmod: depmod, optional, the script falls back to Debian's kmod
# package. Running the lab needs qemu-system-x86 on top.)
set -euo pipefail

HOST_PACKAGES="apt dpkg coreutils findutils grep sed util-linux libc-bin cpio gzip xz-utils zstd kmod"

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

OUT_DIR=${1:-$NETVMM_CACHE_ROOT/lab}
OUTPUTS=(vmlinuz kernel-release base.cpio.gz)
# kvm_amd because QEMU TCG emulates SVM, not VMX. The rest are the backends
# netvmm drives (tap, bridge, macvtap) and the plumbing around them, and
# virtio-blk over PCI for the host disk images `netvmm lab run --disk` hands in;
# nf_tables with NAT and conntrack for `--net tap,nat`, and the ingress qdisc,
# the catch-all classifiers and mirred for `--net tc=NIC`.
LAB_MODULES=(kvm kvm_amd tun bridge macvlan macvtap veth vhost_net virtio_pci virtio_blk
	nf_tables nft_chain_nat nft_masq nft_ct nf_nat nf_conntrack
	sch_ingress cls_matchall cls_u32 act_mirred)
# A dynamically linked netvmm built on the host needs these besides libc;
# they come from the host on purpose, matching the binary's build.
HOST_LIBS=(libgcc_s.so.1 libm.so.6 libpthread.so.0 libdl.so.2 librt.so.1 libutil.so.1)

STAMP=$(sources_hash "$HERE/build-lab.sh" "$HERE/lib.sh" "$HERE/lab-init.sh")
begin_build lab "$OUT_DIR" "$STAMP" "${OUTPUTS[@]}"
KPKG=$(kernel_package)
lock_path "$NETVMM_DEBS_DIR/.lock"
DEBS_LOCK=$LOCK_FD
KDEB=$(fetch_deb "$KPKG")
USER_DEBS=$(fetch_with_libs busybox-static iproute2 iperf3 libiperf0 libsctp1 nftables)
log "extracting $KPKG"
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
# busybox's ip would shadow iproute2's at the same path; leave those to the
# real tools (a bare `ip` in a busybox shell still runs the applet).
stage_busybox "$ROOT" "$PKGROOT" ip bridge tc
for tool in ip bridge tc; do
	src=$(compgen -G "$PKGROOT/*bin/$tool" | head -n1 || true)
	[[ -n $src ]] || die "iproute2 has no $tool"
	stage_elf "$ROOT" "$src" "sbin/$tool" "$LIBPATH"
	for alias in bin usr/bin usr/sbin; do
		ln -sfn "/sbin/$tool" "$ROOT/$alias/$tool"
	done
done
stage_elf "$ROOT" "$PKGROOT/usr/bin/iperf3" usr/bin/iperf3 "$LIBPATH"
# nft(8): netvmm writes its NAT tables with nft's JSON interface.
stage_elf "$ROOT" "$PKGROOT/usr/sbin/nft" usr/sbin/nft "$LIBPATH"
for so in "${HOST_LIBS[@]}"; do
	stage_host_lib "$ROOT" "$so"
done
stage_modules "$ROOT" "$WORK/kernel" "$REL" "${LAB_MODULES[@]}"
install -m 0755 "$HERE/lab-init.sh" "$ROOT/init"
mkdir -p "$ROOT/lab"
printf 'netvmm-lab\n' >"$ROOT/etc/hostname"
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$ROOT/etc/passwd"
printf 'root:x:0:\n' >"$ROOT/etc/group"

STAGE=$WORK/out
mkdir -p "$STAGE"
log "writing base.cpio.gz"
make_cpio "$ROOT" "$STAGE/base.cpio.gz"
cp "$WORK/kernel/boot/vmlinuz-$REL" "$STAGE/vmlinuz"
printf '%s\n' "$REL" >"$STAGE/kernel-release"

install_outputs "$STAGE" "$OUT_DIR" "$STAMP" "${OUTPUTS[@]}"
log "lab image ready in $OUT_DIR (kernel $REL):"
for f in "${OUTPUTS[@]}"; do
	log "  $f $(human_size "$OUT_DIR/$f")"
done
