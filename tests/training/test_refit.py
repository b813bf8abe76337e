"""A validator compares each artifact with its re-fit of the spec in a child process of the artifact's own: one
artifact that fails there costs its own vote, not the validator's vote on the whole task. Before, every artifact
of a task was compared in one child, and a single submission whose predict raised (it loads: the loader checks
the internals compiled code reads, not that a forest's count of classes is its trees') made the validator give up
the task and vote on none of them."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
from sklearn.ensemble import RandomForestClassifier

from ethml.ml.loader import sha256_hex
from ethml.training import parse_spec, sklearn_dataset_csv, split_csv
from ethml.training.artifact import canonical_dumps
from ethml.training.jobs import Compute, read_csv
from ethml.training.validator import _refit_mismatches

SMALL = {"n_estimators": 3, "max_depth": 3}


async def test_an_artifact_that_fails_its_comparison_costs_its_own_vote_only(tmp_path: Path) -> None:
    public, hidden = split_csv(sklearn_dataset_csv("wine"), 0.3, seed=2024)
    features = public.decode().splitlines()[0].split(",")[:-1]
    spec = parse_spec(
        {
            "target": "target",
            "features": features,
            "estimator": {"name": "RandomForestClassifier", "params": SMALL},
            "metric": "accuracy",
        }
    )
    x_pub, y_pub = read_csv(public, spec)
    x_test, y_test = read_csv(hidden, spec)
    # Fit on the dataset and the test set: another model than the spec's re-fit.
    leaked = RandomForestClassifier(**SMALL, random_state=0).fit(
        np.vstack([x_pub, x_test]), np.concatenate([y_pub, y_test])
    )
    # The promised estimator with the spec's features, whose predict raises on every row: 7 classes, trees of 3.
    broken = RandomForestClassifier(**SMALL, random_state=0).fit(x_pub, y_pub)
    broken.n_classes_ = 7
    lines: list[str] = []
    fetched: list[tuple[int, bytes, str, int]] = []
    for i, model in enumerate((broken, leaked)):
        blob = canonical_dumps(model)
        fetched.append((i, blob, sha256_hex(blob), 900_000))
    task: Any = SimpleNamespace(id=7)
    found = await _refit_mismatches(
        spec, public, hidden, task, Compute(), tmp_path / "refit.skops", fetched, progress=lines.append
    )
    assert len(found) == 2
    assert found[0] is not None and found[0].startswith("its predictions could not be compared"), found[0]
    assert "ValueError" in found[0]
    assert found[1] is not None and "differ from the spec's re-fit" in found[1], found[1]
    # The re-fit itself, submitted by an honest trainer: the same bytes, no comparison needed.
    reference = (tmp_path / "refit.skops").read_bytes()
    honest = [(2, reference, sha256_hex(reference), 900_000)]
    assert await _refit_mismatches(spec, public, hidden, task, Compute(), tmp_path / "refit.skops", honest, None) == [
        None
    ]
    assert any(line.startswith("re-fitted task 7's spec") for line in lines), lines
