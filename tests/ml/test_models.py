"""The bundled models: hashes, CIDs, predictions equal to sklearn's, and safe loading."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import pickle
import zipfile
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
import skops.io as sio

from ethml.errors import ArtifactMismatch, InvalidInput, UnknownModelName, UntrustedArtifact
from ethml.ipfs import build_file
from ethml.ml import Manifest, ModelStore, encode_prediction, load_untrusted, parse_data_point
from tests.conftest import ROOT

MANIFEST = Manifest.load(ROOT / "models")


def _build_script():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("build_models", ROOT / "models" / "build_models.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_manifest_lists_the_four_models_with_matching_files() -> None:
    assert [m.name for m in MANIFEST.models] == ["breast-cancer", "diabetes", "iris", "wine"]
    for m in MANIFEST.models:
        blob = MANIFEST.artifact_path(m).read_bytes()
        assert hashlib.sha256(blob).hexdigest() == m.sha256
        assert str(build_file(blob, 0)[0]) == m.cid
        assert len(m.feature_names) == m.feature_count
        for p in m.data_points:
            assert str(build_file(MANIFEST.data_point_path(p).read_bytes(), 0)[0]) == p.cid


def test_predictions_equal_direct_sklearn_on_the_held_out_rows() -> None:
    from sklearn.model_selection import train_test_split

    build = _build_script()
    store = ModelStore(MANIFEST)
    for spec, entry in zip(build.MODELS, MANIFEST.models, strict=True):
        ds = spec["load"]()
        _, X_test, _, y_test = train_test_split(
            ds.data.astype(np.float64),
            ds.target,
            test_size=0.2,
            random_state=build.SEED,
            stratify=ds.target if spec["kind"] == "classification" else None,
        )
        direct = joblib.load(MANIFEST.artifact_path(entry))
        expected = direct.predict(X_test)
        model = store.get(entry.name)
        got = [model.predict_one(json.dumps(list(map(float, row))).encode()) for row in X_test]
        assert got == [encode_prediction(v, entry.kind, entry.decimals) for v in expected], entry.name
        for i, point in enumerate(entry.data_points):
            row = json.loads(MANIFEST.data_point_path(point).read_text())
            assert row == list(map(float, X_test[i]))
            assert point.label == pytest.approx(float(y_test[i]))
    store.close()


async def test_inference_runs_off_the_loop_and_models_are_cached() -> None:
    store = ModelStore(MANIFEST)
    a = store.get("iris")
    assert store.get("iris") is a
    raw = MANIFEST.data_point_path(MANIFEST.by_name("iris").data_points[0]).read_bytes()
    assert await store.predict(a, raw) == MANIFEST.by_name("iris").data_points[0].label
    store.close()


def test_registry_hash_is_checked(tmp_path: Path) -> None:
    store = ModelStore(MANIFEST)
    entry = MANIFEST.by_name("wine")
    assert store.for_registry("0x" + entry.sha256).entry.name == "wine"
    with pytest.raises(ArtifactMismatch):
        store.get("wine", "ab" * 32)
    # A modified artifact file is refused before it is unpickled.
    copy = tmp_path / "models"
    copy.mkdir()
    (copy / "manifest.json").write_text((ROOT / "models" / "manifest.json").read_text())
    (copy / entry.artifact).write_bytes(MANIFEST.artifact_path(entry).read_bytes() + b"\0")
    with pytest.raises(ArtifactMismatch, match="refusing to load"):
        ModelStore(Manifest.load(copy)).get("wine")
    with pytest.raises(UnknownModelName, match="known models: breast-cancer"):
        store.get("mnist")


@pytest.mark.parametrize(
    ("raw", "count", "problem"),
    [
        (b"[1, 2, 3]", 4, "takes 4 features, the data point has 3"),
        (b'{"features": [1, 2, 3, 4]}', 4, None),
        (b"[1, 2, NaN, 4]", 4, "not finite"),
        (b"[1, 2, Infinity, 4]", 4, "not finite"),
        (b'[1, 2, "3", 4]', 4, "feature 2 is str"),
        (b"[1, 2, true, 4]", 4, "feature 2 is bool"),
        (b"{not json", 4, "not JSON"),
        (b'{"x": 1}', 4, '"features" array'),
        (b"\xff\xfe", 4, "not JSON"),
        (b"42", 4, "expected a JSON array"),
    ],
)
def test_data_point_parsing(raw: bytes, count: int, problem: str | None) -> None:
    if problem is None:
        assert parse_data_point(raw, count).shape == (1, count)
    else:
        with pytest.raises(InvalidInput, match=problem):
            parse_data_point(raw, count)


def test_encoding() -> None:
    assert encode_prediction(np.int64(2), "classification", 0) == 2
    assert encode_prediction(np.float64(152.456), "regression", 2) == 15246
    assert encode_prediction(-1.005, "regression", 1) == -10


class _Exploit:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        import os

        return (os.system, (f"touch {MARKER}",))


MARKER = Path("/tmp/ethml-pickle-exploit-ran")


def test_malicious_pickle_is_refused_and_nothing_runs() -> None:
    MARKER.unlink(missing_ok=True)
    for blob in (pickle.dumps(_Exploit()), _joblib_bytes(_Exploit())):
        with pytest.raises(UntrustedArtifact, match="not a skops archive"):
            load_untrusted(blob, "exploit", hashlib.sha256(blob).hexdigest())
    assert not MARKER.exists()


def _joblib_bytes(obj: object) -> bytes:
    buf = io.BytesIO()
    joblib.dump(obj, buf)
    return buf.getvalue()


def test_skops_artifacts_load_only_with_allow_listed_types() -> None:
    model = joblib.load(MANIFEST.artifact_path(MANIFEST.by_name("wine")))
    blob = sio.dumps(model)
    loaded = load_untrusted(blob, "wine", hashlib.sha256(blob).hexdigest())
    x = np.asarray(json.loads(MANIFEST.data_point_path(MANIFEST.by_name("wine").data_points[0]).read_text()))
    assert loaded.predict(x.reshape(1, -1)) == model.predict(x.reshape(1, -1))
    with pytest.raises(ArtifactMismatch):
        load_untrusted(blob, "wine", "00" * 32)

    # A skops archive whose schema names a dangerous callable is refused before loading.
    buf = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(blob)) as src, zipfile.ZipFile(buf, "w") as dst:
        for item in src.infolist():
            content = src.read(item.filename)
            if item.filename == "schema.json":
                schema = json.loads(content)
                schema["__module__"], schema["__class__"] = "os", "system"
                content = json.dumps(schema).encode()
            dst.writestr(item, content)
    evil = buf.getvalue()
    with pytest.raises(UntrustedArtifact, match=r"os\.system"):
        load_untrusted(evil, "evil", hashlib.sha256(evil).hexdigest())


#: Run in a child process, with web3 imported as in every ethml process (py_ecc raises the recursion limit to
#: 100,000): there `json.loads` of a deeply nested text overflowed the C stack and the process died of SIGSEGV.
_NESTED = r"""
import hashlib, io, sys, zipfile
import web3  # noqa: F401
from ethml.errors import EthmlError
from ethml.ml import load_untrusted, parse_data_point
from ethml.training import parse_spec
deep = b"[" * 100_000
archive = io.BytesIO()
with zipfile.ZipFile(archive, "w") as z:
    z.writestr("schema.json", deep)
