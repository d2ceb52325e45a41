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
# pytest-xdist workers: one per core (`make test PYTEST_WORKERS=0` runs in one process). Tests are
# handed out one at a time, slow ones first (tests/conftest.py), so the workers finish together.
PYTEST_WORKERS ?= auto
PYTEST := $(BIN)/pytest -n $(PYTEST_WORKERS) --maxschedchunk 1

# Debian packages the daemon and the CLI need (`make run`): CA certificates for registries,
# liblz4 for lz4_block chunks (LZ4_compress_default, the bytes nydus-image writes).
RUNTIME_DEB_PACKAGES := ca-certificates liblz4-1
# What the tests and the benchmark use on top (`make test`, `make system-deps`):
#   erofs-utils      mkfs.erofs / fsck.erofs / dump.erofs: independent readers of our images
#   docker-registry  a local OCI registry for the push tests (the tests start their own on
#                    127.0.0.1; the package's own service is kept stopped and disabled)
#   skopeo, umoci    independent OCI clients (copy, inspect, unpack images)
#   debootstrap      builds the realistic rootfs layer of bench/pack.py
#   tar, gzip, zstd, xz-utils  reference archivers; util-linux, mount (losetup, mount, dmesg);
#   procps (pgrep: no conversion worker outlives its job); kmod (modprobe erofs)
#   runc             runs the RUN steps of nydus-buildkitd's OCI worker (tests/buildkit)
#   containerd       runs a container from an image we pushed (with nydus-snapshotter, tests/interop)
#   pkg-config, libssl-dev, gcc  build the interop tools on the nydus crates (openssl-sys, zstd-sys)
TEST_DEB_PACKAGES := erofs-utils docker-registry skopeo umoci debootstrap tar gzip zstd xz-utils util-linux \
	mount procps kmod runc containerd pkg-config libssl-dev gcc libc6-dev
DEB_PACKAGES := $(RUNTIME_DEB_PACKAGES) $(TEST_DEB_PACKAGES)

# While apt-get installs, a policy-rc.d answering 101 keeps packages from starting services
# (docker-registry would otherwise listen on port 5000 of every interface, containerd would
# start too); an existing policy file is left alone. Overridable for the Makefile's own test.
POLICY_RC_D ?= /usr/sbin/policy-rc.d
SYSTEMD_RUN_DIR ?= /run/systemd/system
REGISTRY_INIT_SCRIPT ?= /etc/init.d/docker-registry
RC_DIR ?= /etc

# The interop tools (tests/interop/, a Cargo workspace on the real nydus crates) go to bin/.
# Cargo's target directory lives outside the clone so repeated runs (and fresh clones) build
# incrementally; CARGO_HOME keeps the crate registry in ~/.cargo as usual.
# The usual install locations of Go (go.dev tarball) and Rust (rustup) are searched after PATH, so
# a shell that never sourced their profile scripts (CI, sudo) still finds them.
export PATH := $(PATH):/usr/local/go/bin:$(HOME)/.cargo/bin
CARGO ?= cargo
INTEROP_DIR := tests/interop
INTEROP_TARGET_DIR ?= $(HOME)/.cache/nydus-exporter/cargo-target
INTEROP_TOOLS := rafs-check rafs-ref-build rafs-ref-merge rafs-mount nydusd
# Go tools for the containerd test: nydus-snapshotter from its published module, cri-pull, and a
# static cat-file for the test image (tests/interop/containerd/go.mod, go.sum committed).
GO ?= go
INTEROP_GO_DIR := tests/interop/containerd

.PHONY: all venv bytecode system-deps runtime-deps registry-service-off interop-tools interop buildkit buildkit-check \
	test check lint proto run sample bench bench-export bench-push bench-metadata bench-daemon bench-dedup \
	bench-buildkit bench-rebuild bench-concurrency bench-all clean distclean

all: test

# Install the missing Debian packages of $(1) only (apt-get update only when something is missing).
define install_debs
	@missing=""; \
	for pkg in $(1); do \
		dpkg-query -W -f='$${Status}\n' "$$pkg" 2>/dev/null | grep -q '^install ok installed$$' \
			|| missing="$$missing $$pkg"; \
	done; \
	if ! $(PYTHON) -c 'import ensurepip, venv' >/dev/null 2>&1; then missing="$$missing python3-venv"; fi; \
	if [ -z "$$missing" ]; then echo "$@: all present"; exit 0; fi; \
	echo "$@: installing$$missing"; \
	if [ "$$(id -u)" -eq 0 ]; then SUDO=""; \
	elif command -v sudo >/dev/null 2>&1; then SUDO="sudo"; \
	else echo "$@: need root or sudo to install:$$missing" >&2; exit 1; fi; \
	policy=""; \
	if [ ! -e "$(POLICY_RC_D)" ]; then \
		printf '#!/bin/sh\n# installed by nydus-exporter make for the length of an apt-get install\nexit 101\n' \
			| $$SUDO tee "$(POLICY_RC_D)" >/dev/null && $$SUDO chmod 755 "$(POLICY_RC_D)" && policy=yes; \
	fi; \
	$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q && \
	$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	status=$$?; \
	if [ -n "$$policy" ]; then $$SUDO rm -f "$(POLICY_RC_D)"; fi; \
	exit $$status
