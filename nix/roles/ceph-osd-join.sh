#!/usr/bin/env bash
# mdc join hook, role ceph-osd: turn the disks mdc names into OSDs of the
# cluster mdc names, and start them. Run by mdc-agent with the role
# configuration (JSON, on tmpfs) as $1:
#   {"fsid": "...", "mon_host": "10.0.0.1,10.0.0.2",
#    "bootstrap_osd_key": "AQ...", "devices": ["/dev/sdb"]}
# Safe to run again: disks that already hold an OSD are activated, not wiped.
set -euo pipefail
config=${1:-${MDC_ROLE_CONFIG:?usage: join ROLE-CONFIG.json}}

fsid=$(jq -er .fsid "$config")
mon_host=$(jq -er .mon_host "$config")
key=$(jq -er .bootstrap_osd_key "$config")
mapfile -t devices < <(jq -r '.devices // [] | .[]' "$config")
if [ "${#devices[@]}" -eq 0 ]; then
	echo "join ceph-osd: the role configuration names no devices" >&2
	exit 1
fi

umask 077
mkdir -p /etc/ceph /var/lib/ceph/bootstrap-osd /var/lib/ceph/osd
printf '[global]\nfsid = %s\nmon_host = %s\n' "$fsid" "$mon_host" >/etc/ceph/ceph.conf
chmod 0644 /etc/ceph/ceph.conf
printf '[client.bootstrap-osd]\n\tkey = %s\n' "$key" >/var/lib/ceph/bootstrap-osd/ceph.keyring

for dev in "${devices[@]}"; do
	if ceph-volume lvm list "$dev" >/dev/null 2>&1; then
		continue
	fi
	ceph-volume lvm prepare --bluestore --data "$dev"
done
ceph-volume lvm activate --all --no-systemd

# The image has no unit files for OSDs: start each as a transient unit.
for dir in /var/lib/ceph/osd/ceph-*; do
	[ -e "$dir/whoami" ] || continue
	id=$(cat "$dir/whoami")
	if ! systemctl is-active --quiet "ceph-osd-$id"; then
		systemd-run --unit="ceph-osd-$id" --property=Restart=on-failure \
			"$(command -v ceph-osd)" -f --cluster ceph --id "$id" --setuser ceph --setgroup ceph
	fi
done
