"""Predictions that come out the same on every CPU, for the estimators whose own predict does not.

A miner's answer must be the same bits on every miner, or a requester can post a data point on which miners
of one kind of CPU outvote the others. scikit-learn's linear models and its brute-force nearest-neighbours
search compute their sums through BLAS (a matrix product), and OpenBLAS picks its kernel by the CPU it runs
on (Haswell, SkylakeX, Zen, a generic one): the kernels add in different orders, with or without fused
multiply-adds, so a point placed on a decision boundary, or on a rounding boundary of a regression's
decimals, gets another answer on another CPU (tests/ml/test_exact.py shows it under two kernels).

Here those sums are computed without BLAS or the C library's maths, in an order fixed by this code:
- a linear model's score for each class (or its value) is the exactly rounded sum (`math.fsum`) of the
  correctly rounded products `x[j] * coef[j]` and the intercept: one result, whatever adds them;
- a nearest-neighbours model's squared distances to all its stored points (whatever search tree its fit
  built) are summed feature by feature, in the features' order, each step one correctly rounded addition,
  whatever numpy's SIMD width; the neighbours are the nearest `n_neighbors`, ties going to the earlier
  stored point; a vote or a mean is again summed exactly.
- a support-vector machine's kernel values are computed here from its support vectors: the squared
  distances or dot products summed feature by feature in order, and exp and tanh (RBF and sigmoid kernels)
  computed by this module from additions, multiplications and one division, each correctly rounded, instead
  of by the C library, whose exp differs between builds, versions and CPUs (glibc's takes another path on
  CPUs with FMA); the pairwise decision values and the votes follow libsvm's rules, in a fixed order.
A pipeline's transforms before its last step run as they are (the scalers a bundled or trained model holds
are elementwise, and so the same everywhere). Every other estimator predicts with its own `predict`: trees,
forests and boosting compare and add in compiled code that has no run-time choice of kernel.

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
SVMS = frozenset({"SVC", "SVR"})
SVM_KERNELS = ("linear", "poly", "rbf", "sigmoid")
_MODULES = ("sklearn.", "ethml.ml.compact")


def _kind(model: Any) -> str | None:
    """What this module computes `model` as: "linear-classifier", "linear-regressor", "neighbours", "svm",
    "pipeline", or None (matched by class and module, so a look-alike class elsewhere is not taken for one)."""
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
    if name in SVMS and getattr(model, "kernel", None) in SVM_KERNELS and getattr(model, "_sparse", None) is False:
        return "svm"  # (a precomputed or callable kernel, or one fitted on sparse data, predicts as it does)
    if name == "Pipeline":
        return "pipeline"
    return None


def predict(model: Any, X: Any) -> Any:
    """`model.predict(X)`, with the sums that depend on the CPU in scikit-learn computed here instead (see
    the module's docstring); a model of another type predicts as it does. ValueError for rows of the wrong
    width or with values that are not finite, as scikit-learn raises."""
    transforms, final = unpiped(model)
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
    if kind == "svm":
        rows = check_array(X, np.asarray(final.support_vectors_).shape[1], np.float64)
        return np.array([_svm_one(final, row) for row in rows])
    return np.array(
        [_neighbours_one(final, row) for row in check_array(X, np.asarray(final._fit_X).shape[1], np.float64)]
    )


def unpiped(model: Any) -> tuple[list[Any], Any]:
    """The transforms a pipeline (or pipelines inside it) runs, in order, and the estimator that predicts last.
    ValueError for a pipeline without steps."""
    transforms: list[Any] = []
    while _kind(model) == "pipeline":
        steps = [step for _name, step in getattr(model, "steps", ())]
        if not steps:
            raise ValueError("a pipeline without steps")
        skipped = [step is None or (isinstance(step, str) and step == "passthrough") for step in steps[:-1]]
        transforms.extend(step for step, skip in zip(steps[:-1], skipped, strict=True) if not skip)
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
            out[i, k] = exact_sum([*products[k].tolist(), float(shift[k])])
    return out


def exact_sum(terms: list[float]) -> float:
    """The correctly rounded sum of finite `terms`. OverflowError if it is beyond the largest float (a sum that
    only overflows on the way, which `math.fsum` refuses, is added exactly as fractions)."""
    try:
        return math.fsum(terms)
    except OverflowError:
        return float(sum(map(Fraction, terms), Fraction(0)))  # (OverflowError if the sum is not a float)


#: Stored points taken at once by `squared_distances` (a block of 1,024 rows of 256 features is 2 MiB).
BLOCK_ROWS = 1024


def squared_distances(points: Any, row: Any) -> Any:
    """The squared Euclidean distance from `row` to each of `points`, summed feature by feature in order,
    `((points[:, 0] - row[0])**2 + (points[:, 1] - row[1])**2) + ...`: numpy's accumulate adds each term to
    the sum of those before it, so the order is fixed whatever numpy's SIMD width (a plain `sum` may add in
    pairs or lanes that depend on the build). Blocks of BLOCK_ROWS rows keep the work in cache."""
    return _summed_by_feature(points, row, distances=True)


def dot_products(points: Any, row: Any) -> Any:
    """`points @ row`, each product correctly rounded and summed feature by feature in order (as
    `squared_distances` sums)."""
    return _summed_by_feature(points, row, distances=False)


def _summed_by_feature(points: Any, row: Any, distances: bool) -> Any:
    total = np.empty(points.shape[0])
    with np.errstate(over="ignore", invalid="ignore"):  # (a sum past the largest float is inf: checked by callers)
        for start in range(0, points.shape[0], BLOCK_ROWS):
            block = points[start : start + BLOCK_ROWS]
            if distances:
                terms = block - row
                np.multiply(terms, terms, out=terms)
            else:
                terms = block * row
            total[start : start + BLOCK_ROWS] = np.add.accumulate(terms, axis=1)[:, -1]
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


def _svm_one(model: Any, row: Any) -> Any:
    """A support-vector machine's prediction for one row, by libsvm's rules from the model's support vectors,
    dual coefficients and intercepts (float64, shapes checked at load): an SVR's value is the exactly rounded
    sum of each vector's coefficient times its kernel value and the intercept; an SVC decides each pair of
    classes by the sign of that sum over the two classes' vectors (each class's part summed in order, then the
    two parts, then the intercept) and answers the class with the most votes, the first on a tie, or with
    `break_ties` scikit-learn's votes plus its scaled confidences. ArithmeticError where a kernel value or a
    sum is not a finite float: that point's INVALID_INPUT on every miner."""
    values = kernel_values(model, row)
    dual = np.asarray(model._dual_coef_, dtype=np.float64)
    intercept = np.asarray(model._intercept_, dtype=np.float64)
    if type(model).__name__ == "SVR":
        return exact_sum([*_weighted(dual[0], values).tolist(), float(intercept[0])])
    counts = np.asarray(model._n_support, dtype=np.intp)
    classes = counts.shape[0]
    ends = np.cumsum(counts)
    parts = np.zeros((classes - 1, classes))  # parts[r, c]: row r of the coefficients over class c's vectors
    with np.errstate(over="ignore", invalid="ignore"):
        for c in np.flatnonzero(counts):
            parts[:, c] = _summed_in_order(dual, values, ends[c] - counts[c], ends[c])
        first, second = np.triu_indices(classes, 1)  # the pairs in libsvm's order: (0, 1), (0, 2), ..., (1, 2), ...
        decisions = (parts[second - 1, first] + parts[first, second]) + intercept
    if not np.isfinite(decisions).all():
        raise OverflowError("a decision value beyond the largest float")
    if bool(model.break_ties) and model.decision_function_shape == "ovr" and classes > 2:
        # scikit-learn's: a vote to the first class of a pair where its decision is not negative, plus each
        # class's sum of confidences (added pair by pair, in order) mapped into (-1/3, 1/3).
        sums = np.zeros(classes)
        np.add.at(sums, np.column_stack([first, second]).ravel(), np.column_stack([decisions, -decisions]).ravel())
        votes = np.bincount(np.where(decisions < 0, second, first), minlength=classes)
        winner = int(np.argmax(votes + sums / (3 * (np.abs(sums) + 1))))
    else:  # libsvm's: a vote to the first class of a pair where its decision is positive
        winner = int(np.argmax(np.bincount(np.where(decisions > 0, first, second), minlength=classes)))
    return np.asarray(model.classes_)[winner]


