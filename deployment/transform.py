"""SageMaker batch transform over an S3 folder of photos: its inputs, the CreateTransformJob
request, the wait, and the summary of its answers.

The service's contract (API reference, CreateTransformJob, TransformInput, TransformOutput;
developer guide, "Use your own inference code with batch transform"): SplitType None sends each
object whole; SplitType Line sends its lines, many a request with BatchStrategy MultiRecord; a
job has one ContentType; MaxPayloadInMB is at most 100; each input object gives
``<output path>/<its key under the input prefix>.out``, written only when all of it succeeded;
a failed object fails the job, whose other objects are still answered.

MaxConcurrentTransforms is left to the container, which suggests it for the host it runs on
(GET /execution-parameters, serve/batch_transform.py): deploy.py does not know the instance's
CPUs and GPUs. MaxPayloadInMB is deploy.py's, since only it sees the photos' sizes: the
container learns it (SAGEMAKER_MAX_PAYLOAD_IN_MB) and keeps the product rule.

``--jsonlines`` packs the photos into JSON Lines files of ``{"b64": ...}`` records under the
job's own input prefix, with an index (the photos' keys, line by line) beside it, so the summary
can name each photo.
"""

from __future__ import annotations

import base64
import json
import math
import sys
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from deployment import storage
from deployment.errors import UserError
from serve.batch_transform import TRANSFORM_MAX_PAYLOAD_MB
from serve.settings_table import DEFAULT_MAX_PAYLOAD_MB
from train.layout import is_photo, readable_label

MB = 1024 * 1024
# One job has one ContentType (TransformInput): the photos' own when they share one, else
# application/x-image, which serve reads whatever the format.
CONTENT_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png"}
ANY_IMAGE = "application/x-image"
JSONLINES = "application/jsonlines"
RECORDS_PER_FILE = 1000  # photos per packed JSON Lines file
POLL_S = 30
DONE = ("Completed", "Failed", "Stopped")
THREADS = 16  # S3 requests in flight when packing and reading answers


@dataclass
class Inputs:
    """What a transform job reads: ``uri`` (an S3 prefix ending in /), its ``keys`` relative to
    it with their sizes (bytes), for packed JSON Lines the photos of each file (``index``: file
    key -> photo keys, line by line), and the ``manifest`` (an S3 URI) that lists the keys when
    the job reads one instead of the whole prefix."""

    uri: str
    keys: dict[str, int]
    index: dict[str, list[str]] | None = None
    manifest: str | None = None

    @property
    def photos(self) -> list[str]:
        """The photos' keys under the original prefix, in order."""
        if self.index is None:
            return sorted(self.keys)
        return [photo for name in sorted(self.index) for photo in self.index[name]]


def split_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b")``.

    Raises:
        UserError: not an s3:// URI with a bucket.
    """
    if not uri.startswith("s3://") or not uri[5:].split("/", 1)[0]:
        raise UserError(f"{uri}: an S3 URI, s3://BUCKET/PREFIX/")
    bucket, _, key = uri[5:].partition("/")
    return bucket, key


def folder_uri(uri: str) -> str:
    """An S3 prefix that names a folder: ``s3://b/photos`` -> ``s3://b/photos/``."""
    return uri if uri.endswith("/") else uri + "/"


def list_objects(s3, uri: str) -> dict[str, int]:
    """Every object under the S3 prefix ``uri``: its key relative to the prefix -> bytes."""
    bucket, prefix = split_uri(uri)
    found = storage.objects(s3, bucket, prefix)
    return {key[len(prefix):]: obj["Size"] for key, obj in found.items() if not key.endswith("/")}


def list_photos(s3, uri: str) -> Inputs:
    """The photos under ``uri`` (an S3 folder), by the training layout's rule (train/layout.py:
    an image extension, not hidden).

    Raises:
        UserError: no photo there, or one over the 100 MB a request may carry.
    """
    uri = folder_uri(uri)
    objects = list_objects(s3, uri)
    photos = {key: size for key, size in objects.items() if is_photo(key)}
    if not photos:
        raise UserError(f"no photos under {uri} ({len(objects)} objects, none with an image "
                        "extension such as .jpg or .png)")
    key, size = max(photos.items(), key=lambda item: item[1])
    if size > TRANSFORM_MAX_PAYLOAD_MB * MB:
        raise UserError(f"{uri}{key} is {size / MB:.0f} MB: a transform job's requests carry at "
                        f"most {TRANSFORM_MAX_PAYLOAD_MB} MB (MaxPayloadInMB); leave it out")
    if len(photos) < len(objects):
        print(f"{uri}: {len(objects) - len(photos)} objects that are not photos are left out",
              file=sys.stderr)
    return Inputs(uri, photos)


