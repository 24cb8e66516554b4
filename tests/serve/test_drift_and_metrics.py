"""Drift scores and EMF documents, without a server."""

from __future__ import annotations

import json

import numpy as np
import pytest

from serve.drift import PSI_ALERT, DriftWindow, js_distance, load_baseline, psi
from serve.metrics import EndpointMetrics
from tests.helpers.serving import emf_ok





def test_psi_and_js_distance():
    same = np.array([0.25, 0.25, 0.5])
    assert psi(same, same * 1000) == pytest.approx(0, abs=1e-12)
    assert js_distance(same, same) == pytest.approx(0, abs=1e-6)
    shifted = np.array([0.4, 0.25, 0.35])
    assert 0.1 < psi(same, shifted) < PSI_ALERT  # a moderate shift
    assert psi(same, [1, 0, 0]) > PSI_ALERT and js_distance([1, 0], [0, 1]) == pytest.approx(1)


BASELINE = {"baseline": {
    "predicted_class": {"edges": None, "groups": [0, 0, 1, 1, 2, 2], "shares": [0.3, 0.3, 0.4]},
    "confidence": {"edges": [0, 0.5, 0.9, 1], "shares": [0.1, 0.3, 0.6]},
    "brightness": {"edges": [0, 64, 128, 192, 256], "shares": [0.1, 0.4, 0.4, 0.1]},
    "aspect_ratio": {"edges": [0, 0.9, 1.12, 1000], "shares": [0.2, 0.6, 0.2]},
    "megapixels": {"edges": [0, 0.5, 1000], "shares": [0.5, 0.5]},
}}


def _sample(rng, n, dark=False, one_class=False):
    classes = np.full(n, 5) if one_class else rng.choice(6, n, p=[.15, .15, .15, .15, .2, .2])
    confidence = rng.choice([0.3, 0.7, 0.95], n, p=[0.1, 0.3, 0.6])
    brightness = rng.choice([30, 100, 160, 220], n, p=[0.1, 0.4, 0.4, 0.1]) * (0.2 if dark else 1)
    aspect = rng.choice([0.8, 1.0, 1.3], n, p=[0.2, 0.6, 0.2])
    megapixels = rng.choice([0.2, 2.0], n)
    return zip(classes, confidence, brightness, aspect, megapixels)


def test_drift_window_scores_stay_low_in_distribution_and_cross_on_a_shift():
    baseline = load_baseline(BASELINE)
    rng = np.random.default_rng(0)
    window = DriftWindow(baseline, size=500, min_images=100)
    assert window.scores() == {}  # too few images yet
    for row in _sample(rng, 500):
        window.add(*row)
    calm = window.scores()
    assert set(calm) == {f"Drift{kind}{stat}" for kind in ("PSI", "JS") for stat in (
        "PredictedClass", "Confidence", "Brightness", "AspectRatio", "Megapixels")}
    assert max(v for k, v in calm.items() if k.startswith("DriftPSI")) < 0.1, calm
    for row in _sample(rng, 500, dark=True, one_class=True):
        window.add(*row)
    shifted = window.scores()
    assert shifted["DriftPSIBrightness"] > PSI_ALERT and shifted["DriftPSIPredictedClass"] > PSI_ALERT
    assert shifted["DriftPSIAspectRatio"] < 0.1  # what did not move stays put


@pytest.mark.parametrize("corrupt", [
    {}, {"baseline": "none"},
    {"baseline": {**BASELINE["baseline"], "confidence": {"edges": [0, 1], "shares": [0.5, 0.5]}}},
    {"baseline": {**BASELINE["baseline"], "brightness": {"edges": [0, 1], "shares": ["x"]}}},
    {"baseline": {**BASELINE["baseline"],
                  "predicted_class": {"edges": None, "groups": [0, 7], "shares": [1.0]}}},
])
def test_a_missing_or_malformed_baseline_means_no_drift_scores(corrupt):
    assert load_baseline(corrupt) is None


def test_a_workers_interval_is_a_few_documents_with_its_counts():
    lines = []
    m = EndpointMetrics("dogs", "AllTraffic", "v1", 3600, write=lines.append)
    for i in range(250):
        m.record(200, {"latency_ms": 10 + i % 7, "decode_ms": 2, "queue_ms": 1,
                       "compute_ms": 6, "batch_size": 4, "images": 1}, [0.8])
    m.record(400, {"latency_ms": 1.0}, decode_failure="corrupt")
    m.record(415, {"latency_ms": 0.5})
    for depth in (3, 11, 0):
        m.queue_changed(depth)
    m.close()
    docs = [json.loads(line) for line in lines]
    assert len(docs) == 4  # the interval's metrics, and one per status
    for doc in docs:
        emf_ok(doc)
        assert doc["EndpointName"] == "dogs" and doc["ModelVersion"] == "v1"
    main = docs[0]
    assert main["Invocations"] == 252 and main["Invocation4XXErrors"] == 2
    assert main["Invocation5XXErrors"] == 0 and main["DecodeFailures_corrupt"] == 1
    assert main["BatchSizeMax"] == 4 and main["Images"] == 250
    assert main["QueueDepthMax"] == 11  # the interval's largest, not the last
    assert 10 <= main["LatencyP50"] <= main["LatencyP90"] <= main["LatencyP99"] <= 16
    assert {d.get("Status"): d["Requests"] for d in docs[1:]} == {"200": 250, "400": 1, "415": 1}
    m.flush()
    assert len(lines) == 4  # a quiet interval writes nothing
