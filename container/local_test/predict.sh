#!/usr/bin/env bash
# Classify a photo with a running server (serve_local.sh, or `make demo`'s port):
#   container/local_test/predict.sh photo.jpg [URL]     (default http://localhost:8080)
set -euo pipefail
photo="${1:?usage: predict.sh photo.jpg [URL]}"
url="${2:-http://localhost:8080}"
curl --fail-with-body -sS -X POST "$url/invocations" \
  --data-binary @"$photo" -H "Content-Type: image/jpeg" \
  -H "X-Amzn-SageMaker-Custom-Attributes: k=3"
echo
