# Container image of nydus-exporter: the exporter daemon (default command) and the CLI.
#
#   docker build -t nydus-exporter .
#   docker run -d --name nydus-exporter --stop-timeout 45 \
#       -v nydus-exporter-sock:/run/nydus-exporter -v nydus-exporter-state:/var/lib/nydus-exporter \
#       -p 127.0.0.1:9810:9810 nydus-exporter
#   docker run --rm nydus-exporter pack --help        # any other subcommand replaces `serve ...`
#
# The daemon listens on a unix socket in /run/nydus-exporter (share that directory with
# buildkitd, or with a client container) and serves /metrics and /healthz over HTTP on 9810.
# See deploy/README.md for the configuration keys, the probes and the Kubernetes sidecar.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: the package and its dependencies in a virtualenv ---------------------------------
# Every dependency ships manylinux wheels for amd64 and arm64 (grpcio, zstandard, blake3, lz4,
# isal, google-crc32c, aiohttp), so no compiler is needed here either.
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
RUN python -m venv /opt/venv
COPY pyproject.toml README.md ./
# The gRPC modules (nydus_exporter/api/exporter_pb2*.py) are generated from proto/ and
# committed, so the image needs neither protoc nor the proto files at build time.
COPY nydus_exporter ./nydus_exporter
# Installed non-editable, bytecode compiled here: the runtime root filesystem may be read-only.
RUN /opt/venv/bin/pip install . \
 && /opt/venv/bin/pip check
# Fail the build, not the pod, when the daemon cannot start: the generated stubs, the health
# and reflection services, the metrics library and the `serve` / `export --addr` commands.
RUN /opt/venv/bin/python -c "import nydus_exporter.api.exporter_pb2_grpc, nydus_exporter.service.server, nydus_exporter.service.worker, grpc_health.v1.health_pb2" \
 && /opt/venv/bin/nydus-exporter serve --help >/dev/null \
 && /opt/venv/bin/nydus-exporter export --help >/tmp/export-help \
 && grep -q -e '--addr' /tmp/export-help

# ---- runtime: the virtualenv, the health probe and an unprivileged user ----------------------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="nydus-exporter" \
      org.opencontainers.image.description="BuildKit exporter daemon and CLI that write Nydus (RAFS v6) images" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/var/lib/nydus-exporter
# The base image already carries ca-certificates (registry TLS uses the system store); the
# check keeps it that way if the base changes.
RUN test -s /etc/ssl/certs/ca-certificates.crt \
 && groupadd --gid 10001 nydus \
 && useradd --uid 10001 --gid 10001 --home-dir /var/lib/nydus-exporter --no-create-home \
        --shell /usr/sbin/nologin nydus \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/nydus-exporter \
 && install -d -o 10001 -g 10001 -m 0755 /run/nydus-exporter
COPY --from=build /opt/venv /opt/venv
COPY deploy/docker/healthcheck.py /usr/local/lib/nydus-exporter/healthcheck.py
USER 10001:10001
WORKDIR /var/lib/nydus-exporter
# Spools, staging layouts and the converted-layer cache (ServiceConfig.state_dir).
VOLUME ["/var/lib/nydus-exporter"]
# HTTP /metrics (Prometheus text) and /healthz. gRPC is on the unix socket only: a tcp://
# listener has no authentication unless --tls-cert/--tls-key/--tls-client-ca are given.
EXPOSE 9810
# grpc.health.v1 Check of "nydus.exporter.v1.Exporter" over the socket: unhealthy while the
# daemon is not up or drains. (Unhealthy too when the container runs another subcommand.)
HEALTHCHECK --interval=30s --timeout=10s --start-period=20s --retries=3 \
    CMD ["/opt/venv/bin/python", "/usr/local/lib/nydus-exporter/healthcheck.py", "--addr", "unix:///run/nydus-exporter/exporter.sock", "--timeout", "5"]
# SIGTERM drains: running exports get grace_period (30 s) before they are cancelled, so give
# `docker stop` more than that (--stop-timeout 45 above).
STOPSIGNAL SIGTERM
ENTRYPOINT ["nydus-exporter"]
CMD ["serve", "--listen", "unix:///run/nydus-exporter/exporter.sock", "--http", "0.0.0.0:9810", "--state-dir", "/var/lib/nydus-exporter", "--chunk-store"]
