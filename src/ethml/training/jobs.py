"""Training and validation jobs: the dataset and test set as CSV, scikit-learn estimators from the
spec's allow-list, canonical skops artifacts, scores in millionths. Every fit and score runs in a child
process with a wall-clock limit, so the event loop stays free and a runaway fit is killed. With a Dask
cluster (`Compute.cluster`), that child drives the cluster: a forest's trees and the scoring of many
submissions run on its workers (ethml.training.cluster), with the same bytes and scores as locally."""

from __future__ import annotations

import asyncio
import csv
import importlib
import io
import multiprocessing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ethml._lifeline import end_when_closed
from ethml.errors import EthmlError, ModelError
from ethml.ml.loader import load_untrusted, sha256_hex
from ethml.training.artifact import canonical_dumps
from ethml.training.spec import ESTIMATORS, MAX_COLUMNS, TaskSpec, TrainingLimits

if TYPE_CHECKING:
    from ethml.training.cluster import Cluster

SCORE_SCALE = 1_000_000
DEFAULT_LIMITS = TrainingLimits()


class TrainingError(EthmlError):
    """A dataset, an artifact or a job that cannot be used; the message says why."""


class TrainingTimeout(TrainingError, TimeoutError):
    pass


class LimitExceeded(TrainingError):
    """Data over this deployment's limits (rows, bytes): this machine's setting, not the data's fault."""


class ClusterError(TrainingError):
    """A Dask cluster that cannot be used: unreachable, without workers, or running other versions."""


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


@dataclass(frozen=True)
class Compute:
    """Where a deployment's jobs run and what they accept: this machine, or a Dask cluster."""

    cluster: Cluster | None = None
    limits: TrainingLimits = field(default_factory=TrainingLimits)


@contextmanager
def one_native_thread() -> Iterator[None]:
    """OpenMP and BLAS at one thread: a LogisticRegression fitted with two BLAS threads differs in its
    last bits from one fitted with one, so a fit's bytes would depend on the machine's core count."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


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


def read_csv(
    raw: bytes, spec: TaskSpec, limits: TrainingLimits = DEFAULT_LIMITS
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Features and target, within the deployment's limits, with a clear error for every malformed
    row. numpy's C parser reads the spec's columns straight into one float64 matrix (a million rows of
    twenty features in about a second, no Python object per value); only when it refuses the data does
    a line-by-line pass find the first bad row to name it."""
    if len(raw) > limits.max_dataset_bytes:
        raise LimitExceeded(
            f"the data is {len(raw):,} bytes, over this deployment's {limits.max_dataset_bytes:,} limit"
        )
    end = raw.find(b"\n")
    first = raw if end < 0 else raw[:end]  # not raw.split: that would copy the whole dataset
    try:
        header = next(csv.reader([first.decode().rstrip("\r")]))
    except (UnicodeDecodeError, StopIteration, csv.Error) as exc:
        raise TrainingError(f"not a CSV with a header ({exc or 'empty'})") from None
    if not header:
        raise TrainingError("not a CSV with a header (empty)")
    if len(header) > MAX_COLUMNS + 1:
        raise TrainingError(f"{len(header)} columns, over the {MAX_COLUMNS} limit")
    missing = [c for c in [*spec.features, spec.target] if c not in header]
    if missing:
        raise TrainingError(f"the CSV has no column {', '.join(map(repr, missing))}")
    columns = [header.index(c) for c in [*spec.features, spec.target]]
    try:
        table = np.loadtxt(
            io.BytesIO(raw),
            delimiter=",",
            quotechar='"',
            skiprows=1,
            usecols=columns,
            max_rows=limits.max_rows + 1,
            ndmin=2,
            dtype=np.float64,
            encoding="utf-8",
        )
    except (ValueError, UnicodeDecodeError):
        _first_bad_row(raw, columns)
        raise TrainingError("the CSV is not numeric in the spec's columns") from None
    if len(table) > limits.max_rows:
        raise LimitExceeded(f"more than {limits.max_rows:,} rows, this deployment's limit")
    if len(table) < 10:
        raise TrainingError(f"{len(table)} rows are too few to train and score")
    if not np.isfinite(table).all():
        raise TrainingError("the data holds NaN or infinite values")
    x = np.ascontiguousarray(table[:, :-1])
    y = table[:, -1].astype(np.int64 if spec.kind == "classification" else np.float64)  # a copy: table goes
    return x, y