#: Support vectors taken at once by `_summed_in_order` (1,024 columns of 999 rows of coefficients are 8 MiB).
BLOCK_COLUMNS = 1024


def _summed_in_order(dual: Any, values: Any, start: int, end: int) -> Any:
    """For each row of `dual`, the sum of `dual[row, j] * values[j]` for j from `start` to `end`, added one term
    at a time in order. A block of BLOCK_COLUMNS columns at a time, each block's first term carrying the sum of
    those before it (the same additions as one accumulate over the whole span), so that the memory used stays
    small whatever the span: a model with every support vector in one class of a thousand took twice its whole
    coefficient array for each data point."""
    total = np.zeros(dual.shape[0])
    for block in range(start, end, BLOCK_COLUMNS):
        terms = _weighted(
            dual[:, block : min(block + BLOCK_COLUMNS, end)], values[block : min(block + BLOCK_COLUMNS, end)]
        )
        if block != start:
            terms[:, 0] = total + terms[:, 0]
        total = np.add.accumulate(terms, axis=1)[:, -1]
    return total


def _weighted(coefficients: Any, values: Any) -> Any:
    """Each coefficient times its vector's kernel value. OverflowError where one is beyond the largest float."""
    with np.errstate(over="ignore", invalid="ignore"):
        terms = coefficients * values
    if not np.isfinite(terms).all():
        raise OverflowError("a support vector's coefficient times its kernel value is beyond the largest float")
    return terms


