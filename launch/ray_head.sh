#!/usr/bin/env bash
# Start the Ray head node of an xclass cluster. Run on the head machine:
#   launch/ray_head.sh [NODE_IP] [PORT]
# Then on every other node: launch/ray_worker.sh HEAD_IP:PORT [NODE_IP]
# And submit from any node (the run directory must be on storage all nodes share):
#   xclass train --config configs/face/gpu_recipe.yaml --workers 16 --gpu --address HEAD_IP:PORT
# Security (docs/security.md): Ray token authentication is on. The head creates the token
# (~/.ray/auth_token, mode 600) if none exists; copy that file to the same path on every node
# and on the submitting machine (or export RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH there).
# Keep the cluster on a private network: only cluster nodes may reach the ports below.
set -euo pipefail
NODE_IP=${1:-$(hostname -I | awk '{print $1}')}
PORT=${2:-6379}
export RAY_AUTH_MODE=token   # must be identical on every node and the driver
export RAY_USAGE_STATS_ENABLED=0
if [ -z "${RAY_AUTH_TOKEN:-}" ] && [ -z "${RAY_AUTH_TOKEN_PATH:-}" ]; then
  (umask 077; ray get-auth-token --generate >/dev/null)
  echo "Ray auth token: ~/.ray/auth_token (copy it to every node and the submitting machine)"
fi
# Fixed ports so a firewall can allow exactly these between cluster nodes (see docs/security.md).
ray start --head --node-ip-address="$NODE_IP" --port="$PORT" --include-dashboard=false \
  --node-manager-port=6380 --object-manager-port=6381 --runtime-env-agent-port=6382 \
  --dashboard-agent-grpc-port=6383 --dashboard-agent-listen-port=6384 --metrics-export-port=6385 \
  --min-worker-port=10002 --max-worker-port=10999 ${RAY_HEAD_EXTRA_ARGS:-}
echo "head up at $NODE_IP:$PORT; join with: launch/ray_worker.sh $NODE_IP:$PORT"
