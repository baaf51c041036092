#!/usr/bin/env bash
# mdc join hook, role ipfs: set up a kubo repository for the private swarm
# mdc names and start the daemon. Run by mdc-agent with the role
# configuration (JSON, on tmpfs) as $1:
#   {"swarm_key": "/key/swarm/psk/1.0.0/\n/base16/\n<64 hex>",
#    "bootstrap": ["/ip4/10.0.0.5/tcp/4001/p2p/12D3Koo..."]}
# The repository lives on tmpfs for now; a later step puts it on a disk.
set -euo pipefail
config=${1:-${MDC_ROLE_CONFIG:?usage: join ROLE-CONFIG.json}}

export IPFS_PATH=/var/lib/ipfs
# Refuse to talk to the public network if the swarm key is missing.
export LIBP2P_FORCE_PNET=1

swarm_key=$(jq -er .swarm_key "$config")
mapfile -t peers < <(jq -r '.bootstrap // [] | .[]' "$config")

umask 077
if [ ! -e "$IPFS_PATH/config" ]; then
	ipfs init --profile server --empty-repo >/dev/null
fi
printf '%s\n' "$swarm_key" >"$IPFS_PATH/swarm.key"
ipfs bootstrap rm --all >/dev/null
for peer in "${peers[@]}"; do
	ipfs bootstrap add "$peer" >/dev/null
done

if ! systemctl is-active --quiet ipfs; then
	systemd-run --unit=ipfs --property=Restart=on-failure \
		--setenv=IPFS_PATH="$IPFS_PATH" --setenv=LIBP2P_FORCE_PNET=1 \
		"$(command -v ipfs)" daemon --migrate=false
fi
