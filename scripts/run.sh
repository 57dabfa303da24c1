#!/usr/bin/env bash
# Starts the whole system locally: the control plane (embedded SQLite in data/) on :8080 and one
# node that joins it. The node runs the tiny fixture weights unless DIA_WEIGHTS / DAC_WEIGHTS name
# a folder or a hub id (e.g. nari-labs/Dia-1.6B-0626 with DEVICE=cuda). Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --release -p control-plane -p node
mkdir -p data
export BOOTSTRAP_API_KEY="${BOOTSTRAP_API_KEY:-dia_local_key}"
export NODE_JOIN_TOKENS="${NODE_JOIN_TOKENS:-local-join-token}"
port="${PORT:-8080}"
trap 'kill $(jobs -p) 2>/dev/null' EXIT
./target/release/control-plane --listen "127.0.0.1:$port" \
  --database-url "${DATABASE_URL:-sqlite://data/control-plane.db}" &
./target/release/dia-node serve --control-plane "ws://127.0.0.1:$port/v1/nodes/connect" \
  --join-token "${NODE_JOIN_TOKENS%%,*}" \
  --weights "${DIA_WEIGHTS:-../shared/fixtures/dia-tiny}" \
  --dac "${DAC_WEIGHTS:-../shared/fixtures/dac-tiny}" \
  --device "${DEVICE:-cpu}" --metrics-addr "127.0.0.1:${NODE_METRICS_PORT:-9091}" &
cat <<MSG

Control plane on http://127.0.0.1:$port (API key: $BOOTSTRAP_API_KEY). Try:
  curl http://127.0.0.1:$port/v1/voice/generations -H "Authorization: Bearer $BOOTSTRAP_API_KEY" \\
    -H "Content-Type: application/json" \\
    -d '{"input": "[S1] Hello! Welcome to the show.\\n[S2] Thanks for having me."}' --output dialogue.wav

MSG
wait
