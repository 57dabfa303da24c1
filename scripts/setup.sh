#!/usr/bin/env bash
# Installs what building and testing need, idempotently: libtorch (the torch==2.11.0 wheel, in a
# project-local .venv; .venv/libtorch points at it), the Debian packages listed in
# scripts/system-packages.txt, the Python tools the tests run, and cargo-nextest.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
while read -r pkg; do
  [ -z "$pkg" ] || dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done < <(grep -v '^#' scripts/system-packages.txt)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq && $sudo apt-get install -y -qq "${missing[@]}"
fi
if [ ! -e .venv/libtorch/lib/libtorch_cpu.so ]; then
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check torch==2.11.0
  torch_dir=$(.venv/bin/python -c 'import importlib.util as u; print(u.find_spec("torch").submodule_search_locations[0])')
  ln -sfn "${torch_dir#"$PWD/.venv/"}" .venv/libtorch
fi
# Python tools the tests run: the OpenAPI validator and a client generator (with ruff, which
# formats its output); the Kubernetes schema validator.
.venv/bin/pip install --quiet --disable-pip-version-check \
  openapi-spec-validator==0.9.0 openapi-python-client==0.29.1 kubernetes-validate==1.37.0
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install --locked cargo-nextest
fi
