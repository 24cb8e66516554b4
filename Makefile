# The README's two commands: `make demo` (the main job, local, no AWS, no Docker engine) and
# `make test` (every test, the container smoke test included). Both set up what they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
IMAGE ?= sagemaker-dog-breeds
TAG ?= latest
# Debian packages the tests need: podman (with runc, as crun fails on cgroups on these
# machines) and debootstrap for the container smoke test's local base image; chromium renders
# the training report in a test. The SDK's local mode runs docker-compose against podman's
# service, and its containers find each other by name through CNI's dnsname plugin; it also
# runs a Docker CLI itself: Debian's docker.io where no docker command is installed
# (podman-docker's does not do: podman answers `docker context inspect` with [] and the SDK's
# endpoints fail on it).
SYSTEM_PACKAGES := podman runc debootstrap uidmap slirp4netns fuse-overlayfs chromium \
	docker-compose golang-github-containernetworking-plugin-dnsname

.PHONY: venv system-deps test test-fast demo lint image bench clean

venv: $(STAMP)

$(STAMP): requirements/container.txt requirements/dev.txt requirements/constraints.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements/dev.txt -c requirements/constraints.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	command -v docker >/dev/null || missing="$$missing docker.io"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "install as root: apt-get install$$missing" >&2; exit 1; fi; \
	  DEBIAN_FRONTEND=noninteractive apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi
	@bash container/local_test/podman_setup.sh

test: venv system-deps
	$(PY) -m pytest

# Everything but the slow tests: no training runs, no image build.
test-fast: venv
	$(PY) -m pytest -m "not slow"

demo: venv
	$(PY) -m tools.demo

lint: venv
	$(VENV)/bin/hadolint Dockerfile
	$(VENV)/bin/ruff check --select F,E9 contract train serve container tests tools deployment benchmarks deploy.py

image:
	docker build -t $(IMAGE):$(TAG) .

bench: venv
	$(PY) benchmarks/bench_train.py
	$(PY) benchmarks/bench_serve.py
	$(PY) benchmarks/bench_transform.py
	$(PY) benchmarks/bench_rules.py
	$(PY) benchmarks/bench_trace.py

clean:
	rm -rf $(VENV) .pytest_cache out .wheelhouse
