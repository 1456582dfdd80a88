#!/usr/bin/env bash
# Installs the Debian packages netvmm's image builders and lab need, if any are missing.
# Shared by quickstart.sh and .ci/run so that both install the same list.
# --kernel-build adds what building the tinyconfig test kernel from source needs
# (kernel-build-packages.txt: a compiler and the kernel's build tools).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
lists=("$here/host-packages.txt")
[ "${1:-}" = --kernel-build ] && lists+=("$here/kernel-build-packages.txt")
mapfile -t wanted < <(cat "${lists[@]}" | grep -v '^#' | sed '/^$/d')
missing=()
for p in "${wanted[@]}"; do
	dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
	echo "netvmm-setup: host packages present" >&2
	exit 0
fi
if [ "$(id -u)" != 0 ]; then
	echo "netvmm-setup: missing Debian packages: ${missing[*]}; run as root or: sudo apt-get install ${missing[*]}" >&2
	exit 1
fi
echo "netvmm-setup: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${missing[@]}" >/dev/null
