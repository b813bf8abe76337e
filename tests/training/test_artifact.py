"""Deterministic artifacts: two independent trainings of one spec, in separate processes, publish the
same bytes (same sha256) for every allowed estimator; the canonical archive holds no timestamp, object
id or random name, and loads and predicts exactly like the model it came from."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import skops.io as sio

from ethml.ml.loader import load_untrusted, sha256_hex
from ethml.training import ESTIMATORS, fit_and_claim, parse_spec, sklearn_dataset_csv, split_csv
from ethml.training.artifact import canonical_dumps, canonicalize
from tests.conftest import ROOT

# Trains every allowed estimator on wine or diabetes and prints {name: sha256}.
TRAIN_ALL = """
import json, sys
from ethml.training import ESTIMATORS, fit_and_claim, parse_spec, sklearn_dataset_csv, split_csv
out = {}
for name, (_path, kind, _params) in sorted(ESTIMATORS.items()):
    public, _hidden = split_csv(sklearn_dataset_csv("wine" if kind == "classification" else "diabetes"), 0.3, seed=1)
    spec = parse_spec({
        "target": "target",
        "features": public.decode().splitlines()[0].split(",")[:-1],
        "estimator": {"name": name},
        "metric": "accuracy" if kind == "classification" else "r2",
        "decimals": 0 if kind == "classification" else 2,
    })
    trained = fit_and_claim(spec, public, 42)
    out[name] = [trained.sha256, trained.claimed_score]
print(json.dumps(out))
"""


def _train_in_a_new_process(hash_seed: str) -> dict[str, list[object]]:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}  # set and dict orders differ between the two
    done = subprocess.run(
        [sys.executable, "-c", TRAIN_ALL], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def test_two_independent_trainings_give_the_same_sha256_for_every_estimator() -> None:
    first = _train_in_a_new_process("1")
    second = _train_in_a_new_process("2")
    assert set(first) == set(ESTIMATORS)
    assert first == second, {k: (first[k], second[k]) for k in first if first[k] != second[k]}


def _wine_forest() -> tuple[object, bytes]:
    public, _hidden = split_csv(sklearn_dataset_csv("wine"), 0.3, seed=1)
    spec = parse_spec(
        {
            "target": "target",
            "features": public.decode().splitlines()[0].split(",")[:-1],
            "estimator": {"name": "RandomForestClassifier", "params": {"n_estimators": 5}},
            "metric": "accuracy",
        }
    )
    return spec, public


def test_the_archive_is_canonical_and_loads_like_the_model() -> None:
    spec, public = _wine_forest()
    trained = fit_and_claim(spec, public, 3)  # type: ignore[arg-type]
    archive = zipfile.ZipFile(io.BytesIO(trained.artifact))
    infos = archive.infolist()
    assert [i.filename for i in infos] == sorted(i.filename for i in infos)
    assert {i.date_time for i in infos} == {(1980, 1, 1, 0, 0, 0)}
    assert {i.compress_type for i in infos} == {zipfile.ZIP_STORED}
    names = [i.filename for i in infos if i.filename != "schema.json"]
    assert names == [f"{n:08d}.npy" for n in range(1, len(names) + 1)]  # no memory address, no UUID
    schema = json.loads(archive.read("schema.json"))
    ids: list[int] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if "__id__" in node:
                ids.append(node["__id__"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    assert ids == list(range(1, len(ids) + 1))  # numbered in order, not object ids
    assert canonicalize(trained.artifact) == trained.artifact  # a canonical archive is a fixed point

    model = load_untrusted(trained.artifact, "canonical", trained.sha256)
    x = np.asarray([[float(v) for v in line.split(",")[:-1]] for line in public.decode().splitlines()[1:]])
    original = sio.loads(sio.dumps(model), trusted=sio.get_untrusted_types(data=sio.dumps(model)))
    assert np.array_equal(model.predict_proba(x), original.predict_proba(x))


def test_skops_own_archive_differs_between_dumps_and_the_canonical_one_does_not() -> None:
    """What the canonical form fixes: skops writes the time and object ids, so its bytes change."""
    spec, public = _wine_forest()
    trained = fit_and_claim(spec, public, 3)  # type: ignore[arg-type]
    model = load_untrusted(trained.artifact, "canonical", trained.sha256)
    raw = [sio.dumps(model) for _ in range(2)]
    assert raw[0] != raw[1]  # object ids of the temporary objects skops makes differ
    assert canonicalize(raw[0]) == canonicalize(raw[1]) == canonical_dumps(model) == trained.artifact
    assert sha256_hex(canonical_dumps(model)) == trained.sha256


def test_sparse_members_are_canonical_too() -> None:
    """A sparse matrix is stored by skops as an .npz, a zip of its own with timestamps."""
    sparse = pytest.importorskip("scipy.sparse")
    matrix = sparse.csr_matrix(np.eye(4))
    first = canonical_dumps({"m": matrix})
    archive = zipfile.ZipFile(io.BytesIO(first))
    inner = zipfile.ZipFile(io.BytesIO(archive.read("00000001.npz")))
    assert {i.date_time for i in inner.infolist()} == {(1980, 1, 1, 0, 0, 0)}
    assert canonical_dumps({"m": sparse.csr_matrix(np.eye(4))}) == first
    loaded = sio.loads(first, trusted=sio.get_untrusted_types(data=first))
    assert (loaded["m"] != matrix).nnz == 0


@pytest.mark.parametrize("name", ["RandomForestClassifier", "LogisticRegression"])
def test_the_same_spec_twice_in_one_process_gives_one_artifact(name: str) -> None:
    public, _hidden = split_csv(sklearn_dataset_csv("wine"), 0.3, seed=1)
    spec = parse_spec(
        {
            "target": "target",
            "features": public.decode().splitlines()[0].split(",")[:-1],
            "estimator": {"name": name},
            "metric": "accuracy",
        }
    )
    assert fit_and_claim(spec, public, 9).artifact == fit_and_claim(spec, public, 9).artifact