def write_manifest(s3, photos: Inputs, manifest_uri: str) -> Inputs:
    """A manifest of the photos' keys at ``manifest_uri``, for S3DataType ManifestFile: the
    job then reads the photos only. With S3Prefix it would read every object under the
    prefix, and one that is no image (a README.txt, a macOS ``._photo.jpg``) gets a 400 from
    serve, which fails its object and so the whole job. The format is the API reference's
    (TransformS3DataSource): ``[{"prefix": PREFIX}, KEY, ...]``, keys relative to PREFIX."""
    bucket, key = split_uri(manifest_uri)
    body = json.dumps([{"prefix": photos.uri}] + sorted(photos.keys)).encode()
    s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json")
    return Inputs(photos.uri, photos.keys, manifest=manifest_uri)


def read_manifest(s3, manifest_uri: str) -> Inputs:
    """The inputs a manifest that ``write_manifest`` wrote lists (sizes unknown: 0)."""
    bucket, key = split_uri(manifest_uri)
    prefix, *keys = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    return Inputs(prefix["prefix"], dict.fromkeys(keys, 0), manifest=manifest_uri)


def content_type(keys) -> str:
    """The job's ContentType for photos with these keys (see ``CONTENT_TYPES``)."""
    types = {CONTENT_TYPES.get("." + key.rsplit(".", 1)[-1].lower(), ANY_IMAGE) for key in keys}
    return types.pop() if len(types) == 1 else ANY_IMAGE


def payload_mb(largest_bytes: int, jsonlines: bool) -> int:
    """MaxPayloadInMB: the largest request, rounded up to a MB (1 to 100); JSON Lines requests
    hold as many lines as fit, so at least the real-time cap (6) there.

    Raises:
        UserError: one record over 100 MB.
    """
    needed = max(1, math.ceil(largest_bytes / MB))
    if needed > TRANSFORM_MAX_PAYLOAD_MB:
        raise UserError(f"a record of {largest_bytes / MB:.0f} MB is over the "
                        f"{TRANSFORM_MAX_PAYLOAD_MB} MB "
                        "a transform job's request may carry (MaxPayloadInMB)")
    return max(needed, DEFAULT_MAX_PAYLOAD_MB) if jsonlines else needed


def pack_jsonlines(s3, photos: Inputs, dest_uri: str) -> tuple[Inputs, int]:
    """The photos as JSON Lines files of ``{"b64": ...}`` records (``RECORDS_PER_FILE`` each)
    under ``dest_uri``, and the index of their photos beside it (``dest_uri`` without its slash,
    plus ``.index.json``); returns the packed inputs and the longest line (bytes)."""
    from tqdm import tqdm

    bucket, prefix = split_uri(photos.uri)
    dest_uri = folder_uri(dest_uri)
    dest_bucket, dest_prefix = split_uri(dest_uri)
    keys = photos.photos
    index, sizes, longest = {}, {}, 0

    def line(key: str) -> bytes:
        data = s3.get_object(Bucket=bucket, Key=prefix + key)["Body"].read()
        return json.dumps({"b64": base64.b64encode(data).decode()}).encode()

    with ThreadPoolExecutor(THREADS) as pool, tqdm(total=len(keys), unit="photo", desc="pack",
                                                   file=sys.stderr, disable=None) as bar:
        for n, first in enumerate(range(0, len(keys), RECORDS_PER_FILE)):
            chunk = keys[first:first + RECORDS_PER_FILE]
            lines = []
            for record in pool.map(line, chunk):
                lines.append(record)
                bar.update()
            longest = max([longest] + [len(x) + 1 for x in lines])
            name = f"photos-{n + 1:05d}.jsonl"
            body = b"\n".join(lines) + b"\n"
            s3.put_object(Bucket=dest_bucket, Key=dest_prefix + name, Body=body,
                          ContentType=JSONLINES)
            index[name], sizes[name] = chunk, len(body)
    write_index(s3, dest_uri, index)
    return Inputs(dest_uri, sizes, index), longest


def index_uri(inputs_uri: str) -> str:
    """Where the index of packed inputs at ``inputs_uri`` is kept (outside their prefix, so the
    job does not read it)."""
    return inputs_uri.rstrip("/") + ".index.json"


def write_index(s3, inputs_uri: str, index: dict) -> None:
    """Keep the photo keys of each packed file beside the files."""
    bucket, key = split_uri(index_uri(inputs_uri))
    s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(index).encode(),
                  ContentType="application/json")


def read_index(s3, inputs_uri: str) -> dict:
    """The index ``write_index`` kept for the packed inputs at ``inputs_uri``."""
    bucket, key = split_uri(index_uri(inputs_uri))
    return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def request(job: str, model: str, inputs: Inputs, output_uri: str, instance_type: str,
            instance_count: int, timeout_s: int, ami: str | None, jsonlines: bool,
            payload: int) -> dict:
    """CreateTransformJob's parameters: one image a request (SplitType None, SingleRecord) or
    JSON Lines (SplitType Line, MultiRecord, the answers assembled a line each); the inputs'
    manifest when they have one, else their prefix; the invocation timeout;
    MaxConcurrentTransforms left to the container (module docstring)."""
    resources = {"InstanceType": instance_type, "InstanceCount": instance_count}
    if ami:
        resources["TransformAmiVersion"] = ami
    return {
        "TransformJobName": job, "ModelName": model,
        "BatchStrategy": "MultiRecord" if jsonlines else "SingleRecord",
        "MaxPayloadInMB": payload,
        "ModelClientConfig": {"InvocationsTimeoutInSeconds": timeout_s,
                              "InvocationsMaxRetries": 1},
        "TransformInput": {
            "DataSource": {"S3DataSource": {
                "S3DataType": "ManifestFile" if inputs.manifest else "S3Prefix",
                "S3Uri": inputs.manifest or inputs.uri}},
            "ContentType": JSONLINES if jsonlines else content_type(inputs.keys),
            "SplitType": "Line" if jsonlines else "None", "CompressionType": "None"},
        "TransformOutput": {"S3OutputPath": output_uri,
                            "Accept": JSONLINES if jsonlines else "application/json",
                            "AssembleWith": "Line" if jsonlines else "None"},
        "TransformResources": resources,
    }


