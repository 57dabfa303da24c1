# The control plane: one binary (dashboard and migrations embedded) on Debian slim. Built by
# scripts/build-images.sh from a context it stages: the release binary and an empty `state/`.
ARG BASE=debian:bookworm-slim
FROM ${BASE}
COPY control-plane /usr/local/bin/control-plane
# An unprivileged user; /data (its own) holds the SQLite database where DATABASE_URL names
# none: one replica for a try. Kubernetes sets a PostgreSQL DSN, which replicas share.
COPY --chown=65532:65532 state /data
USER 65532:65532
WORKDIR /data
ENV DATABASE_URL=sqlite:///data/control-plane.db
# Listens on 0.0.0.0:8080, metrics on 0.0.0.0:9090 (its defaults; LISTEN_ADDR, METRICS_ADDR).
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/control-plane"]
