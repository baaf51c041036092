#!/usr/bin/env bash
# bench-dhcp.sh: DHCP 4-way exchanges per second with distinct MACs, relayed
# (perfdhcp sends with giaddr), against mdc in full mode (leases in an
# embedded JetStream), Kea (memfile) and dnsmasq, all configured alike (one
# /16, the same pool and lease time), in one run. Everything runs inside two
# network namespaces this script creates and removes: a server side and a
# client side joined by a veth pair. Prints a markdown table.
#
#   hack/bench-dhcp.sh [SECONDS]     (default 10 per server)
# A fourth run, "null", answers at once from no state at all (benchsrv -null):
# the ceiling this machine, the veth pair and perfdhcp put on any server.
# Env: CLIENTS (distinct MACs, default 30000), RATE (offered rate, default 40000),
# PROFILE (write a CPU profile of mdc's measured run to this file),
# PERF_THREADS (perfdhcp -g: single, the default, or multi). perfdhcp's
# default on 2 cores is multi, whose receiver thread competes with the server
# and drops replies in its own socket: against the null server it measured
# ~7.7k exchanges/s multi and ~12.7k single on this machine.
set -euo pipefail
dur=${1:-10}
clients=${CLIENTS:-30000}
rate=${RATE:-40000}
threads=${PERF_THREADS:-single}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")

[ "$(id -u)" -eq 0 ] || { echo "bench-dhcp: needs root (network namespaces)" >&2; exit 1; }
for b in perfdhcp kea-dhcp4 dnsmasq ip; do
	command -v "$b" >/dev/null || { echo "bench-dhcp: $b missing: hack/install-deps.sh dhcp" >&2; exit 1; }
done

tag=$$
srv=mdcb-srv-$tag cli=mdcb-cli-$tag
work=$(mktemp -d /tmp/bench-dhcp.XXXXXX)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	ip netns delete "$srv" 2>/dev/null || true
	ip netns delete "$cli" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

ip netns add "$srv"
ip netns add "$cli"
ip link add "b${tag}s" type veth peer name "b${tag}c"
ip link set "b${tag}s" netns "$srv"
ip link set "b${tag}c" netns "$cli"
ip -n "$srv" link set "b${tag}s" name s0
ip -n "$cli" link set "b${tag}c" name c0
for ns in "$srv" "$cli"; do ip -n "$ns" link set lo up; done
ip -n "$srv" addr add 10.77.0.1/16 dev s0
ip -n "$cli" addr add 10.77.0.2/16 dev c0
ip -n "$srv" link set s0 up
ip -n "$cli" link set c0 up

# The shared configuration.
pool_start=10.77.1.1 pool_end=10.77.200.254 lease=3600

echo "bench-dhcp: building mdc's DHCP server" >&2
(cd "$root" && go build -o "$work/benchsrv" ./dhcp/internal/benchsrv)

# wait67 waits until something listens on UDP port 67 in the server namespace.
wait67() {
	for _ in $(seq 100); do
		ip netns exec "$srv" ss -Hlun 'sport = :67' | grep -q . && return 0
		sleep 0.1
	done
	echo "bench-dhcp: $1 did not start" >&2; cat "$work/$1.log" >&2; exit 1
}

stop() { kill "$1"; wait "$1" 2>/dev/null || true; pids=("${pids[@]/$1}"); }

# perf NAME: run perfdhcp relayed from the client side, print exchanges/s.
perf() {
	ip netns exec "$cli" perfdhcp -4 -g "$threads" -l 10.77.0.2 -r "$rate" -R "$clients" -p "$dur" -W 1 10.77.0.1 >"$work/$1.perf" 2>&1 || true
	grep -i -m1 '^rate:' "$work/$1.perf" | awk '{print $2}'
}

declare -A result
run_mdc() {
	ip netns exec "$srv" "$work/benchsrv" "$@" -interface s0 -advertise-addr 10.77.0.1 \
		-range "$pool_start-$pool_end/16" -lease-time ${lease}s -data-dir "$work/mdc" >"$work/mdc.log" 2>&1 &
	mdc_pid=$!; pids+=("$mdc_pid")
	wait67 mdc
}

