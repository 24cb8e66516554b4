#!/usr/bin/env bash
# Make root podman usable on machines without a Docker engine (see docs/platform.md): runc instead of
# crun (crun fails on cgroups there) and explicit ulimits. Idempotent; touches nothing when a
# containers.conf exists already.
set -euo pipefail
conf=/etc/containers/containers.conf
command -v podman >/dev/null || { echo "podman is not installed" >&2; exit 1; }
if [ ! -s "$conf" ] && [ "$(id -u)" = 0 ]; then
  mkdir -p /etc/containers
  cat > "$conf" <<'CONF'
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]
[engine]
runtime = "runc"
CONF
fi