blob = archive.getvalue()
for name, call in (
    ("data point", lambda: parse_data_point(deep, 4)),
    ("spec", lambda: parse_spec(deep)),
    ("artifact", lambda: load_untrusted(blob, "deep", hashlib.sha256(blob).hexdigest())),
):
    try:
        call()
    except EthmlError as exc:
        print(name, "refused:", exc, flush=True)
"""


def test_a_deeply_nested_data_point_spec_or_artifact_schema_is_refused_not_a_crash() -> None:
    """A data point of 100,000 '[' (100 KB, under the 1 MiB miners fetch) killed every miner that fetched it; a spec
    so nested killed every trainer, and an artifact's schema.json the node or validator that loaded it. Each is now
    a clear refusal (`ethml.safejson`: nesting deeper than 200 levels)."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _NESTED], capture_output=True, text=True, timeout=120, cwd=ROOT, check=False
    )
    assert done.returncode == 0, f"exit code {done.returncode}: {done.stderr[-2000:]}"
    lines = done.stdout.splitlines()
    assert [line.split(" refused:")[0] for line in lines] == ["data point", "spec", "artifact"], done.stdout
    assert all("nested deeper than 200 levels" in line for line in lines), done.stdout


def _doctored(kind: str, field: str, value: int) -> bytes:
    """A canonical skops archive of an honestly fitted pipeline whose first tree's root split is rewritten:
    `field` of node 0 set to `value` (what a trainer could do to its artifact and keep its scores)."""
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from ethml.training.artifact import canonical_dumps

    rng = np.random.default_rng(7)
    x = rng.random((200, 4))
    y = (x[:, 0] > 0.5).astype(int)
    if kind == "forest":
        model = make_pipeline(StandardScaler(), RandomForestClassifier(3, random_state=0)).fit(x, y)
        tree = model[-1].estimators_[0].tree_
        state = tree.__getstate__()
        state["nodes"][field][0] = value
        tree.__setstate__(state)
    else:
        model = make_pipeline(StandardScaler(), HistGradientBoostingClassifier(max_iter=3)).fit(x, y)
        model[-1]._predictors[0][0].nodes[field][0] = value
    return canonical_dumps(model)


