"""deploy.py local: the SDK's local mode, without a Docker engine."""

from __future__ import annotations

from tests.conftest import DOG_PHOTOS
from tests.deployment.conftest import run


def test_local_builds_local_session_train_and_deploy(capsys, monkeypatch, tmp_path,
                                                      no_containers):
    """Local mode without a Docker engine: the LocalSession, fit and deploy calls are checked;
    the real run against podman is not part of this test."""
    from sagemaker.estimator import Estimator
    from sagemaker.local import LocalSession
    from sagemaker.model import Model

    from tools.datasets import write_digits

    data = write_digits(tmp_path / "digits", image_size=8, per_class=6)
    seen = {}

    def fit(self, inputs, job_name=None, **kw):
        seen["fit"] = (self, inputs, job_name)
        self._fake_model = f"file://{tmp_path}/out/model.tar.gz"

    class FakePredictor:
        serializer = None

        def predict(self, data, custom_attributes=None):
            return {"predictions": [{"top_k": [{"label": "digit_1", "index": 1,
                                                "probability": 0.9}]}]}

        def delete_endpoint(self):
            seen["deleted"] = True

    def deploy_(self, **kw):
        seen["deploy"] = (self, kw)
        return FakePredictor()

    monkeypatch.setattr(Estimator, "fit", fit)
    monkeypatch.setattr(Estimator, "model_data", property(lambda self: self._fake_model))
    monkeypatch.setattr(Model, "deploy", deploy_)
    code, out, err = run(capsys, "local", "--data-dir", str(data), "--mode", "local_gpu",
                         "--hp", "epochs=1", "--output-dir", str(tmp_path / "out"),
                         "--images", str(DOG_PHOTOS[0]))
    assert code == 0, err
    est, inputs, _ = seen["fit"]
    assert isinstance(est.sagemaker_session, LocalSession)
    assert est.instance_type == "local_gpu" and est.image_uri == "sagemaker-dog-breeds:latest"
    assert inputs == {s: f"file://{data / s}" for s in ("train", "valid", "test")}
    assert est.hyperparameters() == {"epochs": "1"}
    model, kw = seen["deploy"]
    assert kw == {"initial_instance_count": 1, "instance_type": "local_gpu"}
    assert model.model_data == f"file://{tmp_path}/out/model.tar.gz"
    assert isinstance(model.sagemaker_session, LocalSession)
    assert seen["deleted"] and "digit_1" in out
    assert no_containers.read_text().startswith("ps -a")  # its containers were looked for
