#!/usr/bin/env bash
# Smoke-test `IMAGE serve` with the model train_local.sh made, on http://localhost:8080.
#   container/local_test/serve_local.sh [IMAGE]        (Ctrl-C stops it with SIGTERM)
set -euo pipefail
image="${1:-sagemaker-dog-breeds:latest}"
docker="${DOCKER:-docker}"
here="$(cd "$(dirname "$0")" && pwd)"
model="${MODEL_DIR:-$here/test_dir/opt_ml/model}"
[ -f "$model/manifest.json" ] || { echo "no model in $model: run train_local.sh first" >&2; exit 1; }
exec "$docker" run --rm ${GPUS:+--gpus all} -p 8080:8080 -v "$model:/opt/ml/model:ro" "$image" serve
