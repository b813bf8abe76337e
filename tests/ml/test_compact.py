"""The bundled models' numpy twins (ethml.ml.compact) predict bit for bit what scikit-learn predicts, on
the data they were made for, on extreme inputs and on every split threshold of every tree; anything
they do not cover is refused at load and left to scikit-learn; a miner never imports scikit-learn."""

from __future__ import annotations

import io
import json
import pickle
import subprocess
import sys
import warnings
from typing import Any

import joblib
import numpy as np
import pytest

from ethml.ml import Manifest, ModelStore, compact
from ethml.ml.loader import LoadedModel
from tests.conftest import ROOT

MANIFEST = Manifest.load(ROOT / "models")
NAMES = [m.name for m in MANIFEST.models]


def _both(name: str) -> tuple[Any, Any]:
    blob = MANIFEST.artifact_path(MANIFEST.by_name(name)).read_bytes()
    return compact.loads(blob, name), joblib.load(io.BytesIO(blob))


def _outcome(model: Any, X: np.ndarray) -> tuple[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # float32 overflow of extreme inputs, in both
        try:
            out = np.asarray(model.predict(X))
        except ValueError:
            return ("refused", None)
    return ("predicted", (out.dtype.str, out.tobytes()))


def _rows(name: str, rng: np.random.Generator) -> np.ndarray:
    """Inputs for a model: its held-out points, points scattered around them at several scales, and
    extreme magnitudes (float32 overflow, tiny values, signs)."""
    entry = MANIFEST.by_name(name)
    base = np.array([json.loads(MANIFEST.data_point_path(p).read_text()) for p in entry.data_points])
    n = entry.feature_count
    scale = np.abs(base).mean(axis=0) + 1e-3
    rows = [base]
    for spread in (0.01, 0.3, 3.0):
        picks = base[rng.integers(0, len(base), 300)]
        rows.append(picks + rng.normal(0, spread, (300, n)) * scale)
    for magnitude in (1e-300, 1e-30, 1e30, 3.5e38, 1e300, 1.7e308):
        rows.append(rng.choice([-1.0, 1.0], (8, n)) * magnitude * rng.uniform(0.5, 1.0, (8, n)))
    rows.append(np.zeros((1, n)))
    return np.vstack(rows)


@pytest.mark.parametrize("name", NAMES)
def test_twins_predict_bit_for_bit_what_scikit_learn_predicts(name: str) -> None:
    twin, reference = _both(name)
    rows = _rows(name, np.random.default_rng(20261202))
    for row in rows:  # one at a time, as a miner predicts
        x = row.reshape(1, -1)
        assert _outcome(twin, x) == _outcome(reference, x), (name, row.tolist())
    assert _outcome(twin, rows) == _outcome(reference, rows)  # and as one batch


def test_the_forest_takes_every_split_as_scikit_learn_does() -> None:
    """Inputs exactly at each tree's thresholds and one float32 step either side: the comparison of a
    float32 feature with a float64 threshold must go the same way."""
    twin, reference = _both("wine")
    entry = MANIFEST.by_name("wine")
    base = np.array(json.loads(MANIFEST.data_point_path(entry.data_points[0]).read_text()), dtype=np.float64)
    rows = []
    for tree in twin.estimators_:
        for feature, threshold in zip(tree.tree_.feature, tree.tree_.threshold, strict=True):
            if feature < 0:
                continue
            at = np.float32(threshold)
            for value in (at, np.nextafter(at, np.float32(-np.inf)), np.nextafter(at, np.float32(np.inf))):
                row = base.copy()
                row[feature] = float(value)
                rows.append(row)
    X = np.array(rows)
    assert len(X) > 500
    for row in X:
        assert _outcome(twin, row.reshape(1, -1)) == _outcome(reference, row.reshape(1, -1))


@pytest.mark.parametrize("name", NAMES)
def test_encoded_predictions_and_refusals_match_through_the_store(name: str) -> None:
    twin, reference = _both(name)
    entry = MANIFEST.by_name(name)
    for row in _rows(name, np.random.default_rng(7))[::7]:
        raw = json.dumps(row.tolist()).encode()
        results = []
        for model in (twin, reference):
            try:
                results.append(LoadedModel(entry, model).predict_one(raw))
            except Exception as exc:  # noqa: BLE001 - the same refusal is what is compared
                results.append(type(exc).__name__)
        assert results[0] == results[1], (name, row.tolist(), results)


def test_the_store_serves_bundled_models_with_the_twins() -> None:
    store = ModelStore(MANIFEST)
    try:
        for entry in MANIFEST.models:
            assert isinstance(store.get(entry.name).model, compact._Twin)
    finally:
        store.close()


def test_a_miner_never_imports_scikit_learn_for_the_bundled_models() -> None:
    code = (
        "import sys, json\n"
        "from ethml.ml import Manifest, ModelStore\n"
        "m = Manifest.load(); s = ModelStore(m)\n"
        "for e in m.models:\n"
        "    for p in e.data_points: s.get(e.name).predict_one(m.data_point_path(p).read_bytes())\n"
        "import ethml.node\n"
        "print(json.dumps(sorted(k for k in ('sklearn', 'scipy') if k in sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []


def _dumped(obj: Any) -> bytes:
    out = io.BytesIO()
    joblib.dump(obj, out, compress=3)
    return out.getvalue()


def test_other_estimators_are_left_to_scikit_learn() -> None:
    from sklearn.linear_model import LinearRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X = np.arange(12.0).reshape(6, 2)
    pipeline = make_pipeline(StandardScaler(), LinearRegression()).fit(X, X[:, 0] * 2)
    with pytest.raises(compact.CompactUnsupported, match="LinearRegression"):
        compact.loads(_dumped(pipeline))


class _Boom:
    def __reduce__(self) -> tuple[Any, ...]:
        return (print, ("this must never run",))


def test_a_hostile_pickle_is_refused_before_anything_runs(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(compact.CompactUnsupported, match=r"builtins\.print"):
        compact.loads(_dumped(_Boom()))
    assert "never run" not in capsys.readouterr().out
    with pytest.raises(compact.CompactUnsupported):
        compact.loads(pickle.dumps({"not": "an estimator"}))