echo "bench-dhcp: mdc" >&2
run_mdc ${PROFILE:+-cpuprofile "$PROFILE"}
result[mdc]=$(perf mdc)
# Leases survive a kill: ask for the count (SIGUSR1), kill -9, restart on
# the same data and compare what it loads.
kill -USR1 "$mdc_pid"
for _ in $(seq 50); do grep -q '^have ' "$work/mdc.log" && break; sleep 0.1; done
before=$(grep -m1 '^have ' "$work/mdc.log" | awk '{print $2}')
kill -9 "$mdc_pid"; wait "$mdc_pid" 2>/dev/null || true
run_mdc
loaded=$(grep -m1 -o 'loaded [0-9]* leases' "$work/mdc.log" | awk '{print $2}')
stop "$mdc_pid"

echo "bench-dhcp: null" >&2
ip netns exec "$srv" "$work/benchsrv" -null -interface s0 >"$work/null.log" 2>&1 &
null_pid=$!; pids+=("$null_pid")
wait67 null
result[null]=$(perf null)
stop "$null_pid"

echo "bench-dhcp: kea" >&2
cat >"$work/kea.json" <<JSON
{ "Dhcp4": {
  "interfaces-config": { "interfaces": [ "s0" ], "dhcp-socket-type": "udp" },
  "lease-database": { "type": "memfile", "persist": true, "name": "$work/kea-leases.csv", "lfc-interval": 0 },
  "valid-lifetime": $lease,
  "subnet4": [ { "subnet": "10.77.0.0/16", "pools": [ { "pool": "$pool_start - $pool_end" } ],
    "option-data": [ { "name": "routers", "data": "10.77.0.1" } ] } ],
  "loggers": [ { "name": "kea-dhcp4", "output_options": [ { "output": "stdout" } ], "severity": "WARN" } ]
} }
JSON
KEA_PIDFILE_DIR=$work KEA_LOCKFILE_DIR=$work ip netns exec "$srv" kea-dhcp4 -c "$work/kea.json" >"$work/kea.log" 2>&1 &
kea_pid=$!; pids+=("$kea_pid")
wait67 kea
result[kea]=$(perf kea)
stop "$kea_pid"

echo "bench-dhcp: dnsmasq" >&2
ip netns exec "$srv" dnsmasq --keep-in-foreground --conf-file=/dev/null --no-resolv --no-hosts --port=0 \
	--interface=s0 --bind-interfaces --no-ping --dhcp-authoritative --dhcp-lease-max=200000 \
	--dhcp-range=$pool_start,$pool_end,255.255.0.0,${lease} --dhcp-option=3,10.77.0.1 \
	--dhcp-leasefile="$work/dnsmasq.leases" --pid-file="$work/dnsmasq.pid" --log-facility=/dev/null >"$work/dnsmasq.log" 2>&1 &
dm_pid=$!; pids+=("$dm_pid")
wait67 dnsmasq
result[dnsmasq]=$(perf dnsmasq)
stop "$dm_pid"

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
echo
echo "DHCPv4, relayed, $clients distinct MACs, ${dur}s each, offered rate $rate/s, pool $pool_start-$pool_end, lease ${lease}s, perfdhcp -g $threads ($(nproc) cores)"
echo
echo "| server | 4-way exchanges/s | mdc / server |"
echo "|---|---:|---:|"
for s in mdc kea dnsmasq null; do
	echo "| $s | ${result[$s]:-0} | $(ratio "${result[mdc]:-0}" "${result[$s]:-0}") |"
done
echo
echo "mdc leases before kill -9: ${before:-?}; loaded after restart: ${loaded:-?}"
[ -n "${before:-}" ] && [ "${before}" = "${loaded:-}" ] || { echo "bench-dhcp: leases lost across kill -9" >&2; exit 1; }
for s in mdc kea dnsmasq null; do
	echo "--- perfdhcp against $s:" >&2
	grep -E -i 'sent packets|received packets|drops|rate:' "$work/$s.perf" >&2 || cat "$work/$s.perf" >&2
done
