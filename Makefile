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

.PHONY: venv system-deps test test-unit test-fast test-model test-system demo lint image bench clean

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

# Lint and the unit tier first (a broken unit test is reported within minutes), then the Debian
# packages, the model tier (with the test image built beside it) and the system tier; it stops
# at the first step that fails and ends with the 25 slowest tests and each step's time against
# its budget (out/test-costs/).
test: venv
	$(PY) -m tests.helpers.run_tiers lint unit system-deps image model system

# No model trained, no server process, no image.
test-unit: venv
	$(PY) -m tests.helpers.run_tiers lint unit

test-fast: test-unit

# Small models trained or served, in-process or under gunicorn.
test-model: venv system-deps
	$(PY) -m tests.helpers.run_tiers model

# The image, podman and the SDK's local mode.
test-system: venv system-deps
	$(PY) -m tests.helpers.run_tiers system

demo: venv
	$(PY) -m tools.demo

lint: venv
	$(PY) -m tests.helpers.run_tiers lint

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
