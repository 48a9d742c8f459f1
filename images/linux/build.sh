#!/usr/bin/env bash
# Builds Tandem's microVM guest kernel and initramfs, once per machine.
#
#   images/linux/build.sh kernel      prints a directory holding vmlinux,
#                                     bzImage, config and build-info
#   images/linux/build.sh initramfs   prints the path of initramfs.cpio
#
# Outputs are cached outside the work tree, in
# ${TANDEM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tandem}, under a key
# that hashes everything the output depends on: for the kernel, the config
# fragment (microvm.config), the patches (patches/*.patch, applied in name
# order; each says which host behaviour it answers), the installed
# linux-source-6.12 package version and this script's recipe version; for the initramfs,
# initramfs/init.c, the recipe version and the gcc and musl versions. A cached output
# is printed without building. Concurrent callers wait on a lock instead of
# building twice. The build is reproducible: a fixed build user, host and
# timestamp, so the kernel banner does not depend on who built it or when.
#
# Progress goes to stderr; the result path is the only line on stdout.
#
# Needs (Debian 12): linux-source-6.12 flex bison bc libelf-dev libssl-dev
# lz4 make gcc cpio patch musl-tools. The kernel takes about 7 minutes on 2
# cores (tinyconfig plus the fragment); the initramfs a second.
set -euo pipefail

# Bump when the build steps change in a way that changes the outputs.
RECIPE=2

here=$(cd "$(dirname "$0")" && pwd)
cache=${TANDEM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tandem}
src_pkg=linux-source-6.12
src_tar=/usr/src/linux-source-6.12.tar.xz

die() { echo "build.sh: $*" >&2; exit 1; }
log() { echo "build.sh: $*" >&2; }

