#!/usr/bin/env bash
# test-kernel.sh: print the path of a Debian kernel (bzImage with EFI stub)
# for the netboot tests, downloading it once with apt-get download (the
# package is unpacked, never installed). Cached in ${MDC_CACHE:-~/.cache/mdc}.
set -euo pipefail
cache=${MDC_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mdc}/test-kernel
mkdir -p "$cache"
pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
if [ -z "$pkg" ]; then
	# No package lists yet: use whatever an earlier run left.
	found=$(ls "$cache"/vmlinuz-* 2>/dev/null | tail -n1 || true)
	[ -n "$found" ] || { echo "test-kernel: apt-cache knows no linux-image-amd64; run apt-get update" >&2; exit 1; }
	echo "$found"; exit 0
fi
ver=${pkg#linux-image-}
out="$cache/vmlinuz-$ver"
if [ ! -s "$out" ]; then
	tmp=$(mktemp -d "$cache/dl.XXXXXX")
	trap 'rm -rf "$tmp"' EXIT
	(cd "$tmp" && apt-get download "$pkg" >/dev/null 2>&1) || { echo "test-kernel: apt-get download $pkg failed" >&2; exit 1; }
	dpkg-deb --fsys-tarfile "$tmp"/*.deb | tar -x -C "$tmp" "./boot/vmlinuz-$ver"
	mv "$tmp/boot/vmlinuz-$ver" "$out"
fi
echo "$out"
