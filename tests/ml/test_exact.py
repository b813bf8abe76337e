"""Answers that are the same on every CPU (ethml.ml.exact).

scikit-learn's linear models, its brute-force nearest neighbours and its support-vector machines (libsvm's
kernel through BLAS's dot) sum through BLAS, whose kernel OpenBLAS picks by CPU, and an SVM's RBF kernel
calls the C library's exp, which glibc picks by CPU (with FMA or without). Two child processes here play two
miners on different CPUs: this machine as it is, and the same machine seen by OpenBLAS, glibc and numpy as a
CPU without AVX and FMA (`OPENBLAS_CORETYPE=Prescott`, the generic kernel that runs on every x86-64;
`GLIBC_TUNABLES` turning those features off; `NPY_DISABLE_CPU_FEATURES` turning off numpy's dispatched SIMD
loops). A requester places data points on the boundaries (a tie between two classes, a regression value
half-way between two answers, a point equidistant from two stored points of different labels): there,
scikit-learn's own predict answers differently on the two, and a miner's answer does not."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from decimal import Decimal, localcontext
from fractions import Fraction
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor
from sklearn.pipeline import Pipeline
from sklearn.svm import SVC, SVR

from ethml.errors import InvalidInput
from ethml.ml import compact, exact
from ethml.ml.loader import LoadedModel
from ethml.ml.manifest import ModelEntry
from tests.conftest import ROOT
from tests.ml.test_compact import _dumped

FEATURES = 13
DECIMALS = 6


def _exact_dot(x: Any, coef: Any, intercept: float) -> Fraction:
    return sum((Fraction(float(a)) * Fraction(float(c)) for a, c in zip(x, coef, strict=True)), Fraction(intercept))


def _ridge_points(model: Ridge, rng: np.random.Generator, count: int) -> list[list[float]]:
    """Points whose exact value lies half-way between two answers at DECIMALS (moved there along feature 0)."""
    points = []
    for _ in range(count):
        x = rng.normal(size=FEATURES) * 10
        value = _exact_dot(x, model.coef_, float(model.intercept_))
        target = (Fraction(round(value * 10**DECIMALS)) + Fraction(1, 2)) / 10**DECIMALS
        x[0] = float(Fraction(float(x[0])) + (target - value) / Fraction(float(model.coef_[0])))
        points.append(x.tolist())
    return points


def _tie_points(model: LogisticRegression, rng: np.random.Generator, count: int) -> list[list[float]]:
    """Points on the boundary between the two classes a point scores highest (moved along feature 0)."""
    points = []
    for _ in range(count):
        x = rng.normal(size=FEATURES) * 3
        scores = [_exact_dot(x, c, float(b)) for c, b in zip(model.coef_, model.intercept_, strict=True)]
        a, b = sorted(range(len(scores)), key=lambda k: scores[k])[-2:]
        gap = scores[a] - scores[b]
        slope = Fraction(float(model.coef_[a][0])) - Fraction(float(model.coef_[b][0]))
        x[0] = float(Fraction(float(x[0])) - gap / slope)
        points.append(x.tolist())
    return points


def _pairs(rng: np.random.Generator) -> tuple[Any, Any, list[list[float]]]:
    """Stored points in close pairs of different labels, far apart, and points equidistant from each pair's
    two (their midpoint, moved a little at right angles to the pair), 20 features: a brute-force search."""
    width, pairs = 20, 150
    centres = rng.normal(size=(pairs, width)) * 1000
    offsets = rng.normal(size=(pairs, width))
    points = np.vstack([centres, centres + offsets])
    labels = np.array([0] * pairs + [1] * pairs)
    queries = []
    for centre, offset in zip(centres, offsets, strict=True):
        side = rng.normal(size=width)
        side -= offset * (side @ offset) / (offset @ offset)
        queries.append((centre + offset / 2 + side * 1e-3).tolist())
    return points, labels, queries


#: What a child process prints: per model, scikit-learn's encoded answers and the miner's.
CHILD = """
import json, sys, warnings
import joblib
from ethml.ml.loader import LoadedModel
from ethml.ml.datapoint import encode_prediction
cases = joblib.load(sys.argv[1])
out = {}
for name, (model, entry, points) in cases.items():
    ours, theirs = [], []
    for point in points:
        try:
            ours.append(LoadedModel(entry, model).predict_one(json.dumps(point).encode()))
        except Exception as exc:
            ours.append(type(exc).__name__)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs.append(encode_prediction(model.predict([point])[0], entry.kind, entry.decimals))
    out[name] = {"ours": ours, "sklearn": theirs}
