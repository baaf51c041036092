#!/bin/sh
# join.sh: the ipfs role's join hook (/etc/mdc/join in the role image).
# mdc-agent runs it as `join.sh ROLE_CONFIG_JSON` after writing the swarm
# key, the RPC token file and the env file. It initialises the kubo
# repository once, applies mdc's settings, (re)starts the daemon, and prints
# the evidence as its last line: {"peer_id","addrs","rpc"}.
# Needs: ipfs (kubo 0.42), jq, curl, ip (iproute2 or busybox).
#
# Knobs for an image or a test (all optional):
#   MDC_IPFS_BIN           the ipfs binary (default: ipfs on PATH)
#   MDC_IPFS_START         command that (re)starts the daemon, e.g.
#                          "systemctl restart ipfs"; default: ipfs daemon,
#                          detached, its PID in $IPFS_PATH/daemon.pid
#   MDC_IPFS_SWARM_ADDRS   JSON array replacing Addresses.Swarm  } several
#   MDC_IPFS_API_ADDR      multiaddr replacing Addresses.API     } nodes on
#   MDC_IPFS_GATEWAY_ADDR  JSON value replacing Addresses.Gateway} one host
#   MDC_IPFS_RPC_HOST      the address mdc reaches the RPC on (default: the
#                          source address of the route to mdc, whose host in
#                          MDC_URL must then be an IP address)
# No secret is put on a command line: settings are merged with jq from the
# config file, and curl reads the Authorization header from a 0600 file.
set -eu

cfg=${1:-${MDC_ROLE_CONFIG:?no role configuration}}
ipfs=${MDC_IPFS_BIN:-ipfs}
repo=$(jq -er .repo "$cfg")
export IPFS_PATH="$repo"
# The daemon's environment (LIBP2P_FORCE_PNET=1 …).
eval "$(jq -r '.env | to_entries[] | "export \(.key)=\(.value|@sh)"' "$cfg")"

if [ ! -f "$repo/config" ]; then
	"$ipfs" init --empty-repo >&2
fi

# Merge the settings into the config file (the daemon is restarted below).
umask 077
jq --slurpfile rc "$cfg" \
	--arg swarm "${MDC_IPFS_SWARM_ADDRS:-}" --arg api "${MDC_IPFS_API_ADDR:-}" --arg gw "${MDC_IPFS_GATEWAY_ADDR:-}" '
	reduce $rc[0].settings[] as $s (.; setpath($s.key | split("."); $s.value))
	| if $swarm != "" then .Addresses.Swarm = ($swarm | fromjson) else . end
	| if $api != "" then .Addresses.API = $api else . end
	| if $gw != "" then .Addresses.Gateway = ($gw | fromjson) else . end
' "$repo/config" >"$repo/config.mdc"
mv "$repo/config.mdc" "$repo/config"

hdr="$repo/.mdc-auth-header"
printf 'Authorization: Bearer %s\n' "$(sed 's/^bearer://' "$(jq -er .api_auth_file "$cfg")")" >"$hdr"
api=$(jq -er '.Addresses.API' "$repo/config")
port=${api##*/}
base="http://127.0.0.1:$port/api/v0"
rpc() { curl -fsS -X POST -H "@$hdr" "$base/$1"; }

if [ -n "${MDC_IPFS_START:-}" ]; then
	sh -c "$MDC_IPFS_START" >&2
else
	if [ -f "$repo/daemon.pid" ] && kill -0 "$(cat "$repo/daemon.pid")" 2>/dev/null; then
		rpc shutdown >/dev/null 2>&1 || true
		while kill -0 "$(cat "$repo/daemon.pid")" 2>/dev/null; do sleep 0.2; done
	fi
	setsid "$ipfs" daemon >"$repo/daemon.log" 2>&1 </dev/null &
	echo $! >"$repo/daemon.pid"
fi

i=0
until rpc id >/dev/null 2>&1; do
	i=$((i + 1))
	[ $i -lt 300 ] || { echo "join: kubo RPC not up after 60 s" >&2; exit 1; }
	sleep 0.2
done

# kubo 0.42's bitswap never sees peers connected while the daemon started:
# connect to the joined nodes again now that it runs.
jq -r '.reconnect[]?' "$cfg" | while read -r addr; do
	rpc "swarm/disconnect?arg=/p2p/${addr##*/}" >/dev/null 2>&1 || true
	rpc "swarm/connect?arg=$addr" >/dev/null || echo "join: cannot connect to $addr" >&2
done

host=${MDC_IPFS_RPC_HOST:-}
if [ -z "$host" ]; then
	mdc=${MDC_URL:?no MDC_URL to find the route to mdc}
	mdc=${mdc#*://}
	mdc=${mdc%%/*}
	case $mdc in
	\[*) mdc=${mdc#\[} mdc=${mdc%%]*} ;;
	*) mdc=${mdc%:*} ;;
	esac
	host=$(ip route get "$mdc" | sed -nE 's/.* src ([^ ]+).*/\1/p' | head -n 1)
fi
case $host in *:*) rpchost="[$host]" ;; *) rpchost=$host ;; esac
rpc id | jq -c --arg rpc "http://$rpchost:$port" \
	'{peer_id: .ID, addrs: [.Addresses[] | select(test("/tcp/[0-9]+/p2p/"))], rpc: $rpc}'