need() {
	local missing=()
	for tool in "$@"; do
		command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
	done
	if [ ${#missing[@]} -gt 0 ]; then
		die "missing tools: ${missing[*]} (apt-get install linux-source-6.12 flex bison bc libelf-dev libssl-dev lz4 make gcc cpio patch musl-tools)"
	fi
}

hash_of() { sha256sum | cut -c1-16; }

# Fixed build identity, so that the banner and the image do not depend on
# who built it, where or when.
export KBUILD_BUILD_TIMESTAMP='Thu Jan  1 00:00:00 UTC 2026'
export KBUILD_BUILD_USER=tandem
export KBUILD_BUILD_HOST=tandem
export KBUILD_BUILD_VERSION=1
export LC_ALL=C

build_kernel() {
	need make gcc flex bison bc tar xz lz4 sha256sum flock patch
	[ -f "$src_tar" ] || die "$src_tar not found: apt-get install $src_pkg"
	local src_version
	src_version=$(dpkg-query -W -f='${Version}' "$src_pkg" 2>/dev/null) ||
		die "cannot read the version of $src_pkg (is it installed?)"
	local key
	key=$( { echo "recipe $RECIPE"; echo "source $src_pkg $src_version"; cat "$here/microvm.config" "$here"/patches/*.patch; } | hash_of)
	local out="$cache/linux-$key"
	if [ -f "$out/vmlinux" ] && [ -f "$out/bzImage" ]; then
		echo "$out"; return
	fi
	mkdir -p "$cache"
	exec 9>"$cache/linux-$key.lock"
	log "taking the build lock $cache/linux-$key.lock"
	flock 9
	if [ -f "$out/vmlinux" ] && [ -f "$out/bzImage" ]; then
		echo "$out"; return
	fi

	local start
	start=$(date +%s)
	work=$(mktemp -d "$cache/linux-$key.build.XXXXXX")
	trap 'rm -rf "${work:-}"' EXIT
	log "building the guest kernel ($src_pkg $src_version, key $key) in $work; about 7 minutes on 2 cores"
	tar -C "$work" -xf "$src_tar"
	local tree="$work/linux-source-6.12"
	local p
	for p in "$here"/patches/*.patch; do
		log "applying $(basename "$p")"
		patch -d "$tree" -p1 -s --no-backup-if-mismatch --forward < "$p" >&2 ||
			die "$(basename "$p") does not apply to $src_pkg $src_version"
	done
	local mk=(make -C "$tree" ARCH=x86_64 -s)
	"${mk[@]}" tinyconfig >&2
	(cd "$tree" && scripts/kconfig/merge_config.sh -m .config "$here/microvm.config" >/dev/null)
	"${mk[@]}" olddefconfig >&2

	# Every option the fragment sets must have survived olddefconfig.
	local bad=0 line name
	while IFS= read -r line; do
		case "$line" in
		CONFIG_*=*)
			grep -qxF "$line" "$tree/.config" || { log "config: $line did not stick (got: $(grep -E "^(# )?${line%%=*}[= ]" "$tree/.config" || echo unset))"; bad=1; } ;;
		"# CONFIG_"*" is not set")
			name=${line#\# }; name=${name%% *}
			if grep -qE "^$name=" "$tree/.config"; then log "config: $name should be unset"; bad=1; fi ;;
		esac
	done < "$here/microvm.config"
	[ $bad -eq 0 ] || die "the config fragment does not apply cleanly to $src_pkg $src_version"

	"${mk[@]}" -j"$(( $(nproc) + 1 ))" vmlinux bzImage >&2

	mkdir "$work/out"
	cp "$tree/vmlinux" "$tree/arch/x86/boot/bzImage" "$work/out/"
	cp "$tree/.config" "$work/out/config"
	{
		echo "source $src_pkg $src_version"
		echo "key $key"
		echo "recipe $RECIPE"
		echo "gcc $(gcc -dumpfullversion)"
		echo "build_seconds $(( $(date +%s) - start ))"
	} > "$work/out/build-info"
	rm -rf "$out"
	mv "$work/out" "$out"
	log "built $out in $(( $(date +%s) - start )) s"
	echo "$out"
}

build_initramfs() {
	need musl-gcc gcc cpio sha256sum flock strip
	local key
	key=$( { echo "recipe $RECIPE"; gcc --version | head -1; dpkg-query -W -f='musl ${Version}\n' musl-tools 2>/dev/null || true; cat "$here/initramfs/init.c"; } | hash_of)
	local out="$cache/initramfs-$key.cpio"
	if [ -f "$out" ]; then
		echo "$out"; return
	fi
	mkdir -p "$cache"
	exec 9>"$cache/initramfs-$key.lock"
	flock 9
	if [ -f "$out" ]; then
		echo "$out"; return
	fi
	
	work=$(mktemp -d "$cache/initramfs-$key.build.XXXXXX")
	trap 'rm -rf "${work:-}"' EXIT
	mkdir -p "$work/root/dev" "$work/root/proc" "$work/root/sys" "$work/root/mnt"
	# musl, not glibc: the kernel unpacks the initramfs byte by byte, which
	# in KVM's instruction emulator (PVM hosts) costs about 12 us a byte;
	# a static glibc init is 676 KB (8 s to unpack), a musl one 50 KB.
	musl-gcc -static -Os -Wall -Wextra -Werror -ffile-prefix-map="$here"=. \
		-Wl,--build-id=none -o "$work/root/init" "$here/initramfs/init.c"
	strip "$work/root/init"
	chmod 755 "$work/root/init"
	find "$work/root" -exec touch -h -d @0 {} +
	(cd "$work/root" && find . -mindepth 1 | sort |
		cpio --quiet --reproducible -o -H newc -R 0:0 > "$work/initramfs.cpio")
	mv "$work/initramfs.cpio" "$out"
	echo "$out"
}

case "${1:-}" in
kernel) build_kernel ;;
initramfs) build_initramfs ;;
*) die "usage: $0 kernel|initramfs" ;;
esac
