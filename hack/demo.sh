#!/usr/bin/env bash
# demo.sh DIR: start mdc serve on embedded defaults with its state in DIR,
# register a few machines through the API with the CLI, and show them and
# their events. On a terminal it keeps mdc running (following the event feed)
# until Ctrl-C; otherwise it stops mdc when the tour is over.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-.demo}
addr=${MDC_DEMO_ADDR:-127.0.0.1:8080}
# Each demo starts from an empty rack.
rm -rf "$dir/data"
mkdir -p "$dir"
mdc=bin/mdc
[ -x "$mdc" ] || { echo "demo: $mdc missing; run make build" >&2; exit 1; }

"$mdc" serve --data-dir "$dir/data" --http-addr "$addr" >"$dir/serve.out" 2>"$dir/serve.log" &
pid=$!
stop() {
	if kill -0 "$pid" 2>/dev/null; then
		kill -TERM "$pid"
		wait "$pid" 2>/dev/null || true
	fi
}
trap stop EXIT
trap 'exit 130' INT TERM

for _ in $(seq 100); do
	grep -q '^mdc ready on ' "$dir/serve.out" 2>/dev/null && break
	kill -0 "$pid" 2>/dev/null || { echo "demo: mdc serve exited:" >&2; cat "$dir/serve.log" >&2; exit 1; }
	sleep 0.1
done
url=$(sed -n 's/^mdc ready on //p' "$dir/serve.out")
[ -n "$url" ] || { echo "demo: mdc serve did not become ready:" >&2; cat "$dir/serve.log" >&2; exit 1; }

# The CLI finds the admin token in the data directory, as it would on a rack.
cli() {
	printf '$ mdc'; printf ' %q' "$@"; echo
	"$mdc" --server "$url" --data-dir "$dir/data" "$@"
	echo
}

echo "mdc serve is running on $url (pid $pid, state in $dir/data, log in $dir/serve.log)"
echo
cli machines register 52:54:00:00:00:01 --name rack1-node1
cli machines register 52-54-00-00-00-02 --name rack1-node2
cli machines register 5254.0000.0003 --name rack1-node3
cli machines assign 525400000002 ceph-osd
cli machines retire 525400000003 --reason "demo: replaced"
cli machines list
cli machines show 525400000002
cli events --machine 525400000002
cli machines list -o json

if [ -t 0 ] && [ -t 1 ]; then
	echo "mdc is still running on $url; the live event feed follows. Ctrl-C stops it."
	echo "Try in another terminal: bin/mdc --server $url --data-dir $dir/data machines register 52:54:00:00:00:04"
	"$mdc" --server "$url" --data-dir "$dir/data" events --follow || true
fi
