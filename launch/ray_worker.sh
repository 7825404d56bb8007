#!/usr/bin/env bash
# Join a worker node to the Ray head: launch/ray_worker.sh HEAD_IP:PORT [NODE_IP]
set -euo pipefail
ADDR=${1:?usage: ray_worker.sh HEAD_IP:PORT [NODE_IP]}
NODE_IP=${2:-$(hostname -I | awk '{print $1}')}
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}
export RAY_USAGE_STATS_ENABLED=0
ray start --address="$ADDR" --node-ip-address="$NODE_IP" ${RAY_WORKER_EXTRA_ARGS:-}
