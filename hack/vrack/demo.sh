#!/usr/bin/env bash
# demo.sh DIR: the virtual rack live. Starts `vrack up` (mdc in a network
# namespace, two plugged-in QEMU machines — SeaBIOS and UEFI — and one
# powered-off machine with a Redfish BMC), follows mdc's event feed while the
# plugged-in machines configure themselves, then enrolls the third through its
# BMC (when this mdc has `enroll`). On a terminal it keeps the rack up until
# Ctrl-C; otherwise it stops once the tour is over. Needs root, bin/mdc,
# bin/mdc-agent and bin/vrack (make build; go build -o bin/ ./hack/vrack/cmd/vrack).
set -euo pipefail
cd "$(dirname "$0")/../.."
dir=$(realpath -m "${1:-.demo}")
addr=${MDC_DEMO_ADDR:-127.0.0.1:8080}
mdc=bin/mdc vrack=bin/vrack
for b in "$mdc" bin/mdc-agent "$vrack"; do
	[ -x "$b" ] || { echo "demo: $b missing; run make build and go build -o bin/ ./hack/vrack/cmd/vrack" >&2; exit 1; }
done
mkdir -p "$dir"
"$vrack" up --dir "$dir" --machines 3 --bmc none,none,redfish --firmware bios,uefi,bios \
	--mdc "$mdc" --api-addr "$addr" >"$dir/rack.jsonl" 2>"$dir/vrack.log" &
pid=$!
follow=
stop() {
	[ -n "$follow" ] && kill -TERM "$follow" 2>/dev/null || true
	if kill -0 "$pid" 2>/dev/null; then
		kill -TERM "$pid"
		wait "$pid" 2>/dev/null || true
	fi
}
trap stop EXIT
trap 'exit 130' INT TERM

echo "demo: building the rack (the first run downloads a Debian kernel)…"
for _ in $(seq 600); do
	grep -q '"mdc":' "$dir/rack.jsonl" 2>/dev/null && break
	kill -0 "$pid" 2>/dev/null || { echo "demo: vrack exited:" >&2; tail -n 20 "$dir/vrack.log" >&2; exit 1; }
	sleep 0.2
done
grep -q '"mdc":' "$dir/rack.jsonl" || { echo "demo: the rack did not come up" >&2; exit 1; }
echo "The rack (one line per machine, then mdc):"
cat "$dir/rack.jsonl"
echo
cli() {
	printf '$ mdc'; printf ' %q' "$@"; echo
	"$mdc" --server "http://$addr" --data-dir "$dir/data" "$@"
}

# The plugged-in machines configure themselves: watch the events go by.
"$mdc" --server "http://$addr" --data-dir "$dir/data" events --follow &
follow=$!
joined() { "$mdc" --server "http://$addr" --data-dir "$dir/data" machines list -o json | jq '[.machines[] | select(.state=="joined")] | length'; }
for _ in $(seq 300); do
	[ "$(joined 2>/dev/null || echo 0)" -ge 2 ] && break
	sleep 1
done
kill -TERM "$follow" 2>/dev/null || true
wait "$follow" 2>/dev/null || true
follow=
echo
cli machines list

# The third machine has a Redfish BMC and is off: enroll it through mdc.
bmc=$(jq -r 'select(.machine=="m3") | .bmc' "$dir/rack.jsonl")
if "$mdc" enroll --help >/dev/null 2>&1; then
	echo
	cli enroll --bmc "$bmc" --bmc-user admin --bmc-password-file "$(jq -r 'select(.machine=="m3") | .bmc_password_file' "$dir/rack.jsonl")" --name m3 --wait || true
	cli machines list
else
	echo "m3 waits, powered off, behind its Redfish BMC at $bmc (this mdc has no enroll yet)."
fi

# What each role's cluster says, and how one machine's join went.
echo
cli roles list || true
echo
cli machines show "$(jq -r 'select(.machine=="m1") | .mac' "$dir/rack.jsonl")" || true

if [ -t 0 ] && [ -t 1 ]; then
	echo
	echo "The rack stays up; mdc's API is on http://$addr. Ctrl-C stops everything."
	echo "Try: $mdc --server http://$addr --data-dir $dir/data machines list"
	wait "$pid" || true
fi
