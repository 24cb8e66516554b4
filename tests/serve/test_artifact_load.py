"""A worker's model load, in-process: the artifact validated once (each wrong field named, no
reload loop, nothing left running), a compile store others can write refused and the model
served eagerly, and the per-request bounds that need a loaded model (k, JSON counts before base64,
decode time and the deadline)."""

from __future__ import annotations

import base64
import gc
import io
import json
import logging
import os
import threading
import time

import pytest
import torch
from PIL import Image

from serve.app import create_app
from serve.config import Settings
from tests.conftest import DOG_PHOTOS, untrained_artifact

pytestmark = pytest.mark.model  # each test loads a model


@pytest.fixture(autouse=True)
def _unfreeze():
    yield
    gc.unfreeze()


@pytest.fixture
def model_dir(tmp_path):
    return untrained_artifact(tmp_path / "model", 10)


def _app(model_dir, monkeypatch, **env):
    monkeypatch.setenv("SM_MODEL_DIR", str(model_dir))
    monkeypatch.setenv("SERVE_COMPILE", env.pop("SERVE_COMPILE", "off"))
    monkeypatch.setenv("SERVE_METRICS", "off")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return create_app(Settings.from_env(gpus=0), torch.device("cpu"))


def _wait(app, condition, seconds: float = 60):
    deadline = time.monotonic() + seconds
    while not condition(app.extensions["model"]):
        assert time.monotonic() < deadline, app.extensions["model"].error
        time.sleep(0.05)


def _edit(model_dir, change) -> None:
    path = model_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def _set(path: str, value):
    def change(manifest):
        keys = path.split(".")
        target = manifest
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value
    return change


BAD_ARTIFACTS = {
    "training not an object": (_set("training", "complete"), "field 'training'"),
    "classes and num_classes disagree": (_set("num_classes", 9), "field 'num_classes'"),
    "a class name not a string": (_set("classes", [1] * 10), "field 'classes'"),
    "std of zero": (_set("preprocess.std", [0.2, 0.0, 0.2]), "field 'preprocess.std'"),
    "crop not an integer": (_set("preprocess.crop", "32"), "field 'preprocess.crop'"),
    "max batch missing": (_set("input", {}), "field 'input.max_batch'"),
    "program outside the model dir": (_set("program", "../model.pt2"), "field 'program'"),
    "program sha256 not the file's": (_set("program_sha256", "0" * 64),
                                      "sha256 is not the manifest's program_sha256"),
    "one class fewer than the program's logits": (
        lambda m: m.update(classes=m["classes"][:9], num_classes=9),
        "outputs (10,) logits per image; manifest.json lists 9 classes"),
    "format version from the future": (_set("format_version", 2), "field 'format_version'"),
}


@pytest.mark.parametrize("case", list(BAD_ARTIFACTS))
def test_a_bad_artifact_fails_once_with_the_field_named_and_leaks_nothing(
        case, model_dir, monkeypatch, caplog):
    change, words = BAD_ARTIFACTS[case]
    _edit(model_dir, change)
    threads = threading.active_count()
    with caplog.at_level(logging.ERROR, logger="serve"):
        app = _app(model_dir, monkeypatch)
        _wait(app, lambda holder: holder.failed)
        time.sleep(3)  # past a retry period (2 s): a reload loop would log and load again
    holder = app.extensions["model"]
    assert words in holder.error
    assert [r.getMessage() for r in caplog.records].count(
        f"model not loaded: {holder.error} (loaded again when the model dir changes)") == 1
    assert holder.scheduler is None and threading.active_count() <= threads + 1  # the loader
    client = app.test_client()
    ping = client.get("/ping")
    assert ping.status_code == 503 and words in ping.json["reason"]
    photo = client.post("/invocations", data=DOG_PHOTOS[0].read_bytes(),
                        content_type="image/jpeg")
    assert photo.status_code == 503 and "Retry-After" not in photo.headers


def test_a_fixed_artifact_is_loaded_once_its_files_change(model_dir, monkeypatch):
    good = (model_dir / "manifest.json").read_text()
    _edit(model_dir, _set("num_classes", 3))
    app = _app(model_dir, monkeypatch)
    _wait(app, lambda holder: holder.failed)
    (model_dir / "manifest.json").write_text(good)
    _wait(app, lambda holder: holder.healthy())


