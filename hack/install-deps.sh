#!/usr/bin/env bash
# install-deps.sh: install the Debian packages mdc's tests, benchmarks and demo
# use. Idempotent: it asks apt only for what is missing. The packages are listed
# one per line in hack/deps/*.txt (# starts a comment), one file per concern.
#
#   hack/install-deps.sh            everything in hack/deps/
#   hack/install-deps.sh base qemu  only hack/deps/base.txt and qemu.txt
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
lists=()
if [ $# -eq 0 ]; then
	lists=("$here"/deps/*.txt)
else
	for name in "$@"; do lists+=("$here/deps/$name.txt"); done
fi

want=()
for f in "${lists[@]}"; do
	[ -f "$f" ] || { echo "install-deps: no package list $f" >&2; exit 2; }
	while read -r pkg _; do
		[ -n "$pkg" ] && want+=("$pkg")
	done < <(sed 's/#.*//' "$f")
done

missing=()
for pkg in "${want[@]}"; do
	status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
	[ "$status" = "install ok installed" ] || missing+=("$pkg")
done
if [ ${#missing[@]} -eq 0 ]; then
	exit 0
fi
# Sort and dedupe: several lists may name one package.
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)

if [ "$(id -u)" -ne 0 ]; then
	echo "install-deps: missing ${missing[*]}; run as root (or: sudo $0)" >&2
	exit 1
fi

# Servers installed as test peers (dnsmasq, tftpd-hpa, kea, nginx, ceph) must
# not start as system services on the host's interfaces: deny service starts
# while apt runs, and put back whatever policy was there before.
policy=/usr/sbin/policy-rc.d
backup=""
if [ -e "$policy" ]; then
	backup=$(mktemp)
	cp -p "$policy" "$backup"
fi
restore() {
	if [ -n "$backup" ]; then mv -f "$backup" "$policy"; else rm -f "$policy"; fi
}
trap restore EXIT
printf '#!/bin/sh\nexit 101\n' >"$policy"
chmod 0755 "$policy"

echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-deps: done" >&2