print(json.dumps(out))
"""


def _entry(kind: str, decimals: int, features: int) -> ModelEntry:
    return ModelEntry(0, "probe", kind, decimals, features, "probe.joblib", "0" * 64, "")


#: What glibc sees of a CPU without AVX and FMA (its exp takes another path on a CPU with FMA).
GLIBC_WITHOUT_FMA = "glibc.cpu.hwcaps=-AVX2,-FMA,-FMA4,-AVX,-AVX512F"
_MINER_ENV = ("OPENBLAS_CORETYPE", "GLIBC_TUNABLES", "NPY_DISABLE_CPU_FEATURES")


def as_miner(cases: Path, coretype: str | None) -> dict[str, Any]:
    """CHILD's answers for the cases dumped at `cases`, in a process of this CPU as it is (`coretype` None), or
    seen as a CPU without AVX and FMA: OpenBLAS's `coretype` kernel, glibc's maths without FMA, and numpy's
    loops for baseline x86-64 only."""
    env = {k: v for k, v in os.environ.items() if k not in _MINER_ENV}
    if coretype is not None:
        from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__

        env["OPENBLAS_CORETYPE"] = coretype
        env["GLIBC_TUNABLES"] = GLIBC_WITHOUT_FMA
        dispatched = [feature for feature in __cpu_dispatch__ if __cpu_features__.get(feature)]
        if dispatched:  # (numpy refuses to turn off what it would not dispatch to on this CPU)
            env["NPY_DISABLE_CPU_FEATURES"] = " ".join(dispatched)
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(cases)], capture_output=True, text=True, timeout=300, cwd=ROOT, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(json.loads(done.stdout))


def _bisected(side: Any, starts: Any, ends: Any) -> list[list[float]]:
    """For each segment from a point of `starts` to the same row of `ends`, whose `side` differs (`side` maps
    an array of points to an array, one entry each), the two points either side of where it changes, found by
    halving the segment until the two are as close as floats allow."""
    low, high = np.zeros(len(starts)), np.ones(len(starts))
    first = side(starts)
    for _ in range(80):
        middle = (low + high) / 2
        same = side(starts + middle[:, None] * (ends - starts)) == first
        low, high = np.where(same, middle, low), np.where(same, high, middle)
    return np.vstack([starts + low[:, None] * (ends - starts), starts + high[:, None] * (ends - starts)]).tolist()


def _svm_cases(rng: np.random.Generator) -> dict[str, tuple[Any, ModelEntry, list[list[float]]]]:
    """Support-vector machines with their boundary points: an RBF classifier of two classes and a linear one of
    three (points where the answer changes between two classes), and an RBF regressor (points where its value
    crosses a half-way point between two answers at DECIMALS)."""
    width = 8
    X = rng.normal(size=(300, width))
    labels = (X[:, 0] * X[:, 1] + np.sin(3 * X[:, 2]) + 0.3 * rng.normal(size=300) > 0).astype(int)
    rbf = SVC(C=10).fit(X, labels)
    three = SVC(kernel="linear").fit(X, np.digitize(X[:, 0] + X[:, 3], [-0.7, 0.7]))
    cases = {}
    for name, model in (("svc rbf", rbf), ("svc linear, 3 classes", three)):
        starts, ends = X[rng.integers(0, 300, 600)], X[rng.integers(0, 300, 600)]
        differ = model.predict(starts) != model.predict(ends)
        points = _bisected(model.predict, starts[differ][:150], ends[differ][:150])
        cases[name] = (model, _entry("classification", 0, width), points)
    regressor = SVR(C=10).fit(X, X[:, 0] * X[:, 1] + X[:, 2])
    starts, ends = X[rng.integers(0, 300, 150)], X[rng.integers(0, 300, 150)]
    scale = 10**DECIMALS
    middle = (regressor.predict(starts) + regressor.predict(ends)) / 2
    targets = (np.round(middle * scale) + 0.5) / scale  # half-way between two answers, between the two ends
    points = _bisected(lambda p: regressor.predict(p) > targets, starts, ends)
    cases["svr rbf"] = (regressor, _entry("regression", DECIMALS, width), points)
    return cases


def boundary_cases() -> dict[str, tuple[Any, ModelEntry, list[list[float]]]]:
    """Each model, its entry and its boundary points, by name (benchmarks/exact_answers.py counts their splits)."""
    rng = np.random.default_rng(20261207)
    X = rng.normal(size=(400, FEATURES)) * rng.uniform(0.5, 50, size=FEATURES)
    ridge = Ridge(alpha=1.0).fit(X, X @ rng.normal(size=FEATURES) + rng.normal(size=400))
    logistic = LogisticRegression(max_iter=2000).fit(X, np.digitize(X[:, 1] + X[:, 2], [-20, 20]))
    stored, labels, queries = _pairs(rng)
    neighbour = KNeighborsClassifier(n_neighbors=1).fit(stored, labels)
    twin = compact.loads(_dumped(ridge))
    ridge_points = _ridge_points(ridge, rng, 400)
    nested = Pipeline([("outer", Pipeline([("inner", Pipeline([("ridge", ridge)]))]))])  # (the review's)
    cases = {
        "ridge": (ridge, _entry("regression", DECIMALS, FEATURES), ridge_points),
        "ridge in pipelines in a pipeline": (nested, _entry("regression", DECIMALS, FEATURES), ridge_points),
        "ridge twin": (twin, _entry("regression", DECIMALS, FEATURES), ridge_points),
        "logistic": (logistic, _entry("classification", 0, FEATURES), _tie_points(logistic, rng, 400)),
        "neighbours": (neighbour, _entry("classification", 0, 20), queries),
        **_svm_cases(rng),
    }
    return cases


def test_boundary_points_get_one_answer_on_every_cpu(tmp_path: Path) -> None:
    cases = boundary_cases()
    neighbour, twin = cases["neighbours"][0], cases["ridge twin"][0]
    assert neighbour._fit_method == "brute"
    assert isinstance(twin, compact.Ridge)  # the bundled models' numpy twin, which used BLAS as well
    joblib.dump(cases, tmp_path / "cases.joblib")
    here, generic = as_miner(tmp_path / "cases.joblib", None), as_miner(tmp_path / "cases.joblib", "Prescott")
    for name in cases:
        split = sum(a != b for a, b in zip(here[name]["sklearn"], generic[name]["sklearn"], strict=True))
        assert split > 0, f"{name}: scikit-learn answered every point alike on both CPUs"  # the attack works
        assert here[name]["ours"] == generic[name]["ours"], name
        assert not any(isinstance(answer, str) for answer in here[name]["ours"]), here[name]["ours"]


finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(finite, finite), min_size=1, max_size=40),
    finite,
)
def test_linear_scores_are_the_exactly_rounded_sum_of_the_products(pairs: list[tuple[float, float]], b: float) -> None:
    x = np.array([p[0] for p in pairs])
    coef = np.array([p[1] for p in pairs])
    want = float(sum((Fraction(xi * ci) for xi, ci in zip(x.tolist(), coef.tolist(), strict=True)), Fraction(b)))
    assert exact.linear_scores(coef, b, x.reshape(1, -1))[0, 0] == want


def test_answers_match_scikit_learn_away_from_boundaries() -> None:
    """Off the boundaries the exact sums give scikit-learn's answers: labels equal, values within rounding."""
    rng = np.random.default_rng(5)
    X = rng.normal(size=(300, 20))
    y = X @ rng.normal(size=20)
    labels = np.digitize(X[:, 0] + X[:, 1], [-1, 1])
    probes = rng.normal(size=(200, 20))
    for model in (
        LogisticRegression(max_iter=1000).fit(X, labels),
        LogisticRegression(max_iter=1000).fit(X, labels > 0),
        KNeighborsClassifier(7).fit(X, labels),
        KNeighborsClassifier(7, weights="distance").fit(X, labels),
        KNeighborsClassifier(7, algorithm="kd_tree").fit(X, labels),
    ):
        assert (exact.predict(model, probes) == model.predict(probes)).all(), model
    regressors = (Ridge(), KNeighborsRegressor(5), KNeighborsRegressor(5, weights="distance"))
    for model in (regressor.fit(X, y) for regressor in regressors):
        assert np.allclose(exact.predict(model, probes), model.predict(probes), rtol=1e-12, atol=1e-12), model
    for kernel in exact.SVM_KERNELS:
        params: dict[str, Any] = {"kernel": kernel, "gamma": 0.05, "coef0": 0.5, "degree": 3}
        three = np.array(["a", "b", "c"])[labels]
        for model in (
            SVC(**params).fit(X, labels),
            SVC(**params).fit(X, labels > 0),
            SVC(**params, break_ties=True).fit(X, three),  # (scikit-learn's votes and confidences)
            SVC(**params, decision_function_shape="ovo").fit(X, three),
        ):
            assert (exact.predict(model, probes) == model.predict(probes)).all(), model
        model = SVR(**params).fit(X, y)
        assert np.allclose(exact.predict(model, probes), model.predict(probes), rtol=1e-10, atol=1e-10), model
    # A stored point, distance weights: its own target exactly (scikit-learn's distance to itself may not be 0).
    model = KNeighborsRegressor(5, weights="distance").fit(X, y)
    assert exact.predict(model, X[:5]).tolist() == y[:5].tolist()


