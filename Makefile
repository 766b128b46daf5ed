# Set-up is two commands on a fresh machine, as root: `make demo` and `make test`.
# Both install what they need: Debian packages, a virtualenv with pinned packages.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(abspath $(VENV))/bin/python
APT_PACKAGES := iproute2 iptables containernetworking-plugins golang-go golang-github-appc-cni-dev \
	qemu-system-x86 linux-image-amd64 busybox-static tcpdump file containerd runc prometheus
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
# The host CNI executable: a static Go program (cni/shim), built offline.
SHIM := build/underlay

.PHONY: setup test demo bench chaos fuzz clean-net shim docs

setup: $(VENV)/.installed .apt-installed $(SHIM)

shim: $(SHIM)

$(SHIM): .apt-installed cni/shim/build.sh cni/shim/go.mod $(wildcard cni/shim/*.go) pyproject.toml
	cni/shim/build.sh $@ $(VERSION)

.apt-installed: Makefile
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "apt-get install$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@touch $@

$(VENV)/.installed: requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip==26.3
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	@touch $@

test: setup
	$(PY) -m pytest -q tests

demo: setup
	$(PY) -m lab.demo

# removes what a killed harness or demo run left (namespaces, links, processes, run files)
clean-net:
	$(PY) -m lab.cleanup

# docs/configuration.md is rendered from the configuration's declarations (a test checks it)
docs: $(VENV)/.installed
	$(PY) -c 'from ipam_daemon.config import reference_markdown as r; print(r(), end="")' > docs/configuration.md

bench: setup
	$(PY) -m bench.run

chaos: setup
	UNDERLAY_CHAOS=full $(PY) -m pytest -q tests -m chaos

# the property-based suites with fresh random examples (make test replays fixed ones)
fuzz: setup
	UNDERLAY_FUZZ=explore $(PY) -m pytest -q tests/test_fuzz_agent_api.py tests/test_fuzz_cni.py
