#!/usr/bin/env bash
# Smoke-test `IMAGE train` before pushing: a small /opt/ml tree under test_dir/ with the digits
# set and the digits recipe (or DATA=path/to/imagefolder), mounted where SageMaker mounts it.
#   container/local_test/train_local.sh [IMAGE] [key=value ...]   (default sagemaker-dog-breeds:latest)
set -euo pipefail
image="${1:-sagemaker-dog-breeds:latest}"
shift || true
docker="${DOCKER:-docker}"
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
data="${DATA:-$here/test_dir/data}"
[ -d "$data/train" ] || (cd "$root" && "$python" -m tools.datasets digits "$data" --per-class 60)
rm -rf "$here/test_dir/opt_ml"
(cd "$root" && "$python" -m tools.opt_ml "$here/test_dir/opt_ml" "$data" --copy --digits-recipe "$@")
"$docker" run --rm ${GPUS:+--gpus all} -v "$here/test_dir/opt_ml:/opt/ml" "$image" train
echo "model: $here/test_dir/opt_ml/model"
