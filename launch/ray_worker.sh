#!/usr/bin/env bash
# Join a worker node to the Ray head: launch/ray_worker.sh HEAD_IP:PORT [NODE_IP]
# Needs the head's token: ~/.ray/auth_token copied from the head, or RAY_AUTH_TOKEN(_PATH).
set -euo pipefail
ADDR=${1:?usage: ray_worker.sh HEAD_IP:PORT [NODE_IP]}
NODE_IP=${2:-$(hostname -I | awk '{print $1}')}
export RAY_AUTH_MODE=token
export RAY_USAGE_STATS_ENABLED=0
if [ -z "${RAY_AUTH_TOKEN:-}" ] && [ ! -s "${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}" ]; then
  echo "no Ray auth token: copy the head's ~/.ray/auth_token here first (docs/security.md)" >&2
  exit 2
fi
ray start --address="$ADDR" --node-ip-address="$NODE_IP" \
  --node-manager-port=6380 --object-manager-port=6381 --runtime-env-agent-port=6382 \
  --dashboard-agent-grpc-port=6383 --dashboard-agent-listen-port=6384 --metrics-export-port=6385 \
  --min-worker-port=10002 --max-worker-port=10999 ${RAY_WORKER_EXTRA_ARGS:-}
