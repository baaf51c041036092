#!/usr/bin/env bash
# bench-tftp.sh: mdc's TFTP server against tftpd-hpa, side by side in one run.
#
# Both serve the same 64 MiB file on 127.0.0.1 (each on its own port, each
# with its own root). Each client program (curl, atftp) fetches it at blksize
# 512, 1468 and 8192, and then 50 copies of it fetch it at once (blksize 1468,
# what iPXE and OVMF ask for). Every fetch is checked against the file's
# sha256. Prints a markdown table; the ratio is mdc's throughput over
# tftpd-hpa's (above 1: mdc is faster). The two clients are both shown
# because the ratio depends on the client (see docs/tftp.md).
#
#   hack/bench-tftp.sh                 defaults
#   REPS=5 CLIENTS=20 TOOLS=curl hack/bench-tftp.sh
#
# Needs root (tftpd-hpa chroots and drops to user tftp) and the packages in
# hack/deps/tftp.txt. tftpd-hpa runs in the foreground, bound to 127.0.0.1
# only, and is stopped by its PID; it is never started as a service.
set -euo pipefail

REPS=${REPS:-3}             # runs per single-client case; the median counts
CLIENTS=${CLIENTS:-50}      # concurrent clients
SIZE_MIB=${SIZE_MIB:-64}    # file size
CONC_BLKSIZE=${CONC_BLKSIZE:-1468}
TOOLS=${TOOLS:-curl atftp}  # client programs

cd "$(dirname "$0")/.."
hack/install-deps.sh tftp
for cmd in curl atftp in.tftpd sha256sum ss; do
	command -v "$cmd" >/dev/null || { echo "bench-tftp: $cmd missing; run hack/install-deps.sh tftp" >&2; exit 1; }
done
if [ "$(id -u)" -ne 0 ]; then
	echo "bench-tftp: run as root (tftpd-hpa chroots to its root and drops to user tftp)" >&2
	exit 1
fi

work=$(mktemp -d /tmp/bench-tftp.XXXXXX)
mdc_pid=""
hpa_pid=""
cleanup() {
	[ -n "$mdc_pid" ] && kill "$mdc_pid" 2>/dev/null && wait "$mdc_pid" 2>/dev/null || true
	[ -n "$hpa_pid" ] && kill "$hpa_pid" 2>/dev/null && wait "$hpa_pid" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT
chmod 0755 "$work"
mkdir -p "$work/mdc-root" "$work/hpa-root" "$work/out"
head -c $((SIZE_MIB << 20)) /dev/urandom >"$work/mdc-root/file.bin"
cp "$work/mdc-root/file.bin" "$work/hpa-root/file.bin"
chmod 0755 "$work/mdc-root" "$work/hpa-root"
chmod 0644 "$work/mdc-root/file.bin" "$work/hpa-root/file.bin"
want=$(sha256sum <"$work/mdc-root/file.bin" | cut -d' ' -f1)

# mdc: the tftp package's test binary run as a stand-alone server (see
# tftp/main_test.go); it binds port 0 and writes the address it got.
go test -c -o "$work/tftp.test" ./tftp
"$work/tftp.test" -tftp.serve 127.0.0.1:0 -tftp.root "$work/mdc-root" -tftp.addrfile "$work/mdc.addr" &
mdc_pid=$!
for _ in $(seq 100); do [ -s "$work/mdc.addr" ] && break; sleep 0.05; done
[ -s "$work/mdc.addr" ] || { echo "bench-tftp: mdc's TFTP server did not start" >&2; exit 1; }
mdc_addr=$(cat "$work/mdc.addr")

# tftpd-hpa needs a port number up front: take one nothing listens on.
hpa_port=""
for _ in $(seq 50); do
	p=$((20000 + RANDOM % 40000))
	if [ -z "$(ss -Hlun "sport = :$p")" ]; then hpa_port=$p; break; fi
done
[ -n "$hpa_port" ] || { echo "bench-tftp: no free UDP port found for tftpd-hpa" >&2; exit 1; }
in.tftpd --foreground --address "127.0.0.1:$hpa_port" --secure --user tftp "$work/hpa-root" &
hpa_pid=$!
for _ in $(seq 100); do [ -n "$(ss -Hlun "sport = :$hpa_port")" ] && break; sleep 0.05; done
[ -n "$(ss -Hlun "sport = :$hpa_port")" ] || { echo "bench-tftp: tftpd-hpa did not start" >&2; exit 1; }
hpa_addr=127.0.0.1:$hpa_port

now() { date +%s.%N; }

# fetch ADDR BLKSIZE OUT: one transfer with $tool.
fetch() {
	case $tool in
	curl) curl -sS --max-time 600 --tftp-blksize "$2" -o "$3" "tftp://$1/file.bin" ;;
	atftp) atftp --option "blksize $2" -g -r file.bin -l "$3" "${1%:*}" "${1##*:}" >/dev/null 2>&1 ;;
	esac
}
check() {
	local got
	got=$(sha256sum <"$1" | cut -d' ' -f1)
	[ "$got" = "$want" ] || { echo "bench-tftp: $1: sha256 $got, want $want" >&2; exit 1; }
	rm -f "$1"
}

# single ADDR BLKSIZE: median seconds of REPS transfers.
single() {
	local times=() t0 t1
	for _ in $(seq "$REPS"); do
		t0=$(now)
		fetch "$1" "$2" "$work/out/single"
		t1=$(now)
		check "$work/out/single"
		times+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}')")
	done
	printf '%s\n' "${times[@]}" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'
}

# concurrent ADDR: seconds until CLIENTS parallel transfers have all ended.
concurrent() {
	local pids=() t0 t1 i
	t0=$(now)
	for i in $(seq "$CLIENTS"); do
		fetch "$1" "$CONC_BLKSIZE" "$work/out/c$i" &
		pids+=($!)
	done
	for p in "${pids[@]}"; do wait "$p"; done
	t1=$(now)
	for i in $(seq "$CLIENTS"); do check "$work/out/c$i"; done
	awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}'
}

row() { # tool case mib mdc_s hpa_s
	awk -v t="$1" -v n="$2" -v mib="$3" -v m="$4" -v h="$5" 'BEGIN {
		printf "| %s | %s | %.2f | %.1f | %.2f | %.1f | %.2f |\n", t, n, m, mib/m, h, mib/h, h/m }'
}

echo "mdc $mdc_addr, tftpd-hpa $hpa_addr; file $SIZE_MIB MiB; single client: median of $REPS" >&2
echo
echo "| client | case | mdc s | mdc MiB/s | tftpd-hpa s | tftpd-hpa MiB/s | mdc/tftpd-hpa |"
echo "|---|---|---|---|---|---|---|"
for tool in $TOOLS; do
	for b in 512 1468 8192; do
		# One server after the other, case by case, so both see the same
		# background load.
		m=$(single "$mdc_addr" "$b")
		h=$(single "$hpa_addr" "$b")
		row "$tool" "1 client, blksize $b" "$SIZE_MIB" "$m" "$h"
	done
	m=$(concurrent "$mdc_addr")
	h=$(concurrent "$hpa_addr")
	row "$tool" "$CLIENTS clients, blksize $CONC_BLKSIZE" $((SIZE_MIB * CLIENTS)) "$m" "$h"
done