@pytest.mark.parametrize(
    ("kind", "field", "value", "problem"),
    [
        ("forest", "left_child", 0, "child is not a later node"),  # a loop: predict never ended
        ("forest", "right_child", 10**6, "child is not a later node"),  # past the end: a segmentation fault
        ("forest", "feature", 99, "feature outside the model's 4"),  # read outside the data point
        ("boosting", "left", 0, "child is not a later node"),
        ("boosting", "right", 10**6, "child is not a later node"),
        ("boosting", "feature_idx", 99, "feature outside the model's 4"),
        ("boosting", "is_categorical", 1, "categorical split"),
    ],
)
def test_a_doctored_decision_tree_is_refused(kind: str, field: str, value: int, problem: str) -> None:
    """scikit-learn takes a tree's node arrays as stored. A trainer could add to its honest fit a split that only a
    chosen data point reaches, pointing back at itself (predict loops for good, holding a miner's prediction
    thread) or past the tree (a segmentation fault): the validators' scores stay the honest fit's, and once
    registered the model answers that data point by killing or freezing every miner."""
    blob = _doctored(kind, field, value)
    with pytest.raises(UntrustedArtifact, match=problem):
        load_untrusted(blob, "doctored", hashlib.sha256(blob).hexdigest())


def test_an_honest_fit_of_each_tree_model_loads() -> None:
    from sklearn.ensemble import GradientBoostingRegressor, HistGradientBoostingRegressor, RandomForestRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from ethml.training.artifact import canonical_dumps

    rng = np.random.default_rng(3)
    x, y = rng.random((300, 5)), rng.random(300)
    for estimator in (
        RandomForestRegressor(5),
        GradientBoostingRegressor(n_estimators=5),
        HistGradientBoostingRegressor(),
    ):
        blob = canonical_dumps(make_pipeline(StandardScaler(), estimator).fit(x, y))
        assert load_untrusted(blob, "honest", hashlib.sha256(blob).hexdigest()).predict(x[:2]).shape == (2,)


def _doctored_search_tree(algorithm: str, change: str) -> bytes:
    """A canonical skops archive of an honestly fitted k-nearest-neighbours pipeline whose search tree's arrays
    are changed as `change` says (what a trainer could do to its artifact and keep its scores)."""
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from ethml.training.artifact import canonical_dumps

    rng = np.random.default_rng(11)
    x = rng.random((200, 4))
    y = (x[:, 0] > 0.5).astype(int)
    model = make_pipeline(StandardScaler(), KNeighborsClassifier(3, algorithm=algorithm, leaf_size=10)).fit(x, y)
    tree = model[-1]._tree
    state = list(tree.__getstate__())
    data, index, nodes, bounds = (np.array(a) for a in state[:4])
    last_split = int(np.flatnonzero(nodes["is_leaf"] == 0)[-1])
    if change == "index past the points":
        index[0] = 10**9
    elif change == "index twice":
        index[0] = index[1]
    elif change == "leaf range past the points":
        nodes["idx_end"][-1] = len(index) + 5
    elif change == "leaf made a split":
        nodes["is_leaf"][-1] = 0
    elif change == "one level more":
        state[5] += 1
    elif change == "bounds cut short":
        bounds = np.ascontiguousarray(bounds[:, : last_split + 1, :])
    elif change == "a point NaN":
        data[0, 0] = np.nan
    elif change == "a leaf over every point":  # the review's trap: leaves naming every point cost a query minutes
        nodes["idx_start"][-1] = 0
    state[:4] = [data, index, nodes, bounds]
    tree.__setstate__(tuple(state))
    return canonical_dumps(model)


@pytest.mark.parametrize(
    ("algorithm", "change", "problem"),
    [
        ("kd_tree", "index past the points", "point index is not an ordering"),  # read past the data: SIGSEGV
        ("kd_tree", "index twice", "point index is not an ordering"),
        ("kd_tree", "leaf range past the points", "range of points lies outside"),
        ("ball_tree", "leaf made a split", "children lie outside the tree"),
        ("kd_tree", "one level more", "nodes where its 6 levels make 63"),
        ("kd_tree", "bounds cut short", "node bounds of shape"),
        ("ball_tree", "a point NaN", "not a finite number"),
        ("kd_tree", "a leaf over every point", "children do not divide its points between them"),
    ],
)
def test_a_doctored_nearest_neighbour_search_tree_is_refused(algorithm: str, change: str, problem: str) -> None:
    """A k-nearest-neighbours model answers through a KD-tree or ball tree whose arrays its queries index
    unchecked. A KD-tree whose point index names a point past the training points killed the process that asked
    it for a prediction (SIGSEGV), as a doctored decision tree did; any query reaching that leaf does."""
    blob = _doctored_search_tree(algorithm, change)
    with pytest.raises(UntrustedArtifact, match=f"a malformed nearest-neighbour search tree: .*{problem}"):
        load_untrusted(blob, "doctored", hashlib.sha256(blob).hexdigest())


