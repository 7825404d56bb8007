#!/usr/bin/env bash
# Start the Ray head node of an xclass cluster. Run on the head machine:
#   launch/ray_head.sh [NODE_IP] [PORT]
# Then on every other node: launch/ray_worker.sh HEAD_IP:PORT [NODE_IP]
# And submit from any node (the run directory must be on storage all nodes share):
#   xclass train --config configs/face/gpu_recipe.yaml --workers 16 --gpu --address HEAD_IP:PORT
set -euo pipefail
NODE_IP=${1:-$(hostname -I | awk '{print $1}')}
PORT=${2:-6379}
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}   # must be identical on every node and the driver
export RAY_USAGE_STATS_ENABLED=0
ray start --head --node-ip-address="$NODE_IP" --port="$PORT" --include-dashboard=false \
  ${RAY_HEAD_EXTRA_ARGS:-}
echo "head up at $NODE_IP:$PORT; join with: launch/ray_worker.sh $NODE_IP:$PORT"
