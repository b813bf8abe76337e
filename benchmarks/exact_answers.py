"""What a miner's exact answers (ethml.ml.exact) cost, and what they change: the seconds per data point of the exact
path and of scikit-learn's own predict for the largest models it serves, side by side; then, for the boundary
points of tests/ml/test_exact.py, how many answers differ between two miners on different CPUs (a child process
each: this CPU as it is, and this CPU seen as one without AVX and FMA by OpenBLAS, its `--coretype` kernel, by
glibc and by numpy), for scikit-learn's predict and for a miner's answer.

    python benchmarks/exact_answers.py [--rounds 5] [--coretype Prescott]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import joblib
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor

from ethml.ml import exact
from ethml.pow.tune import cpu_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.ml.test_exact import as_miner, boundary_cases, grown_svc  # (the test's cases, counted here)


def _models(rng: np.random.Generator) -> list[tuple[str, Any, int]]:
    """The largest models of each kind a miner computes exactly (the default limits: 100,000 rows, 256 columns;
    a KD-tree fit of one feature, whose rows the array budget bounds), and their feature counts."""
    wide = rng.normal(size=(100_000, 256))
    narrow = rng.normal(size=(2_000_000, 1))
    few = rng.normal(size=(2_000, 256))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (lbfgs stopped early: the fit's quality does not matter here)
        logistic = LogisticRegression(max_iter=50).fit(few, rng.integers(0, 10, 2_000))
    return [
        ("k-NN, brute force, 100,000 x 256", KNeighborsClassifier(5).fit(wide, rng.integers(0, 3, 100_000)), 256),
        ("k-NN, KD-tree, 2,000,000 x 1", KNeighborsRegressor(5).fit(narrow, narrow[:, 0] * 2), 1),
        ("logistic regression, 10 classes x 256", logistic, 256),
        ("SVC, RBF, 3 classes, 100,000 SVs x 256", _grown_svc(rng, 3, wide), 256),
        ("SVC, RBF, 1,000 classes, 30,000 SVs x 8", _grown_svc(rng, 1000, rng.normal(size=(30_000, 8))), 8),
    ]


def _grown_svc(rng: np.random.Generator, classes: int, vectors: Any) -> Any:
    """An RBF support-vector classifier of `classes` classes with `vectors` as its support vectors, split evenly
    between the classes (tests/ml/test_exact.py's `grown_svc`): a fit's shapes at a size whose fit would take
    hours (a fit on the default limits' 100,000 rows can keep every row; 1,000 classes of 30,000 vectors is
    about the most the loader's 512 MiB of arrays holds)."""
    counts = np.full(classes, len(vectors) // classes)
    counts[0] += len(vectors) - int(counts.sum())
    return grown_svc(rng, counts, vectors)


def _per_point(predict: Callable[[Any], Any], rows: Any, rounds: int) -> float:
    """The best of `rounds` mean seconds per data point, predicting each row alone."""
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for row in rows:
            predict(row.reshape(1, -1))
        best = min(best, (time.perf_counter() - started) / len(rows))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds of each timing (the best is shown)")
    parser.add_argument(
        "--coretype", default="Prescott", help="the other miner's OpenBLAS kernel (default: the generic one)"
    )
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    print(f"CPU: {cpu_model()}")
    rng = np.random.default_rng(7)
    print(f"{'model':<40} {'exact ms':>9} {'sklearn ms':>11}")
    for name, model, width in _models(rng):
        rows = rng.normal(size=(10, width))
        ours = _per_point(lambda x, m=model: exact.predict(m, x), rows, args.rounds)
        theirs = _per_point(model.predict, rows, args.rounds)
        print(f"{name:<40} {ours * 1000:>9.2f} {theirs * 1000:>11.2f}")
    cases = boundary_cases()
    with tempfile.TemporaryDirectory(prefix="ethml-bench-") as root:
        path = Path(root) / "cases.joblib"
        joblib.dump(cases, path)
        here, other = as_miner(path, None), as_miner(path, args.coretype)
    print(f"\nboundary points answered differently, this CPU against one without AVX and FMA ({args.coretype}):")
    print(f"{'model':<34} {'points':>7} {'sklearn':>8} {'miners':>7}")
    for name, (_model, _entry, points) in cases.items():
        split = {
            side: sum(a != b for a, b in zip(here[name][side], other[name][side], strict=True))
            for side in ("sklearn", "ours")
        }
        print(f"{name:<34} {len(points):>7} {split['sklearn']:>8} {split['ours']:>7}")


if __name__ == "__main__":
    main()
