"""Predictions that come out the same on every CPU, for the estimators whose own predict does not.

A miner's answer must be the same bits on every miner, or a requester can post a data point on which miners
of one kind of CPU outvote the others. scikit-learn's linear models and its brute-force nearest-neighbours
search compute their sums through BLAS (a matrix product), and OpenBLAS picks its kernel by the CPU it runs
on (Haswell, SkylakeX, Zen, a generic one): the kernels add in different orders, with or without fused
multiply-adds, so a point placed on a decision boundary, or on a rounding boundary of a regression's
decimals, gets another answer on another CPU (tests/ml/test_exact.py shows it under two kernels).

Here those sums are computed without BLAS, in an order fixed by this code:
- a linear model's score for each class (or its value) is the exactly rounded sum (`math.fsum`) of the
  correctly rounded products `x[j] * coef[j]` and the intercept: one result, whatever adds them;
- a nearest-neighbours model's squared distances to all its stored points (whatever search tree its fit
  built) are summed feature by feature, in the features' order, each step one correctly rounded addition,
  whatever numpy's SIMD width; the neighbours are the nearest `n_neighbors`, ties going to the earlier
  stored point; a vote or a mean is again summed exactly.
A pipeline's transforms before its last step run as they are (the scalers a bundled or trained model holds
are elementwise, and so the same everywhere). Every other estimator predicts with its own `predict`: trees,
forests and boosting compare and add in compiled code that has no run-time choice of kernel (docs/models.md
says what is left: an SVM's RBF kernel calls the C library's exp, which differs between CPUs with and
without FMA).

These answers may differ from scikit-learn's own `predict` in the last bits (the sums are more exact), so a
point on a boundary may get the other side's answer than scikit-learn gives on some CPU; they agree with each
other on every CPU, which is what consensus needs. A sum with no value (products past the largest float,
infinite ones of both signs) raises ArithmeticError or ValueError: that point's INVALID_INPUT."""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import numpy as np

from ethml.ml.compact import check_array

#: The linear models, by class name, whose predict is computed here (scikit-learn's or ethml.ml.compact's).
LINEAR_CLASSIFIERS = frozenset({"LogisticRegression"})
LINEAR_REGRESSORS = frozenset({"Ridge", "LinearRegression"})
NEIGHBOURS = frozenset({"KNeighborsClassifier", "KNeighborsRegressor"})
_MODULES = ("sklearn.", "ethml.ml.compact")


def _kind(model: Any) -> str | None:
    """What this module computes `model` as: "linear-classifier", "linear-regressor", "neighbours", "pipeline",
    or None (matched by class and module, so a look-alike class elsewhere is not taken for one)."""
    cls = type(model)
    if not cls.__module__.startswith(_MODULES):
        return None
    name = cls.__name__
    if name in LINEAR_CLASSIFIERS:
        return "linear-classifier"
    if name in LINEAR_REGRESSORS:
        return "linear-regressor"
    if name in NEIGHBOURS:
        return "neighbours"
    if name == "Pipeline":
        return "pipeline"
    return None


def predict(model: Any, X: Any) -> Any:
    """`model.predict(X)`, with the sums that depend on the CPU in scikit-learn computed here instead (see
    the module's docstring); a model of another type predicts as it does. ValueError for rows of the wrong
    width or with values that are not finite, as scikit-learn raises."""
    transforms, final = _unpiped(model)
    kind = _kind(final)
    if kind is None:
        return model.predict(X)
    for step in transforms:
        X = step.transform(X)
    if kind == "linear-classifier":
        scores = linear_scores(final.coef_, final.intercept_, X)
        # Two classes: the second where the score is positive; more: the first of the highest scores.
        indices = (scores[:, 0] > 0).astype(np.intp) if scores.shape[1] == 1 else np.argmax(scores, axis=1)
        return np.take(np.asarray(final.classes_), indices, axis=0)
    if kind == "linear-regressor":
        scores = linear_scores(final.coef_, final.intercept_, X)
        return scores if np.ndim(final.coef_) == 2 else scores[:, 0]  # (scikit-learn's shapes)
    return np.array(
        [_neighbours_one(final, row) for row in check_array(X, np.asarray(final._fit_X).shape[1], np.float64)]
    )


def _unpiped(model: Any) -> tuple[list[Any], Any]:
    """The transforms a pipeline (or pipelines inside it) runs, in order, and the estimator that predicts last."""
    transforms: list[Any] = []
    while _kind(model) == "pipeline":
        steps = [step for _name, step in model.steps]
        transforms.extend(step for step in steps[:-1] if step is not None and step != "passthrough")
        model = steps[-1]
    return transforms, model


