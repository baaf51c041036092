#!/bin/sh
# join.sh: the nats role's join hook (/etc/mdc/join in the role image).
# Before mdc-agent started, the image made the node's user nkey: the seed in
# seed_file (0600), the public key in /run/mdc/report.json as "nkey". The
# agent then wrote the server configuration and the user JWT mdc served, and
# runs this as `join.sh ROLE_CONFIG_JSON`. It makes the node's creds file,
# (re)starts nats-server, waits until it serves, and prints the evidence as
# its last line: {"server_name": "…"}.
# Needs: nats-server 2.10 or later, jq, curl.
#
# Knobs for an image or a test (all optional):
#   MDC_NATS_BIN    the nats-server binary (default: nats-server on PATH)
#   MDC_NATS_START  command that (re)starts the server, e.g.
#                   "systemctl restart nats"; default: nats-server, detached,
#                   its PID in pid_file
#   MDC_NATS_ROOT   a directory standing in for / (a test's node tree): the
#                   role's paths, and those inside the server configuration,
#                   are taken under it
# No secret goes on a command line: the seed and JWT are read from files
# by the shell's builtins.
set -eu

cfg=${1:-${MDC_ROLE_CONFIG:?no role configuration}}
root=${MDC_NATS_ROOT:-}
bin=${MDC_NATS_BIN:-nats-server}
get() { jq -er "$1" "$cfg"; }
name=$(get .server_name)
conf=$root$(get .config_file)
jwtf=$root$(get .user_jwt_file)
seedf=$root$(get .seed_file)
creds=$root$(get .creds_file)
pidf=$root$(get .pid_file)
monitor=$(get .monitor_url)

umask 077
[ -s "$seedf" ] || { echo "join: no user seed in $seedf: the image makes it with the key it reports" >&2; exit 1; }
mkdir -p "$(dirname "$creds")" "$(dirname "$pidf")"
# read fails on a last line without a newline; the value is still read.
read -r jwt <"$jwtf" || [ -n "$jwt" ]
read -r seed <"$seedf" || [ -n "$seed" ]
printf -- '-----BEGIN NATS USER JWT-----\n%s\n------END NATS USER JWT------\n\n-----BEGIN USER NKEY SEED-----\n%s\n------END USER NKEY SEED------\n' \
	"$jwt" "$seed" >"$creds.tmp"
mv "$creds.tmp" "$creds"

run=$conf
if [ -n "$root" ]; then
	# The server's own directories, under the stand-in root too.
	run=$conf.root
	sed -E "s#^(  (store_)?dir: \")/#\1$root/#" "$conf" >"$run"
fi

if [ -n "${MDC_NATS_START:-}" ]; then
	sh -c "$MDC_NATS_START" >&2
else
	if [ -f "$pidf" ] && kill -0 "$(cat "$pidf")" 2>/dev/null; then
		kill "$(cat "$pidf")"
		while kill -0 "$(cat "$pidf")" 2>/dev/null; do sleep 0.2; done
	fi
	setsid "$bin" -c "$run" >"$(dirname "$pidf")/nats-server.log" 2>&1 </dev/null &
	echo $! >"$pidf"
fi

i=0
until curl -fsS "$monitor/varz" >/dev/null 2>&1; do
	i=$((i + 1))
	[ $i -lt 150 ] || { echo "join: nats-server not serving $monitor after 30 s" >&2; exit 1; }
	sleep 0.2
done
jq -cn --arg name "$name" '{server_name: $name}'