def test_a_score_beyond_the_largest_float_is_invalid_input_on_every_miner() -> None:
    """A product of a feature and its coefficient past the largest float, or a score past it: no answer, the
    same on every miner. A score that is a float is answered, even where the sum overflows on the way (fsum
    raises there; the terms are then added exactly)."""
    rng = np.random.default_rng(3)
    X = rng.normal(size=(50, 3))
    model = LogisticRegression().fit(X, X[:, 0] > 0)
    model.coef_, model.intercept_ = np.array([[1.0, 1.0, 1.0]]), np.array([0.0])
    loaded = LoadedModel(_entry("classification", 0, 3), model)
    assert loaded.predict_one(b"[1e308, 1e308, -1e308]") == 1  # 1e308: fsum overflowed on the way (the review's)
    assert loaded.predict_one(b"[-1e308, -1e308, 1e308]") == 0
    for point in (b"[1e308, 1e308, 0]", b"[1.7e308, 1.7e308, -1e300]"):  # beyond the largest float
        with pytest.raises(InvalidInput):
            loaded.predict_one(point)
    model.coef_ = np.array([[10.0, 1.0, 1.0]])
    with pytest.raises(InvalidInput, match="beyond the largest float"):  # 10 x 1e308 overflows (the review's)
        loaded.predict_one(b"[1e308, 0, 0]")
    ridge = Ridge().fit(X, X[:, 1])
    ridge.coef_, ridge.intercept_ = np.array([1.0, 1.0, 1.0]), 0.0
    assert exact.predict(ridge, np.array([[1e308, 1e308, -1e308]])).tolist() == [1e308]


