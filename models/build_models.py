"""Train the bundled models from scikit-learn's own data sets and write the manifest.

Deterministic: fixed split and model seeds, so a rebuild gives identical predictions.
Writes models/<name>.joblib, models/manifest.json and held-out rows as JSON data points under
models/data/ (with their IPFS CIDs and true labels), for demos and tests.

Run: python models/build_models.py
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import sklearn
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris, load_wine
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from ethml.ipfs.unixfs import build_file

HERE = Path(__file__).resolve().parent
SEED = 20261127
HELD_OUT_POINTS = 4


def _classifier() -> Pipeline:
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=SEED))


MODELS: list[dict[str, Any]] = [
    {"name": "breast-cancer", "kind": "classification", "decimals": 0, "load": load_breast_cancer, "make": _classifier},
    {
        "name": "diabetes",
        "kind": "regression",
        "decimals": 2,
        "load": load_diabetes,
        "make": lambda: make_pipeline(StandardScaler(), Ridge(alpha=1.0)),
    },
    {"name": "iris", "kind": "classification", "decimals": 0, "load": load_iris, "make": _classifier},
    {
        "name": "wine",
        "kind": "classification",
        "decimals": 0,
        "load": load_wine,
        "make": lambda: RandomForestClassifier(n_estimators=30, max_depth=6, random_state=SEED),
    },
]


def cid_of(data: bytes) -> str:
    return str(build_file(data, 0)[0])


def build(spec: dict[str, Any], model_id: int) -> dict[str, Any]:
    load: Callable[[], Any] = spec["load"]
    ds = load()
    X, y = ds.data.astype(np.float64), ds.target
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.2, random_state=SEED, stratify=y if spec["kind"] == "classification" else None
    )
    model = spec["make"]()
    model.fit(X_train, y_train)
    score = float(model.score(X_test, y_test))
    artifact = HERE / f"{spec['name']}.joblib"
    joblib.dump(model, artifact, compress=3)
    blob = artifact.read_bytes()
    points = []
    for i in range(HELD_OUT_POINTS):
        text = json.dumps([float(v) for v in X_test[i]]) + "\n"
        path = HERE / "data" / f"{spec['name']}-{i}.json"
        path.write_text(text)
        label: float | int = int(y_test[i]) if spec["kind"] == "classification" else float(y_test[i])
        points.append({"file": f"data/{path.name}", "cid": cid_of(text.encode()), "label": label})
    return {
        "id": model_id,
        "name": spec["name"],
        "kind": spec["kind"],
        "decimals": spec["decimals"],
        "feature_count": int(X.shape[1]),
        "feature_names": [str(n) for n in ds.feature_names],
        "artifact": artifact.name,
        "sha256": hashlib.sha256(blob).hexdigest(),
        "cid": cid_of(blob),
        "sklearn_version": sklearn.__version__,
        "metric": {"accuracy" if spec["kind"] == "classification" else "r2": round(score, 4)},
        "data_points": points,
    }


def main() -> None:
    (HERE / "data").mkdir(exist_ok=True)
    entries = [build(spec, i + 1) for i, spec in enumerate(MODELS)]
    (HERE / "manifest.json").write_text(json.dumps({"models": entries}, indent=2) + "\n")
    for e in entries:
        print(f"{e['id']} {e['name']:<14} {e['kind']:<15} {e['metric']}  {e['cid']}")


if __name__ == "__main__":
    main()
