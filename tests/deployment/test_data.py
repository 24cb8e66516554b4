"""deploy.py data: one data set in S3, exactly, synced to the chosen tree."""

from __future__ import annotations

import boto3

from tests.conftest import DOG_PHOTOS
from tests.deployment.conftest import BUCKET, REGION, run


def test_unwritable_bucket_is_one_line(aws, capsys, tmp_path):
    from tools.datasets import write_digits

    src = write_digits(tmp_path / "d", image_size=8, per_class=3)
    code, _, err = run(capsys, "data", "--source", str(src), "--bucket", "no-such-bucket")
    assert code == 1 and "NoSuchBucket" in err and err.count("\n") == 1


def s3_objects(prefix: str = "") -> dict[str, bytes]:
    s3 = boto3.client("s3", region_name=REGION)
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET,
                                                                               Prefix=prefix)
            for o in page.get("Contents", [])]
    return {k: s3.get_object(Bucket=BUCKET, Key=k)["Body"].read() for k in keys}


def tree_objects(root) -> dict[str, bytes]:
    """The objects ``deploy.py data --source root`` should leave under the data prefix."""
    return {f"dog-breeds/data/{f.relative_to(root).as_posix()}": f.read_bytes()
            for f in root.rglob("*.jpg")}


def test_data_uploads_once_and_prints_uris(aws, capsys, tmp_path):
    from tools.datasets import write_digits

    src = write_digits(tmp_path / "digits", image_size=8, per_class=6)
    files = sorted(p for p in src.rglob("*.jpg"))
    code, out, err = run(capsys, "data", "--source", str(src))
    assert code == 0, err
    assert f"uploaded {len(files)} files" in out
    for split in ("train", "valid", "test"):
        assert f"{split}: s3://{BUCKET}/dog-breeds/data/{split}" in out
    assert s3_objects() == tree_objects(src)
    puts = len(aws.calls[("s3", "PutObject")])
    code, out, _ = run(capsys, "data", "--source", str(src))
    assert code == 0 and (f"uploaded 0 files (0.0 MB), {len(files)} already there, deleted 0 "
                          f"objects not in {src}\n") in out
    assert len(aws.calls[("s3", "PutObject")]) == puts and not aws.calls[("s3", "DeleteObjects")]


def test_data_a_second_upload_leaves_exactly_the_second_set(aws, capsys, tmp_path):
    """Fewer photos per class, then another source: the data prefix holds exactly the set of
    the last run (the job trained on the union of both before); objects outside the data
    prefix are not touched."""
    from tools.datasets import write_digits
    from tools.folders import count_images

    s3 = boto3.client("s3", region_name=REGION)
    for key in ("dog-breeds/output/job-1/model.tar.gz", "dog-breeds/data-old/x.jpg",
                "other/data/train/001.a/x.jpg"):
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"not ours")
    digits = write_digits(tmp_path / "digits", image_size=8, per_class=12)
    code, _, err = run(capsys, "data", "--source", str(digits))
    assert code == 0, err
    code, out, err = run(capsys, "data", "--source", str(digits), "--per-class", "2")
    assert code == 0, err
    fewer = tmp_path / "digits-2"  # the copy --per-class cuts beside the source
    assert count_images(fewer) == {"train": (10, 20), "valid": (10, 20), "test": (10, 20)}
    stale = len(tree_objects(digits)) - len(tree_objects(fewer))
    assert (f"uploaded 0 files (0.0 MB), {len(tree_objects(fewer))} already there, deleted "
            f"{stale} objects not in {fewer}") in out
    assert s3_objects("dog-breeds/data/") == tree_objects(fewer)

    dogs = tmp_path / "dogs"
    for i, photo in enumerate(DOG_PHOTOS[:4]):
        folder = dogs / ("train" if i < 2 else "valid") / f"00{i % 2 + 1}.Breed_{i % 2 + 1}"
        folder.mkdir(parents=True)
        (folder / photo.name).write_bytes(photo.read_bytes())
    code, out, err = run(capsys, "data", "--source", str(dogs))
    assert code == 0, err
    assert "uploaded 4 files" in out and f"deleted {len(tree_objects(fewer))} objects" in out
    assert s3_objects("dog-breeds/data/") == tree_objects(dogs)
    assert "test: s3://" not in out  # dogs has no test split: no URI for it
    assert set(s3_objects()) - set(tree_objects(dogs)) == {
        "dog-breeds/output/job-1/model.tar.gz", "dog-breeds/data-old/x.jpg",
        "other/data/train/001.a/x.jpg"}


def test_data_reuploads_a_changed_photo_of_the_same_size(aws, capsys, tmp_path):
    from tools.datasets import write_digits

    src = write_digits(tmp_path / "digits", image_size=8, per_class=3)
    assert run(capsys, "data", "--source", str(src))[0] == 0
    photo = sorted(src.rglob("*.jpg"))[0]
    body = bytearray(photo.read_bytes())
    body[-3] ^= 0xFF  # same size, other bytes
    photo.write_bytes(bytes(body))
    code, out, err = run(capsys, "data", "--source", str(src))
    assert code == 0 and "uploaded 1 files" in out, err
    assert s3_objects() == tree_objects(src)


def test_data_deletes_in_batches_of_at_most_1000_keys(aws, capsys, tmp_path):
    from tools.datasets import write_digits

    s3 = boto3.client("s3", region_name=REGION)
    for i in range(1003):
        s3.put_object(Bucket=BUCKET, Key=f"dog-breeds/data/train/999.old/{i:04d}.jpg", Body=b"")
    src = write_digits(tmp_path / "digits", image_size=8, per_class=3)
    code, out, err = run(capsys, "data", "--source", str(src))
    assert code == 0 and "deleted 1003 objects" in out, err
    assert [len(c["Delete"]["Objects"]) for c in aws.calls[("s3", "DeleteObjects")]] == [1000, 3]
    assert s3_objects() == tree_objects(src)


def test_data_refuses_a_source_without_classes_and_deletes_nothing(aws, capsys, tmp_path):
    from tools.datasets import write_digits

    src = write_digits(tmp_path / "digits", image_size=8, per_class=3)
    assert run(capsys, "data", "--source", str(src))[0] == 0
    empty = tmp_path / "empty"
    for split in ("train", "valid"):
        (empty / split / "001.Empty").mkdir(parents=True)
    code, out, err = run(capsys, "data", "--source", str(empty))
    assert code == 1 and err.endswith(f"error: {empty / 'train'} has no class folder with photos;"
                                      " expected NNN.Breed_name/*.jpg\n"), err
    assert "skipping 1 folder that is not a class: 001.Empty (no photos)" in err
    assert s3_objects() == tree_objects(src)
