"""Real Dask clusters for the training tests: a LocalCluster of two single-threaded worker processes on
127.0.0.1 (the dask extra is part of `.[dev]`; under CI its absence fails the tests)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest

from ethml.training import parse_spec
from ethml.training.spec import TaskSpec
from tests.conftest import missing_service


def _need_dask() -> None:
    try:
        import distributed  # noqa: F401
    except ImportError:
        missing_service("dask[distributed] (pip install -e '.[dev]')")


@contextmanager
def local_cluster(workers: int = 2, memory_limit: str = "auto") -> Iterator[Any]:
    """A fresh LocalCluster of `workers` processes, each capped at `memory_limit`: (Cluster, an inspection
    Client)."""
    _need_dask()
    from distributed import Client

    from ethml.training.cluster import LocalDaskCluster

    with LocalDaskCluster(workers, memory_limit=memory_limit) as cluster:
        client = Client(cluster.address, set_as_default=False)
        try:
            client.wait_for_workers(workers, timeout=60)
            yield cluster, client
        finally:
            client.close()


@pytest.fixture(scope="module")
def dask_cluster() -> Iterator[Any]:
    """One LocalCluster (two worker processes) shared by a module's non-destructive tests."""
    with local_cluster(2) as pair:
        yield pair


def generated_csv(rows: int, features: int = 10, seed: int = 0, classes: int = 2) -> bytes:
    """A generated classification dataset as CSV (f0..fN, target), six significant digits."""
    from sklearn.datasets import make_classification

    x, y = make_classification(rows, features, n_informative=min(features, 6), n_classes=classes, random_state=seed)
    out = io.StringIO()
    header = ",".join([*(f"f{i}" for i in range(features)), "target"])
    table = np.column_stack([x, y])
    np.savetxt(out, table, fmt=["%.6g"] * features + ["%d"], delimiter=",", header=header, comments="")
    return out.getvalue().encode()


def forest_spec(features: int = 10, trees: int = 40, depth: int = 10, name: str = "RandomForestClassifier") -> TaskSpec:
    return parse_spec(
        {
            "target": "target",
            "features": [f"f{i}" for i in range(features)],
            "estimator": {"name": name, "params": {"n_estimators": trees, "max_depth": depth}},
            "metric": "accuracy" if name.endswith("Classifier") else "r2",
        }
    )
