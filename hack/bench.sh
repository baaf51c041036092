#!/usr/bin/env bash
# bench.sh: every benchmark of mdc beside its peers, in one run, as ratios
# (make bench). Each part prints a markdown table; docs/BENCHMARKS.md holds
# the figures of the last recorded run. The full output also goes to
# bench.out. Parts: events blob tftp dhcp (default: all).
#
#   hack/bench.sh              everything (about 15 minutes on 2 cores)
#   hack/bench.sh events tftp  only those parts
set -euo pipefail
cd "$(dirname "$0")/.."
parts=("$@")
[ ${#parts[@]} -gt 0 ] || parts=(events blob tftp dhcp)
out=${BENCH_OUT:-bench.out}
{
	echo "# mdc benchmarks, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(uname -r), $(go version | cut -d' ' -f3)"
	echo "# commit $(git describe --always --dirty 2>/dev/null || echo unknown)"
	for p in "${parts[@]}"; do
		[ -x "hack/bench-$p.sh" ] || { echo "bench: no part $p (hack/bench-$p.sh)" >&2; exit 2; }
		echo
		echo "## $p"
		"hack/bench-$p.sh"
	done
} 2>&1 | tee "$out"
