#!/usr/bin/env bash
# Starts the whole system locally: the control plane (embedded SQLite in data/) on :8080 and one
# node that joins it. The node runs Dia 1.6B (0626) and the 44.1 kHz DAC from the Hugging Face hub
# at their pinned revisions, on the GPU where libtorch sees one (bf16) and on the CPU otherwise.
# Where the hub cannot be reached, it says so and serves a tiny model with random weights that
# dia-node makes itself (noise, not speech), so the whole path can still be tried.
# With Whisper base (.venv/whisper-base-ct2, from setup.sh) the node transcribes too.
# DIA_WEIGHTS / DAC_WEIGHTS name a folder, a hub id or `tiny-random` (DIA_WEIGHTS=none: no Dia);
# WHISPER_WEIGHTS a Whisper folder or hub id; DEVICE, DTYPE, PORT, BOOTSTRAP_API_KEY,
# DATABASE_URL change the rest. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --release -p control-plane -p node
mkdir -p data
export BOOTSTRAP_API_KEY="${BOOTSTRAP_API_KEY:-dia_local_key}"
export NODE_JOIN_TOKENS="${NODE_JOIN_TOKENS:-local-join-token}"
port="${PORT:-8080}"
# The fallback is for the defaults only: weights named on purpose are never swapped for noise.
fallback=()
[ -n "${DIA_WEIGHTS:-}${DAC_WEIGHTS:-}" ] || fallback=(--tiny-random-if-offline)
# The node reads WHISPER_WEIGHTS itself; without it, setup's Whisper base where it is there.
whisper=()
if [ -z "${WHISPER_WEIGHTS:-}" ] && [ -d .venv/whisper-base-ct2 ]; then
  whisper=(--whisper .venv/whisper-base-ct2)
fi
trap 'kill $(jobs -p) 2>/dev/null' EXIT
./target/release/control-plane --listen "127.0.0.1:$port" \
  --metrics-addr "127.0.0.1:${METRICS_PORT:-9090}" \
  --database-url "${DATABASE_URL:-sqlite://data/control-plane.db}" &
./target/release/dia-node serve --control-plane "ws://127.0.0.1:$port/v1/nodes/connect" \
  --join-token "${NODE_JOIN_TOKENS%%,*}" --device "${DEVICE:-auto}" "${fallback[@]}" "${whisper[@]}" \
  --metrics-addr "127.0.0.1:${NODE_METRICS_PORT:-9091}" &
cat <<MSG

Control plane on http://127.0.0.1:$port (API key: $BOOTSTRAP_API_KEY); the node joins once its
model is loaded (GET /v1/models lists it). Try:
  curl http://127.0.0.1:$port/v1/voice/generations -H "Authorization: Bearer $BOOTSTRAP_API_KEY" \\
    -H "Content-Type: application/json" \\
    -d '{"input": "[S1] Hello! Welcome to the show.\\n[S2] Thanks for having me."}' --output dialogue.wav

MSG
# Either one exiting (a port in use, a checkpoint that cannot load) ends the other too.
wait -n
