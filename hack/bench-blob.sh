#!/usr/bin/env bash
# bench-blob.sh: blob serving and import throughput, mdc against its peers.
#
# Serving: one 300 MiB file (an initrd's size) in a local blob store, served by
# mdc's blob.Handler (hack/blobbench serve) and by nginx (sendfile on) from the
# same file on the same disk, loaded by the same Go client (hack/blobbench
# load) with 1 and 50 concurrent clients. Import: blob.Local.Put of the file
# (hash while writing, fsync, rename) against sha256sum of the same file.
# Prints markdown tables for docs/blobs.md.
#
# Env: BENCH_SIZE_MIB (300), BENCH_SECONDS per run (6), BENCH_ROUNDS (2),
#      BENCH_CLIENTS ("1 50").
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${BENCH_SIZE_MIB:-300}
secs=${BENCH_SECONDS:-6}
rounds=${BENCH_ROUNDS:-2}
clients=${BENCH_CLIENTS:-"1 50"}
command -v nginx >/dev/null || { echo "bench-blob: nginx missing; run hack/install-deps.sh blob" >&2; exit 2; }

tmp=$(mktemp -d /var/tmp/mdc-bench-blob.XXXXXX)
chmod 0755 "$tmp" # nginx workers may run as nobody
mdc_pid="" nginx_pid=""
cleanup() {
	[ -n "$mdc_pid" ] && kill "$mdc_pid" 2>/dev/null && wait "$mdc_pid" 2>/dev/null
	[ -n "$nginx_pid" ] && kill "$nginx_pid" 2>/dev/null && wait "$nginx_pid" 2>/dev/null
	rm -rf "$tmp"
}
trap cleanup EXIT

go build -o "$tmp/blobbench" ./hack/blobbench
bb=$tmp/blobbench
echo "bench-blob: writing a ${size_mib} MiB file" >&2
head -c "$((size_mib << 20))" /dev/urandom >"$tmp/initrd"

# Import: best of 3 each, on a file in the page cache (as after a download).
best() { sort -g | tail -1; }
put_rates=() sum_rates=()
for _ in 1 2 3; do
	rm -rf "$tmp/put"
	read -r _ _ rate < <("$bb" put -dir "$tmp/put" -file "$tmp/initrd")
	put_rates+=("$rate")
	start=$(date +%s.%N)
	sha256sum "$tmp/initrd" >/dev/null
	end=$(date +%s.%N)
	sum_rates+=("$(echo "$size_mib $start $end" | awk '{printf "%.1f", $1*1048576/1e6/($3-$2)}')")
done
rm -rf "$tmp/put"
put_best=$(printf '%s\n' "${put_rates[@]}" | best)
sum_best=$(printf '%s\n' "${sum_rates[@]}" | best)

# The store both servers read.
read -r hex _ _ < <("$bb" put -dir "$tmp/store" -file "$tmp/initrd")
rel=sha256/${hex:0:2}/$hex

exec {mdc_in}< <(sleep infinity) # serve's stdin: it stops when this closes
"$bb" serve -dir "$tmp/store" <&$mdc_in >"$tmp/mdc.url" 2>"$tmp/mdc.log" &
mdc_pid=$!
for _ in $(seq 100); do [ -s "$tmp/mdc.url" ] && break; sleep 0.05; done
mdc_url="$(cat "$tmp/mdc.url")/blobs/sha256/$hex"

port=$("$bb" port)
mkdir -p "$tmp/nginx"
cat >"$tmp/nginx/nginx.conf" <<CONF
worker_processes auto;
pid $tmp/nginx/nginx.pid;
error_log $tmp/nginx/error.log;
events { worker_connections 1024; }
http {
	access_log off;
	sendfile on;
	tcp_nopush on;
	client_body_temp_path $tmp/nginx/body;
	proxy_temp_path $tmp/nginx/proxy;
	fastcgi_temp_path $tmp/nginx/fastcgi;
	uwsgi_temp_path $tmp/nginx/uwsgi;
	scgi_temp_path $tmp/nginx/scgi;
	types { }
	default_type application/octet-stream;
	server {
		listen 127.0.0.1:$port;
		root $tmp/store;
	}
}
CONF
nginx -p "$tmp/nginx" -c "$tmp/nginx/nginx.conf" -g 'daemon off;' 2>"$tmp/nginx/stderr" &
nginx_pid=$!
nginx_url="http://127.0.0.1:$port/$rel"
for _ in $(seq 100); do curl -fsS -o /dev/null -r 0-0 "$nginx_url" 2>/dev/null && break; sleep 0.05; done

echo "bench-blob: serving ${size_mib} MiB, ${secs}s per run, $rounds rounds (mdc $mdc_url, nginx $nginx_url)" >&2
declare -A sum
for c in $clients; do
	sum[mdc$c]=0 sum[nginx$c]=0
	for r in $(seq "$rounds"); do
		for who in mdc nginx; do
			url=mdc_url; [ $who = nginx ] && url=nginx_url
			read -r mibs _ reqs < <("$bb" load -url "${!url}" -c "$c" -t "${secs}s")
			echo "bench-blob: $who c=$c round $r: $mibs MiB/s ($reqs requests)" >&2
			sum[$who$c]=$(echo "${sum[$who$c]} $mibs" | awk '{print $1+$2}')
		done
	done
done

echo
echo "Blob serving, ${size_mib} MiB file, loopback, same file and disk, mean of $rounds runs of ${secs}s ($(nproc) cores):"
echo
echo "| clients | mdc MiB/s | nginx MiB/s | mdc/nginx |"
echo "|---:|---:|---:|---:|"
for c in $clients; do
	echo "${sum[mdc$c]} ${sum[nginx$c]} $rounds $c" |
		awk '{m=$1/$3; n=$2/$3; printf "| %d | %.0f | %.0f | %.2f× |\n", $4, m, n, m/n}'
done
echo
echo "Import of the same file (best of 3, file in the page cache):"
echo
echo "| | MB/s |"
echo "|---|---:|"
echo "| blob.Local.Put (hash + write + fsync + rename) | $put_best |"
echo "| sha256sum | $sum_best |"
echo "$put_best $sum_best" | awk '{printf "| ratio Put/sha256sum | %.2f× |\n", $1/$2}'
