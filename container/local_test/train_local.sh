#!/usr/bin/env bash
# Smoke-test `IMAGE train` before pushing: a small /opt/ml tree under test_dir/ with the digits
# set (or DATA=path/to/imagefolder), mounted where SageMaker mounts it.
#   container/local_test/train_local.sh [IMAGE]        (default sagemaker-dog-breeds:latest)
set -euo pipefail
image="${1:-sagemaker-dog-breeds:latest}"
docker="${DOCKER:-docker}"
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
data="${DATA:-$here/test_dir/data}"
[ -d "$data/train" ] || "$python" -m train.datasets digits "$data" --per-class 60
rm -rf "$here/test_dir/opt_ml"
(cd "$root" && "$python" - "$here/test_dir/opt_ml" "$data" <<'PY'
import sys
from pathlib import Path
from train.local import write_job
base, data = Path(sys.argv[1]), Path(sys.argv[2])
channels = {c: data / c for c in ("train", "valid", "test") if (data / c).is_dir()}
write_job(base, channels, {"arch": "resnet18", "epochs": 5, "image-size": 32,
                           "min-crop-scale": 0.6,
                           "pretrained": False, "batch-size": 32, "lr": 0.05}, copy=True)
PY
)
"$docker" run --rm ${GPUS:+--gpus all} -v "$here/test_dir/opt_ml:/opt/ml" "$image" train
echo "model: $here/test_dir/opt_ml/model"
