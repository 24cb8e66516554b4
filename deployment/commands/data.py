"""``deploy.py data``: the data set into S3, once (re-runs upload only what changed)."""

from __future__ import annotations

import sys
from pathlib import Path

from deployment.settings import SPLITS, Context, UserError, save_state

NAME = "data"
HELP = "fetch dogImages and upload it to S3"
JOB_OPTIONS = False


def add_arguments(p) -> None:
    """This verb's options."""
    p.add_argument("--data-dir", help="where dogImages is or goes (default ./data)")
    p.add_argument("--per-class", type=int, help="upload only N photos per breed and split")
    p.add_argument("--source", help="upload this ImageFolder tree instead of dogImages")

def run(ctx: Context, args) -> int:
    """Fetch dogImages (or take --source), upload train/valid/test to S3, print the URIs."""
    from tools import dogimages
    from tools.datasets import count_images, subset

    if args.source:
        root = Path(args.source)
        if not (root / "train").is_dir() or not (root / "valid").is_dir():
            raise UserError(f"--source {root}: expected train/ and valid/ folders in ImageFolder "
                            "layout (NNN.Breed_name/*.jpg)")
    else:
        root = dogimages.ensure(Path(ctx.get("data_dir")))
        if args.per_class:
            root = subset(root, root.parent / f"dogImages-{args.per_class}", args.per_class)
    for split, (classes, images) in count_images(root).items():
        print(f"{split}: {classes} classes, {images} images in {root / split}")
    bucket = ctx.bucket()
    key_prefix = f"{ctx.get('prefix').strip('/')}/data"
    uris = upload_tree(ctx.boto.client("s3"), root, bucket, key_prefix)
    for split, uri in uris.items():
        print(f"{split}: {uri}")
    save_state(data=f"s3://{bucket}/{key_prefix}")
    print(f"data: s3://{bucket}/{key_prefix} (train with --data s3://{bucket}/{key_prefix})")
    return 0


def upload_tree(s3, root: Path, bucket: str, key_prefix: str) -> dict[str, str]:
    """Upload root/{train,valid,test} under s3://bucket/key_prefix/, skipping objects already
    there with the same size (re-runnable); progress bar on stderr."""
    from tqdm import tqdm

    files = [f for s in SPLITS if (root / s).is_dir() for f in sorted((root / s).rglob("*"))
             if f.is_file()]
    existing = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                             Prefix=key_prefix + "/"):
        for obj in page.get("Contents", []):
            existing[obj["Key"]] = obj["Size"]
    todo = [f for f in files
            if existing.get(f"{key_prefix}/{f.relative_to(root).as_posix()}") != f.stat().st_size]
    total = sum(f.stat().st_size for f in todo)
    with tqdm(total=total, unit="B", unit_scale=True, desc="upload", file=sys.stderr,
              disable=not todo) as bar:
        for f in todo:
            s3.upload_file(str(f), bucket, f"{key_prefix}/{f.relative_to(root).as_posix()}",
                           Callback=bar.update)
    print(f"uploaded {len(todo)} files ({total / 1e6:.1f} MB), {len(files) - len(todo)} "
          "already there")
    return {s: f"s3://{bucket}/{key_prefix}/{s}" for s in SPLITS if (root / s).is_dir()}