def test_an_honest_fit_of_each_nearest_neighbour_model_loads() -> None:
    from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import MinMaxScaler, StandardScaler

    from ethml.training.artifact import canonical_dumps

    rng = np.random.default_rng(5)
    x = rng.random((500, 6))
    for estimator, y in (
        (KNeighborsClassifier(5, algorithm="kd_tree"), (x[:, 1] > 0.3).astype(int)),
        (KNeighborsClassifier(1, algorithm="ball_tree", leaf_size=1), (x[:, 2] > 0.6).astype(int)),
        (KNeighborsRegressor(7), x[:, 0]),
        (KNeighborsRegressor(2, algorithm="ball_tree"), x[:, 3]),
    ):
        for scaler in (StandardScaler(), MinMaxScaler()):
            model = make_pipeline(scaler, estimator).fit(x, y)
            blob = canonical_dumps(model)
            loaded = load_untrusted(blob, "honest", hashlib.sha256(blob).hexdigest())
            assert np.array_equal(loaded.predict(x[:20]), model.predict(x[:20]))


def _doctored_model(change: str) -> bytes:
    """A canonical skops archive of an honestly fitted model of a task (a bare estimator, as a trainer submits
    it) with its internals changed as `change` says."""
    from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC, NuSVC

    from ethml.training.artifact import canonical_dumps

    rng = np.random.default_rng(13)
    x = rng.random((200, 4))
    y = (x[:, 0] * 3).astype(int)  # three classes
    model: Any
    if change.startswith("svc"):
        model = SVC().fit(x, y)
        if change == "svc dual cut short":
            model._dual_coef_ = np.zeros((2, 1))
        elif change == "svc intercept cut short":
            model._intercept_ = np.zeros(1)
        elif change == "svc counts":
            model._n_support = (model._n_support + 1).astype(np.int32)
        elif change == "svc one-class":
            model._impl = "one_class"
        elif change == "svc sparse":
            model._sparse = True
        elif change == "svc classes cut short":
            model.classes_ = model.classes_[:2]
        elif change == "svc holding a foreign type":
            model.spare_ = NuSVC().fit(x, y)
        elif change == "svc float32 support vectors":
            model.support_vectors_ = model.support_vectors_.astype(np.float32)
        elif change == "svc infinite dual coefficient":
            model._dual_coef_ = model._dual_coef_.copy()
            model._dual_coef_[0, 0] = np.inf
        elif change == "svc negative gamma":
            model._gamma = -1.0
        elif change == "svc fractional degree":
            model.degree = 2.5
        elif change == "svc ties broken one against one":  # scikit-learn refuses to predict with it
            model.break_ties, model.decision_function_shape = True, "ovo"
        elif change == "svc many classes":  # a miner decides each of the 500,500 pairs
            model._n_support = np.array([len(model.support_)] + [0] * 1000, dtype=np.int32)
        elif change == "svc float counts":  # the review's: they split the vectors otherwise than libsvm would
            model._n_support = model._n_support.astype(np.float64)
        elif change == "svc int64 indices":
            model.support_ = model.support_.astype(np.int64)
        elif change == "svc vectors by column":
            model.support_vectors_ = np.asfortranarray(model.support_vectors_)
        elif change == "svc after a classifier":  # the review's: predict raised AttributeError on every miner
            model = Pipeline([("first", SVC().fit(x, y)), ("svc", model)])
    elif change == "scaler alone":
        model = StandardScaler().fit(x)
    elif change.startswith("boosting regressor"):
        model = GradientBoostingRegressor(n_estimators=3).fit(x, x[:, 1])
        if change == "boosting regressor stages and count wider":  # the review's: K trees per stage, stated so
            model.estimators_ = np.concatenate([model.estimators_] * 4, axis=1)
            model.n_trees_per_iteration_ = 4
    elif change.startswith("boosting"):
        model = GradientBoostingClassifier(n_estimators=3).fit(x, y)
        if change == "boosting stage wider":
            model.estimators_ = np.concatenate([model.estimators_] * 2, axis=1)
        elif change == "boosting other init":
            model.init_ = NuSVC().fit(x, y)
        elif change == "boosting start narrower":
            model.init_.class_prior_ = model.init_.class_prior_[:2]
        elif change == "boosting random start":
            model.init_._strategy = "stratified"
        elif change == "boosting binomial loss":
            model._loss = GradientBoostingClassifier(n_estimators=1).fit(x, x[:, 0] > 0.5)._loss
    elif change.startswith("classifier"):
        model = KNeighborsClassifier(5).fit(x, y)
        if change == "classifier label outside classes":
            model._y = model._y.copy()
            model._y[-1] = 10**12
        elif change == "classifier padded classes":  # the review's: 4,000,000 classes no point has, 3 s a point
            model.classes_ = np.arange(4000)
        elif change == "classifier l2 brute":  # the review's: predict reads `metric`; "l2" took a compiled path
            model._fit_method, model._tree, model.metric = "brute", None, "l2"
        elif change == "classifier kd-tree fields renamed":
            state = list(model._tree.__getstate__())
            renamed = np.dtype(
                {
                    "names": ["is_leaf", "idx_start", "idx_end", "radius"],
                    "formats": ["<i8", "<i8", "<i8", "<f8"],
                    "offsets": [0, 8, 16, 24],
                    "itemsize": 32,
                }
            )
            state[2] = np.asarray(state[2]).view(renamed)
            model._tree.__setstate__(tuple(state))
    elif change.startswith("forest"):
        from sklearn.ensemble import RandomForestClassifier

        model = RandomForestClassifier(5, random_state=0).fit(x, y)
        model.n_jobs = 2  # the review's: trees' outputs added in the order threads finish
    elif change.startswith("hist"):
        from sklearn._loss.link import LogitLink
        from sklearn._loss.loss import HalfBinomialLoss
        from sklearn.ensemble import HistGradientBoostingRegressor

        model = HistGradientBoostingRegressor(max_iter=3).fit(x, x[:, 1])
        if change == "hist regressor binomial loss":  # the review's: its answer is expit(raw), glibc's exp by CPU
            model._loss = HalfBinomialLoss()
        elif change == "hist regressor logit link":
            model._loss.link = LogitLink()
    elif change.startswith("linear"):
        model = LogisticRegression().fit(x, y)
        if change == "linear extra class row":
            # a fourth row of coefficients, winning only far from the data: predict failed there alone
            model.coef_ = np.vstack([model.coef_, [[1.0, 0, 0, 0]]])
            model.intercept_ = np.append(model.intercept_, -1e6)
        elif change == "linear many classes":  # the review's: 250,000 classes cost a miner 56 s per data point
            model.classes_ = np.arange(1001)
            model.coef_ = np.zeros((1001, 4))
            model.intercept_ = np.full(1001, -1e6)
        elif change == "linear int8 coefficients":
            model.coef_ = model.coef_.astype(np.int8)
        elif change == "linear infinite intercept":
            model.intercept_ = np.array([0.0, 0.0, np.inf])
    else:
        model = KNeighborsRegressor(3, algorithm="brute").fit(x, x[:, 1])
        if change == "neighbours int8 points":  # the review's: a float64 copy of each 100000x256 scan, 8 times
            model._fit_X = model._fit_X.astype(np.int8)
        elif change == "neighbours too many":  # more than a task may ask for (the vote is over every one)
            model.n_neighbors = 101
        elif change == "neighbours narrow points":
            model._fit_X = np.ascontiguousarray(model._fit_X[:, :2])
        elif change == "neighbours minkowski":
            model.effective_metric_, model.effective_metric_params_ = "minkowski", {"p": 3}
        elif change == "neighbours tree for brute":
            model._fit_method = "kd_tree"
    return canonical_dumps(model)


