"""Training and validation jobs: the dataset and test set as CSV, scikit-learn estimators from the
spec's allow-list, skops artifacts, scores in millionths. Every fit and score runs in a child process
with a wall-clock limit, so the event loop stays free and a runaway fit is killed."""

from __future__ import annotations

import asyncio
import csv
import importlib
import io
import multiprocessing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ethml.errors import EthmlError, ModelError
from ethml.ml.loader import load_untrusted, sha256_hex
from ethml.training.spec import ESTIMATORS, MAX_COLUMNS, MAX_DATASET_BYTES, MAX_ROWS, TaskSpec

SCORE_SCALE = 1_000_000


class TrainingError(EthmlError):
    """A dataset, an artifact or a job that cannot be used; the message says why."""


class TrainingTimeout(TrainingError, TimeoutError):
    pass


@dataclass(frozen=True)
class TrainedModel:
    artifact: bytes
    sha256: str
    #: The score on the dataset's deterministic holdout, in millionths (what the trainer claims).
    claimed_score: int


@dataclass(frozen=True)
class Assessment:
    """What a validator finds: the score it votes (test set) and whether the claim reproduces."""

    test_score: int
    holdout_score: int
    claim_reproduced: bool


def sklearn_dataset_csv(name: str) -> bytes:
    """A data set that scikit-learn ships (wine, iris, breast_cancer, diabetes) as CSV with a header."""
    import sklearn.datasets as ds

    loaders = {"wine": ds.load_wine, "iris": ds.load_iris, "breast_cancer": ds.load_breast_cancer}
    loaders["diabetes"] = ds.load_diabetes
    if name not in loaders:
        raise TrainingError(f"unknown scikit-learn data set {name!r} (known: {', '.join(loaders)})")
    bunch = loaders[name]()
    names = [str(n).replace(" ", "_") for n in bunch.feature_names]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*names, "target"])
    for row, target in zip(bunch.data, bunch.target, strict=True):
        writer.writerow([repr(float(v)) for v in row] + [repr(target.item())])
    return out.getvalue().encode()


def split_csv(raw: bytes, test_fraction: float, seed: int) -> tuple[bytes, bytes]:
    """(public dataset, hidden test set): a deterministic split of one CSV, header on both."""
    lines = raw.decode().splitlines()
    header, rows = lines[0], lines[1:]
    order = np.random.default_rng(seed).permutation(len(rows))
    cut = round(len(rows) * (1 - test_fraction))
    public = [rows[i] for i in sorted(order[:cut])]
    hidden = [rows[i] for i in sorted(order[cut:])]
    return ("\n".join([header, *public]) + "\n").encode(), ("\n".join([header, *hidden]) + "\n").encode()


def read_csv(raw: bytes, spec: TaskSpec) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Features and target, with the size limits and a clear error for every malformed row."""
    if len(raw) > MAX_DATASET_BYTES:
        raise TrainingError(f"the data is {len(raw):,} bytes, over the {MAX_DATASET_BYTES:,} limit")
    try:
        reader = csv.reader(io.StringIO(raw.decode()))
        header = next(reader)
    except (UnicodeDecodeError, StopIteration, csv.Error) as exc:
        raise TrainingError(f"not a CSV with a header ({exc or 'empty'})") from None
    if len(header) > MAX_COLUMNS + 1:
        raise TrainingError(f"{len(header)} columns, over the {MAX_COLUMNS} limit")
    missing = [c for c in [*spec.features, spec.target] if c not in header]
    if missing:
        raise TrainingError(f"the CSV has no column {', '.join(map(repr, missing))}")
    index = [header.index(c) for c in spec.features]
    target = header.index(spec.target)
    xs: list[list[float]] = []
    ys: list[float] = []
    for line, row in enumerate(reader, start=2):
        if len(xs) >= MAX_ROWS:
            raise TrainingError(f"more than {MAX_ROWS:,} rows")
        try:
            xs.append([float(row[i]) for i in index])
            ys.append(float(row[target]))
        except (ValueError, IndexError):
            raise TrainingError(f"row {line} is not numeric in the spec's columns") from None
    if len(xs) < 10:
        raise TrainingError(f"{len(xs)} rows are too few to train and score")
    x, y = np.asarray(xs), np.asarray(ys)
    if not np.isfinite(x).all() or not np.isfinite(y).all():
        raise TrainingError("the data holds NaN or infinite values")
    return x, (y.astype(np.int64) if spec.kind == "classification" else y)


def _holdout(spec: TaskSpec, x: np.ndarray[Any, Any], y: np.ndarray[Any, Any], seed: int) -> tuple[Any, ...]:
    from sklearn.model_selection import train_test_split

    return tuple(train_test_split(x, y, test_size=spec.holdout_fraction, random_state=seed % 2**32))


def metric(spec: TaskSpec, y_true: np.ndarray[Any, Any], y_pred: np.ndarray[Any, Any]) -> int:
    """The spec's metric as millionths in 0..1,000,000, higher is better (MAE maps to 1 / (1 + MAE))."""
    from sklearn import metrics

    if spec.metric == "accuracy":
        value = float(metrics.accuracy_score(y_true, y_pred))
    elif spec.metric == "f1_macro":
        value = float(metrics.f1_score(y_true, y_pred, average="macro"))
    elif spec.metric == "r2":
        value = max(0.0, float(metrics.r2_score(y_true, y_pred)))
    else:
        value = 1.0 / (1.0 + float(metrics.mean_absolute_error(y_true, y_pred)))
    return round(min(max(value, 0.0), 1.0) * SCORE_SCALE)


