#!/usr/bin/env bash
# Builds the two images the Kubernetes manifests run, dia-serve/control-plane and
# dia-serve/dia-node, from this checkout: the release binaries, and for the node the libtorch and
# CUDA libraries of the torch wheel setup.sh installs (CUDA 13: the GPU hosts need an NVIDIA
# driver that supports it). CONTAINER_TOOL picks docker (the default), podman or buildah;
# TAG the tag (latest); BASE_IMAGE the base (debian:bookworm-slim).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --release -p control-plane -p node
tool="${CONTAINER_TOOL:-docker}"
tag="${TAG:-latest}"
base=()
[ -z "${BASE_IMAGE:-}" ] || base=(--build-arg "BASE=$BASE_IMAGE")
# Each image's build context holds what it copies and nothing else.
stage=target/images
rm -rf "$stage"
mkdir -p "$stage"/{control-plane,node}/state "$stage/node/site-packages/torch"
cp target/release/control-plane "$stage/control-plane/"
cp target/release/dia-node "$stage/node/"
torch=$(readlink -f .venv/libtorch)
# Hard links where the file system allows: the libraries take several GB.
for dir in "$torch/lib" "$(dirname "$torch")/nvidia"; do
  dest="$stage/node/site-packages/${dir#"$(dirname "$torch")/"}"
  cp -al "$dir" "$dest" 2>/dev/null || cp -a "$dir" "$dest"
done
"$tool" build "${base[@]}" -f docker/control-plane.Dockerfile -t "dia-serve/control-plane:$tag" \
  "$stage/control-plane"
"$tool" build "${base[@]}" -f docker/node.Dockerfile -t "dia-serve/dia-node:$tag" "$stage/node"
echo "built dia-serve/control-plane:$tag and dia-serve/dia-node:$tag"
