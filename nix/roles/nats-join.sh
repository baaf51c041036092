#!/usr/bin/env bash
# mdc join hook, role nats: write the nats-server configuration for the
# cluster mdc names and start the server. Run by mdc-agent with the role
# configuration (JSON, on tmpfs) as $1:
#   {"server_name": "nats-1", "cluster_name": "mdc",
#    "routes": ["nats-route://10.0.0.7:6222"]}
set -euo pipefail
config=${1:-${MDC_ROLE_CONFIG:?usage: join ROLE-CONFIG.json}}

# @json quotes the values for nats.conf, which reads JSON strings and arrays.
name=$(jq -er '.server_name | @json' "$config")
cluster=$(jq -er '.cluster_name // "mdc" | @json' "$config")
routes=$(jq -ec '.routes // []' "$config")

umask 077
mkdir -p /run/nats /var/lib/nats
cat >/run/nats/nats.conf <<CONF
server_name: $name
listen: 0.0.0.0:4222
http: 0.0.0.0:8222
jetstream {
  store_dir: /var/lib/nats
}
cluster {
  name: $cluster
  listen: 0.0.0.0:6222
  routes: $routes
}
CONF
nats-server --config /run/nats/nats.conf -t

if ! systemctl is-active --quiet nats-server; then
	systemd-run --unit=nats-server --property=Restart=on-failure \
		"$(command -v nats-server)" --config /run/nats/nats.conf
fi