def test_a_precisions_record_that_is_not_an_object_is_served_in_fp32(model_dir, monkeypatch,
                                                                     caplog):
    _edit(model_dir, _set("precisions", ["int8"]))
    with caplog.at_level(logging.WARNING, logger="serve"):
        app = _app(model_dir, monkeypatch)
        _wait(app, lambda holder: holder.healthy())
    assert app.extensions["model"].classifier.choice.precision == "fp32"
    assert "field 'precisions' is not an object; serving fp32" in caplog.text


def test_a_max_batch_size_over_the_artifacts_is_refused_at_load(model_dir, monkeypatch):
    """Settings stop a max batch size over any program's at start (tests/serve/
    test_decode_and_config.py); an artifact may still record a smaller one."""
    _edit(model_dir, _set("input.max_batch", 4))
    app = _app(model_dir, monkeypatch, SAGEMAKER_MODEL_SERVER_MAX_BATCH_SIZE="8")
    _wait(app, lambda holder: holder.failed)
    assert app.extensions["model"].error == (
        "SAGEMAKER_MODEL_SERVER_MAX_BATCH_SIZE=8 is over this artifact's max batch (4, "
        "manifest.json field 'input.max_batch')")


def test_a_compile_store_others_can_write_is_refused_in_one_line_and_served_eagerly(
        model_dir, tmp_path, monkeypatch, caplog):
    """A store another user could have filled (group or world writable) is never loaded from
    or compiled into: one warning, and the model is served uncompiled."""
    store = tmp_path / "compiled"
    store.mkdir()
    store.chmod(0o777)
    with caplog.at_level(logging.WARNING, logger="serve"):
        app = _app(model_dir, monkeypatch, SERVE_COMPILE="on", SERVE_PRECISION="fp32",
                   SERVE_COMPILE_CACHE_DIR=str(store))
        _wait(app, lambda holder: holder.healthy())
    holder = app.extensions["model"]
    try:
        warnings = [r.getMessage() for r in caplog.records if "compile" in r.getMessage()]
        assert warnings == [f"no compiled program (refusing the compile store {store}: mode 0777 "
                            f"lets other users write or read it; chmod 700 {store}); serving "
                            "fp32 uncompiled"], warnings
        assert holder.watcher is None and not holder.classifier.choice.compile
        assert holder.classifier.describe() == {"precision": "fp32", "compiled_batch_sizes": [],
                                                "eager_precision": "fp32"}
        response = app.test_client().post("/invocations", data=DOG_PHOTOS[0].read_bytes(),
                                          content_type="image/jpeg")
        assert response.status_code == 200
        assert os.listdir(store) == []
    finally:
        holder.scheduler.close()


# ------------------------------------------------------------------ per-request bounds
@pytest.fixture
def client(model_dir, monkeypatch):
    app = _app(model_dir, monkeypatch, SAGEMAKER_MODEL_SERVER_TIMEOUT="4")
    _wait(app, lambda holder: holder.healthy())
    return app.test_client()


PHOTO_B64 = base64.b64encode(DOG_PHOTOS[0].read_bytes()).decode()


@pytest.mark.parametrize("k", ["1e400", "Infinity", "-Infinity", "NaN", "-1", "0", "2.5",
                               "3.0", '"3.5"', '"1e400"', "true", "false", "null", "[3]",
                               '{"k": 3}', '"three"', "99999999999999999999", '" "'])
def test_every_k_that_is_not_a_class_count_is_a_400(client, k):
    body = '{"instances": [{"b64": "%s"}], "k": %s}' % (PHOTO_B64, k)
    response = client.post("/invocations", data=body, content_type="application/json")
    assert response.status_code == 400, response.json
    assert response.json["reason"].startswith("k="), response.json


@pytest.mark.parametrize("header", ["k=1e400", "k=inf", "k=nan", "k=2.5", "k=", "k=0x3"])
def test_every_bad_k_in_custom_attributes_is_a_400(client, header):
    response = client.post("/invocations", data=DOG_PHOTOS[0].read_bytes(),
                           content_type="image/jpeg",
                           headers={"X-Amzn-SageMaker-Custom-Attributes": header})
    assert response.status_code == 400, response.json