def _first_bad_row(raw: bytes, columns: list[int]) -> None:
    """TrainingError naming the first row that is not numeric in `columns` (if one is)."""
    try:
        reader = csv.reader(io.StringIO(raw.decode()))
    except UnicodeDecodeError:
        raise TrainingError("the CSV is not UTF-8 text") from None
    line = 1
    try:
        next(reader, None)
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            try:
                [float(row[i]) for i in columns]
            except (ValueError, IndexError):
                raise TrainingError(f"row {line} is not numeric in the spec's columns") from None
    except csv.Error as exc:  # a field over the csv module's limit, a stray NUL: the data's fault, said as such
        raise TrainingError(f"row {line + 1} is not CSV ({exc})") from None


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


def fit_and_claim(
    spec: TaskSpec,
    dataset: bytes,
    task_id: int,
    limits: TrainingLimits = DEFAULT_LIMITS,
    cluster: Cluster | None = None,
) -> TrainedModel:
    """Fit on the dataset less its holdout (split seeded by the task id), save as a canonical skops
    archive, claim the holdout score. Two honest trainers of one spec get the same artifact bytes and
    score, on one machine or several, with a Dask cluster or without (see CLUSTER_FIT)."""
    limits.check(spec)
    x, y = read_csv(dataset, spec, limits)
    x_fit, x_hold, y_fit, y_hold = _holdout(spec, x, y, task_id)
    del x, y
    model = make_estimator(spec, task_id)
    with one_native_thread():
        if cluster is not None and spec.cluster_fit == "trees":
            from ethml.training.cluster import trees_on

            with trees_on(cluster):
                model.fit(x_fit, y_fit)
        else:
            model.fit(x_fit, y_fit)
        del x_fit, y_fit
        claimed = metric(spec, y_hold, model.predict(x_hold))
    artifact = canonical_dumps(model)
    return TrainedModel(artifact, sha256_hex(artifact), claimed)


def load_submission(spec: TaskSpec, artifact: bytes, sha256: str, task_id: int) -> Any:
    """The artifact, loaded only through skops' allow-list, checked to be the promised estimator with
    the spec's features."""
    model = load_untrusted(artifact, f"task {task_id} submission", sha256)
    expected = ESTIMATORS[spec.estimator.name][0].rsplit(".", 1)[1]
    if type(model).__name__ != expected:
        raise ModelError(f"the artifact is a {type(model).__name__}, the spec asks for a {expected}")
    if int(getattr(model, "n_features_in_", -1)) != len(spec.features):
        raise ModelError(
            f"the artifact takes {getattr(model, 'n_features_in_', '?')} features, not {len(spec.features)}"
        )
    return model


@dataclass(frozen=True)
class ScoringData:
    """What every submission of a task is scored on: the dataset's holdout and the revealed test set,
    parsed and checked once. Without a usable test set (never revealed, or unusable) the test arrays
    are None and submissions are checked on the holdout alone."""

    x_hold: np.ndarray[Any, Any]
    y_hold: np.ndarray[Any, Any]
    x_test: np.ndarray[Any, Any] | None
    y_test: np.ndarray[Any, Any] | None


def scoring_data(
    spec: TaskSpec, dataset: bytes, test_set: bytes | None, task_id: int, limits: TrainingLimits = DEFAULT_LIMITS
) -> ScoringData:
    x, y = read_csv(dataset, spec, limits)
    _x_fit, x_hold, _y_fit, y_hold = _holdout(spec, x, y, task_id)
    if test_set is None:
        return ScoringData(x_hold, y_hold, None, None)
    x_test, y_test = read_csv(test_set, spec, limits)
    return ScoringData(x_hold, y_hold, x_test, y_test)


def test_set_problem(spec: TaskSpec, test_set: bytes, limits: TrainingLimits = DEFAULT_LIMITS) -> str | None:
    """Why a revealed test set cannot be used to score this spec's models (not a CSV, a column missing,
    not numeric, too few rows), or None when it can: what a validator reports as unusable. A test set
    over this deployment's limits raises LimitExceeded instead: another validator may take it."""
    try:
        read_csv(test_set, spec, limits)
    except LimitExceeded:
        raise
    except TrainingError as exc:
        return str(exc)
    return None


