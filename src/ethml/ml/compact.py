"""The bundled models without scikit-learn: numpy twins of the few estimator types they are made of.

A miner serves the bundled models all day. Importing scikit-learn to run them pulls in SciPy and about a
thousand modules: some 85 MB of resident memory for a standard scaler, two linear models and a forest of
small trees. Their artifacts are joblib pickles, so `loads` unpickles one with every scikit-learn class
it allows mapped to a twin below and every other global refused (an unknown type raises
CompactUnsupported and the caller loads the artifact with scikit-learn instead).

Each twin's `predict` performs scikit-learn's own operations in the same order on the same dtypes
(its input checks included: the feature count, non-finite values, the forest's float32 conversion), so
its predictions are bit for bit scikit-learn's; tests/ml/test_compact.py checks every bundled model
against scikit-learn on thousands of inputs, extreme magnitudes and split thresholds included. The
pickled state is the estimators' own `__dict__`, which scikit-learn keeps stable across versions; a
state a twin does not understand is refused at load, never guessed at.
"""

from __future__ import annotations

import functools
import io
from typing import Any

import numpy as np

from ethml.errors import ModelError


class CompactUnsupported(ModelError):
    """The artifact holds a type (or a state) the twins do not cover: load it with scikit-learn."""


def check_array(X: Any, n_features: int, dtype: type[np.floating[Any]], *, allow_nan: bool = False) -> Any:
    """scikit-learn's validate_data for a dense 2-D array: the dtype, the feature count, finiteness."""
    X = np.asarray(X, dtype=dtype)
    if X.ndim != 2:
        raise ValueError(f"Expected a 2-dimensional array, got {X.ndim} dimensions")
    if X.shape[1] != n_features:
        raise ValueError(f"X has {X.shape[1]} features, but the estimator is expecting {n_features} features as input.")
    bad = np.isinf(X) if allow_nan else ~np.isfinite(X)
    if bad.any():
        raise ValueError(f"Input X contains infinity or a value too large for {np.dtype(dtype)!r}.")
    return X


class _Twin:
    """An estimator's pickled state, as scikit-learn stores it (`__dict__`). An unfitted one may be
    in there too (a forest keeps its template tree), so the fitted attributes a twin needs are checked
    by `validate`, on the estimators that predict, once the whole artifact is loaded."""

    REQUIRED: tuple[str, ...] = ()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def validate(self) -> None:
        missing = [k for k in self.REQUIRED if k not in self.__dict__]
        if missing:
            raise CompactUnsupported(f"a {type(self).__name__} without {', '.join(missing)}")


class StandardScaler(_Twin):
    REQUIRED = ("with_mean", "with_std", "mean_", "scale_", "n_features_in_")
    with_mean: bool
    with_std: bool
    mean_: Any
    scale_: Any
    n_features_in_: int

    def transform(self, X: Any) -> Any:
        X = check_array(np.array(X, dtype=np.float64, copy=True), self.n_features_in_, np.float64, allow_nan=True)
        if self.with_mean:
            X -= self.mean_.astype(X.dtype)
        if self.with_std:
            X /= self.scale_.astype(X.dtype)
        return X


class _Linear(_Twin):
    REQUIRED: tuple[str, ...] = ("coef_", "intercept_", "n_features_in_")
    coef_: Any
    intercept_: Any
    n_features_in_: int

    def _decision(self, X: Any) -> Any:
        X = check_array(X, self.n_features_in_, np.float64)
        coef = self.coef_
        return X @ (coef.T if coef.ndim == 2 else coef) + self.intercept_


class LogisticRegression(_Linear):
    REQUIRED = (*_Linear.REQUIRED, "classes_")
    classes_: Any

    def predict(self, X: Any) -> Any:
        scores = self._decision(X)
        if scores.ndim > 1 and scores.shape[1] == 1:
            scores = scores.reshape(-1)
        indices = (scores > 0).astype(np.intp) if scores.ndim == 1 else np.argmax(scores, axis=1)
        return np.take(self.classes_, indices, axis=0)


class Ridge(_Linear):
    def predict(self, X: Any) -> Any:
        X = check_array(X, self.n_features_in_, np.float64)
        coef = self.coef_
        return X @ coef + self.intercept_ if coef.ndim == 1 else X @ coef.T + self.intercept_


class Tree:
    """sklearn.tree._tree.Tree: the node array and the leaf values, walked as its Cython code walks them."""

    def __init__(self, n_features: int, n_classes: Any, n_outputs: int) -> None:
        self.n_features = int(n_features)
        self.n_outputs = int(n_outputs)

    def __setstate__(self, state: dict[str, Any]) -> None:
        try:
            nodes, values = state["nodes"], state["values"]
            self.left = np.asarray(nodes["left_child"], dtype=np.intp)
            self.right = np.asarray(nodes["right_child"], dtype=np.intp)
            self.feature = np.asarray(nodes["feature"], dtype=np.intp)
            self.threshold = np.asarray(nodes["threshold"], dtype=np.float64)
            self.nan_left = np.asarray(nodes["missing_go_to_left"], dtype=bool)
        except (KeyError, ValueError, TypeError) as exc:
            raise CompactUnsupported(f"a tree state without the expected node fields ({exc})") from None
        self.values = np.asarray(values, dtype=np.float64)

    def leaf(self, row: Any) -> int:
        """The leaf one float32 sample reaches (a node with no children is a leaf)."""
        node = 0
        left, right, feature, threshold = self.left, self.right, self.feature, self.threshold
        while left[node] != -1:
            value = float(row[feature[node]])  # float32 widened to double, as the Cython comparison does
            if value != value:  # NaN
                node = left[node] if self.nan_left[node] else right[node]
            elif value <= threshold[node]:
                node = left[node]
            else:
                node = right[node]
        return int(node)

    def predict(self, X: Any) -> Any:
        """The leaf values of each sample: (n_samples, n_outputs, max_n_classes)."""
        return self.values.take([self.leaf(row) for row in X], axis=0, mode="clip")