def test_a_good_k_is_served(client):
    for k in ('3', '"3"'):
        body = '{"instances": [{"b64": "%s"}], "k": %s}' % (PHOTO_B64, k)
        response = client.post("/invocations", data=body, content_type="application/json")
        assert response.status_code == 200 and len(response.json["predictions"][0]["top_k"]) == 3


def test_json_counts_are_checked_before_any_base64_is_decoded(client, monkeypatch):
    import serve.invocation

    decoded = []
    real = serve.invocation.base64.b64decode
    monkeypatch.setattr(serve.invocation.base64, "b64decode",
                        lambda s, **kw: decoded.append(len(s)) or real(s, **kw))
    flood = b'{"instances": [' + b",".join([b'{"b64": ""}'] * 500_000) + b"]}"
    assert len(flood) < 6 * 2**20
    response = client.post("/invocations", data=flood, content_type="application/json")
    assert response.json["reason"] == ("500000 images in one request; the limit is 64 "
                                       "(SERVE_MAX_IMAGES_PER_REQUEST)")
    padded = b'{"instances": [{"b64": "%s"}], "pad": [' % PHOTO_B64.encode() + b",".join(
        [b"0"] * 2_000_000) + b"]}"
    response = client.post("/invocations", data=padded, content_type="application/json")
    assert response.status_code == 400 and "holds about 2,000,002 values" in (
        response.json["reason"])
    many = json.dumps({"instances": [{"b64": PHOTO_B64}] * 65})
    response = client.post("/invocations", data=many, content_type="application/json")
    assert response.json["reason"] == ("65 images in one request; the limit is 64 "
                                       "(SERVE_MAX_IMAGES_PER_REQUEST)")
    empty = json.dumps({"instances": [{"b64": PHOTO_B64}, {"b64": ""}]})
    response = client.post("/invocations", data=empty, content_type="application/json")
    assert response.json["reason"] == 'instance 1: "b64" is empty'
    assert decoded == []


def _big_png_b64() -> str:
    buf = io.BytesIO()
    Image.new("I;16", (7000, 7000)).save(buf, "PNG")  # 49 MP, 95 KB
    return base64.b64encode(buf.getvalue()).decode()


def test_admission_counts_the_decode_time_of_the_images(client):
    body = json.dumps({"instances": [{"b64": _big_png_b64()}] * 30})
    start = time.monotonic()
    response = client.post("/invocations", data=body, content_type="application/json")
    assert response.status_code == 400, response.json
    assert "to decode), over 50% of the 4 s deadline" in response.json["reason"]
    assert time.monotonic() - start < 2  # refused from the headers, nothing decoded


def test_decoding_stops_at_the_deadline_between_images(client):
    # A cost estimate far too low lets the request in; the deadline still ends it.
    client.application.extensions["invocations"].pipeline.decode_ms_per_megapixel = 0.001
    body = json.dumps({"instances": [{"b64": _big_png_b64()}] * 30})
    start = time.monotonic()
    response = client.post("/invocations", data=body, content_type="application/json")
    elapsed = time.monotonic() - start
    assert response.status_code == 503, response.json
    assert "deadline passed after" in response.json["reason"]
    assert elapsed < 4 + 2, elapsed  # the 4 s deadline and at most one image's decode more


def test_int8_forced_on_a_gpu_fails_once_with_one_line(model_dir, monkeypatch, caplog):
    """int8 is a CPU program: SERVE_PRECISION=int8 on a GPU worker is one error, not a retry
    loop (no CUDA is touched before the refusal, so a CPU host can show it)."""
    from serve import precision

    monkeypatch.setattr(precision.Host, "detect", classmethod(
        lambda cls, device_type, gpu_index=0: cls("cuda", cuda_capability=(9, 0))))
    monkeypatch.setenv("SM_MODEL_DIR", str(model_dir))
    monkeypatch.setenv("SERVE_PRECISION", "int8")
    monkeypatch.setenv("SERVE_METRICS", "off")
    with caplog.at_level(logging.ERROR, logger="serve"):
        app = create_app(Settings.from_env(gpus=1), torch.device("cuda"))
        _wait(app, lambda holder: holder.failed)
        time.sleep(3)  # past a retry period
    holder = app.extensions["model"]
    assert holder.error == ("int8 runs on cpu hosts only: set SERVE_PRECISION to auto, fp32, "
                            "bf16 or fp16 on a cuda host")
    assert len([r for r in caplog.records if "model not loaded" in r.getMessage()]) == 1
