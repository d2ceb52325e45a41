# Container image of nydus-exporter (the CLI today; the exporter daemon when it lands).
# Build: docker build -t nydus-exporter .    Run: docker run --rm nydus-exporter pack --help

# ---- build: wheels for the package and its dependencies ----------------------------------
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY nydus_exporter ./nydus_exporter
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install . \
 && /opt/venv/bin/nydus-exporter --help >/dev/null

# ---- runtime: the virtualenv only, run as an unprivileged user ---------------------------
FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
COPY --from=build /opt/venv /opt/venv
RUN groupadd --system --gid 10001 nydus \
 && useradd --system --uid 10001 --gid nydus --home-dir /var/lib/nydus-exporter --create-home nydus
USER 10001:10001
WORKDIR /var/lib/nydus-exporter
ENTRYPOINT ["nydus-exporter"]
CMD ["--help"]
