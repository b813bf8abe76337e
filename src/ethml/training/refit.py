"""The re-fit rule: an honest validator votes 0 for any artifact that was not fit as the task's spec says.

A model fit on more than the task's data (the public holdout, or the dataset plus a test set its
requester leaked) scores higher on the test set than an honest one, and neither claim + claimSlack nor
the contract can tell. Training is deterministic (canonical skops artifacts, byte-identical for the same
spec and library versions), so the validator re-fits the spec once per task — through the very code
path a trainer uses (`jobs.fit_and_claim`, on the same Dask cluster when there is one) — keeps that
re-fit in its data dir, and compares: an artifact with the re-fit's sha256 matches outright (the
stronger check, where library versions match); any other must give the re-fit's predictions on the
rows the panel judges on (the test set, or the holdout for a holdout panel). Predictions survive any
serialization of the same model, not training on other data.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ethml.errors import ModelError
from ethml.ml.loader import sha256_hex
from ethml.training.jobs import (
    DEFAULT_LIMITS,
    Compute,
    TrainedModel,
    TrainingError,
    fit_and_claim,
    load_submission,
    one_native_thread,
    run_limited,
    scoring_data,
)
from ethml.training.spec import TaskSpec, TrainingLimits

#: Float predictions (regressors) may differ in their last bits between library builds; anything more
#: is another model.
RELATIVE_TOLERANCE = 1e-9


def _spec_key(spec: TaskSpec, dataset: bytes, task_id: int) -> str:
    """What a cached re-fit was made from: the spec, the dataset's bytes and the task (its seed)."""
    blob = spec.to_json() + hashlib.sha256(dataset).digest() + task_id.to_bytes(32, "big")
    return hashlib.sha256(blob).hexdigest()


def _read_cache(path: Path, key: str) -> TrainedModel | None:
    try:
        meta = json.loads(path.with_suffix(".json").read_text())
        artifact = path.read_bytes()
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("key") != key or meta.get("sha256") != sha256_hex(artifact):
        return None
    return TrainedModel(artifact, sha256_hex(artifact), int(meta["claimed"]))


def _write_cache(path: Path, key: str, model: TrainedModel) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    for target, data in (
        (path, model.artifact),
        (path.with_suffix(".json"), json.dumps({"key": key, "sha256": model.sha256, "claimed": model.claimed_score})),
    ):
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_bytes(data if isinstance(data, bytes) else data.encode())
        os.replace(tmp, target)


async def reference_fit(
    spec: TaskSpec, dataset: bytes, task_id: int, compute: Compute, cache: Path
) -> tuple[TrainedModel, bool]:
    """The task's spec fit as an honest trainer fits it, from `cache` (a .skops path beside its .json)
    when made there before from this spec and dataset. Returns (the fit, whether it came from the cache).
    A fit that fails raises TrainingError: without it this validator cannot judge the artifacts."""
    key = _spec_key(spec, dataset, task_id)
    cached = _read_cache(cache, key)
    if cached is not None:
        return cached, True
    fitted: TrainedModel = await run_limited(
        fit_and_claim, spec, dataset, task_id, compute.limits, compute.cluster, timeout=spec.max_train_seconds
    )
    _write_cache(cache, key, fitted)
    return fitted, False


def reference_predictions(
    spec: TaskSpec,
    reference: bytes,
    dataset: bytes,
    test_set: bytes | None,
    task_id: int,
    limits: TrainingLimits = DEFAULT_LIMITS,
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], str]:
    """(the judged rows, the re-fit's predictions on them, what they are: "test set" or "holdout"): the test
    set, or the holdout when `test_set` is None. Runs in a child process."""
    data = scoring_data(spec, dataset, test_set, task_id, limits)
    rows, where = (data.x_hold, "holdout") if data.x_test is None else (data.x_test, "test set")
    with one_native_thread():
        expected = np.asarray(load_submission(spec, reference, sha256_hex(reference), task_id).predict(rows))
    return rows, expected, where


def prediction_mismatch(
    spec: TaskSpec,
    artifact: bytes,
    sha256: str,
    task_id: int,
    rows: np.ndarray[Any, Any],
    expected: np.ndarray[Any, Any],
    where: str,
) -> str | None:
    """None when the artifact predicts as the re-fit does (`expected`) on the judged rows, else why not. An
    artifact that cannot be loaded gets None here: scoring names its own reason. Runs in a child process of its
    own, so that an artifact that fails there costs its own vote, not the check of the others."""
    with one_native_thread():
        try:
            model = load_submission(spec, artifact, sha256, task_id)
        except (ModelError, TrainingError):
            return None
        got = np.asarray(model.predict(rows))
    return _compare(expected, got, where)


def _compare(expected: np.ndarray[Any, Any], got: np.ndarray[Any, Any], where: str) -> str | None:
    if got.shape != expected.shape:
        return f"it predicts {got.shape} values on the {where}, the spec's re-fit {expected.shape}"
    if np.issubdtype(expected.dtype, np.floating) and np.issubdtype(got.dtype, np.floating):
        same = np.isclose(got, expected, rtol=RELATIVE_TOLERANCE, atol=0.0)
    else:
        same = got == expected
    differ = int(np.size(same) - np.count_nonzero(same))
    if differ == 0:
        return None
    return (
        f"its predictions differ from the spec's re-fit on {differ} of {len(expected)} {where} rows: "
        "it was not fit on the task's data as the spec says"
    )