def make_estimator(spec: TaskSpec, seed: int) -> Any:
    path, _kind, _params = ESTIMATORS[spec.estimator.name]
    module, name = path.rsplit(".", 1)
    cls = getattr(importlib.import_module(module), name)
    params: dict[str, Any] = dict(spec.estimator.params)
    if "random_state" in cls().get_params():
        params["random_state"] = seed % 2**32
    return cls(**params)


def fit_and_claim(spec: TaskSpec, dataset: bytes, task_id: int) -> TrainedModel:
    """Fit on the dataset less its holdout (split seeded by the task id), save with skops, claim the
    holdout score. Two honest trainers of one spec get the same artifact and score."""
    import skops.io as sio

    x, y = read_csv(dataset, spec)
    x_fit, x_hold, y_fit, y_hold = _holdout(spec, x, y, task_id)
    model = make_estimator(spec, task_id)
    model.fit(x_fit, y_fit)
    artifact = sio.dumps(model)
    return TrainedModel(artifact, sha256_hex(artifact), metric(spec, y_hold, model.predict(x_hold)))


def assess(
    spec: TaskSpec, artifact: bytes, sha256: str, claimed: int, dataset: bytes, test_set: bytes, task_id: int
) -> Assessment:
    """Load the artifact only through skops' allow-list, check it is the promised estimator with the
    spec's features, score it on the revealed test set and re-compute the trainer's claim."""
    model = load_untrusted(artifact, f"task {task_id} submission", sha256)
    expected = ESTIMATORS[spec.estimator.name][0].rsplit(".", 1)[1]
    if type(model).__name__ != expected:
        raise ModelError(f"the artifact is a {type(model).__name__}, the spec asks for a {expected}")
    if int(getattr(model, "n_features_in_", -1)) != len(spec.features):
        raise ModelError(
            f"the artifact takes {getattr(model, 'n_features_in_', '?')} features, not {len(spec.features)}"
        )
    x, y = read_csv(dataset, spec)
    _x_fit, x_hold, _y_fit, y_hold = _holdout(spec, x, y, task_id)
    holdout = metric(spec, y_hold, model.predict(x_hold))
    x_test, y_test = read_csv(test_set, spec)
    return Assessment(metric(spec, y_test, model.predict(x_test)), holdout, holdout == claimed)


def _child(conn: Any, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    try:
        conn.send(("ok", fn(*args)))
    except BaseException as exc:  # noqa: BLE001 - everything goes back to the parent as a message
        conn.send(("error", f"{type(exc).__name__}: {exc}", isinstance(exc, EthmlError)))
    finally:
        conn.close()


async def run_limited(fn: Callable[..., Any], *args: Any, timeout: float) -> Any:  # noqa: ASYNC109
    """`fn(*args)` in a child process, killed after `timeout` seconds (TrainingTimeout)."""
    ctx = multiprocessing.get_context("forkserver")
    parent, child = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_child, args=(child, fn, args), daemon=True)
    process.start()
    child.close()
    try:
        ready = await asyncio.to_thread(parent.poll, timeout)
        if not ready:
            raise TrainingTimeout(f"{fn.__name__} did not finish within {timeout:g} s and was stopped")
        try:
            message = parent.recv()
        except EOFError:
            await asyncio.to_thread(process.join, 5)
            raise TrainingError(f"{fn.__name__} died in its process (exit code {process.exitcode})") from None
    finally:
        if process.is_alive():
            process.kill()
        await asyncio.to_thread(process.join, 5)
        parent.close()
    if message[0] == "error":
        raise TrainingError(message[1])
    return message[1]