def score(spec: TaskSpec, model: Any, claimed: int, data: ScoringData) -> Assessment:
    """A loaded submission's assessment against data parsed once (here or on a cluster's worker); with
    no test set, its test score is its holdout score."""
    with one_native_thread():
        holdout = metric(spec, data.y_hold, model.predict(data.x_hold))
        if data.x_test is None or data.y_test is None:
            test = holdout
        else:
            test = metric(spec, data.y_test, model.predict(data.x_test))
    return Assessment(test, holdout, holdout == claimed)


def assess(
    spec: TaskSpec,
    artifact: bytes,
    sha256: str,
    claimed: int,
    dataset: bytes,
    test_set: bytes | None,
    task_id: int,
    limits: TrainingLimits = DEFAULT_LIMITS,
) -> Assessment:
    """Load the artifact only through skops' allow-list, check it is the promised estimator with the
    spec's features, score it on the revealed test set (None: the holdout alone) and re-compute the
    trainer's claim."""
    model = load_submission(spec, artifact, sha256, task_id)  # a bad artifact fails before the data is parsed
    return score(spec, model, claimed, scoring_data(spec, dataset, test_set, task_id, limits))


async def score_submissions(
    spec: TaskSpec,
    submissions: list[tuple[bytes, str, int]],
    dataset: bytes,
    test_set: bytes | None,
    task_id: int,
    compute: Compute | None = None,
) -> list[Assessment | str]:
    """Assess `(artifact, sha256, claimed)` submissions: an Assessment each, or the reason it cannot be
    scored (a validator votes 0 for it). Without a test set (`None`: never revealed, or unusable) they
    are checked on the dataset's holdout alone. Locally one after another, each in its own child process with
    the spec's time limit; on a cluster all at once (ethml.training.cluster.assess_many), within the
    time the local path would allow for all of them. A cluster that fails as a whole raises
    ClusterError: no submission is to blame, so none should get a 0."""
    compute = compute or Compute()
    if not submissions:
        return []
    if compute.cluster is None:
        out: list[Assessment | str] = []
        for artifact, sha256, claimed in submissions:
            try:
                found = await run_limited(
                    assess,
                    spec,
                    artifact,
                    sha256,
                    claimed,
                    dataset,
                    test_set,
                    task_id,
                    compute.limits,
                    timeout=spec.max_train_seconds,
                )
                out.append(found)
            except (ModelError, TrainingError) as exc:
                out.append(str(exc))
        return out
    from ethml.training.cluster import SCORING_START_SECONDS, assess_many

    cluster = compute.cluster
    limit = (spec.max_train_seconds + SCORING_START_SECONDS) * len(submissions)  # (each scoring's, one after another)
    try:
        found_all: list[Assessment | str] = await run_limited(
            assess_many,
            cluster,
            spec,
            submissions,
            dataset,
            test_set,
            task_id,
            compute.limits,
            limit,
            timeout=limit + 3 * cluster.connect_timeout,
        )
    except TrainingTimeout:
        raise ClusterError(f"the Dask cluster at {cluster.address} did not finish scoring within {limit:g} s") from None
    return found_all


def _child(conn: Any, lifeline: Any, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    # A forkserver's child outlived its worker until its fit ended, using a core beside the worker restarted.
    end_when_closed(lifeline.fileno())
    try:
        conn.send(("ok", fn(*args)))
    except BaseException as exc:  # noqa: BLE001 - everything goes back to the parent as a message
        conn.send(("error", str(exc), type(exc).__name__))
    finally:
        conn.close()


async def run_limited(fn: Callable[..., Any], *args: Any, timeout: float) -> Any:  # noqa: ASYNC109
    """`fn(*args)` in a child process, killed after `timeout` seconds (TrainingTimeout). An error in
    the child comes back as TrainingError (ClusterError for a cluster that cannot be used)."""
    ctx = multiprocessing.get_context("forkserver")
    parent, child = ctx.Pipe(duplex=False)
    lifeline, held = ctx.Pipe(duplex=False)  # `held` stays here (never inherited: the pipe is close-on-exec)
    process = ctx.Process(target=_child, args=(child, lifeline, fn, args), daemon=True)
    process.start()
    child.close()
    lifeline.close()
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
        held.close()
    if message[0] == "error":
        if message[2] == "ClusterError":
            raise ClusterError(message[1])
        raise TrainingError(f"{message[2]}: {message[1]}")
    return message[1]
