# nydus-exporter developer entry points. `make run` and `make test` work on a fresh Debian 12
# machine (as root, or with sudo for the Debian packages).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUN_DIR := .state/run
DAEMON_DIR := .state/daemon
PYTEST_ARGS ?=
# make run's /metrics and /healthz endpoint (another port: make run METRICS_ADDR=127.0.0.1:9465)
METRICS_ADDR ?= 127.0.0.1:9464

# Debian packages the tests and the benchmark use:
#   erofs-utils      mkfs.erofs / fsck.erofs / dump.erofs: independent readers of our images
#   docker-registry  a local OCI registry for the push tests
#   skopeo, umoci    independent OCI clients (copy, inspect, unpack images)
#   debootstrap      builds the realistic rootfs layer of bench/pack.py
#   tar, gzip, zstd, xz-utils  reference archivers; util-linux, mount (losetup, mount, dmesg);
#   procps (pgrep: no conversion worker outlives its job); kmod (modprobe erofs)
DEB_PACKAGES := erofs-utils docker-registry skopeo umoci debootstrap tar gzip zstd xz-utils util-linux mount procps kmod \
	ca-certificates

.PHONY: all venv system-deps test lint proto run sample bench bench-export bench-push bench-daemon bench-dedup \
	bench-rebuild bench-concurrency bench-all clean distclean

all: test

# Install the missing Debian packages only (apt-get update only when something is missing).
system-deps:
	@missing=""; \
	for pkg in $(DEB_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' "$$pkg" 2>/dev/null | grep -q '^install ok installed$$' \
			|| missing="$$missing $$pkg"; \
	done; \
	if ! $(PYTHON) -c 'import ensurepip, venv' >/dev/null 2>&1; then missing="$$missing python3-venv"; fi; \
	if [ -z "$$missing" ]; then echo "system-deps: all present"; exit 0; fi; \
	echo "system-deps: installing$$missing"; \
	if [ "$$(id -u)" -eq 0 ]; then SUDO=""; \
	elif command -v sudo >/dev/null 2>&1; then SUDO="sudo"; \
	else echo "system-deps: need root or sudo to install:$$missing" >&2; exit 1; fi; \
	$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q && \
	$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing

venv: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 required, $(PYTHON) is " + sys.version)'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# Regenerate the committed gRPC modules (nydus_exporter/api/) after changing proto/.
proto: venv
	$(BIN)/python scripts/gen_proto.py

test: system-deps venv
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/pytest $(PYTEST_ARGS)

# The main job on embedded defaults: the exporter daemon, with its unix socket, state dir and
# default output layouts under .state/daemon (Ctrl-C stops it, draining running exports).
# Export against it from another shell, e.g.:
#   make sample
#   .venv/bin/nydus-exporter export --addr unix://$(CURDIR)/.state/daemon/exporter.sock \
#       tar:.state/run/sample.tar --output type=nydus,push=false,oci-layout=$(CURDIR)/.state/daemon/out,name=sample:1
run: system-deps venv
	mkdir -p $(DAEMON_DIR)
	$(BIN)/nydus-exporter serve --state-dir $(CURDIR)/$(DAEMON_DIR) --http $(METRICS_ADDR) --log-format console \
		--chunk-store

# A small sample layer and an in-process pack + inspect of it (no daemon needed).
sample: venv
	mkdir -p $(RUN_DIR)
	$(BIN)/python scripts/sample_layer.py $(RUN_DIR)/sample.tar
	$(BIN)/nydus-exporter pack $(RUN_DIR)/sample.tar -o $(RUN_DIR)/sample.blob
	$(BIN)/nydus-exporter inspect $(RUN_DIR)/sample.blob

bench: system-deps venv
	$(BIN)/python bench/pack.py $(BENCH_ARGS)

bench-export: system-deps venv
	$(BIN)/python bench/export.py $(BENCH_ARGS)

bench-push: system-deps venv
	$(BIN)/python bench/push.py $(BENCH_ARGS)

# gRPC overhead (daemon vs in-process) and concurrent exports; not named grpc.py, which would
# shadow the grpc package on sys.path.
bench-daemon: system-deps venv
	$(BIN)/python bench/daemon.py $(BENCH_ARGS)

# Bytes uploaded for three image versions with/without the chunk store (needs network for apt).
bench-dedup: system-deps venv
	$(BIN)/python bench/dedup.py $(BENCH_ARGS)

# Export+push against export+skopeo copy, and a chunk-store rebuild against the first export.
bench-rebuild: system-deps venv
	$(BIN)/python bench/rebuild.py $(BENCH_ARGS)

# 8 concurrent exports of different 200 MB layers through one daemon (throughput, RSS); not named
# concurrent.py, which would shadow the concurrent package on sys.path.
bench-concurrency: system-deps venv
	$(BIN)/python bench/concurrency.py $(BENCH_ARGS)

# Every benchmark, then one table (what, now, target); BENCH_ARGS=--quick: one run of each.
bench-all: system-deps venv
	$(BIN)/python bench/all.py $(BENCH_ARGS)

clean:
	rm -rf .state build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

# Also drop the virtualenv and the cached benchmark layers.
distclean: clean
	rm -rf $(VENV) bench/.cache
