#!/usr/bin/env bash
# Before mdc-agent: make this node's NATS user key once per boot. The seed
# stays on the node (0600); the public key goes into the agent's report, so
# mdc can mint a user JWT for it (docs/roles-nats.md).
set -euo pipefail
umask 077
install -d -m 0700 /var/lib/mdc/nats /run/mdc
seed=/var/lib/mdc/nats/user.nk
if [ ! -s "$seed" ]; then
	nk -gen user >"$seed.tmp"
	mv "$seed.tmp" "$seed"
fi
pub=$(nk -inkey "$seed" -pubout)
report=/run/mdc/report.json
[ -s "$report" ] || echo '{}' >"$report"
jq --arg k "$pub" '. + {nkey: $k}' "$report" >"$report.tmp"
mv "$report.tmp" "$report"
