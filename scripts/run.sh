#!/usr/bin/env bash
# Runs one Dia generation end to end on the tiny fixture weights (no model hub needed) and writes
# out.wav. Extra arguments go to `dia-node synth` (e.g. --text "[S1] ..." --seed 7).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo run --release -p node --bin dia-node -- synth \
  --weights "${DIA_WEIGHTS:-../shared/fixtures/dia-tiny}" \
  --dac "${DAC_WEIGHTS:-../shared/fixtures/dac-tiny}" \
  --text "[S1] Hello! Welcome to the show. [S2] Thanks for having me." \
  --out out.wav "$@"