_DOCTORED_INTERNALS = [
    # libsvm read the dual coefficients past their end (2,000,000 support vectors: a segmentation fault)
    ("svc dual cut short", "support-vector machine: dual coefficients of shape \\(2, 1\\)"),
    ("svc intercept cut short", "intercepts, not one per pair of classes \\(3\\)"),
    ("svc counts", "counts that do not match"),
    ("svc one-class", "libsvm kind 'one_class'"),
    ("svc sparse", "kernel on sparse data"),
    ("svc classes cut short", "\\(2,\\) class labels for 3 classes"),
    ("svc holding a foreign type", "holds a sklearn.svm._classes.NuSVC, which no fitted model of a task holds"),
    # a miner computes an SVM's kernel and sums itself (ethml.ml.exact), with its arrays as they are
    ("svc float32 support vectors", "support vectors of float32 or not finite"),
    ("svc infinite dual coefficient", "dual coefficients of float64 or not finite"),
    ("svc negative gamma", "a negative gamma"),
    ("svc fractional degree", "a degree of 2.5"),
    ("svc ties broken one against one", "break_ties that scikit-learn refuses to predict with"),
    ("svc many classes", "1001 classes \\(at most 1000"),
    ("svc float counts", "support-vector counts of float64 \\(a fit's are int32\\)"),
    ("svc int64 indices", "support indices of int64"),
    ("svc vectors by column", "support vectors not stored row by row"),
    # a model that cannot answer any data point (predict raised AttributeError: a miner's predictor stopped)
    ("svc after a classifier", "a pipeline whose SVC before its last step does not transform"),
    ("scaler alone", "a StandardScaler, which does not predict"),
    # each stage's trees were added into a table of starting values as wide as a fit's: writes past its end
    # (a stage 4,000 wide: a segmentation fault; 64 wide, stated so in n_trees_per_iteration_: the same)
    ("boosting stage wider", "gradient-boosted model: stages of shape \\(3, 6\\) for 3 trees per stage"),
    ("boosting regressor stages and count wider", "stages of shape \\(3, 4\\) for 4 trees per stage \\(a fit's: 1\\)"),
    ("boosting other init", "a NuSVC to start from"),
    ("boosting start narrower", "a start of 2 columns for 3 trees per stage"),
    ("boosting random start", "a dummy estimator predicting by 'stratified'"),
    ("boosting binomial loss", "a HalfBinomialLoss loss with a LogitLink \\(a fit's: HalfMultinomialLoss"),
    # a brute-force search read the stored points past their end; with metric "l2" it counted votes per label
    # unchecked (a label of 10**12 on points far from the data: a segmentation fault on a chosen point)
    ("neighbours narrow points", "nearest-neighbours model: stored points of shape \\(200, 2\\)"),
    ("neighbours minkowski", "a distance other than the Euclidean one"),
    ("neighbours tree for brute", "a NoneType for a kd_tree search"),
    ("classifier label outside classes", "a stored point whose label is not one of its classes"),
    ("classifier l2 brute", "a distance other than the Euclidean one"),
    # compiled code read the node records by position, the check by name: a split past the tree (SIGSEGV)
    ("classifier kd-tree fields renamed", "node records laid out as"),
    ("forest on two jobs", "a RandomForestClassifier set to run on 2 jobs"),
    ("linear extra class row", "linear model: coefficients of shape \\(4, 4\\) and \\(4,\\) intercepts for 3 classes"),
    # a miner adds each class's score exactly, one class at a time, and scans every stored point of a neighbours
    # model for each data point: what a fit cannot hold would make that cost seconds to minutes per data point
    ("linear many classes", "1001 classes \\(at most 1000"),
    ("linear int8 coefficients", "int8 coefficients and float64 intercepts"),
    ("linear infinite intercept", "not finite"),
    ("neighbours int8 points", "int8 stored points"),
    ("neighbours too many", "101 neighbours of 200 stored points \\(a task's: at most 100\\)"),
    ("classifier padded classes", "4000 classes, not each the label of a stored point"),
    # a regressor whose answer is exp of its raw score: glibc picks exp by CPU (with or without FMA)
    ("hist regressor binomial loss", "histogram-boosted model: a HalfBinomialLoss loss with a LogitLink"),
    ("hist regressor logit link", "a HalfSquaredError loss with a LogitLink \\(a fit's: HalfSquaredError"),
]