def test_a_regressor_with_one_row_of_coefficients_is_summed_exactly() -> None:
    """A ridge whose coefficients are one row (as a fit on a column of targets keeps them in some versions of
    scikit-learn): summed here too, in scikit-learn's shape (a column), never through BLAS."""
    rng = np.random.default_rng(4)
    X = rng.normal(size=(100, FEATURES))
    model = Ridge().fit(X, X @ rng.normal(size=FEATURES))
    model.coef_, model.intercept_ = model.coef_.reshape(1, -1), np.array([model.intercept_])
    assert model.predict(X[:2]).shape == (2, 1)
    probes = rng.normal(size=(20, FEATURES))
    got = exact.predict(model, probes)
    assert got.shape == (20, 1)
    assert got[:, 0].tolist() == exact.linear_scores(model.coef_[0], model.intercept_[0], probes)[:, 0].tolist()


def test_the_nearest_points_are_taken_in_order_ties_to_the_earlier_point() -> None:
    rng = np.random.default_rng(6)
    for size, k in ((1, 1), (10, 10), (50, 3), (2000, 100), (2000, 1)):
        squared = rng.integers(0, 5, size).astype(np.float64)  # many equal distances
        assert exact._nearest(squared, k).tolist() == np.argsort(squared, kind="stable")[:k].tolist()