def linear_scores(coef: Any, intercept: Any, X: Any) -> Any:
    """`X @ coef.T + intercept`, rows by outputs (one column for a 1-D `coef`), each entry the correctly rounded
    sum of the products `X[i, j] * coef[k, j]` (each rounded as IEEE 754 rounds it) and `intercept[k]`: the
    same float on every CPU. OverflowError where a product overflows or the sum is beyond the largest float:
    no answer, the same on every miner (a sum that only overflows on the way is added exactly, as fractions)."""
    weights = np.asarray(coef, dtype=np.float64)
    if weights.ndim == 1:
        weights = weights.reshape(1, -1)
    shift = np.broadcast_to(np.asarray(intercept, dtype=np.float64).reshape(-1), (weights.shape[0],))
    rows = check_array(X, weights.shape[1], np.float64)
    out = np.empty((rows.shape[0], weights.shape[0]))
    for i, row in enumerate(rows):
        with np.errstate(over="ignore", invalid="ignore"):
            products = np.multiply(weights, row)  # elementwise: each product correctly rounded
        if not np.isfinite(products).all():
            raise OverflowError("a feature times its coefficient is beyond the largest float")
        for k in range(weights.shape[0]):
            terms = [*products[k].tolist(), float(shift[k])]
            try:
                out[i, k] = math.fsum(terms)
            except OverflowError:  # fsum overflows on the way even where the sum is a float: add exactly
                out[i, k] = float(sum(map(Fraction, terms), Fraction(0)))  # (OverflowError if it is not)
    return out


#: Stored points taken at once by `squared_distances` (a block of 1,024 rows of 256 features is 2 MiB).
BLOCK_ROWS = 1024


def squared_distances(points: Any, row: Any) -> Any:
    """The squared Euclidean distance from `row` to each of `points`, summed feature by feature in order,
    `((points[:, 0] - row[0])**2 + (points[:, 1] - row[1])**2) + ...`: numpy's accumulate adds each term to
    the sum of those before it, so the order is fixed whatever numpy's SIMD width (a plain `sum` may add in
    pairs or lanes that depend on the build). Blocks of BLOCK_ROWS rows keep the work in cache."""
    total = np.empty(points.shape[0])
    for start in range(0, points.shape[0], BLOCK_ROWS):
        diff = points[start : start + BLOCK_ROWS] - row
        np.multiply(diff, diff, out=diff)
        total[start : start + BLOCK_ROWS] = np.add.accumulate(diff, axis=1)[:, -1]
    return total


def _neighbours_one(model: Any, row: Any) -> Any:
    """A k-nearest-neighbours prediction for one row, as scikit-learn's (uniform or distance weights), from
    the model's stored points and targets (float64 stored points, at most 100 neighbours: checked at load)."""
    points = np.asarray(model._fit_X)
    targets = np.asarray(model._y)
    k = int(model.n_neighbors)
    squared = squared_distances(points, row)
    nearest = _nearest(squared, k)
    if model.weights == "distance":
        with np.errstate(divide="ignore"):
            weights = 1.0 / np.sqrt(squared[nearest])
        if np.isinf(weights).any():  # the row is a stored point: only the points at distance 0 count
            weights = np.isinf(weights).astype(np.float64)
    else:
        weights = np.ones(k)
    if type(model).__name__ == "KNeighborsClassifier":
        labels = targets[nearest]
        present = np.unique(labels)  # (sorted: equal votes go to the first class, as scikit-learn's mode)
        votes = [math.fsum(weights[labels == label].tolist()) for label in present]
        return np.asarray(model.classes_)[int(present[int(np.argmax(votes))])]
    values = targets[nearest].astype(np.float64)
    if model.weights == "distance":
        return math.fsum((values * weights).tolist()) / math.fsum(weights.tolist())
    return math.fsum(values.tolist()) / k


def _nearest(squared: Any, k: int) -> Any:
    """The indices of the `k` smallest of `squared`, nearest first, ties to the lower index: the k-th smallest
    value is found in linear time, and only the values up to it are sorted."""
    if k >= squared.shape[0]:
        return np.argsort(squared, kind="stable")
    kth = np.partition(squared, k - 1)[k - 1]
    within = np.flatnonzero(squared <= kth)  # (in index order)
    return within[np.argsort(squared[within], kind="stable")][:k]
