# nydus-exporter developer entry points. `make run` and `make test` work on a fresh Debian 12
# machine (as root, or with sudo for the Debian packages).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUN_DIR := .state/run
DAEMON_DIR := .state/daemon
PYTEST_ARGS ?=

# Debian packages the daemon and the CLI need (`make run`): CA certificates for registries.
RUNTIME_DEB_PACKAGES := ca-certificates
# What the tests and the benchmark use on top (`make test`, `make system-deps`):
#   erofs-utils      mkfs.erofs / fsck.erofs / dump.erofs: independent readers of our images
#   docker-registry  a local OCI registry for the push tests (the tests start their own on
#                    127.0.0.1; the package's own service is kept stopped and disabled)
#   skopeo, umoci    independent OCI clients (copy, inspect, unpack images)
#   debootstrap      builds the realistic rootfs layer of bench/pack.py
#   tar, gzip, zstd, xz-utils  reference archivers; util-linux, mount (losetup, mount, dmesg);
#   procps (pgrep: no conversion worker outlives its job); kmod (modprobe erofs)
TEST_DEB_PACKAGES := erofs-utils docker-registry skopeo umoci debootstrap tar gzip zstd xz-utils util-linux \
	mount procps kmod
DEB_PACKAGES := $(RUNTIME_DEB_PACKAGES) $(TEST_DEB_PACKAGES)

# While apt-get installs, a policy-rc.d answering 101 keeps packages from starting services
# (docker-registry would otherwise listen on port 5000 of every interface); an existing
# policy file is left alone. Overridable for the Makefile's own test.
POLICY_RC_D ?= /usr/sbin/policy-rc.d
SYSTEMD_RUN_DIR ?= /run/systemd/system
REGISTRY_INIT_SCRIPT ?= /etc/init.d/docker-registry
RC_DIR ?= /etc

.PHONY: all venv system-deps runtime-deps registry-service-off test lint run sample bench bench-export \
	bench-push bench-daemon bench-dedup clean distclean

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

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 required, $(PYTHON) is " + sys.version)'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy

test: system-deps venv
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest $(PYTEST_ARGS)

# The main job on embedded defaults: the exporter daemon, with its unix socket, state dir and
# default output layouts under .state/daemon (Ctrl-C stops it, draining running exports).
# Export against it from another shell, e.g.:
#   make sample
#   .venv/bin/nydus-exporter export --addr unix://$(CURDIR)/.state/daemon/exporter.sock \
#       tar:.state/run/sample.tar --output type=nydus,push=false,oci-layout=$(CURDIR)/.state/daemon/out,name=sample:1
run: runtime-deps venv
	mkdir -p $(DAEMON_DIR)
	$(BIN)/nydus-exporter serve --state-dir $(CURDIR)/$(DAEMON_DIR) --http 127.0.0.1:9464 --log-format console

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

clean:
	rm -rf .state build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

# Also drop the virtualenv and the cached benchmark layers.
distclean: clean
	rm -rf $(VENV) bench/.cache
