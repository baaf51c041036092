#!/usr/bin/env bash
# bench-events.sh: the event spine against raw JetStream (issue 2).
#
# Runs the benchmarks of events/bench_test.go, each mdc path next to the raw
# JetStream call it wraps in the same run (same embedded server config, file
# storage), and hack/rssbench for the memory of `mdc serve`, then prints
# markdown tables with the ratios. The machine is shared and noisy: read the
# ratios, not the absolute figures.
#
#   Append      Log.Append (per-machine check) vs js.Publish, the same check
#               done raw, PublishAsync; 1 and 64 writers; in-process and TCP
#   Codec       CPU per event of Encode, Decode and the fold
#   AppendCold  appends to machines whose newest event is in an old block
#   Replay      Store.Run's replay of 1,000,000 events vs an ordered consumer
#   Lookup      Table.Get / LookupMAC under b.RunParallel, with a writer
#   rssbench    VmRSS/VmHWM of mdc serve: idle, and with 10,000 machines × 20
#
# Env: BENCH_ROUNDS (2) alternating rounds of the paired benchmarks (Replay
#      runs once), BENCH_APPEND_TIME (1s), BENCH_LOOKUP_TIME (500ms),
#      BENCH_COLD_N (1000), BENCH_RSS_SETTLE (11s), BENCH_BUDGET (600) hard
#      limit in seconds for the whole run; each step gets what is left.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${BENCH_ROUNDS:-2}
append_time=${BENCH_APPEND_TIME:-1s}
lookup_time=${BENCH_LOOKUP_TIME:-500ms}
cold_n=${BENCH_COLD_N:-1000}
settle=${BENCH_RSS_SETTLE:-11s}
budget=${BENCH_BUDGET:-600}

