"""``deploy.py data``: one data set in S3, exactly: ``s3://BUCKET/PREFIX/data/`` is synced to the
chosen tree (new and changed photos uploaded, objects not in the tree deleted), so a job never
trains on what an earlier upload left there."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from deployment import storage
from deployment.errors import UserError
from deployment.settings import Context, save_state

NAME = "data"
HELP = "fetch dogImages and sync it to s3://BUCKET/PREFIX/data/"
JOB_OPTIONS = False


def add_arguments(p) -> None:
    """This verb's options."""
    p.add_argument("--data-dir", help="where dogImages is or goes (default ./data)")
    p.add_argument("--per-class", type=int, help="upload only N photos per breed and split "
                   "(a copy beside the set: dogImages-N, SOURCE-N)")
    p.add_argument("--source", help="upload this ImageFolder tree instead of dogImages")


def run(ctx: Context, args) -> int:
    """Fetch dogImages (or take --source), sync its train/valid/test to S3, print the URIs.

    Raises:
        UserError: --source lacks train/ or valid/, or one of them has no class folder.
    """
    from tools import dogimages
    from tools.datasets import subset
    from tools.folders import read_tree

    if args.source:
        root = Path(args.source)
        if not (root / "train").is_dir() or not (root / "valid").is_dir():
            raise UserError(f"--source {root}: expected train/ and valid/ folders in ImageFolder "
                            "layout (NNN.Breed_name/*.jpg)")
    else:
        root = dogimages.ensure(Path(ctx.get("data_dir")))
    if args.per_class:
        root = subset(root, root.parent / f"{root.name}-{args.per_class}", args.per_class)
    tree = read_tree(root)
    for split, classes in tree.items():
        print(f"{split}: {len(classes)} classes, {sum(map(len, classes.values()))} images in "
              f"{root / split}")
    for split in ("train", "valid"):
        if not tree.get(split):  # syncing would delete the data set in S3 for nothing
            raise UserError(f"{root / split} has no class folder with photos; expected "
                            "NNN.Breed_name/*.jpg")
    bucket = ctx.bucket()
    key_prefix = f"{ctx.get('prefix').strip('/')}/data"
    files = [f for classes in tree.values() for photos in classes.values() for f in photos]
    sync_tree(ctx.boto.client("s3"), root, files, bucket, key_prefix)
    for split in (s for s, classes in tree.items() if classes):
        print(f"{split}: s3://{bucket}/{key_prefix}/{split}")
    save_state(data=f"s3://{bucket}/{key_prefix}")
    print(f"data: s3://{bucket}/{key_prefix} (train with --data s3://{bucket}/{key_prefix})")
    return 0


def _md5(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, lambda: hashlib.md5(usedforsecurity=False)).hexdigest()


def _unchanged(path: Path, obj: dict | None) -> bool:
    """Whether the object ``obj`` (a ListObjectsV2 entry) holds ``path``'s bytes: same size, and
    same MD5 where the ETag is one (a multipart upload's ETag is not: size only)."""
    if obj is None or obj["Size"] != path.stat().st_size:
        return False
    etag = obj["ETag"].strip('"')
    return "-" in etag or _md5(path) == etag


def sync_tree(s3, root: Path, files: list[Path], bucket: str, key_prefix: str
              ) -> tuple[int, int, int]:
    """Make ``s3://bucket/key_prefix/`` hold exactly ``files`` (paths under ``root``, keyed by
    their path relative to it): upload the new and changed ones (progress bar on stderr), then
    delete every other object under ``key_prefix/`` (DeleteObjects, 1,000 keys a request).
    Nothing outside ``key_prefix/`` is listed or touched. Our own code because boto3 has no sync
    (the AWS CLI's ``s3 sync --delete`` is a separate program, outside deploy.py's session and
    its one-line errors).

    Returns:
        ``(uploaded, already there, deleted)`` object counts, also printed.

    Raises:
        UserError: S3 refused to delete some objects (their key and S3's reason).
        botocore.exceptions.ClientError, boto3.exceptions.S3UploadFailedError: a failed
            request (deploy.py prints them as one line).
    """
    from tqdm import tqdm

    existing = storage.objects(s3, bucket, key_prefix + "/")
    wanted = {f"{key_prefix}/{f.relative_to(root).as_posix()}": f for f in files}
    todo = {key: f for key, f in wanted.items() if not _unchanged(f, existing.get(key))}
    total = sum(f.stat().st_size for f in todo.values())
    with tqdm(total=total, unit="B", unit_scale=True, desc="upload", file=sys.stderr,
              disable=not todo) as bar:
        for key, f in todo.items():
            s3.upload_file(str(f), bucket, key, Callback=bar.update)
    # Deleted only once the new set is complete: a failed upload leaves the old objects.
    stale = sorted(set(existing) - set(wanted))
    storage.delete_keys(s3, bucket, stale)
    print(f"uploaded {len(todo)} files ({total / 1e6:.1f} MB), {len(wanted) - len(todo)} "
          f"already there, deleted {len(stale)} objects not in {root}"
          + (f" (e.g. s3://{bucket}/{stale[0]})" if stale else ""))
    return len(todo), len(wanted) - len(todo), len(stale)
