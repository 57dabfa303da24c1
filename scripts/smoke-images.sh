#!/usr/bin/env bash
# Runs the images build-images.sh made on this machine's loopback and makes one generation
# through them: the control plane on its SQLite, a node on the CPU with tiny random weights (no
# hub needed). Exits non-zero, with both containers' logs, where any step fails.
# CONTAINER_TOOL and TAG as build-images.sh; PORT (18080) and the two above it are used;
# RUN_ARGS adds options to both `run`s (e.g. ulimits a sandbox needs).
set -euo pipefail
tool="${CONTAINER_TOOL:-docker}"
tag="${TAG:-latest}"
port="${PORT:-18080}"
key=dia_smoke_key
read -r -a extra <<<"${RUN_ARGS:-}"
names=(dia-smoke-control-plane dia-smoke-node)
cleanup() { "$tool" rm -f "${names[@]}" >/dev/null 2>&1 || true; }
fail() {
  echo "smoke test failed: $1" >&2
  for name in "${names[@]}"; do echo "--- $name" >&2; "$tool" logs "$name" >&2 || true; done
  exit 1
}
trap cleanup EXIT
cleanup
# Waits up to $1 seconds for the command after it to succeed.
wait_for() {
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 1
  done
}
"$tool" run -d --name dia-smoke-control-plane --network host "${extra[@]}" \
  -e BOOTSTRAP_API_KEY=$key -e NODE_JOIN_TOKENS=smoke-join "dia-serve/control-plane:$tag" \
  --listen "127.0.0.1:$port" --metrics-addr "127.0.0.1:$((port + 1))" >/dev/null
wait_for 60 curl -fsS "http://127.0.0.1:$port/readyz" || fail "the control plane is not ready"
"$tool" run -d --name dia-smoke-node --network host "${extra[@]}" "dia-serve/dia-node:$tag" \
  serve --control-plane "ws://127.0.0.1:$port/v1/nodes/connect" --join-token smoke-join \
  --device cpu --weights tiny-random --dac tiny-random \
  --metrics-addr "127.0.0.1:$((port + 2))" >/dev/null
models() { curl -fsS "http://127.0.0.1:$port/v1/models" -H "Authorization: Bearer $key"; }
joined() { models | grep -q dia-tiny-random; }
wait_for 120 joined || fail "the node did not join"
out=$(mktemp --suffix .wav)
status=$(curl -sS -o "$out" -w '%{http_code}' "http://127.0.0.1:$port/v1/voice/generations" \
  -H "Authorization: Bearer $key" -H "Content-Type: application/json" \
  -d '{"input": "[S1] Hello from the images.", "max_new_tokens": 256}')
[ "$status" = 200 ] || fail "the generation answered $status: $(head -c 500 "$out")"
[ "$(head -c 4 "$out")" = RIFF ] || fail "the generation is not a WAV"
curl -fsS "http://127.0.0.1:$((port + 2))/metrics" | grep -q '^dia_node' ||
  fail "the node's /metrics has no dia_node metrics"
echo "images work: a $(stat -c %s "$out")-byte WAV from dia-serve/control-plane:$tag and dia-serve/dia-node:$tag"
rm -f "$out"
