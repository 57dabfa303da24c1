# A GPU node: dia-node with libtorch and the CUDA libraries of the torch wheel it was built
# against, laid out as the wheel lays them out (torch/lib finds nvidia/*/lib by relative rpath).
# The NVIDIA driver comes from the host at run time (the NVIDIA container toolkit; on
# Kubernetes the device plugin behind `nvidia.com/gpu`). Built by scripts/build-images.sh from a
# context it stages: the release binary, site-packages/{torch/lib,nvidia} and an empty `state/`.
ARG BASE=debian:bookworm-slim
FROM ${BASE}
COPY site-packages /opt/dia/site-packages
COPY dia-node /usr/local/bin/dia-node
# An unprivileged user; checkpoints from the hub land in HF_HOME (/models, its own): mount a
# volume there to keep them across restarts.
COPY --chown=65532:65532 state /models
USER 65532:65532
ENV LD_LIBRARY_PATH=/opt/dia/site-packages/torch/lib \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    HF_HOME=/models
# Metrics on 0.0.0.0:9091; the device, weights and control plane from `serve`'s defaults or
# its variables (DEVICE, DIA_WEIGHTS, CONTROL_PLANE_URL, …), which flags here would override.
EXPOSE 9091
ENTRYPOINT ["/usr/local/bin/dia-node"]
CMD ["serve"]
