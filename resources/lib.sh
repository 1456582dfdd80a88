# shellcheck shell=bash
# Shared helpers for build-guest.sh and build-lab.sh. Sourced, never run.
#
# Everything here works from Debian 12 packages fetched by name with
# `apt-get download`, so the images do not depend on what the build host has
# installed beyond the tools listed in HOST_PACKAGES of each script.

# Failures inside $(...) must stop the build too (bash clears -e there).
shopt -s inherit_errexit

NETVMM_CACHE_ROOT=${NETVMM_CACHE:-$HOME/.cache/netvmm}
# Both images boot the same kernel package, so the .debs live in one shared
# directory and are downloaded once.
NETVMM_DEBS_DIR=$NETVMM_CACHE_ROOT/debs
NETVMM_MULTIARCH=x86_64-linux-gnu

log() { printf 'netvmm-image: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

require_tools() {
	local t missing=()
	for t in "$@"; do
		command -v "$t" >/dev/null 2>&1 || missing+=("$t")
	done
	((${#missing[@]} == 0)) || die "missing host tools: ${missing[*]} (install: apt-get install $HOST_PACKAGES)"
}

# sources_hash FILE...: the cache key of an image. Only the sources that shape
# the image go in, so editing a Rust crate never triggers a rebuild.
sources_hash() {
	{
		local f
		for f in "$@"; do
			printf '%s\n' "${f##*/}"
			cat "$f"
		done
		# An explicit kernel choice is part of the image identity.
		printf 'kernel-override=%s\n' "${NETVMM_KERNEL_PACKAGE:-}"
		printf 'kernel-meta=%s\n' "${NETVMM_KERNEL_META:-linux-image-cloud-amd64}"
	} | sha256sum | cut -d' ' -f1
}

# image_up_to_date OUT_DIR STAMP OUTPUT...
image_up_to_date() {
	local out=$1 stamp=$2 f
	shift 2
	[[ ${NETVMM_IMAGE_REBUILD:-0} == 1 ]] && return 1
	[[ -f $out/.stamp && $(<"$out/.stamp") == "$stamp" ]] || return 1
	for f in "$@"; do
		[[ -s $out/$f ]] || return 1
	done
}

# begin_build WHAT OUT_DIR STAMP OUTPUT...: exits (0) when the image in OUT_DIR is
# up to date, also when another build finished it while we waited for its lock;
# otherwise holds OUT_DIR's lock and sets WORK, a fresh directory beside the outputs
# (so that the final moves are renames on one filesystem), removed at exit.
begin_build() {
	local what=$1 out=$2 stamp=$3
	shift 3
	if image_up_to_date "$out" "$stamp" "$@"; then
		log "$what image is up to date in $out"
		exit 0
	fi
	require_tools apt-get apt-cache dpkg-deb ldd cpio gzip od dd sha256sum flock
	mkdir -p "$out" "$NETVMM_DEBS_DIR"
	lock_path "$out/.lock"
	if image_up_to_date "$out" "$stamp" "$@"; then
		log "$what image is up to date in $out"
		exit 0
	fi
	# Leftovers of a killed build: nobody else uses them while we hold the lock.
	rm -rf "$out"/.build.*
	WORK=$(mktemp -d "$out/.build.XXXXXX")
	trap 'rm -rf "$WORK"' EXIT
	log "building $what image in $out"
}

# lock_path FILE: take an exclusive flock on FILE and leave its descriptor in
# LOCK_FD (released on exit, or earlier with unlock_fd "$LOCK_FD"). Two test processes
# building the same image, or downloading into the shared deb cache, then wait
# for each other instead of interleaving.
lock_path() {
	local lockfile=$1
	mkdir -p "$(dirname "$lockfile")"
	exec {LOCK_FD}>"$lockfile"
	if ! flock -n "$LOCK_FD"; then
		log "waiting for another build holding $lockfile"
		flock "$LOCK_FD"
	fi
}
# unlock_fd FD: drop a lock taken by lock_path.
unlock_fd() {
	local fd=$1
	exec {fd}>&-
}

# ---------------------------------------------------------------- packages --

# Callers run in command substitutions, so "once" is remembered in a file.
apt_update_once() {
	local marker=${WORK:?}/.apt-updated
	[[ -e $marker ]] && return 0
	: >"$marker"
	((EUID == 0)) || die "package lists look stale and apt-get update needs root; run 'sudo apt-get update' and retry"
	log "running apt-get update (a package lookup failed)"
	apt-get update -qq >&2 || die "apt-get update failed"
}

# candidate_versions PKG...: "name version" lines for the packages apt can
# download. One apt-cache call per batch: each call costs ~0.3 s of cache
# loading, which adds up over a dependency walk.
candidate_versions() {
	apt-cache policy "$@" 2>/dev/null |
		sed -n -e 's/^\([^ ][^:]*\)\(:[a-z0-9]*\)\{0,1\}:$/\1/p' -e 's/^ *Candidate: *//p' |
		paste - - | grep -v '(none)' || true
}

# deb_path PKG VERSION: print the cached .deb of PKG at VERSION, downloading
# it into NETVMM_DEBS_DIR if needed. Caller holds the debs lock.
deb_path() {
	local pkg=$1 ver=$2 file staging
	# apt-get download escapes the epoch colon as %3a in file names.
	file=$(compgen -G "$NETVMM_DEBS_DIR/${pkg}_${ver//:/%3a}_*.deb" | head -n1 || true)
	if [[ -z $file ]]; then
		# Download into a directory the _apt sandbox user can write to; the
		# cache under $HOME usually is not reachable for it.
		staging=$(mktemp -d "${TMPDIR:-/tmp}/netvmm-apt.XXXXXX")
		if ((EUID == 0)) && id _apt >/dev/null 2>&1; then
			chown _apt "$staging"
		fi
		log "downloading $pkg $ver"
		if ! (cd "$staging" && apt-get download -q=2 "$pkg=$ver" >&2); then
			# The lists may name a version the mirror no longer has.
			apt_update_once
			ver=$(candidate_versions "$pkg" | cut -f2)
			if [[ -z $ver ]] || ! (cd "$staging" && apt-get download -q=2 "$pkg=$ver" >&2); then
				rm -rf "$staging"
				die "apt-get download $pkg failed"
			fi
		fi
		file=$(compgen -G "$staging/${pkg}_*.deb" | head -n1 || true)
		[[ -n $file ]] || { rm -rf "$staging"; die "apt-get download $pkg produced no .deb"; }
		mv "$file" "$NETVMM_DEBS_DIR/"
		rm -rf "$staging"
		file=$NETVMM_DEBS_DIR/${file##*/}
	fi
	printf '%s\n' "$file"
}

# fetch_deb PKG: print the path of PKG's .deb (candidate version).
fetch_deb() {
	local pkg=$1 v
	v=$(candidate_versions "$pkg" | cut -f2)
	if [[ -z $v ]]; then
		apt_update_once
		v=$(candidate_versions "$pkg" | cut -f2)
	fi
	[[ -n $v ]] || die "apt knows no package named $pkg (is this Debian 12 with main enabled?)"
	deb_path "$pkg" "$v"
}

# is_lib_package NAME: packages worth following when collecting shared
# libraries. glibc and libgcc come from the host (ldd runs with the host's
# loader, so mixing versions would be fragile); tool/data packages carry no .so.
is_lib_package() {
	case $1 in
	libc6 | libgcc-s1 | libc-bin) return 1 ;;
	*-bin | *-common | *-data | *-dev | *-doc | *-utils) return 1 ;;
	lib* | zlib1g) return 0 ;;
	esac
	return 1
}

# fetch_with_libs PKG...: print paths of the .debs of PKG and, transitively,
# of the library packages they depend on. Walking Depends only through library
# packages keeps debconf/adduser/perl out while still bringing every .so that
# ldd may ask for on a minimal host.
fetch_with_libs() {
	local -A seen=() ver=()
	local level=("$@") next pkg deb dep alt name v missing
	while ((${#level[@]})); do
		for pkg in "${level[@]}"; do seen[$pkg]=1; done
		while IFS=$'\t' read -r name v; do
			ver[$name]=$v
		done < <(candidate_versions "${level[@]}")
		missing=()
		for pkg in "${level[@]}"; do
			[[ -n ${ver[$pkg]:-} ]] || missing+=("$pkg")
		done
		if ((${#missing[@]})); then
			apt_update_once
			while IFS=$'\t' read -r name v; do
				ver[$name]=$v
			done < <(candidate_versions "${missing[@]}")
		fi
		next=()
		for pkg in "${level[@]}"; do
			[[ -n ${ver[$pkg]:-} ]] || die "apt knows no package named $pkg (is this Debian 12 with main enabled?)"
			deb=$(deb_path "$pkg" "${ver[$pkg]}")
			printf '%s\n' "$deb"
			while IFS= read -r dep; do
				# First alternative only, without version or arch qualifiers.
				alt=${dep%%|*}
				alt=${alt%%(*}
				alt=${alt%%:*}
				alt=${alt//[[:space:]]/}
				if [[ -n $alt && -z ${seen[$alt]:-} ]] && is_lib_package "$alt"; then
					seen[$alt]=1
					next+=("$alt")
				fi
			done < <({
				dpkg-deb -f "$deb" Pre-Depends
				dpkg-deb -f "$deb" Depends
			} | tr ',' '\n')
		done
		level=("${next[@]}")
	done
}

# kernel_package: the versioned kernel package behind the metapackage (the
# metapackage itself is empty).
kernel_package() {
	local meta=${NETVMM_KERNEL_META:-linux-image-cloud-amd64} name
	if [[ -n ${NETVMM_KERNEL_PACKAGE:-} ]]; then
		printf '%s' "$NETVMM_KERNEL_PACKAGE"
		return
	fi
	name=$(apt-cache depends "$meta" 2>/dev/null | sed -n 's/^ *Depends: *\(linux-image-[0-9][^ ]*\).*/\1/p' | head -n1)
	if [[ -z $name ]]; then
		apt_update_once
		name=$(apt-cache depends "$meta" 2>/dev/null | sed -n 's/^ *Depends: *\(linux-image-[0-9][^ ]*\).*/\1/p' | head -n1)
	fi
	[[ -n $name ]] || die "cannot resolve $meta to a versioned kernel package with apt-cache depends"
	printf '%s' "$name"
}

# ------------------------------------------------------------------ kernel --

# prepare_kernel DEB DIR: extract the kernel package into DIR, print the
# kernel release, and generate modules.dep. Debian's package does not ship
# modules.dep (its postinst runs depmod on the target), so we run depmod on
# the extracted tree ourselves: it is the only authoritative source of the
# dependency order, which differs between Debian kernel flavours.
prepare_kernel() {
	local deb=$1 dir=$2 rel
	dpkg-deb -x "$deb" "$dir"
	rel=$(compgen -G "$dir/lib/modules/*" | head -n1 || true)
	rel=${rel##*/}
	[[ -n $rel && -f $dir/boot/vmlinuz-$rel ]] || die "no /boot/vmlinuz-<release> and /lib/modules/<release> in ${deb##*/}"
	run_depmod "$dir" "$rel"
	[[ -s $dir/lib/modules/$rel/modules.dep ]] || die "depmod produced no modules.dep for $rel"
	printf '%s' "$rel"
}

run_depmod() {
	local base=$1 rel=$2 depmod deb debs kmoddir
	depmod=$(PATH=$PATH:/usr/sbin:/sbin command -v depmod || true)
	if [[ -n $depmod ]]; then
		"$depmod" -b "$base" "$rel"
		return
	fi
	# No kmod on the host: use the one from Debian's kmod package. It is a
	# multi-call binary that picks its personality from argv[0].
	log "depmod not installed on the host; using the one from Debian's kmod package"
	kmoddir=$WORK/kmod
	mkdir -p "$kmoddir"
	debs=$(fetch_with_libs kmod)
	for deb in $debs; do
		dpkg-deb -x "$deb" "$kmoddir"
	done
	ln -sf "$kmoddir/bin/kmod" "$kmoddir/depmod"
	LD_LIBRARY_PATH=$kmoddir/lib/$NETVMM_MULTIARCH:$kmoddir/usr/lib/$NETVMM_MULTIARCH \
		"$kmoddir/depmod" -b "$base" "$rel"
}

# le32 FILE OFFSET: unsigned little-endian 32-bit integer at OFFSET.
le32() { od -An -tu4 -j "$2" -N4 --endian=little "$1" | tr -d ' '; }
le16() { od -An -tu2 -j "$2" -N2 --endian=little "$1" | tr -d ' '; }
hexbytes() { od -An -tx1 -j "$2" -N "$3" "$1" | tr -d ' \n'; }

# decompress_payload FILE OUT [CHECK_SIZE]: decompress one kernel payload (format from its
# magic). Kbuild appends the uncompressed size as le32 to every format except
# gzip (whose trailer already ends with it); the decompressors treat those four
# bytes as trailing garbage, so they are cut before decompressing and used
# afterwards to check that nothing was lost.
decompress_payload() {
	local in=$1 out=$2 check=${3:-1} magic size want tool=()
	magic=$(hexbytes "$in" 0 6)
	case $magic in
	1f8b08*) tool=(gzip -dc) ;;
	fd377a585a00) tool=(xz -dc) ;;
	5d0000*) tool=(xz -dc --format=lzma) ;;
	28b52ffd*) tool=(zstd -dcq) ;;
	02214c18*) tool=(lz4 -dc) ;;
	425a68*) tool=(bzip2 -dc) ;;
	894c5a4f*) tool=(lzop -dc) ;;
	*) return 1 ;;
	esac
	command -v "${tool[0]}" >/dev/null || die "kernel payload is ${tool[0]}-compressed but ${tool[0]} is not installed"
	size=$(stat -c %s "$in")
	want=$(le32 "$in" $((size - 4)))
	if [[ ${tool[0]} == gzip ]]; then
		"${tool[@]}" <"$in" >"$out" 2>/dev/null || true
	else
		head -c $((size - 4)) "$in" | "${tool[@]}" >"$out" 2>/dev/null || true
	fi
	[[ $(hexbytes "$out" 0 4) == 7f454c46 ]] || return 1
	if ((check && $(stat -c %s "$out") % 4294967296 != want)); then
		log "note: vmlinux size differs from the size recorded in the bzImage"
	fi
	return 0
}

# extract_vmlinux BZIMAGE OUT: get the ELF vmlinux out of a bzImage. The boot
# protocol header (>= 2.08) says exactly where the compressed payload sits, so
# use that; fall back to scanning for compression magics the way the kernel's
# scripts/extract-vmlinux does, for odd images.
extract_vmlinux() {
	local bz=$1 out=$2 tmp=$WORK/payload setup proto start len off magic
	if [[ $(hexbytes "$bz" $((0x202)) 4) == 48647253 ]]; then # "HdrS"
		proto=$(le16 "$bz" $((0x206)))
		setup=$(od -An -tu1 -j $((0x1f1)) -N1 "$bz" | tr -d ' ')
		((setup == 0)) && setup=4
		if ((proto >= 0x208)); then
			start=$(((setup + 1) * 512 + $(le32 "$bz" $((0x248)))))
			len=$(le32 "$bz" $((0x24c)))
			dd if="$bz" of="$tmp" bs=64K iflag=skip_bytes,count_bytes skip="$start" count="$len" status=none
			if decompress_payload "$tmp" "$out"; then
				rm -f "$tmp"
				return 0
			fi
		fi
	fi
	log "boot header did not lead to the payload; scanning for compression magics"
	for magic in '\x1f\x8b\x08' '\xfd\x37\x7a\x58\x5a\x00' '\x28\xb5\x2f\xfd' '\x02\x21\x4c\x18' \
		'\x5d\x00\x00\x00' '\x42\x5a\x68' '\x89\x4c\x5a\x4f'; do
		while IFS=: read -r off _; do
			# Without a known length the trailing-size trick cannot work, so
			# decompress to the end and rely on the ELF check alone.
			tail -c +$((off + 1)) "$bz" >"$tmp"
			printf '\0\0\0\0' >>"$tmp"
			if decompress_payload "$tmp" "$out" 0; then
				rm -f "$tmp"
				return 0
			fi
		done < <(LC_ALL=C grep -obUaP "$magic" "$bz" | head -n 20)
	done
	rm -f "$tmp"
	die "could not find an ELF vmlinux inside $bz"
}

# ---------------------------------------------------------------- initramfs --

# new_root DIR: the skeleton every netvmm initramfs shares.
new_root() {
	local r=$1 d
	for d in bin sbin usr/bin usr/sbin etc proc sys dev run tmp root "lib/$NETVMM_MULTIARCH" lib64; do
		mkdir -p "$r/$d"
	done
	chmod 1777 "$r/tmp"
}

# stage_busybox ROOT PKGROOT [SKIP...]: busybox plus one symlink per applet,
# at the applet's conventional path (--list-full), so that full paths and
# "#!/usr/bin/env" work. Names in SKIP are left to real binaries.
stage_busybox() {
	local r=$1 src=$2/bin/busybox applet name skip
	shift 2
	[[ -x $src ]] || die "busybox not found in busybox-static"
	install -m 0755 "$src" "$r/bin/busybox"
	while IFS= read -r applet; do
		name=${applet##*/}
		for skip in "$@"; do
			[[ $name == "$skip" ]] && continue 2
		done
		[[ -e $r/$applet || -L $r/$applet ]] && continue
		mkdir -p "$r/$(dirname "$applet")"
		ln -s /bin/busybox "$r/$applet"
	done < <("$src" --list-full)
	[[ -L $r/bin/sh ]] || die "busybox has no sh applet"
}

# stage_elf ROOT SRC DEST LIBPATH: copy a dynamically linked program and the
# shared objects ldd resolves for it (LIBPATH first, then the host), plus the
# dynamic loader. Libraries land in /lib/<multiarch>, which the Debian loader
# searches by default, so no ld.so.cache is needed.
stage_elf() {
	local r=$1 src=$2 dest=$3 libpath=$4 line name path deps
	[[ -f $src ]] || die "$src does not exist"
	deps=$(LD_LIBRARY_PATH=$libpath ldd "$src" 2>&1) || die "ldd ${src##*/} failed: $deps"
	mkdir -p "$r/$(dirname "$dest")"
	install -m 0755 "$src" "$r/$dest"
	while read -r line; do # read strips ldd's leading tab
		case $line in
		*"not found"*) die "ldd: ${src##*/} needs ${line%% *}, which is neither in the downloaded packages nor on the host" ;;
		*" => "/*)
			name=${line%% =>*}
			name=${name//[[:space:]]/}
			path=${line#*=> }
			path=${path%% (*}
			;;
		/*)
			# The loader itself: "/lib64/ld-linux-x86-64.so.2 (0x...)".
			path=${line%% (*}
			name=${path##*/}
			mkdir -p "$r/$(dirname "$path")"
			[[ -e $r/$path ]] || ln -s "/lib/$NETVMM_MULTIARCH/$name" "$r/$path"
			;;
		*) continue ;;
		esac
		[[ -e $r/lib/$NETVMM_MULTIARCH/$name ]] || cp -L "$path" "$r/lib/$NETVMM_MULTIARCH/$name"
	done <<<"$deps"
}

# stage_host_lib ROOT SONAME: copy a library from the host's multiarch dir.
stage_host_lib() {
	local r=$1 so=$2 p
	for p in "/lib/$NETVMM_MULTIARCH/$so" "/usr/lib/$NETVMM_MULTIARCH/$so"; do
		if [[ -e $p ]]; then
			[[ -e $r/lib/$NETVMM_MULTIARCH/$so ]] || cp -L "$p" "$r/lib/$NETVMM_MULTIARCH/$so"
			return 0
		fi
	done
	log "note: host has no $so, not adding it"
}

# stage_modules ROOT KDIR RELEASE NAME...: copy the named modules and
# everything modules.dep says they need, decompressed, and write
# /etc/netvmm-modules in dependency-first order (depth-first post-order over
# modules.dep, so it does not matter how depmod ordered each line).
stage_modules() {
	local r=$1 kdir=$2 rel=$3
	shift 3
	local mdir=$kdir/lib/modules/$rel line key deps name want m dst
	local -A dep=() byname=() visited=() builtin=()
	local order=()
	while IFS= read -r line; do
		key=${line%%:*}
		dep[$key]=${line#*:}
		name=${key##*/}
		name=${name%%.ko*}
		byname[${name//-/_}]=$key
	done <"$mdir/modules.dep"
	if [[ -f $mdir/modules.builtin ]]; then
		while IFS= read -r line; do
			name=${line##*/}
			name=${name%%.ko*}
			builtin[${name//-/_}]=1
		done <"$mdir/modules.builtin"
	fi

	_visit() {
		local m=$1 d
		[[ -n ${visited[$m]:-} ]] && return 0
		visited[$m]=1
		for d in ${dep[$m]}; do
			[[ -n ${dep[$d]+x} ]] || die "modules.dep: $m needs $d, which has no entry"
			_visit "$d"
		done
		order+=("$m")
	}
	for want in "$@"; do
		name=${want//-/_}
		if [[ -n ${byname[$name]:-} ]]; then
			_visit "${byname[$name]}"
		elif [[ -n ${builtin[$name]:-} ]]; then
			log "note: module $want is built into $rel, skipping"
		else
			log "note: module $want does not exist in $rel, skipping"
		fi
	done

	mkdir -p "$r/lib/modules/$rel"
	: >"$r/etc/netvmm-modules"
	: >"$r/lib/modules/$rel/modules.dep"
	for m in "${order[@]}"; do
		dst=${m%.ko*}.ko
		mkdir -p "$r/lib/modules/$rel/$(dirname "$dst")"
		# insmod (busybox's in particular) wants plain ELF objects.
		case $m in
		*.ko) cp "$mdir/$m" "$r/lib/modules/$rel/$dst" ;;
		*.ko.xz) xz -dc "$mdir/$m" >"$r/lib/modules/$rel/$dst" ;;
		*.ko.zst) zstd -dcq "$mdir/$m" >"$r/lib/modules/$rel/$dst" ;;
		*.ko.gz) gzip -dc "$mdir/$m" >"$r/lib/modules/$rel/$dst" ;;
		*) die "unknown module file type: $m" ;;
		esac
		printf '/lib/modules/%s/%s\n' "$rel" "$dst" >>"$r/etc/netvmm-modules"
		# A consistent subset of modules.dep keeps busybox modprobe usable.
		line="$dst:"
		for d in ${dep[$m]}; do line+=" ${d%.ko*}.ko"; done
		printf '%s\n' "$line" >>"$r/lib/modules/$rel/modules.dep"
	done
	NETVMM_MODULE_COMPRESSION=none
	case ${order[0]:-} in
	*.ko.xz) NETVMM_MODULE_COMPRESSION=xz ;;
	*.ko.zst) NETVMM_MODULE_COMPRESSION=zstd ;;
	*.ko.gz) NETVMM_MODULE_COMPRESSION=gzip ;;
	esac
	log "modules (load order): $(sed 's#.*/##; s#\.ko$##' "$r/etc/netvmm-modules" | tr '\n' ' ')(compression in package: $NETVMM_MODULE_COMPRESSION)"
}

# make_cpio ROOT OUT: gzip'd newc archive with root ownership and fixed
# timestamps, so that the same inputs give the same bytes and no root
# privileges are needed to build it.
#
# The result is zero-padded to a multiple of 512 bytes. The kernel only
# accepts an uncompressed cpio that follows a compressed one when it starts
# 4-byte aligned ("invalid magic at start of compressed archive" otherwise),
# and the lab runner appends its scenario archive with a plain `cat`. gzip
# and the kernel both skip trailing zeros.
make_cpio() {
	local r=$1 out=$2 size
	find "$r" -exec touch -h -d "@${SOURCE_DATE_EPOCH:-0}" {} +
	(cd "$r" && find . -mindepth 1 -printf '%P\0' | LC_ALL=C sort -z |
		cpio --null --create --format=newc --owner=0:0 --reproducible --quiet) |
		gzip -6n >"$out"
	size=$(stat -c %s "$out")
	head -c $(((512 - size % 512) % 512)) /dev/zero >>"$out"
}

# install_outputs STAGE OUT_DIR STAMP FILE...: move finished files into
# place. The old stamp goes first, so an interrupted install is never
# mistaken for a complete image.
install_outputs() {
	local stage=$1 out=$2 stamp=$3 f
	shift 3
	rm -f "$out/.stamp"
	for f in "$@"; do
		mv -f "$stage/$f" "$out/$f"
	done
	printf '%s\n' "$stamp" >"$out/.stamp"
}

human_size() { du -h --apparent-size "$1" | cut -f1; }
