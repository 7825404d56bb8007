#!/usr/bin/env bash
# Simulate a 2-node Ray cluster on one machine (two raylets on loopback addresses with their own
# ports and temp dirs), as the multi-node test does. Usage:
#   launch/simulate_two_nodes.sh up      # prints the address to pass to --address
#   RAY_AUTH_TOKEN=... xclass train --config configs/debug/tiny_cpu.yaml --workers 2 --address 127.0.0.2:6390
#   launch/simulate_two_nodes.sh down    # `ray stop` (stops every Ray process on this machine)
set -euo pipefail
# Token auth as on a real cluster: both raylets and the driver share RAY_AUTH_TOKEN (set one first).
export RAY_AUTH_MODE=token RAY_USAGE_STATS_ENABLED=0
: "${RAY_AUTH_TOKEN:?export RAY_AUTH_TOKEN=\$(python3 -c 'import secrets; print(secrets.token_hex(32))') first}"
RAY=${RAY:-ray}
TMP2=${TMP2:-/tmp/xclass-ray-node2}
case "${1:-up}" in
up)
  $RAY start --head --node-ip-address=127.0.0.2 --port=6390 --num-cpus=1 --include-dashboard=false \
    --object-store-memory=150000000 --node-manager-port=6391 --object-manager-port=6392 \
    --min-worker-port=11000 --max-worker-port=11999 --disable-usage-stats
  mkdir -p "$TMP2"
  $RAY start --address=127.0.0.2:6390 --node-ip-address=127.0.0.3 --num-cpus=1 \
    --object-store-memory=150000000 --node-manager-port=6393 --object-manager-port=6394 \
    --min-worker-port=12000 --max-worker-port=12999 --dashboard-agent-listen-port=52366 \
    --dashboard-agent-grpc-port=52367 --metrics-export-port=52368 --runtime-env-agent-port=52369 \
    --temp-dir="$TMP2" --disable-usage-stats
  echo "cluster address: 127.0.0.2:6390" ;;
down)
  $RAY stop --force ;;
*) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
