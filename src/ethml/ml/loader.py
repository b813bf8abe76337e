"""Loading models safely: hash first, joblib only for the bundled artifacts, skops for the rest.

A bundled artifact made of the estimator types ethml.ml.compact covers loads into numpy twins, so a
miner never imports scikit-learn for them (bit-identical predictions, a fraction of the memory); any
other bundled artifact loads with scikit-learn as before."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import io
import warnings
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib

from ethml import safejson
from ethml.errors import ArtifactMismatch, InvalidInput, ModelError, UntrustedArtifact
from ethml.ml import compact, exact
from ethml.ml.datapoint import encode_prediction, parse_data_point
from ethml.ml.manifest import Manifest, ModelEntry

#: The only types an artifact from outside this package may contain (checked by skops before loading).
TRUSTED_TYPES = [
    "sklearn.pipeline.Pipeline",
    "sklearn.preprocessing._data.StandardScaler",
    "sklearn.preprocessing._data.MinMaxScaler",
    "sklearn.linear_model._logistic.LogisticRegression",
    "sklearn.linear_model._ridge.Ridge",
    "sklearn.linear_model._base.LinearRegression",
    "sklearn.ensemble._forest.RandomForestClassifier",
    "sklearn.ensemble._forest.RandomForestRegressor",
    "sklearn.tree._classes.DecisionTreeClassifier",
    "sklearn.tree._classes.DecisionTreeRegressor",
    "sklearn.tree._tree.Tree",
    # Fitted internals of the estimators a training task may ask for (ethml.training.spec.ESTIMATORS):
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.metrics._dist_metrics.EuclideanDistance64",
    "sklearn.neighbors._kd_tree.KDTree",
    "sklearn.neighbors._ball_tree.BallTree",
    "numpy.dtype",
    "numpy.ndarray",
    "numpy.float64",
    "numpy.int64",
    "builtins.slice",
]


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_bundled(entry: ModelEntry, path: Path, expected_sha256: str | None = None) -> Any:
    """A bundled joblib artifact, after checking its sha256 against the manifest (and the registry)."""
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read model artifact {path}: {exc.strerror}") from None
    actual = sha256_hex(blob)
    for expected in (entry.sha256, expected_sha256):
        if expected is not None and actual != expected.lower().removeprefix("0x"):
            raise ArtifactMismatch(entry.name, expected, actual)
    try:
        return compact.loads(blob, entry.name)
    except compact.CompactUnsupported:
        return joblib.load(io.BytesIO(blob))  # trusted: the hash is the manifest's (and the registry's)


#: The schema of a skops archive (its node tree; the arrays are files of their own).
SCHEMA = "schema.json"
MAX_SCHEMA_BYTES = 64 * 2**20  # (as large as an artifact may be; a 500-tree boosted model's is 3.5 MiB)


#: The skops node loaders the fitted models of a task use (ethml.training.spec.ESTIMATORS, with either scaler),
#: and the ones for shared objects, slices and dtypes that the allow-list's types may need.
SCHEMA_LOADERS = frozenset(
    {
        "CachedNode", "DictNode", "DTypeNode", "JsonNode", "ListNode", "LossNode", "NdArrayNode", "ObjectNode",
        "RandomGeneratorNode", "RandomStateNode", "SliceNode", "TreeNode", "TupleNode", "TypeNode",
    }
)  # fmt: skip
#: Nodes skops may walk in a schema, a shared node counted each time it is met (skops' audit walks it each time).
MAX_SCHEMA_NODES = 1_000_000
#: Bytes of array files a schema may have skops read (a file named by several nodes is read for each).
MAX_ARRAY_BYTES = 512 * 2**20


class _Refused(Exception):
    pass


def schema_problem(schema: Any, archive: zipfile.ZipFile) -> str | None:
    """What in a skops schema would have skops crash, loop or run out of memory while it reads it (before any of its
    own checks run), or None. skops builds its node tree before it checks a type, and registers a node's id before
    its children: a child naming its ancestor's id makes a loop (a segmentation fault); a JSON text inside a node
    (`content`) is read with `json.loads` (nested deeply, a segmentation fault: see ethml.safejson); a node met
    again is audited again (nodes each naming the one below twice: exponential time); each array node reads its
    file whole (ten nodes naming one highly compressed file: ten copies). So: only the node loaders a fitted model
    uses, no id inside itself, no JSON text nested deeper than safejson takes, at most MAX_SCHEMA_NODES nodes
    walked and MAX_ARRAY_BYTES of array files read, a file counted once for each node that names it or names a node
    holding it."""
    sizes: dict[Any, int] = {}  # id -> nodes under it, once walked
    arrays: dict[Any, int] = {}  # id -> bytes of array files under it, once walked
    walking: set[Any] = set()
    totals = {"nodes": 0, "arrays": 0}

    def children(value: Any) -> Iterator[dict[str, Any]]:
        for item in value.values() if isinstance(value, dict) else value if isinstance(value, list) else ():
            if isinstance(item, dict) and "__loader__" in item:
                yield item
            elif isinstance(item, dict | list):
                yield from children(item)

    def read(size: int) -> None:
        totals["arrays"] += size
        if totals["arrays"] > MAX_ARRAY_BYTES:
            raise _Refused(f"array files read adding up to over {MAX_ARRAY_BYTES // 2**20} MiB")

    def walk(state: dict[str, Any]) -> int:
        ident = state.get("__id__")
        if ident is not None and not isinstance(ident, int):
            raise _Refused(f"a node id {str(ident)[:40]!r} that is not a number")
        if ident in sizes:  # skops takes the node it built; its audit walks it again
            size = sizes[ident]
            # The object built is shared, but what holds it may copy it: each tree copies its node and value
            # arrays, so 20 trees naming one 200 MB array of zeros (a 200 KB archive) took 4 GiB.
            read(arrays[ident])
        elif ident in walking:
            raise _Refused(f"node {ident} inside itself (a loop)")
        else:
            loader = state["__loader__"]
            if loader not in SCHEMA_LOADERS:
                raise _Refused(f"a {str(loader)[:40]!r} node, which no fitted model of a task holds")
            content = state.get("content")
            if isinstance(content, str):
                try:
                    safejson.loads(content)
                except safejson.TooDeep as exc:
                    raise _Refused(f"node {ident}'s JSON text is {exc}") from None
                except ValueError:
                    pass  # not JSON: skops says so itself, if it reads it
            before = totals["arrays"]
            if loader == "NdArrayNode" and state.get("type") == "numpy":
                read(archive.getinfo(str(state.get("file"))).file_size)
            if ident is not None:
                walking.add(ident)
            size = 1 + sum(walk(child) for child in children(state))
            if ident is not None:
                walking.discard(ident)
                sizes[ident] = size
                arrays[ident] = totals["arrays"] - before
        totals["nodes"] += 1
        if size > MAX_SCHEMA_NODES or totals["nodes"] > MAX_SCHEMA_NODES:
            raise _Refused(f"over {MAX_SCHEMA_NODES:,} nodes to walk (nodes shared over and over)")
        return size

    if not isinstance(schema, dict) or "__loader__" not in schema:
        return "no root node"
    try:
        walk(schema)
    except _Refused as exc:
        return str(exc)
    return None


def load_untrusted(blob: bytes, name: str, expected_sha256: str) -> Any:
    """An artifact from outside (IPFS, a trainer's upload): skops only, allow-listed types only."""
    actual = sha256_hex(blob)
    if actual != expected_sha256.lower().removeprefix("0x"):
        raise ArtifactMismatch(name, expected_sha256, actual)
    if not zipfile.is_zipfile(io.BytesIO(blob)):
        raise UntrustedArtifact(name, "not a skops archive (pickle and joblib files are never loaded from outside)")
    import skops.io as sio

    try:
        # skops reads the schema with json.loads, which a deeply nested one would crash the process with (see
        # ethml.safejson): read here first, within a size and a depth.
        with zipfile.ZipFile(io.BytesIO(blob)) as archive:
            if archive.getinfo(SCHEMA).file_size > MAX_SCHEMA_BYTES:
                raise ValueError(f"its {SCHEMA} is over {MAX_SCHEMA_BYTES // 2**20} MiB")
            schema = safejson.loads(archive.read(SCHEMA))
            problem = schema_problem(schema, archive)
    except (KeyError, ValueError, zipfile.BadZipFile, OSError, EOFError) as exc:
        raise UntrustedArtifact(name, f"unreadable skops archive ({exc})") from None
    if problem is not None:
        raise UntrustedArtifact(name, f"a skops archive no fitted model is: {problem}")
    try:
        untrusted = sio.get_untrusted_types(data=blob)
    except Exception as exc:  # noqa: BLE001 - any parse failure means: do not load
        raise UntrustedArtifact(name, f"unreadable skops archive ({exc})") from None
    refused = [t for t in untrusted if t not in TRUSTED_TYPES]
    if refused:
        more = f" and {len(refused) - 10} more" if len(refused) > 10 else ""  # (a reason of a bounded length)
        named = ", ".join(t[:100] for t in refused[:10]) + more
        raise UntrustedArtifact(name, f"it contains types outside the allow-list: {named}")
    try:
        model = sio.loads(blob, trusted=[t for t in untrusted if t in TRUSTED_TYPES])
    except Exception as exc:  # noqa: BLE001
        raise UntrustedArtifact(name, f"skops could not load it ({exc})") from None
    check_internals(model, name)
    return model


def _parts(model: Any) -> Iterator[Any]:
    """Every object inside a loaded scikit-learn model (through attributes, lists, tuples, dicts and object
    arrays), each once."""
    import numpy as np

    seen: set[int] = set()
    todo = [model]
    while todo:
        obj = todo.pop()
        if id(obj) in seen or isinstance(obj, str | bytes | int | float | bool) or obj is None:
            continue
        seen.add(id(obj))
        yield obj
        if isinstance(obj, list | tuple):
            todo.extend(obj)
        elif isinstance(obj, dict):
            todo.extend(obj.values())
        elif isinstance(obj, np.ndarray):
            if obj.dtype == object:
                todo.extend(obj.ravel().tolist())
        elif type(obj).__module__.startswith("sklearn.") and hasattr(obj, "__dict__"):
            todo.extend(vars(obj).values())  # (a decision tree's `tree_` among them)


def _tree_problem(left: Any, right: Any, leaf: Any, feature: Any, features: int) -> str | None:
    """What is wrong with a tree's nodes, or None: every split's children come after it and within the tree (so a
    walk from the root ends at a leaf, whatever the input), and it reads a feature the model takes."""
    import numpy as np

    count = len(left)
    if count == 0 or not (len(right) == len(leaf) == len(feature) == count):
        return "node arrays of different lengths"
    index = np.arange(count)
    split = ~leaf
    if np.any(split & ((left <= index) | (left >= count) | (right <= index) | (right >= count))):
        return "a split whose child is not a later node of the tree"
    if np.any(split & ((feature < 0) | (feature >= features))):
        return f"a split on a feature outside the model's {features}"
    return None


#: The scikit-learn types a loaded model may hold anywhere inside it: the allow-list's, and those that skops trusts
#: by default and the fitted models of a task hold (ethml.training.spec.ESTIMATORS, each as a fit holds it). skops
#: trusts every scikit-learn estimator by default; one outside this set (a support-vector machine of another kind
#: inside a boosted model's `init_`, say) would be reached by predict with internals nothing here checks.
PART_TYPES = frozenset(TRUSTED_TYPES) | {
    "sklearn.preprocessing._label.LabelEncoder",
    "sklearn.ensemble._gb.GradientBoostingClassifier",
    "sklearn.ensemble._gb.GradientBoostingRegressor",
    "sklearn.dummy.DummyClassifier",
    "sklearn.dummy.DummyRegressor",
    "sklearn.ensemble._hist_gradient_boosting.gradient_boosting.HistGradientBoostingClassifier",
    "sklearn.ensemble._hist_gradient_boosting.gradient_boosting.HistGradientBoostingRegressor",
    "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
    "sklearn._loss.loss.HalfBinomialLoss",
    "sklearn._loss.loss.HalfMultinomialLoss",
    "sklearn._loss.loss.HalfSquaredError",
    "sklearn._loss._loss.CyHalfBinomialLoss",
    "sklearn._loss._loss.CyHalfMultinomialLoss",
    "sklearn._loss._loss.CyHalfSquaredError",
    "sklearn._loss.link.IdentityLink",
    "sklearn._loss.link.LogitLink",
    "sklearn._loss.link.MultinomialLogit",
    "sklearn._loss.link.Interval",
    "sklearn.svm._classes.SVC",
    "sklearn.svm._classes.SVR",
    "sklearn.neighbors._classification.KNeighborsClassifier",
    "sklearn.neighbors._regression.KNeighborsRegressor",
}


def _decision_tree_problem(tree: Any, features: int | None) -> str | None:
    import numpy as np

    left, right = np.asarray(tree.children_left), np.asarray(tree.children_right)
    leaf = (left == -1) & (right == -1)
    width = int(tree.n_features) if features is None else min(int(tree.n_features), int(features))
    return _tree_problem(left, right, leaf, np.asarray(tree.feature), width)


def _hist_tree_problem(predictor: Any, features: int | None) -> str | None:
    import numpy as np

    nodes = predictor.nodes
    if np.any(nodes["is_categorical"]):
        return "a categorical split (no task's model has one)"
    leaf = nodes["is_leaf"].astype(bool)
    width = 2**31 if features is None else int(features)
    return _tree_problem(nodes["left"], nodes["right"], leaf, nodes["feature_idx"], width)


def _search_tree_problem(tree: Any, features: int | None) -> str | None:
    """What is wrong with a KD-tree's or ball tree's arrays, or None. Its queries index them unchecked: a leaf's
    range of the point index (`idx_start`..`idx_end`), the points the index names, a split's children (nodes
    2i+1 and 2i+2) and the node bounds. So the index must order the training points, each leaf's range lie within
    it, each split's children within the tree (of 2**levels - 1 nodes), and the bounds cover each node and
    feature (a KD-tree keeps each node's lower and upper corner, a ball tree its centroid). The distance is the
    Euclidean one a fit uses (others keep weights of their own, read unchecked). Nothing here needs the nodes to
    be the honest fit's: a doctored tree can only answer wrongly."""
    import numpy as np

    state = tree.__getstate__()  # (data, index, nodes, bounds, leaf size, levels, node count, ..., metric, weights)
    data, index, nodes, bounds = (np.asarray(a) for a in state[:4])
    if nodes.dtype != _node_record():
        # Compiled code reads a node's fields by position, this check by name: only the fit's layout agrees.
        return f"node records laid out as {nodes.dtype}, not as a fit's {_node_record()}"
    leaf_size, levels, count = (int(v) for v in state[4:7])
    bound_rows = 2 if type(tree).__name__ == "KDTree" else 1
    if type(state[11]).__name__ != "EuclideanDistance64":
        return f"a {type(state[11]).__name__} distance (a fit's is EuclideanDistance64)"
    if data.ndim != 2 or data.shape[0] < 1 or (features is not None and data.shape[1] != features):
        return f"its training points are not a table of the model's {features} features"
    points, width = data.shape
    if index.shape != (points,) or not np.array_equal(np.sort(index), np.arange(points)):
        return "its point index is not an ordering of its training points"
    if nodes.ndim != 1:  # (its fields are a fit's: the layout was compared above)
        return "its nodes are not a list of node records"
    if leaf_size < 1 or not 1 <= levels <= 40 or count != len(nodes) or count != 2**levels - 1:
        return f"{len(nodes)} nodes where its {levels} levels make {2**levels - 1 if 1 <= levels <= 40 else 'none'}"
    start, end, leaf = nodes["idx_start"], nodes["idx_end"], nodes["is_leaf"]
    if np.any((start < 0) | (start > end) | (end > points)):
        return "a node whose range of points lies outside the tree's"
    split = np.flatnonzero(leaf == 0)
    if np.any((leaf != 0) & (leaf != 1)) or np.any(2 * split + 2 >= count):
        return "a split whose children lie outside the tree"
    # A fit's split halves its points between its children, so a query computes at most one distance per point.
    # Leaves that each named every point, under bounds only a chosen point reaches, cost that point minutes.
    first, second = 2 * split + 1, 2 * split + 2
    halves = (start[first] == start[split]) & (end[first] == start[second]) & (end[second] == end[split])
    if start[0] != 0 or end[0] != points or not np.all(halves):
        return "a split whose children do not divide its points between them"
    if bounds.shape != (bound_rows, count, width):
        return f"node bounds of shape {bounds.shape}, not {(bound_rows, count, width)}"
    if not (np.all(np.isfinite(data)) and np.all(np.isfinite(bounds)) and np.all(np.isfinite(nodes["radius"]))):
        return "a training point or node bound that is not a finite number"
    weights = state[12]
    if weights is not None and np.asarray(weights).shape != (points,):
        return "sample weights that are not one per training point"
    return None


_SEARCH_TREES = {"kd_tree": "KDTree", "ball_tree": "BallTree", "brute": None}


@functools.cache
def _node_record() -> Any:
    """The layout of a search tree's node record (idx_start, idx_end, is_leaf, radius), as a fit makes it."""
    import numpy as np
    from sklearn.neighbors import KDTree

    return KDTree(np.zeros((1, 1))).get_arrays()[2].dtype


def _neighbours_problem(model: Any, features: int | None) -> str | None:
    """A k-nearest-neighbours model: the search its fit chose, with its own tree (checked as a part of its own);
    a brute-force search compares each data point with every stored point in compiled code that takes the
    points' width from the data point: stored points narrower than the model's features are read past their end."""
    import numpy as np

    method = getattr(model, "_fit_method", None)
    if method not in _SEARCH_TREES:
        return f"a search {str(method)[:40]!r} (a fit's is kd_tree, ball_tree or brute)"
    # Predict reads `metric`, `p` and `metric_params` (a brute-force search with metric "l2", the same distance,
    # took a compiled path that counts votes per label unchecked), the tree its fit's `effective_metric_`.
    metric = (model.metric, model.p, model.metric_params, model.effective_metric_, model.effective_metric_params_)
    if metric != ("minkowski", 2, None, "euclidean", {}):
        return "a distance other than the Euclidean one a fit uses (minkowski, p=2)"
    if model.weights not in ("uniform", "distance"):
        return f"weights {str(model.weights)[:40]!r} (a fit's are uniform or distance)"
    points = np.asarray(model._fit_X)
    count = int(model.n_samples_fit_)
    if points.dtype != np.float64:  # (a miner scans every point for each data point: an int8 copy 8 times as big)
        return f"{points.dtype} stored points (a fit's are float64)"
    if (
        points.ndim != 2
        or points.shape[0] != count
        or count < 1
        or (features is not None and points.shape[1] != features)
    ):
        return f"stored points of shape {points.shape}, not {count} rows of the model's {features} features"
    targets = np.asarray(model._y)
    if targets.shape != (count,) or getattr(model, "outputs_2d_", False):
        return "targets that are not one per stored point"
    most = _most_neighbours()
    if not 1 <= int(model.n_neighbors) <= min(count, most):
        return f"{model.n_neighbors} neighbours of {count} stored points (a task's: at most {most})"
    if type(model).__name__ == "KNeighborsClassifier":
        classes = np.asarray(model.classes_)
        labels_fit = targets.dtype.kind in "iu" and targets.min() >= 0 and targets.max() < len(classes)
        if classes.ndim != 1 or len(classes) < 1 or not labels_fit:
            return "a stored point whose label is not one of its classes"
        if not len(classes) <= MAX_CLASSES or np.unique(targets).size != len(classes):
            return f"{len(classes)} classes, not each the label of a stored point (a fit's), at most {MAX_CLASSES}"
    tree, kind = getattr(model, "_tree", None), _SEARCH_TREES[method]
    if (tree is None) != (kind is None) or (kind is not None and type(tree).__name__ != kind):
        return f"a {type(tree).__name__} for a {method} search"
    if tree is not None and np.asarray(tree.__getstate__()[0]).shape != points.shape:
        return "a search tree over other points than the model's"
    return None


def _boosting_problem(model: Any, features: int | None) -> str | None:
    """A gradient-boosted model adds each stage's tree k to column k of a table of starting values, in compiled
    code that does not check the column: a stage wider than the table wrote past its end. So each stage is as
    wide as a fit's (one tree, or one per class beyond two), and so is the table: the loss is a fit's, and the
    estimator it starts from a dummy one whose predictions are that wide (checked by computing them for one row
    of zeros: a dummy estimator's predictions are constants, whatever the row)."""
    import numpy as np

    stages = np.asarray(model.estimators_, dtype=object)
    per_stage = int(model.n_trees_per_iteration_)
    classifier = type(model).__name__ == "GradientBoostingClassifier"
    classes = len(np.asarray(model.classes_)) if classifier else 0
    if classifier and (classes < 2 or int(model.n_classes_) != classes):
        return f"{model.n_classes_} classes and {classes} class labels"
    fit = 1 if classes <= 2 else classes  # the trees per stage of a fit: one per class beyond two classes
    if stages.ndim != 2 or stages.shape[0] < 1 or per_stage != fit or stages.shape[1] != fit:
        return f"stages of shape {stages.shape} for {per_stage} trees per stage (a fit's: {fit})"
    if any(type(t).__name__ != "DecisionTreeRegressor" for t in stages.ravel()):
        return "a stage that is not a regression tree"
    if (problem := _loss_problem(model, classes)) is not None:
        return problem
    # The stages write into a table whose width the initial estimator's predictions set: it must be theirs.
    init = model.init_
    if not (isinstance(init, str) and init == "zero"):
        if type(init).__name__ != ("DummyClassifier" if classifier else "DummyRegressor"):
            return f"a {type(init).__name__} to start from (a fit's is a dummy estimator)"
        strategy = getattr(init, "_strategy", None) if classifier else init.strategy
        if strategy != ("prior" if classifier else "mean"):  # ("stratified" draws at random: miners would differ)
            return f"a dummy estimator predicting by {str(strategy)[:40]!r} to start from"
        width = model._raw_predict_init(np.zeros((1, int(model.n_features_in_)))).shape
        if width != (1, fit):
            return f"a start of {width[1]} columns for {fit} trees per stage"
    return None


#: The loss and link a fit of a boosted model has: a regressor's (squared error: its raw score is its value), and
#: a classifier's for two classes and for more.
_FIT_LOSSES = {
    "regression": ("HalfSquaredError", "IdentityLink"),
    "binary": ("HalfBinomialLoss", "LogitLink"),
    "multiclass": ("HalfMultinomialLoss", "MultinomialLogit"),
}


def _loss_problem(model: Any, classes: int) -> str | None:
    """A boosted model's loss and its link, as a fit's for a regressor (`classes` 0) or that many classes. A
    histogram-boosted regressor answers its link's inverse of its raw score: with a logistic link (a binomial
    loss) that is `exp`, which the C library picks by CPU (with or without FMA), and whose last bit an answer at
    many decimals shows."""
    kind = "regression" if classes == 0 else "binary" if classes == 2 else "multiclass"
    want_loss, want_link = _FIT_LOSSES[kind]
    loss = model._loss
    if type(loss).__name__ != want_loss or type(loss.link).__name__ != want_link:
        return f"a {type(loss).__name__} loss with a {type(loss.link).__name__} (a fit's: {want_loss}, {want_link})"
    if bool(getattr(loss, "is_multiclass", False)) != (kind == "multiclass"):
        return f"a {type(loss).__name__} loss {'not ' if kind == 'multiclass' else ''}for several classes"
    return None


def _hist_boosting_problem(model: Any, features: int | None) -> str | None:
    """A histogram-boosted model: its loss and link a fit's (`_loss_problem`), one tree per stage per class beyond
    two, and a start as wide."""
    import numpy as np

    classifier = type(model).__name__ == "HistGradientBoostingClassifier"
    classes = len(np.asarray(model.classes_)) if classifier else 0
    if classifier and not 2 <= classes <= MAX_CLASSES:
        return f"{classes} classes (a fit's: 2 to {MAX_CLASSES})"
    if (problem := _loss_problem(model, classes)) is not None:
        return problem
    fit = 1 if classes <= 2 else classes
    stages = model._predictors
    if int(model.n_trees_per_iteration_) != fit or any(len(stage) != fit for stage in stages):
        return f"stages of {sorted({len(s) for s in stages})} trees for {fit} per stage"
    if np.asarray(model._baseline_prediction).shape != (1, fit):
        return f"a start of shape {np.asarray(model._baseline_prediction).shape} for {fit} trees per stage"
    return None


#: What a fit of each support-vector machine a task may ask for runs as in libsvm.
_SVM_KINDS = {"SVC": "c_svc", "SVR": "epsilon_svr"}


def _svm_problem(model: Any, features: int | None) -> str | None:
    """A support-vector machine: libsvm reads its arrays by the counts it is given, unchecked. It takes the number
    of support vectors from `support_`, the classes from `_n_support` and reads `_dual_coef_` (one row per class
    but one, one column per support vector), `_intercept_` (one per pair of classes) and the probability
    coefficients as if they had that shape: dual coefficients cut short were read past their end (SIGSEGV)."""
    import numpy as np

    kind = type(model).__name__
    if getattr(model, "_impl", None) != _SVM_KINDS[kind]:
        return f"a libsvm kind {str(getattr(model, '_impl', None))[:40]!r} for an {kind}"
    if model.kernel not in exact.SVM_KERNELS or model._sparse is not False:
        return f"a {str(model.kernel)[:40]!r} kernel on {'sparse' if model._sparse else 'dense'} data"
    vectors, support = np.asarray(model.support_vectors_), np.asarray(model.support_)
    arrays = {"support vectors": vectors, "dual coefficients": model._dual_coef_, "intercepts": model._intercept_}
    for what, array in arrays.items():  # (a miner computes with them as they are: ethml.ml.exact)
        if np.asarray(array).dtype != np.float64 or not np.isfinite(array).all():
            return f"{what} of {np.asarray(array).dtype} or not finite (a fit's are finite float64)"
    for what, array in {"support-vector counts": model._n_support, "support indices": support}.items():
        if np.asarray(array).dtype != np.int32:  # (libsvm's; counts of another type split the vectors otherwise)
            return f"{what} of {np.asarray(array).dtype} (a fit's are int32)"
    if not vectors.flags["C_CONTIGUOUS"]:
        return "support vectors not stored row by row (a fit's are)"
    counts = np.asarray(model._n_support)
    if vectors.ndim != 2 or (features is not None and vectors.shape[1] != features):
        return f"support vectors that are not rows of the model's {features} features"
    size = vectors.shape[0]
    classes = len(counts)
    total = int(counts.sum()) if kind == "SVC" else size  # (an SVR's counts are not per class: libsvm skips them)
    if support.shape != (size,) or counts.ndim != 1 or np.any(counts < 0) or total != size:
        return "support-vector counts that do not match its support vectors"
    if classes < 2 or (kind == "SVR" and classes != 2):
        return f"{classes} classes for an {kind}"
    if classes > MAX_CLASSES:
        return f"{classes} classes (at most {MAX_CLASSES}: a miner decides each pair of classes itself)"
    pairs = classes * (classes - 1) // 2
    dual = np.asarray(model._dual_coef_)
    if dual.shape != (classes - 1, size) or not dual.flags["C_CONTIGUOUS"]:
        return f"dual coefficients of shape {dual.shape}, not {(classes - 1, size)}"
    if np.asarray(model._intercept_).shape != (pairs,):
        return f"{np.asarray(model._intercept_).shape} intercepts, not one per pair of classes ({pairs})"
    if any(np.asarray(p).shape not in ((0,), (pairs,)) for p in (model._probA, model._probB)):
        return "probability coefficients that are not one per pair of classes"
    if not all(np.isfinite(float(v)) for v in (model._gamma, model.coef0)) or float(model._gamma) < 0:
        return "a kernel parameter that is not a finite number, or a negative gamma"
    if not isinstance(model.degree, int | np.integer) or not 0 <= int(model.degree) < 2**31:
        return f"a degree of {str(model.degree)[:40]} (a fit's is a whole number, at least 0)"
    if kind == "SVC" and (
        model.decision_function_shape not in ("ovr", "ovo")
        or not isinstance(model.break_ties, bool)
        or (model.break_ties and model.decision_function_shape == "ovo")
    ):
        return "a decision function shape and break_ties that scikit-learn refuses to predict with"
    if kind == "SVC" and np.asarray(model.classes_).shape != (classes,):
        return f"{np.asarray(model.classes_).shape} class labels for {classes} classes"
    return None


def _linear_problem(model: Any, features: int | None) -> str | None:
    """A linear model: one row of coefficients per class (one for two classes) or per target, each as wide as the
    model's features, and an intercept per row. numpy checks the product, but a row for a class the model does not
    have (an extra row winning only on chosen data) made predict fail on that data alone."""
    import numpy as np

    coef, intercept = np.asarray(model.coef_), np.asarray(model.intercept_)
    width = coef.shape[-1] if coef.ndim in (1, 2) else -1
    if width < 1 or (features is not None and width != features):
        return f"coefficients of shape {coef.shape} for the model's {features} features"
    if coef.dtype != np.float64 or intercept.dtype != np.float64:
        return f"{coef.dtype} coefficients and {intercept.dtype} intercepts (a fit's are float64)"
    if not (np.isfinite(coef).all() and np.isfinite(intercept).all()):
        return "a coefficient or intercept that is not finite"
    if type(model).__name__ == "LogisticRegression":
        classes = len(np.asarray(model.classes_))
        rows = 1 if classes == 2 else classes
        if not 2 <= classes <= MAX_CLASSES:
            return f"{classes} classes (at most {MAX_CLASSES}: a miner adds each class's score exactly)"
        if coef.shape != (rows, width) or intercept.shape != (rows,):
            return f"coefficients of shape {coef.shape} and {intercept.shape} intercepts for {classes} classes"
    elif intercept.shape != ((coef.shape[0],) if coef.ndim == 2 else ()) or (coef.ndim == 2 and coef.shape[0] != 1):
        return f"{intercept.shape} intercepts for coefficients of shape {coef.shape} (a fit's: one target)"
    return None


#: The most classes a classifier may have: a miner adds each class's score exactly (ethml.ml.exact), one by one.
MAX_CLASSES = 1_000


def _most_neighbours() -> int:
    """The most neighbours a task may ask for (ethml.training.spec.ESTIMATORS): a miner votes over that many."""
    from ethml.training.spec import ESTIMATORS

    return int(ESTIMATORS["KNeighborsClassifier"][2]["n_neighbors"][2])


#: For each part of a model whose prediction runs compiled code on its arrays: what it is, and what to check.
_CHECKS = {
    "sklearn.tree._tree.Tree": ("decision tree", _decision_tree_problem),
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor": ("decision tree", _hist_tree_problem),
    "sklearn.neighbors._kd_tree.KDTree": ("nearest-neighbour search tree", _search_tree_problem),
    "sklearn.neighbors._ball_tree.BallTree": ("nearest-neighbour search tree", _search_tree_problem),
    "sklearn.neighbors._classification.KNeighborsClassifier": ("nearest-neighbours model", _neighbours_problem),
    "sklearn.neighbors._regression.KNeighborsRegressor": ("nearest-neighbours model", _neighbours_problem),
    "sklearn.ensemble._gb.GradientBoostingClassifier": ("gradient-boosted model", _boosting_problem),
    "sklearn.ensemble._gb.GradientBoostingRegressor": ("gradient-boosted model", _boosting_problem),
    "sklearn.ensemble._hist_gradient_boosting.gradient_boosting.HistGradientBoostingClassifier": (
        "histogram-boosted model",
        _hist_boosting_problem,
    ),
    "sklearn.ensemble._hist_gradient_boosting.gradient_boosting.HistGradientBoostingRegressor": (
        "histogram-boosted model",
        _hist_boosting_problem,
    ),
    "sklearn.svm._classes.SVC": ("support-vector machine", _svm_problem),
    "sklearn.svm._classes.SVR": ("support-vector machine", _svm_problem),
    "sklearn.linear_model._logistic.LogisticRegression": ("linear model", _linear_problem),
    "sklearn.linear_model._ridge.Ridge": ("linear model", _linear_problem),
    "sklearn.linear_model._base.LinearRegression": ("linear model", _linear_problem),
}


def check_internals(model: Any, name: str) -> None:
    """UntrustedArtifact unless every part of `model` is of a type a fitted model holds (PART_TYPES), and each
    part whose prediction runs compiled code on its arrays has arrays that code can use (_CHECKS). scikit-learn
    takes those arrays as they are stored and indexes them unchecked, so a trainer could add to its honest fit
    something that only a chosen data point reaches, and keep the honest fit's scores: a decision tree's split
    pointing back at itself (predict loops for good) or past the tree, a KD-tree's point index naming a point past
    its training points (each a segmentation fault on that point), or a boosted model's stage wider than its
    table (a write past its end). Any of these checks failing is UntrustedArtifact naming the part."""
    problem = _predict_problem(model)
    if problem is not None:
        raise UntrustedArtifact(name, problem)
    features = getattr(model, "n_features_in_", None)
    for part in _parts(model):
        kind = f"{type(part).__module__}.{type(part).__qualname__}"
        if kind.startswith(("sklearn.", "scipy.")) and kind not in PART_TYPES:
            raise UntrustedArtifact(name, f"it holds a {kind}, which no fitted model of a task holds")
        # A forest with n_jobs > 1 adds its trees' outputs in the order its threads finish: an answer that can
        # differ from call to call (and from miner to miner) where a tree's output is far larger than the others'.
        if kind.startswith("sklearn.") and getattr(part, "n_jobs", None) not in (None, 1):
            raise UntrustedArtifact(name, f"a {type(part).__name__} set to run on {part.n_jobs} jobs (a fit's: None)")
        check = _CHECKS.get(kind)
        if check is None:
            continue
        what, problem_of = check
        try:
            problem = problem_of(part, features)
        except (AttributeError, TypeError, ValueError, IndexError, KeyError, OverflowError) as exc:
            problem = f"unreadable internals ({type(exc).__name__}: {str(exc)[:200]})"
        if problem is not None:
            raise UntrustedArtifact(name, f"a malformed {what}: {problem}")


def _predict_problem(model: Any) -> str | None:
    """Why `model` cannot answer a data point at all, if it cannot: no `predict` (a scaler alone), or a pipeline
    (or one inside it) with a step before its last that does not transform (predict failed on every data point
    with an AttributeError, which stopped a miner's predictor instead of answering). The steps are the ones a
    miner runs (ethml.ml.exact.unpiped)."""
    try:
        transforms, final = exact.unpiped(model)
    except (ValueError, TypeError) as exc:  # (no steps, or steps that are not (name, step) pairs)
        return f"an unreadable pipeline ({str(exc)[:200]})"
    for step in transforms:
        if not callable(getattr(step, "transform", None)):
            return f"a pipeline whose {type(step).__name__} before its last step does not transform"
    if not callable(getattr(final, "predict", None)):
        return f"a {type(final).__name__}, which does not predict"
    return None


@dataclass
class LoadedModel:
    entry: ModelEntry
    model: Any

    def predict_one(self, raw: bytes) -> int:
        """The encoded prediction for one JSON data point (raises InvalidInput for bad data)."""
        features = parse_data_point(raw, self.entry.feature_count)
        try:
            # numpy/scikit-learn warn about overflow on extreme inputs; the result is checked below
            # (a non-finite prediction is invalid input), so the warning would only reach the terminal.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                value = exact.predict(self.model, features)[0]  # the same bits on every CPU (ethml.ml.exact)
            return encode_prediction(value, self.entry.kind, self.entry.decimals)
        except InvalidInput:
            raise
        except (ValueError, ArithmeticError, IndexError, KeyError, TypeError, AttributeError) as exc:
            # What a model raises for a data point it cannot take is the same on every miner: that point's answer
            # (INVALID_INPUT), not a failed predictor. MemoryError and the like are this miner's and stay errors.
            raise InvalidInput(str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}") from None


class ModelStore:
    """Models loaded once and cached; inference runs on a thread pool, off the event loop."""

    def __init__(self, manifest: Manifest | None = None, workers: int = 2) -> None:
        self.manifest = manifest or Manifest.load()
        self._cache: dict[str, LoadedModel] = {}
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ethml-predict")

    def get(self, name: str, expected_sha256: str | None = None) -> LoadedModel:
        entry = self.manifest.by_name(name)
        cached = self._cache.get(entry.sha256)
        if cached is None:
            model = load_bundled(entry, self.manifest.artifact_path(entry), expected_sha256)
            cached = self._cache[entry.sha256] = LoadedModel(entry, model)
        elif expected_sha256 is not None and entry.sha256 != expected_sha256.lower().removeprefix("0x"):
            raise ArtifactMismatch(entry.name, expected_sha256, entry.sha256)
        return cached

    def for_registry(self, artifact_sha256: str) -> LoadedModel:
        """The bundled model whose artifact hash the on-chain registry names."""
        entry = self.manifest.by_sha256(artifact_sha256)
        if entry is None:
            raise ModelError(f"no bundled model has artifact sha256 {artifact_sha256}")
        return self.get(entry.name, artifact_sha256)

    async def predict(self, model: LoadedModel, raw: bytes) -> int:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, model.predict_one, raw)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
