#!/usr/bin/env bash
# Build the image and push it to this account's ECR: create the repository if it is missing,
# log in, tag, push. The account comes from the AWS configuration; the region is deploy.py's,
# in deploy.py's order: DEPLOY_REGION, deploy.toml's region (or DEPLOY_CONFIG's file), then
# AWS_REGION, AWS_DEFAULT_REGION and the AWS CLI's configured region.
#
#   container/build_and_push.sh [--cuda12] [--build-arg NAME=VALUE]... [REPOSITORY] [TAG]
#       (defaults: deploy.toml's repository and tag, else sagemaker-dog-breeds latest)
#   --cuda12: the CUDA 12 flavour (torch's cu128 wheels on a CUDA 12.8 base), for GPU hosts
#       whose driver is older than 580 (training, batch transform); tagged TAG-cu12
#   DOCKER=podman container/build_and_push.sh           (any Docker-compatible CLI)
set -euo pipefail

cd "$(dirname "$0")/.."
die() { echo "build_and_push: $*" >&2; exit 1; }

# A deploy.toml key (python3's tomllib), empty when there is no file, key or python3 >= 3.11.
setting() {
  local file="${DEPLOY_CONFIG:-deploy.toml}"
  [ -f "$file" ] || return 0
  python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb")).get(sys.argv[2], ""))' \
    "$file" "$1" 2>/dev/null || true
}

build_args=()
suffix=""
positional=()
while [ $# -gt 0 ]; do
  case "$1" in
    --cuda12) build_args+=(--build-arg TORCH_CUDA=cu128 --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-base-ubuntu24.04)
              suffix="-cu12"; shift ;;
    --build-arg) [ $# -ge 2 ] || die "--build-arg needs NAME=VALUE"; build_args+=(--build-arg "$2"); shift 2 ;;
    --build-arg=*) build_args+=(--build-arg "${1#--build-arg=}"); shift ;;
    -*) die "unknown option $1 (known: --cuda12, --build-arg NAME=VALUE)" ;;
    *) positional+=("$1"); shift ;;
  esac
done
repository="${positional[0]:-${DEPLOY_REPOSITORY:-$(setting repository)}}"
repository="${repository:-sagemaker-dog-breeds}"
tag="${positional[1]:-${DEPLOY_TAG:-$(setting tag)}}"
tag="${tag:-latest}${suffix}"
docker="${DOCKER:-docker}"
# A file of this run's own for the AWS CLI's errors: a fixed path under /tmp belongs to whoever
# made it first on a shared host.
err=$(mktemp "${TMPDIR:-/tmp}/build_and_push.XXXXXX")
trap 'rm -f "$err"' EXIT

command -v aws >/dev/null || die "the AWS CLI is not installed (pip install awscli, or see the AWS docs)"
command -v "$docker" >/dev/null || die "$docker is not installed; set DOCKER=podman to use podman"

account=$(aws sts get-caller-identity --query Account --output text 2>"$err") \
  || die "no usable AWS credentials: $(tail -n1 "$err") (run 'aws configure' or set AWS_PROFILE)"
region="${DEPLOY_REGION:-$(setting region)}"
region="${region:-${AWS_REGION:-${AWS_DEFAULT_REGION:-$(aws configure get region || true)}}}"
[ -n "$region" ] || die "no AWS region: set region in deploy.toml, AWS_REGION, or run 'aws configure set region eu-west-1'"
echo "pushing to ECR in $region (deploy.py reads the same region)"
registry="${account}.dkr.ecr.${region}.amazonaws.com"
image="${registry}/${repository}:${tag}"

if ! aws ecr describe-repositories --repository-names "$repository" --region "$region" >/dev/null 2>&1; then
  echo "creating ECR repository $repository in $region"
  aws ecr create-repository --repository-name "$repository" --region "$region" \
      --image-scanning-configuration scanOnPush=true >/dev/null 2>"$err" \
    || die "cannot create ECR repository $repository: $(tail -n1 "$err") (needs ecr:CreateRepository)"
fi

aws ecr get-login-password --region "$region" 2>"$err" \
  | "$docker" login --username AWS --password-stdin "$registry" >/dev/null \
  || die "cannot log in to $registry: $(tail -n1 "$err") (needs ecr:GetAuthorizationToken)"

"$docker" build ${build_args[@]+"${build_args[@]}"} -t "${repository}:${tag}" .
"$docker" tag "${repository}:${tag}" "$image"
"$docker" push "$image" || die "push to $image failed (needs ecr:PutImage and ecr:InitiateLayerUpload)"

# Sizes: the image unpacked (what a host's disk holds) and as ECR stores it (compressed layers).
# SageMaker Serverless Inference refuses images over 10 GiB ("Image size ... is greater than
# supported size 10737418240"); AWS does not say which of the two sizes it compares.
limit=10737418240
gib() { awk -v b="$1" 'BEGIN { printf "%.2f GiB", b / 1073741824 }'; }
local_size=$("$docker" image inspect --format '{{.Size}}' "${repository}:${tag}" 2>/dev/null || echo "")
ecr_size=$(aws ecr describe-images --repository-name "$repository" --image-ids "imageTag=$tag" \
             --region "$region" --query 'imageDetails[0].imageSizeInBytes' --output text 2>/dev/null || echo "")
case "$local_size" in ''|*[!0-9]*) local_size="" ;; esac
case "$ecr_size" in ''|*[!0-9]*) ecr_size="" ;; esac
echo "pushed $image: ${local_size:+$(gib "$local_size") unpacked}${local_size:+${ecr_size:+, }}${ecr_size:+$(gib "$ecr_size") in ECR (compressed)}"
for size in $local_size $ecr_size; do
  if [ "$size" -gt "$limit" ]; then
    echo "build_and_push: warning: the image is over SageMaker Serverless Inference's 10 GiB limit: a serverless endpoint (deploy.py deploy --serverless) may refuse it; real-time, asynchronous and batch transform take it" >&2
    break
  fi
done
echo "$image"