tmp=$(mktemp -d /var/tmp/mdc-bench-events.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
start=$(date +%s)
left() { echo $((budget - ($(date +%s) - start))); }

# step NAME CMD...: runs CMD under what is left of the budget (timeout
# stops the command and its children), output to $tmp/NAME.txt and the
# figures to stderr as they come. A failed step is reported, not fatal: the
# summary shows what was measured.
status=0
step() {
	local name=$1
	shift
	local t
	t=$(left)
	if [ "$t" -le 15 ]; then
		echo "bench-events: out of time before $name" >&2
		status=1
		return
	fi
	echo "bench-events: $name (at most ${t}s)" >&2
	timeout --kill-after=10 "$t" "$@" >"$tmp/$name.txt" 2>&1 || true
	grep -E 'ns/op|bench_test.go|^rss ' "$tmp/$name.txt" >&2 || true
	if grep -qE '^(--- FAIL|FAIL|panic)|rssbench:' "$tmp/$name.txt" || ! grep -qE 'ns/op|^rss case=full' "$tmp/$name.txt"; then
		echo "bench-events: $name failed or timed out:" >&2
		tail -20 "$tmp/$name.txt" >&2
		status=1
	fi
}

go build -o "$tmp/mdc" ./cmd/mdc
go build -o "$tmp/rssbench" ./hack/rssbench

# b.TempDir and rssbench's stores go under $tmp, removed on exit.
export TMPDIR=$tmp
gotest() { # ROUNDS go-test-flags...: go test of ./events/ within the budget
	local rounds=$1
	shift
	step "$name" env MDC_BENCH_ROUNDS="$rounds" go test -run '^$' -count 1 -v -timeout "$(($(left) - 10))s" "$@" ./events/
}
name=append gotest "$rounds" -bench '^BenchmarkAppend$' -benchtime "$append_time"
name=cold gotest "$rounds" -bench '^BenchmarkAppendCold$' -benchtime "${cold_n}x"
name=replay gotest 1 -bench '^BenchmarkReplay$' -benchtime 1x
name=lookup gotest "$rounds" -bench '^Benchmark(Lookup|Codec)$' -benchtime "$lookup_time"
step rss "$tmp/rssbench" -mdc "$tmp/mdc" -settle "$settle"

cat "$tmp"/{append,cold,replay,lookup,rss}.txt 2>/dev/null | awk -v rounds="$rounds" -v cores="$(nproc)" -v secs="$(($(date +%s) - start))" '
# Benchmark lines: name N ns/op value unit value unit ...; repeated names
# (rounds) get #NN, which is dropped, and their values averaged.
/^Benchmark.*ns\/op/ {
	name = $1
	gsub(/#[0-9]+/, "", name)
	sub(/-[0-9]+$/, "", name)
	sub(/^Benchmark/, "", name)
	for (i = 3; i < NF; i += 2) { sum[name, $(i + 1)] += $i; cnt[name, $(i + 1)]++ }
}
/first-touch:/ { firsttouch = $0; sub(/.*first-touch: /, "", firsttouch) }
/table-heap:/ { tableheap = $0; sub(/.*table-heap: /, "", tableheap) }
/filled [0-9]+ events in/ { filled = $0; sub(/.*filled /, "", filled) }
/^rss case=/ {
	for (i = 2; i <= NF; i++) { split($i, kv, "="); rss[substr($2, 6), kv[1]] = kv[2] }
}
function v(name, unit) { return cnt[name, unit] ? sum[name, unit] / cnt[name, unit] : 0 }
function r(a, b) { return b ? sprintf("%.2f×", a / b) : "n/a" }
function mib(k) { return sprintf("%.0f", k / 1024) }
END {
	printf "\nEvent spine vs raw JetStream, embedded nats-server, file storage, %d cores, mean of %d alternating rounds (replay: 1), %ds in all.\n", cores, rounds, secs
	split("mdc js-check js-sync js-check-tcp js-sync-tcp", peer, " ")
	print "\n### Appends, hot (each writer on its own machine; stream starts empty)\n"
	print "1 writer: one op is one append by each peer on one server, in rotating order, timed apart. Rate from the mean, ratio from the medians.\n"
	print "| | mdc Append | raw, same check | js.Publish | same check, TCP | js.Publish, TCP |"
	print "|---|---:|---:|---:|---:|---:|"
	n = "Append/writers=1"
	printf "| median µs |"; for (k = 1; k <= 5; k++) printf " %.1f |", v(n, peer[k] "-p50-µs"); print ""
	printf "| appends/s (mean) |"; for (k = 1; k <= 5; k++) printf " %.0f |", v(n, peer[k] "-appends/s"); print ""
	printf "| mdc/peer (medians) |"; for (k = 1; k <= 5; k++) printf " %s |", r(v(n, peer[k] "-p50-µs"), v(n, "mdc-p50-µs")); print ""
	print "\n64 writers: one sub-benchmark per peer, each on a fresh server, order alternating across rounds.\n"
	print "| | mdc Append | raw, same check | js.Publish | same check, TCP | js.Publish, TCP |"
	print "|---|---:|---:|---:|---:|---:|"
	n = "Append/writers=64/"
	printf "| appends/s |"; for (k = 1; k <= 5; k++) printf " %.0f |", v(n peer[k], "appends/s"); print ""
	printf "| mdc/peer |"; for (k = 1; k <= 5; k++) printf " %s |", r(v(n "mdc", "appends/s"), v(n peer[k], "appends/s")); print ""
	a = v("Append/js-async", "appends/s"); at = v("Append/js-async-tcp", "appends/s"); m64 = v(n "mdc", "appends/s")
	printf "\nPublishAsync, 4096 in flight: %.0f/s in-process, %.0f/s over TCP. mdc Append with 64 writers / PublishAsync in-process: %s\n", a, at, r(m64, a)

	if (!cnt["AppendCold/interleaved", "mdc-appends/s"]) cold = 0; else cold = 1
	if (cold) print "\n### Appends to cold machines (newest event in an old block; 1 writer, peers interleaved per op)\n"
	if (cold) print "| | mdc Append | raw same check | js.Publish | mdc/check | mdc/js.Publish |"
	if (cold) print "|---|---:|---:|---:|---:|---:|"
	n = "AppendCold/interleaved"
	if (cold) printf "| appends/s (mean) | %.0f | %.0f | %.0f | %s | %s |\n", v(n, "mdc-appends/s"), v(n, "js-check-appends/s"), v(n, "js-sync-appends/s"), r(v(n, "mdc-appends/s"), v(n, "js-check-appends/s")), r(v(n, "mdc-appends/s"), v(n, "js-sync-appends/s"))
	if (cold) printf "| median µs (ratio: of rates, as above) | %.0f | %.0f | %.0f | %s | %s |\n", v(n, "mdc-p50-µs"), v(n, "js-check-p50-µs"), v(n, "js-sync-p50-µs"), r(v(n, "js-check-p50-µs"), v(n, "mdc-p50-µs")), r(v(n, "js-sync-p50-µs"), v(n, "mdc-p50-µs"))
	if (firsttouch != "") printf "\nFirst touch of each block after a restart (mdc Append): %s\n", firsttouch

	raw = v("Replay/js-ordered", "events/s")
	if (raw) print "\n### Replay of 1,000,000 events (50,000 machines × 20), after a restart\n"
	if (raw) print "| | events/s | vs raw |"
	if (raw) print "|---|---:|---:|"
	if (raw) printf "| mdc (Store.Run: read, decode, fold into the table) | %.0f | %s |\n", v("Replay/mdc", "events/s"), r(v("Replay/mdc", "events/s"), raw)
	if (raw) printf "| raw ordered consumer + CloudEvents decode only | %.0f | %s |\n", v("Replay/js-ordered+decode", "events/s"), r(v("Replay/js-ordered+decode", "events/s"), raw)
	if (raw) printf "| raw ordered consumer | %.0f | 1.00× |\n", raw
	if (filled != "") printf "\n(filled %s with PublishAsync)\n", filled

	if (!cnt["Lookup/Get", "lookups/s"]) { lookups = 0 } else lookups = 1
	if (lookups) print "\n### Table lookups, b.RunParallel, 10,000 machines\n"
	if (lookups) print "| read | alone /s | + writer 20k/s | + writer flat out | (writer applies/s) |"
	if (lookups) print "|---|---:|---:|---:|---:|"
	split("Get LookupMAC-secondary", reads, " ")
	for (k = 1; k <= 2 * lookups; k++) {
		p = "Lookup/" reads[k]
		printf "| %s | %.0f | %.0f | %.0f | %.0f |\n", reads[k], v(p, "lookups/s"), v(p "+writer-20k", "lookups/s"), v(p "+writer-max", "lookups/s"), v(p "+writer-max", "applies/s")
	}
	g = v("Lookup/Get", "lookups/s"); bare = v("Lookup/map-nolock", "lookups/s"); js = v("Lookup/js-last-msg", "lookups/s")
	if (lookups) printf "\nBare map without lock: %.0f/s (Get/bare %s); JetStream direct get of the newest event: %.0f/s (Get/JetStream %s)\n", bare, r(g, bare), js, r(g, js)
	if (tableheap != "") printf "Table: %s\n", tableheap
	if (v("Codec/Decode", "events/s")) printf "\nCPU per event, one core (BenchmarkCodec): Encode %.0f/s, Decode %.0f/s, fold (machine.Apply, which decodes the data again) %.0f/s\n", v("Codec/Encode", "events/s"), v("Codec/Decode", "events/s"), v("Codec/Fold", "events/s")

	if (rss["idle", "hwm_kib"] != "") {
		print "\n### Memory of mdc serve (VmRSS at ready, after settling, VmHWM; MiB)\n"
		print "| | ready in s | RSS ready | RSS settled | HWM | Go heap in use |"
		print "|---|---:|---:|---:|---:|---:|"
	}
	split("idle full raw-js", cases, " ")
	label["idle"] = "mdc serve, empty"; label["full"] = "mdc serve, 10,000 machines × 20 events"; label["raw-js"] = "embedded JetStream alone, same store, read once"
	for (k = 1; k <= 3; k++) {
		c = cases[k]
		if (rss[c, "hwm_kib"] == "") continue
		printf "| %s | %s | %s | %s | %s | %s |\n", label[c], rss[c, "ready_s"], mib(rss[c, "rss_ready_kib"]), mib(rss[c, "rss_settled_kib"]), mib(rss[c, "hwm_kib"]), mib(rss[c, "heap_inuse_kib"])
	}
	if (rss["full", "hwm_kib"] != "" && rss["raw-js", "hwm_kib"] != "")
		printf "\nmdc/JetStream alone: RSS settled %s, HWM %s\n", r(rss["full", "rss_settled_kib"], rss["raw-js", "rss_settled_kib"]), r(rss["full", "hwm_kib"], rss["raw-js", "hwm_kib"])
}'
exit $status