def kernel_values(model: Any, row: Any) -> Any:
    """The kernel between `row` and each of an SVM's support vectors, computed as libsvm computes it (linear:
    the dot product; poly: `(gamma * dot + coef0) ** degree` by libsvm's repeated squaring; rbf:
    `exp(-gamma * squared distance)`; sigmoid: `tanh(gamma * dot + coef0)`), with this module's sums, exp
    and tanh. ArithmeticError where a value is not a finite float."""
    vectors = np.asarray(model.support_vectors_, dtype=np.float64)
    gamma = float(model._gamma)
    with np.errstate(over="ignore", invalid="ignore"):
        if model.kernel == "rbf":
            values = exp(np.multiply(-gamma, squared_distances(vectors, row)))
        else:
            values = dot_products(vectors, row)
            if model.kernel != "linear":
                inner = np.multiply(gamma, values) + float(model.coef0)
                values = _powi(inner, int(model.degree)) if model.kernel == "poly" else tanh(inner)
    if not np.isfinite(values).all():
        raise OverflowError("a kernel value beyond the largest float")
    return values


def _powi(base: Any, times: int) -> Any:
    """libsvm's `powi`: `base ** times` by repeated squaring, its multiplications in its order."""
    result, square = np.ones_like(base), base
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        while times > 0:
            if times % 2 == 1:
                result = result * square
            square = square * square
            times //= 2
    return result


# exp, expm1 and tanh from IEEE 754's correctly rounded operations alone (numpy's add, subtract, multiply,
# divide, rint and comparisons, each a separate step: nothing fused), so that they give the same bits on every
# CPU and every build, which the C library's do not: exp within one unit in the last place of the correctly
# rounded value, expm1 within one at or below 0.7 (two above), tanh within two.
#: ln 2's first 32 significant bits (`k * _LN2_HI` is exact for every |k| < 2**21) and the rest of it, rounded.
_LN2_HI = float.fromhex("0x1.62e42fee00000p-1")
_LN2_LO = float.fromhex("0x1.a39ef35793c76p-33")
_INV_LN2 = float.fromhex("0x1.71547652b82fep+0")  # 1 / ln 2, rounded
#: The Taylor coefficients 1/13!, 1/12!, ..., 1/1! (Python rounds an int's true division correctly); on
#: |r| <= ln 2 / 2 the first term left out, r**14/14!, is under 5e-18.
_EXP_TERMS = tuple(1 / math.factorial(n) for n in range(13, 0, -1))
#: 1/17!, ..., 1/2!: expm1(x) = x + x*x*(1/2! + x/3! + ...) for |x| <= _EXPM1_TAYLOR (the first term left
#: out, x**18/18!, is under 1e-17 there).
_EXPM1_TERMS = tuple(1 / math.factorial(n) for n in range(17, 1, -1))
_EXPM1_TAYLOR = 0.7
_SMALLEST_NORMAL = float.fromhex("0x1p-1022")


def exp(x: Any) -> Any:
    """e ** x for each of `x` (an array of float64), the same bits on every CPU: x = k ln 2 + r with |r| <=
    ln 2 / 2, e ** r by its Taylor polynomial, times 2 ** k (in two exact steps). A result under the smallest
    normal float is 0 (whether the CPU flushes subnormals or not), one past the largest is inf. ArithmeticError
    for NaN."""
    x = np.asarray(x, dtype=np.float64)
    if np.isnan(x).any():
        raise ArithmeticError("exp of a value that is not a number")
    x = np.clip(x, -750.0, 750.0)  # (beyond either end the result is 0 or inf all the same)
    k = np.rint(x * _INV_LN2)
    r = (x - k * _LN2_HI) - k * _LN2_LO
    poly = np.full_like(r, _EXP_TERMS[0])
    for term in _EXP_TERMS[1:]:
        poly = poly * r + term
    scaled = poly * r + 1.0
    n = k.astype(np.int64)
    half = n // 2
    with np.errstate(over="ignore", under="ignore"):
        scaled = scaled * _power_of_two(half) * _power_of_two(n - half)
    scaled[scaled < _SMALLEST_NORMAL] = 0.0
    return scaled


def _power_of_two(n: Any) -> Any:
    """2.0 ** n for integers -1022 <= n <= 1023, from the bits of the float."""
    return ((n + 1023) << 52).astype(np.int64).view(np.float64)


def expm1(x: Any) -> Any:
    """e ** x - 1 for each of `x`, the same bits on every CPU, accurate near 0 (its Taylor polynomial there,
    `exp(x) - 1` elsewhere)."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):  # (far from 0 the polynomial is not used)
        poly = np.full_like(x, _EXPM1_TERMS[0])
        for term in _EXPM1_TERMS[1:]:
            poly = poly * x + term
        near = x + (x * x) * poly
    return np.where(np.abs(x) <= _EXPM1_TAYLOR, near, exp(x) - 1.0)


def tanh(x: Any) -> Any:
    """tanh for each of `x`, the same bits on every CPU: -expm1(-2|x|) / (expm1(-2|x|) + 2), with x's sign."""
    x = np.asarray(x, dtype=np.float64)
    m = expm1(-2.0 * np.abs(x))
    return np.copysign(-m / (m + 2.0), x)