def _correctly_rounded(function: str, x: float) -> float:
    """exp, expm1 or tanh of `x`, correctly rounded (to 60 digits, then to a float)."""
    with localcontext() as context:
        context.prec = 60
        d = Decimal(x)
        if function == "exp":
            return float(d.exp())
        if abs(x) < 1e-5:  # (at 60 digits, 1 + x and 1 - x lose a small x: the series)
            return float(d + d * d / 2 + d**3 / 6 + d**4 / 24 if function == "expm1" else d - d**3 / 3 + 2 * d**5 / 15)
        if function == "expm1":
            return float(d.exp() - 1)
        e = (-2 * abs(d)).exp()
        return math.copysign(float((1 - e) / (1 + e)), x)


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=-745.5, max_value=709.7, allow_nan=False) | st.floats(min_value=-1, max_value=1))
def test_exp_expm1_and_tanh_are_within_a_few_units_in_the_last_place(x: float) -> None:
    """The module's own exp, expm1 and tanh (an SVM's kernel values) against correctly rounded results: within
    1, 1 (2 above 0.7, where it is exp(x) - 1: tanh uses it below 0 only) and 2 units in the last place (a
    result under the smallest normal float is 0)."""
    for function, ulps in (("exp", 1), ("expm1", 1 if x <= 0.7 else 2), ("tanh", 2)):
        got = float(getattr(exact, function)(np.array([x]))[0])
        want = _correctly_rounded(function, x)
        if function == "exp" and want < 2.2250738585072014e-308:
            assert got == 0.0
        else:
            assert abs(got - want) <= ulps * math.ulp(want), (function, x, got, want)


def test_exp_expm1_and_tanh_at_their_edges() -> None:
    edges = np.array([0.0, -0.0, 1.0, 709.78, 709.8, 750.0, 1e300, np.inf, -708.3, -708.5, -745.2, -1e300, -np.inf])
    near = [pytest.approx(math.e, rel=2e-16), pytest.approx(math.exp(709.78), rel=2e-16)]  # (within one unit)
    assert (
        exact.exp(edges).tolist()
        == [1.0, 1.0, *near, *[math.inf] * 4, pytest.approx(math.exp(-708.3), rel=2e-16)] + [0.0] * 4
    )
    assert exact.expm1(np.array([0.0, 1e-300, -40.0, -np.inf, 5e-324])).tolist() == [0.0, 1e-300, -1.0, -1.0, 5e-324]
    assert exact.tanh(np.array([0.0, -0.0, 1e-300, -20.0, np.inf, -np.inf])).tolist() == [0, -0.0, 1e-300, -1, 1, -1]
    assert math.copysign(1, exact.tanh(np.array([-0.0]))[0]) == -1
    with pytest.raises(ArithmeticError):
        exact.exp(np.array([0.0, np.nan]))
    # ln 2 in two parts: the first of 32 significant bits (so that k times it is exact), the second the rest, rounded.
    assert math.ldexp(math.floor(math.ldexp(exact._LN2_HI, 32)), -32) == exact._LN2_HI
    with localcontext() as context:
        context.prec = 60
        assert (
            abs(Decimal(2).ln() - Decimal(exact._LN2_HI) - Decimal(exact._LN2_LO))
            <= Decimal(math.ulp(exact._LN2_LO)) / 2
        )
        assert float(1 / Decimal(2).ln()) == exact._INV_LN2