endef

runtime-deps:
	$(call install_debs,$(RUNTIME_DEB_PACKAGES))
	@$(MAKE) --no-print-directory registry-service-off

system-deps:
	$(call install_debs,$(DEB_PACKAGES))
	@$(MAKE) --no-print-directory registry-service-off

# The docker-registry package's own service (port 5000 on every interface, enabled at boot):
# stop and disable it if it is running or enabled, with systemd or sysvinit. Nothing to do
# when the package is absent or the service is already off.
registry-service-off:
	@if [ "$$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	if [ -d "$(SYSTEMD_RUN_DIR)" ] && command -v systemctl >/dev/null 2>&1; then \
		if systemctl cat docker-registry.service >/dev/null 2>&1 \
			&& { systemctl is-enabled --quiet docker-registry.service \
				|| systemctl is-active --quiet docker-registry.service; }; then \
			echo "registry-service-off: stopping and disabling docker-registry.service"; \
			$$SUDO systemctl disable --now docker-registry.service; \
		fi; \
	elif [ -x "$(REGISTRY_INIT_SCRIPT)" ]; then \
		if "$(REGISTRY_INIT_SCRIPT)" status >/dev/null 2>&1; then \
			echo "registry-service-off: stopping docker-registry"; \
			$$SUDO "$(REGISTRY_INIT_SCRIPT)" stop; \
		fi; \
		if ls $(RC_DIR)/rc[2345].d/S*docker-registry >/dev/null 2>&1; then \
			echo "registry-service-off: disabling docker-registry at boot"; \
			$$SUDO update-rc.d docker-registry disable >/dev/null || true; \
		fi; \
	fi

venv: $(STAMP)

# Bytecode for the package, as a pip install writes it: every CLI, worker and test process
# starts from it. Python writes it on first import too, but not when PYTHONDONTWRITEBYTECODE
# is set; then each process compiles every module it imports (~0.3 s a start). Cheap when
# nothing changed.
bytecode: venv
	$(BIN)/python -m compileall -q nydus_exporter

# The package is installed editable in compat mode: a plain path entry, where the default
# import-hook finder adds ~14 ms to every process start.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 required, $(PYTHON) is " + sys.version)'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[test]' --config-settings editable_mode=compat
	touch $@

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# Regenerate the committed gRPC modules (nydus_exporter/api/) after changing proto/.
proto: venv
	$(BIN)/python scripts/gen_proto.py

# Build the interop tools with the pinned Cargo.lock. Cargo is incremental: a no-op when nothing
# changed. Rust itself is not installed here (rustup's job): a clear error when it is missing.
interop-tools: system-deps
	@command -v $(CARGO) >/dev/null 2>&1 || { \
		echo "interop-tools: '$(CARGO)' not found: install Rust (https://rustup.rs) or set CARGO=/path/to/cargo" >&2; \
		exit 1; }
	CARGO_TARGET_DIR=$(INTEROP_TARGET_DIR) $(CARGO) build --release --locked \
		--manifest-path $(INTEROP_DIR)/Cargo.toml
	mkdir -p bin
	for tool in $(INTEROP_TOOLS); do install -m 0755 $(INTEROP_TARGET_DIR)/release/$$tool bin/$$tool; done
	@command -v $(GO) >/dev/null 2>&1 || { \
		echo "interop-tools: '$(GO)' not found: install Go (https://go.dev/dl) or set GO=/path/to/go" >&2; \
		exit 1; }
	cd $(INTEROP_GO_DIR) && $(GO) build -buildvcs=false -o $(CURDIR)/bin/containerd-nydus-grpc \
		github.com/containerd/nydus-snapshotter/cmd/containerd-nydus-grpc
	cd $(INTEROP_GO_DIR) && $(GO) build -buildvcs=false -o $(CURDIR)/bin/cri-pull ./cri-pull
	cd $(INTEROP_GO_DIR) && CGO_ENABLED=0 $(GO) build -buildvcs=false -o $(CURDIR)/bin/cat-file ./cat-file

# Just the interop tests (the real nydus code reading our images), ending with one summary line.
interop: interop-tools venv
	$(PYTEST) tests/interop $(PYTEST_ARGS)

# nydus-buildkitd and buildctl (BuildKit's release pinned in deploy/buildkit/go.mod) in bin/.
# Needs Go >= 1.26; its module and build caches stay under $$HOME, so rebuilds only relink.
buildkit:
	deploy/buildkit/build.sh bin

# The Go exporter's own checks: gofmt, go vet, go test.
buildkit-check:
	@cd deploy/buildkit && out=$$(gofmt -l nydus) && { [ -z "$$out" ] || { echo "gofmt needed: $$out" >&2; exit 1; }; }
	cd deploy/buildkit && go vet ./... && go test ./...

# The full suite (what CI runs): lint, types, every test in parallel. A run that leaves files in
# its temporary directory fails (tests/tempcheck.py).
test: system-deps venv bytecode interop-tools buildkit buildkit-check
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(PYTEST) $(PYTEST_ARGS)

# The inner loop, under a minute on 2 cores: lint, types and the tests that are neither slow
# (over a second) nor end-to-end (tests/e2e/, tests/buildkit/, tests/interop/).
check: venv bytecode
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(PYTEST) -m "not slow and not e2e" $(PYTEST_ARGS)

# The main job on embedded defaults: the exporter daemon, with its unix socket, state dir and
# default output layouts under .state/daemon (Ctrl-C stops it, draining running exports).
# Export against it from another shell, e.g.:
#   make sample
#   .venv/bin/nydus-exporter export --addr unix://$(CURDIR)/.state/daemon/exporter.sock \
#       tar:.state/run/sample.tar --output type=nydus,push=false,oci-layout=$(CURDIR)/.state/daemon/out,name=sample:1
run: runtime-deps venv bytecode
	mkdir -p $(DAEMON_DIR)
	$(BIN)/nydus-exporter serve --state-dir $(CURDIR)/$(DAEMON_DIR) --http $(METRICS_ADDR) --log-format console \
		--chunk-store

# A small sample layer and an in-process pack + inspect of it (no daemon needed).
sample: venv
	mkdir -p $(RUN_DIR)
	$(BIN)/python scripts/sample_layer.py $(RUN_DIR)/sample.tar
	$(BIN)/nydus-exporter pack $(RUN_DIR)/sample.tar -o $(RUN_DIR)/sample.blob
	$(BIN)/nydus-exporter inspect $(RUN_DIR)/sample.blob

bench: system-deps venv bytecode
	$(BIN)/python bench/pack.py $(BENCH_ARGS)

bench-export: system-deps venv bytecode
	$(BIN)/python bench/export.py $(BENCH_ARGS)

bench-push: system-deps venv bytecode
	$(BIN)/python bench/push.py $(BENCH_ARGS)

# Metadata at scale (merge, 100k-inode bootstraps, directory walks) and the tar data path.
bench-metadata: venv bytecode
	$(BIN)/python bench/metadata.py $(BENCH_ARGS)

# gRPC overhead (daemon vs in-process) and concurrent exports; not named grpc.py, which would
# shadow the grpc package on sys.path.
bench-daemon: system-deps venv bytecode
	$(BIN)/python bench/daemon.py $(BENCH_ARGS)

# The export phase of one BuildKit build: type=nydus (each layers mode) vs type=image gzip/zstd.
bench-buildkit: system-deps venv bytecode buildkit
	$(BIN)/python bench/buildkit.py $(BENCH_ARGS)

# Bytes uploaded for three image versions with/without the chunk store (needs network for apt).
bench-dedup: system-deps venv bytecode
	$(BIN)/python bench/dedup.py $(BENCH_ARGS)

# Export+push against export+skopeo copy, and a chunk-store rebuild against the first export.
bench-rebuild: system-deps venv bytecode
	$(BIN)/python bench/rebuild.py $(BENCH_ARGS)

# 8 concurrent exports of different 200 MB layers through one daemon (throughput, RSS); not named
# concurrent.py, which would shadow the concurrent package on sys.path.
bench-concurrency: system-deps venv bytecode
	$(BIN)/python bench/concurrency.py $(BENCH_ARGS)

# Every benchmark, then one table (what, now, target); BENCH_ARGS=--quick: one run of each.
bench-all: system-deps venv bytecode
	$(BIN)/python bench/all.py $(BENCH_ARGS)

clean:
	rm -rf .state build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

# Also drop the virtualenv and the cached benchmark layers.
distclean: clean
	rm -rf $(VENV) bench/.cache bin
