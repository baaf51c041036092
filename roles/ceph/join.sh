#!/bin/sh
# join.sh: the ceph-osd role's join hook (/etc/mdc/join in the role image).
# mdc-agent writes /etc/ceph/ceph.conf (fsid, mons, this host's CRUSH place)
# and one keyring per OSD (0600), then runs this as `join.sh ROLE_CONFIG_JSON`.
# For each OSD mdc registered for this machine (osd new, its own cephx key) it
# finds the disk, makes the OSD once (ceph-osd --mkfs), starts it, and prints
# the evidence as its last line: for each OSD the fingerprint of the key it
# used, {"osd.<id>.key": "<first 16 hex digits of sha256(key)>"}.
# Needs: ceph-osd (pacific or later), jq, sha256sum, blkid and setsid
# (util-linux).
#
# Knobs for an image or a test (all optional):
#   MDC_CEPH_ROOT      a directory standing in for / (a test's node tree)
#   MDC_CEPH_OSD_ARGS  more ceph-osd arguments, e.g. "--osd-objectstore
#                      memstore" for a test without disks; without
#                      --osd-objectstore the OSD is bluestore on its disk
#   MDC_CEPH_START     command that starts OSD $1, e.g.
#                      "systemctl start ceph-osd@$1"; default: ceph-osd -f,
#                      detached, its PID in /run/ceph/osd.<id>.pid
# No secret goes on a command line: keys stay in their keyring files, and
# the fingerprint is taken on standard input.
set -eu

cfg=${1:-${MDC_ROLE_CONFIG:?no role configuration}}
root=${MDC_CEPH_ROOT:-}
extra=${MDC_CEPH_OSD_ARGS:-}
conf=$root$(jq -er .conf "$cfg")
n=$(jq -er '.osds | length' "$cfg")
[ "$n" -gt 0 ] || { echo "join: mdc registered no OSD for this machine" >&2; exit 1; }
mkdir -p "$root/run/ceph" "$root/var/log/ceph" "$root/var/lib/ceph/crash"

evidence='{}'
i=0
while [ "$i" -lt "$n" ]; do
	osd() { jq -er ".osds[$i].$1" "$cfg"; }
	id=$(osd id)
	uuid=$(osd uuid)
	disk=$(osd disk)
	serial=$(jq -r ".osds[$i].serial // empty" "$cfg")
	keyring=$root$(osd keyring)
	evkey=$(osd evidence)
	data=$root/var/lib/ceph/osd/ceph-$id
	pidf=$root/run/ceph/osd.$id.pid
	# Paths are the role's own (no spaces): the word splitting is wanted.
	args="--conf $conf -i $id --keyring $keyring --osd-data $data --run-dir $root/run/ceph
		--log-file $root/var/log/ceph/osd.$id.log --crash-dir $root/var/lib/ceph/crash --pid-file $pidf $extra"
	mkdir -p "$data"

	if [ "$(cat "$data/fsid" 2>/dev/null || true)" != "$uuid" ]; then
		case " $extra " in
		*" --osd-objectstore "*) ;;
		*)
			# Bluestore on the disk mdc named: by serial if it has one
			# (kernel names move), and never over a disk that holds
			# something else.
			dev=/dev/$disk
			if [ -n "$serial" ]; then
				for d in /dev/disk/by-id/*"$serial"; do
					[ -e "$d" ] && dev=$(readlink -f "$d") && break
				done
			fi
			[ -b "$dev" ] || { echo "join: osd.$id: no block device $dev (disk $disk, serial ${serial:-none})" >&2; exit 1; }
			if sig=$(blkid -p -o value -s TYPE "$dev" 2>/dev/null) && [ -n "$sig" ] && [ "$sig" != ceph_bluestore ]; then
				echo "join: osd.$id: $dev holds $sig; not making an OSD over it (wipe it first if it is spare)" >&2
				exit 1
			fi
			ln -sfn "$dev" "$data/block"
			;;
		esac
		# shellcheck disable=SC2086
		ceph-osd $args --mkfs --osd-uuid "$uuid" >&2 ||
			{ echo "join: osd.$id: ceph-osd --mkfs failed (a wrong or revoked key shows as an authentication error above)" >&2; exit 1; }
	fi

	if [ -n "${MDC_CEPH_START:-}" ]; then
		sh -c "$MDC_CEPH_START" start-osd "$id" >&2
	elif ! { [ -f "$pidf" ] && kill -0 "$(cat "$pidf")" 2>/dev/null; }; then
		# shellcheck disable=SC2086
		setsid ceph-osd $args -f >"$root/var/log/ceph/osd.$id.out" 2>&1 </dev/null &
		echo $! >"$pidf"
		sleep 1
		kill -0 "$(cat "$pidf")" 2>/dev/null ||
			{ echo "join: osd.$id exited at start:" >&2; tail -n 20 "$root/var/log/ceph/osd.$id.out" >&2; exit 1; }
	fi

	key=$(sed -n 's/^[[:space:]]*key = //p' "$keyring")
	fp=$(printf '%s' "$key" | sha256sum | cut -c1-16)
	evidence=$(printf '%s' "$evidence" | jq -c --arg k "$evkey" --arg v "$fp" '. + {($k): $v}')
	i=$((i + 1))
done
printf '%s\n' "$evidence"