@pytest.mark.parametrize(("change", "problem"), _DOCTORED_INTERNALS, ids=[c for c, _ in _DOCTORED_INTERNALS])
def test_a_model_with_doctored_internals_is_refused(change: str, problem: str) -> None:
    """scikit-learn's compiled prediction code indexes a fitted model's arrays by the counts the model states,
    unchecked. A trainer could submit its honest fit with those changed where only chosen data reaches, keep its
    scores, and have every miner that serves the model crash (or worse, write past an array) on that data."""
    blob = _doctored_model(change)
    with pytest.raises(UntrustedArtifact, match=problem):
        load_untrusted(blob, "doctored", hashlib.sha256(blob).hexdigest())


@pytest.mark.parametrize("classes", [2, 3, 0], ids=["two classes", "three classes", "regression"])
def test_an_honest_fit_of_every_estimator_a_task_may_ask_for_loads(classes: int) -> None:
    """Every estimator of ethml.training.spec.ESTIMATORS, fit with its defaults (classifiers on two and three
    classes, regressors: `classes` 0), loads through every check and predicts as it did."""
    import importlib

    from ethml.training.artifact import canonical_dumps
    from ethml.training.spec import ESTIMATORS

    rng = np.random.default_rng(17)
    x = rng.random((300, 5))
    kind = "regression" if classes == 0 else "classification"
    y = x[:, 2] if classes == 0 else np.minimum((x[:, 0] * classes).astype(int), classes - 1)
    for name, (path, estimator_kind, _params) in ESTIMATORS.items():
        if estimator_kind != kind:
            continue
        module, cls = path.rsplit(".", 1)
        model = getattr(importlib.import_module(module), cls)().fit(x, y)
        blob = canonical_dumps(model)
        loaded = load_untrusted(blob, name, hashlib.sha256(blob).hexdigest())
        assert np.array_equal(loaded.predict(x[:25]), model.predict(x[:25])), name