def wait(sm, s3, job: str, output_uri: str, expected: int, poll_s: float | None = None
         ) -> dict:
    """Poll the job every ``poll_s`` seconds (``POLL_S``) until it ends, showing the objects
    done (the ``.out`` files under ``output_uri``: the service reports no progress of its
    own); returns its description."""
    from tqdm import tqdm

    poll_s = POLL_S if poll_s is None else poll_s
    status = None
    with tqdm(total=expected, unit="object", desc=job, file=sys.stderr, disable=None) as bar:
        while True:
            desc = sm.describe_transform_job(TransformJobName=job)
            if desc["TransformJobStatus"] != status:
                status = desc["TransformJobStatus"]
                bar.write(f"transform job {job}: {status}", file=sys.stderr)
            done = sum(1 for key in list_objects(s3, output_uri) if key.endswith(".out"))
            bar.update(min(done, expected) - bar.n)
            if status in DONE:
                return desc
            time.sleep(poll_s)


@dataclass
class Answer:
    """One photo's outcome: its top-1 breed and probability, or why it has none."""

    photo: str
    label: str | None = None
    probability: float | None = None
    error: str | None = None


def _read(s3, uri: str) -> bytes | None:
    bucket, key = split_uri(uri)
    try:
        return s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except s3.exceptions.NoSuchKey:
        return None


def answers(s3, inputs: Inputs, output_uri: str, failure: str | None) -> list[Answer]:
    """Each photo's answer from the ``.out`` files under ``output_uri`` (a missing one is a
    failed input: the job's ``failure`` reason says why)."""
    output_uri = folder_uri(output_uri)
    names = sorted(inputs.keys)
    # Each input's .out is at its key under the output path; the developer guide's example
    # (TransformOutput) puts the input's prefix in between, so that place is looked at too.
    written = set(list_objects(s3, output_uri))
    _, input_prefix = split_uri(inputs.uri)

    def out_of(name: str) -> bytes | None:
        found = [k for k in (f"{name}.out", f"{input_prefix}{name}.out") if k in written]
        return _read(s3, f"{output_uri}{found[0]}") if found else None

    with ThreadPoolExecutor(THREADS) as pool:
        outs = dict(zip(names, pool.map(out_of, names)))
    missing = "no answer: the job failed on it" + (f" ({failure})" if failure else "")
    result = []
    for name in names:
        out = outs[name]
        photos = inputs.index[name] if inputs.index is not None else [name]
        if out is None:
            result += [Answer(photo, error=missing) for photo in photos]
            continue
        lines = [json.loads(out)["predictions"][0]] if inputs.index is None else [
            json.loads(line) for line in out.decode().splitlines() if line.strip()]
        if len(lines) != len(photos):
            result += [Answer(photo, error=f"{name}.out has {len(lines)} answers for "
                                           f"{len(photos)} photos") for photo in photos]
            continue
        for photo, line in zip(photos, lines):
            if "top_k" in line:
                best = line["top_k"][0]
                result.append(Answer(photo, best["label"], best["probability"]))
            else:
                result.append(Answer(photo, error=line.get("reason", json.dumps(line))))
    return result


def class_of(photo: str) -> str | None:
    """The label of the class folder a photo key sits in (``001.Affenpinscher/x.jpg`` ->
    ``Affenpinscher``), None for a photo at the top of the prefix."""
    parts = photo.split("/")
    return readable_label(parts[-2]) if len(parts) > 1 else None


def accuracy(results: list[Answer]) -> list[list]:
    """Rows (class, photos, correct, accuracy) per class folder, and ``all`` last; [] when no
    photo is in a class folder. A photo without an answer counts as wrong."""
    per = defaultdict(Counter)
    for r in results:
        truth = class_of(r.photo)
        if truth is not None:
            per[truth]["photos"] += 1
            per[truth]["correct"] += int(r.label == truth)
    if not per:
        return []
    rows = [[name, c["photos"], c["correct"], f"{c['correct'] / c['photos']:.3f}"]
            for name, c in sorted(per.items())]
    photos = sum(c["photos"] for c in per.values())
    correct = sum(c["correct"] for c in per.values())
    return rows + [["all", photos, correct, f"{correct / photos:.3f}"]]
