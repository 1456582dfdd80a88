#!/usr/bin/env bash
# Build a guest kernel from source the way a user of `netvmm kconfig` would:
# Debian 12's linux-source-6.1, `make tinyconfig`, netvmm's config fragment
# (resources/netvmm.kconfig) merged on top, and nothing else. The tests boot
# it to prove that the fragment is enough.
#
# Usage: build-kernel.sh [OUT_DIR]
#   OUT_DIR defaults to ${NETVMM_CACHE:-$HOME/.cache/netvmm}/tinykernel. The
#   build is cached, keyed by the fragment and this script; about 5 minutes on
#   2 cores. NETVMM_IMAGE_REBUILD=1 forces a rebuild.
#
# Host packages (Debian 12): the list in resources/kernel-build-packages.txt
#   (make, gcc, bc, flex, bison, libelf-dev) plus apt, dpkg, xz-utils.
set -euo pipefail

HOST_PACKAGES="$(grep -v '^#' "$(dirname "${BASH_SOURCE[0]}")/kernel-build-packages.txt" | tr '\n' ' ') apt dpkg xz-utils"

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

OUT_DIR=${1:-$NETVMM_CACHE_ROOT/tinykernel}
OUTPUTS=(bzImage config kernel-release)
SOURCE_PACKAGE=linux-source-6.1
FRAGMENT=$HERE/netvmm.kconfig

STAMP=$(sources_hash "$HERE/build-kernel.sh" "$HERE/lib.sh" "$FRAGMENT")
begin_build "tinyconfig kernel" "$OUT_DIR" "$STAMP" "${OUTPUTS[@]}"
require_tools make gcc bc flex bison xz tar
lock_path "$NETVMM_DEBS_DIR/.lock"
DEBS_LOCK=$LOCK_FD
SDEB=$(fetch_deb "$SOURCE_PACKAGE")
unlock_fd "$DEBS_LOCK"

log "unpacking $SOURCE_PACKAGE"
dpkg-deb --fsys-tarfile "$SDEB" |
	tar -xO "./usr/src/$SOURCE_PACKAGE.tar.xz" |
	xz -dc | tar -x -C "$WORK"
SRC=$WORK/$SOURCE_PACKAGE
[[ -f $SRC/Makefile ]] || die "$SOURCE_PACKAGE holds no kernel tree at $SOURCE_PACKAGE/"

KMAKE=(make -C "$SRC" ARCH=x86_64 -j"$(nproc)")
log "make tinyconfig, then merging $(basename "$FRAGMENT")"
"${KMAKE[@]}" -s tinyconfig >"$WORK/config.log" 2>&1 || { tail -n 20 "$WORK/config.log" >&2; die "make tinyconfig failed"; }
(cd "$SRC" && scripts/kconfig/merge_config.sh -m .config "$FRAGMENT") >>"$WORK/config.log" 2>&1 ||
	{ tail -n 20 "$WORK/config.log" >&2; die "merge_config.sh failed"; }
"${KMAKE[@]}" -s olddefconfig >>"$WORK/config.log" 2>&1 || { tail -n 20 "$WORK/config.log" >&2; die "make olddefconfig failed"; }
# An option whose dependencies are missing is silently dropped by Kconfig: that
# would be a fragment that does not do what it says.
dropped=()
while IFS= read -r opt; do
	grep -qx "$opt" "$SRC/.config" || dropped+=("$opt")
done < <(grep -E '^CONFIG_[A-Z0-9_]+=' "$FRAGMENT")
((${#dropped[@]} == 0)) || die "the fragment asks for ${dropped[*]}, which Kconfig did not keep (a missing dependency)"

log "make bzImage with $(nproc) jobs (about 5 minutes on 2 cores)"
"${KMAKE[@]}" bzImage >"$WORK/build.log" 2>&1 &
make_pid=$!
while kill -0 "$make_pid" 2>/dev/null; do
	sleep 30
	kill -0 "$make_pid" 2>/dev/null &&
		log "  still building: $(find "$SRC" -name '*.o' | wc -l) objects so far"
done
wait "$make_pid" || { tail -n 30 "$WORK/build.log" >&2; die "make bzImage failed (log above)"; }

STAGE=$WORK/out
mkdir -p "$STAGE"
cp "$SRC/arch/x86/boot/bzImage" "$STAGE/bzImage"
cp "$SRC/.config" "$STAGE/config"
"${KMAKE[@]}" -s kernelrelease >"$STAGE/kernel-release"
install_outputs "$STAGE" "$OUT_DIR" "$STAMP" "${OUTPUTS[@]}"
log "tinyconfig kernel $(<"$OUT_DIR/kernel-release") ready: $OUT_DIR/bzImage ($(human_size "$OUT_DIR/bzImage"))"