def test_an_array_that_many_trees_name_counts_once_for_each() -> None:
    """The review's: skops builds an array once for all the nodes that name it (a CachedNode), but each tree copies
    its node and value arrays. 20 trees naming one 200 MB array of zeros (a 212 KB archive) loaded into 4.3 GiB;
    the bytes of array files are now counted for each node naming them, within MAX_ARRAY_BYTES (512 MiB)."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.tree._tree import NODE_DTYPE

    from ethml.training.artifact import canonical_dumps

    trees_count, classes = 20, 4_000_000  # 20 copies of 32 MB: 640 MB
    x = np.random.default_rng(2).random((60, 3))
    forest = RandomForestClassifier(n_estimators=trees_count, max_depth=1, random_state=0).fit(x, x[:, 0] > 0.5)
    with zipfile.ZipFile(io.BytesIO(canonical_dumps(forest))) as z:
        files = {n: z.read(n) for n in z.namelist()}
    schema = json.loads(files["schema.json"])
    trees: list[dict[str, Any]] = []

    def find(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("__loader__") == "TreeNode":
                trees.append(node)
            for value in node.values():
                find(value)
        elif isinstance(node, list):
            for value in node:
                find(value)

    def npy(array: Any) -> bytes:
        out = io.BytesIO()
        np.save(out, array)
        return out.getvalue()

    find(schema)
    assert len(trees) == trees_count
    n_classes = trees[0]["__reduce__"]["args"]["content"][1]
    nodes, values = trees[0]["content"]["content"]["nodes"], trees[0]["content"]["content"]["values"]
    leaf = np.zeros(1, dtype=NODE_DTYPE)
    leaf["left_child"] = leaf["right_child"] = -1
    leaf["feature"] = -2
    files[n_classes["file"]] = npy(np.array([classes], dtype=np.intp))
    files[nodes["file"]] = npy(leaf)
    files[values["file"]] = npy(np.zeros((1, 1, classes)))

    def cached(node: dict[str, Any]) -> dict[str, Any]:
        return {"__class__": "ndarray", "__module__": "numpy", "__loader__": "CachedNode", "__id__": node["__id__"]}

    for tree in trees[1:]:
        tree["__reduce__"]["args"]["content"][1] = cached(n_classes)
        tree["content"]["content"]["nodes"], tree["content"]["content"]["values"] = cached(nodes), cached(values)
    files["schema.json"] = json.dumps(schema).encode()
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)
    blob = archive.getvalue()
    assert len(blob) < 2**20
    with pytest.raises(UntrustedArtifact, match="array files read adding up to over 512 MiB"):
        load_untrusted(blob, "shared", hashlib.sha256(blob).hexdigest())


def test_an_answer_outside_int256_or_equal_to_the_sentinel_is_invalid_input() -> None:
    """The review's: an honest Ridge with 6 decimals answered [1e300, 0, 0] with a 306-digit integer, which no
    commitment can encode (every miner's submitter failed on it), and a chosen point gave exactly INVALID_INPUT's
    value. Both are now that point's INVALID_INPUT, as every miner computes it."""
    from sklearn.linear_model import Ridge

    from ethml.chain.rounds import INVALID_INPUT
    from ethml.ml.loader import LoadedModel
    from ethml.ml.manifest import ModelEntry
    from ethml.training.artifact import canonical_dumps

    x = np.random.default_rng(0).normal(size=(200, 3))
    blob = canonical_dumps(Ridge().fit(x, x @ [1.0, 2.0, 3.0] + 5))
    entry = ModelEntry(
        id=9, name="ridge", kind="regression", decimals=6, feature_count=3, artifact="-", sha256="0" * 64, cid="-"
    )
    loaded = LoadedModel(entry, load_untrusted(blob, "ridge", hashlib.sha256(blob).hexdigest()))
    assert abs(loaded.predict_one(b"[1, 1, 1]") - 11_000_000) < 1_000_000
    with pytest.raises(InvalidInput, match=r"^invalid data point: the model's answer \(306 digits\) is not an int256"):
        loaded.predict_one(b"[1e300, 0, 0]")
    with pytest.raises(InvalidInput, match="is not an int256, or is the sentinel"):
        encode_prediction(float(INVALID_INPUT), "classification", 0)
    assert encode_prediction(float(INVALID_INPUT + 2**205), "classification", 0) == INVALID_INPUT + 2**205
    assert encode_prediction(np.int64(3), "classification", 0) == 3
    assert encode_prediction(True, "classification", 0) == 1


def test_a_model_that_raises_on_a_point_answers_it_as_invalid_input() -> None:
    """What a model raises for a data point is the same on every miner: that point's INVALID_INPUT, not a failed
    predictor (an IndexError or OverflowError escaped, the predictor actor was restarted and its job lost)."""
    from ethml.ml.loader import LoadedModel
    from ethml.ml.manifest import ModelEntry

    class Raises:
        def __init__(self, error: Exception) -> None:
            self.error = error

        def predict(self, features: Any) -> Any:
            raise self.error

    entry = ModelEntry(
        id=9, name="raises", kind="classification", decimals=0, feature_count=2, artifact="-", sha256="0" * 64, cid="-"
    )
    for error in (IndexError("index 3 is out of bounds"), OverflowError("int too large"), ValueError("bad point")):
        with pytest.raises(InvalidInput, match=str(error)):
            LoadedModel(entry, Raises(error)).predict_one(b"[1.0, 2.0]")

    class NoLabel:
        def predict(self, features: Any) -> Any:
            return np.array([None], dtype=object)

    with pytest.raises(InvalidInput, match="TypeError"):  # int(None), in encoding the answer
        LoadedModel(entry, NoLabel()).predict_one(b"[1.0, 2.0]")
    with pytest.raises(MemoryError):  # this miner's trouble, not the point's: not an answer
        LoadedModel(entry, Raises(MemoryError())).predict_one(b"[1.0, 2.0]")


#: Hostile skops archives, loaded in a child process with web3 imported (on the code before, they killed it with
#: a segmentation fault, or never finished): each line is the case and what `load_untrusted` said.
_HOSTILE_ARCHIVES = r"""
import hashlib, io, json, sys, zipfile
import web3  # noqa: F401
import numpy as np
from sklearn.linear_model import LogisticRegression
import skops.io as sio
from ethml.errors import UntrustedArtifact
from ethml.ml import load_untrusted

x = np.random.default_rng(1).random((50, 3))
blob = sio.dumps(LogisticRegression().fit(x, (x[:, 0] > 0.5).astype(int)))
with zipfile.ZipFile(io.BytesIO(blob)) as z:
    files = {n: z.read(n) for n in z.namelist()}
honest = json.loads(files["schema.json"])
array = next(n for n in files if n.endswith(".npy"))

def archive(schema, extra=None):
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in {**files, **(extra or {})}.items():
            z.writestr(name, json.dumps(schema) if name == "schema.json" else data)
    return out.getvalue()

def node(loader, content, ident, cls="list", module="builtins"):
    return {"__class__": cls, "__module__": module, "__loader__": loader, "content": content, "__id__": ident}

def with_attribute(value):
    # An attribute of the estimator: its dict's content, and a key type for its name (one per key).
    schema = json.loads(json.dumps(honest))
    schema["content"]["content"]["hostile_"] = value
    types = schema["content"]["key_types"]["content"]
    types.append(dict(types[0]))
    return schema

json_text = node("JsonNode", "[" * 300_000, 9001, cls="str")
loop = node("ListNode", [node("ListNode", [{"__loader__": "ListNode", "__id__": 9002, "__class__": "list",
                                           "__module__": "builtins", "content": []}], 9003)], 9002)
shared = node("ListNode", [], 9100)
for level in range(1, 41):  # each level names the one below twice: 2**40 nodes for skops' audit
    shared = node("ListNode", [shared, {**shared, "content": "shared"}], 9100 + level)
arrays = node("ListNode", [{"__class__": "ndarray", "__module__": "numpy", "__loader__": "NdArrayNode",
                            "type": "numpy", "file": "big.npy", "__id__": 9200 + i} for i in range(40)], 9199)
cases = {
    "a JSON text nested deeply": archive(with_attribute(json_text)),
    "a node inside itself": archive(with_attribute(loop)),
    "nodes shared over and over": archive(with_attribute(shared)),
    "one large array file read 40 times": archive(with_attribute(arrays), {"big.npy": b"\0" * (16 * 2**20)}),
    "a loader no model uses": archive(with_attribute(node("FunctionNode", {}, 9300, "function"))),
}
for case, data in cases.items():
    try:
        load_untrusted(data, "hostile", hashlib.sha256(data).hexdigest())
        print(case, "| loaded", flush=True)
    except UntrustedArtifact as exc:
        print(case, "|", exc, flush=True)
"""


def test_a_hostile_skops_archive_is_refused_before_skops_reads_it() -> None:
    """skops builds its node tree before any of its checks: a JSON text nested 300,000 deep inside a node, or a
    node whose child names its own id, killed the process that loaded the archive (a miner, a validator); nodes
    that name the one below twice over 40 levels kept its audit busy for good; one 16 MiB file of zeros named by
    40 array nodes was read 40 times (on a 64 MiB artifact, tens of GB). Each is refused first now."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _HOSTILE_ARCHIVES], capture_output=True, text=True, timeout=300, cwd=ROOT, check=False
    )
    assert done.returncode == 0, f"exit code {done.returncode}: {done.stdout[-1000:]} {done.stderr[-2000:]}"
    said = dict(line.split(" | ", 1) for line in done.stdout.splitlines())
    assert "nested deeper than 200 levels" in said["a JSON text nested deeply"], said
    assert "inside itself" in said["a node inside itself"], said
    assert "nodes shared over and over" in said["nodes shared over and over"], said
    assert "over 512 MiB" in said["one large array file read 40 times"], said
    assert "'FunctionNode' node" in said["a loader no model uses"], said