def test_an_svm_kernel_value_beyond_the_largest_float_is_invalid_input_on_every_miner() -> None:
    """A data point whose polynomial kernel value overflows, or whose coefficient times its kernel value does:
    no answer, the same on every miner (libsvm went on with infinities)."""
    rng = np.random.default_rng(8)
    X = rng.normal(size=(60, 3))
    model = SVC(kernel="poly", degree=3).fit(X, X[:, 0] > 0)
    loaded = LoadedModel(_entry("classification", 0, 3), model)
    assert loaded.predict_one(b"[1, 2, 3]") in (0, 1)
    with pytest.raises(InvalidInput, match="beyond the largest float"):
        loaded.predict_one(b"[1e120, 1e120, 1e120]")
    model._dual_coef_ = model._dual_coef_ * 1e300
    with pytest.raises(InvalidInput, match="beyond the largest float"):
        loaded.predict_one(b"[1e5, 1e5, 1e5]")


def grown_svc(rng: np.random.Generator, counts: Any, vectors: Any) -> SVC:
    """An RBF classifier with `counts` support vectors per class, `vectors` as its support vectors and random
    dual coefficients: a fit's shapes at a size whose fit would take long to reach (also
    benchmarks/exact_answers.py's largest models)."""
    classes, width = len(counts), vectors.shape[1]
    model = SVC().fit(rng.normal(size=(3 * classes, width)), np.repeat(np.arange(classes), 3))
    model.support_vectors_, model.support_ = vectors, np.arange(len(vectors), dtype=np.int32)
    model._n_support = np.asarray(counts, dtype=np.int32)
    model._dual_coef_ = rng.normal(size=(classes - 1, len(vectors)))
    return model


def _grown_svc(counts: list[int]) -> SVC:
    """`grown_svc` with vectors of 4 features, drawn from a generator seeded by the number of classes."""
    rng = np.random.default_rng(len(counts))
    return grown_svc(rng, counts, rng.normal(size=(sum(counts), 4)))


def test_an_svm_sums_in_blocks_with_the_bits_of_one_pass_and_little_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each class's part of the decision sums is added a block of support vectors at a time, carrying the sum
    of the blocks before: the same bits as one pass over all of them, and memory for a block, not for every
    coefficient (the review's model: a thousand classes, every vector in the first, took twice its whole
    coefficient array for each data point)."""
    import tracemalloc

    rng = np.random.default_rng(9)
    model = _grown_svc([3000, 1, 0, 2500, 10])
    rows = rng.normal(size=(20, 4))
    values = [exact.kernel_values(model, row) for row in rows]
    parts = [exact._summed_in_order(model._dual_coef_, v, 1, 5511) for v in values]
    one_pass = [np.add.accumulate(model._dual_coef_[:, 1:5511] * v[1:5511], axis=1)[:, -1] for v in values]
    assert all(a.tobytes() == b.tobytes() for a, b in zip(parts, one_pass, strict=True))
    answers = exact.predict(model, rows)
    monkeypatch.setattr(exact, "BLOCK_COLUMNS", 7)
    assert exact.predict(model, rows).tolist() == answers.tolist()
    assert (answers == model.predict(rows)).all()
    monkeypatch.undo()
    crowded = _grown_svc([16_000] + [0] * 999)
    row = rng.normal(size=(1, 4))
    tracemalloc.start()
    try:
        exact.predict(crowded, row)
        _size, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < crowded._dual_coef_.nbytes / 2, (peak, crowded._dual_coef_.nbytes)


def test_a_model_that_fails_on_every_point_answers_invalid_input() -> None:
    """A model whose predict raises AttributeError (a pipeline with a classifier before its last step: the
    loader refuses it, but one loaded another way) answers INVALID_INPUT, as every miner would, instead of
    stopping the predictor."""
    rng = np.random.default_rng(10)
    X = rng.normal(size=(40, 3))
    model = Pipeline([("first", SVC().fit(X, X[:, 0] > 0)), ("last", SVC().fit(X, X[:, 0] > 0))])
    with pytest.raises(InvalidInput, match="transform"):
        LoadedModel(_entry("classification", 0, 3), model).predict_one(b"[1, 2, 3]")
