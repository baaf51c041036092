#!/usr/bin/env bash
# fuzz.sh DURATION: run every Go fuzz target in the module for DURATION each.
set -euo pipefail
dur=${1:-10s}
cd "$(dirname "$0")/.."
for pkg in $(go list ./...); do
	dir=$(go list -f '{{.Dir}}' "$pkg")
	for target in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //'); do
		echo "fuzz $pkg $target ($dur)"
		go test -run '^$' -fuzz "^${target}\$" -fuzztime "$dur" "$pkg" >/tmp/mdc-fuzz.$$.log 2>&1 || {
			cat /tmp/mdc-fuzz.$$.log; rm -f /tmp/mdc-fuzz.$$.log; exit 1; }
	done
done
rm -f /tmp/mdc-fuzz.$$.log