class DecisionTreeClassifier(_Twin):
    REQUIRED = ("tree_", "n_classes_", "n_outputs_", "classes_")
    tree_: Tree
    n_classes_: int
    n_outputs_: int
    classes_: Any

    def predict_proba(self, X32: Any) -> Any:
        proba = self.tree_.predict(X32)
        return proba[:, 0, : self.n_classes_]

    def validate(self) -> None:
        super().validate()
        if self.n_outputs_ != 1 or not isinstance(self.tree_, Tree):
            raise CompactUnsupported("a multi-output tree")


class RandomForestClassifier(_Twin):
    REQUIRED = ("estimators_", "n_classes_", "n_outputs_", "classes_", "n_features_in_")
    estimators_: list[DecisionTreeClassifier]
    n_classes_: int
    n_outputs_: int
    classes_: Any
    n_features_in_: int

    def predict(self, X: Any) -> Any:
        X32 = check_array(X, self.n_features_in_, np.float32, allow_nan=True)
        proba = np.zeros((X32.shape[0], int(self.n_classes_)), dtype=np.float64)
        for tree in self.estimators_:  # scikit-learn adds them in this order (one job, n_jobs=None)
            proba += tree.predict_proba(X32)
        proba /= len(self.estimators_)
        return self.classes_.take(np.argmax(proba, axis=1), axis=0)

    def validate(self) -> None:
        super().validate()
        if self.n_outputs_ != 1 or getattr(self, "n_jobs", None) not in (None, 1):
            raise CompactUnsupported("a multi-output forest, or one that predicts on several threads")
        for tree in self.estimators_:
            if not isinstance(tree, DecisionTreeClassifier):
                raise CompactUnsupported(f"a forest of {type(tree).__name__}")
            tree.validate()


class Pipeline(_Twin):
    REQUIRED = ("steps",)
    steps: list[tuple[str, Any]]

    def predict(self, X: Any) -> Any:
        Xt = X
        for _name, step in self.steps[:-1]:
            if step is not None and step != "passthrough":
                Xt = step.transform(Xt)
        return self.steps[-1][1].predict(Xt)

    def validate(self) -> None:
        super().validate()
        for _name, step in self.steps[:-1]:
            if step is not None and step != "passthrough" and not hasattr(step, "transform"):
                raise CompactUnsupported(f"a pipeline step {type(step).__name__} that cannot transform")
        if not hasattr(self.steps[-1][1], "predict"):
            raise CompactUnsupported("a pipeline whose last step cannot predict")
        for _name, step in self.steps:
            if isinstance(step, _Twin):
                step.validate()


#: scikit-learn's classes, by where they are pickled from, and their twins.
TWINS: dict[tuple[str, str], type] = {
    ("sklearn.pipeline", "Pipeline"): Pipeline,
    ("sklearn.preprocessing._data", "StandardScaler"): StandardScaler,
    ("sklearn.linear_model._logistic", "LogisticRegression"): LogisticRegression,
    ("sklearn.linear_model._ridge", "Ridge"): Ridge,
    ("sklearn.ensemble._forest", "RandomForestClassifier"): RandomForestClassifier,
    ("sklearn.tree._classes", "DecisionTreeClassifier"): DecisionTreeClassifier,
    ("sklearn.tree._tree", "Tree"): Tree,
}
#: The other globals a bundled artifact may name: numpy's array machinery and joblib's array wrapper.
PLAIN = {
    ("joblib.numpy_pickle", "NumpyArrayWrapper"),
    ("numpy", "dtype"),
    ("numpy", "ndarray"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy.core.multiarray", "_reconstruct"),
}


@functools.cache
def _joblib_reader() -> tuple[Any, Any]:
    """joblib's file handling and an unpickler over it that resolves globals through TWINS and PLAIN
    only. joblib's reader is internal API: if a joblib release moves it, every artifact is left to
    scikit-learn (CompactUnsupported), never broken."""
    try:
        from joblib.numpy_pickle import NumpyUnpickler, _validate_fileobject_and_memmap
    except ImportError as exc:
        raise CompactUnsupported(f"this joblib has no reader the twins can use ({exc})") from None

    class Unpickler(NumpyUnpickler):  # type: ignore[misc]
        def find_class(self, module: str, name: str) -> Any:
            twin = TWINS.get((module, name))
            if twin is not None:
                return twin
            if (module, name) in PLAIN:
                return super().find_class(module, name)
            raise CompactUnsupported(f"{module}.{name}")

    return _validate_fileobject_and_memmap, Unpickler


def loads(blob: bytes, name: str = "<bytes>") -> Any:
    """The numpy twin of a joblib artifact made of the estimator types in TWINS.

    Raises:
        CompactUnsupported: the artifact holds something else; load it with scikit-learn.
    """
    open_artifact, unpickler = _joblib_reader()
    try:
        with open_artifact(io.BytesIO(blob), name, None) as (fobj, _mmap):
            model = unpickler(name, fobj, ensure_native_byte_order=True).load()
        if not isinstance(model, _Twin) or not hasattr(model, "predict"):
            raise CompactUnsupported(f"{name} is a {type(model).__name__}, not an estimator")
        model.validate()
    except CompactUnsupported:
        raise
    except Exception as exc:  # noqa: BLE001 - any state the twins cannot take: scikit-learn loads it
        raise CompactUnsupported(f"{name}: {type(exc).__name__}: {exc}") from None
    return model
