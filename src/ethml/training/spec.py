"""The training task spec (JSON, stored by CID): one pydantic schema validates it and names the field
that is wrong."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from ethml import safejson
from ethml._schema_types import JsonInt, integral
from ethml.errors import EthmlError

#: Estimators a task may ask for, with the parameters a spec may set and their bounds. Each is one
#: whose fitted form the skops allow-list of `ethml.ml.loader` accepts, so any node can serve it.
ESTIMATORS: dict[str, tuple[str, str, dict[str, tuple[type, float, float]]]] = {
    "LogisticRegression": (
        "sklearn.linear_model.LogisticRegression",
        "classification",
        {"C": (float, 1e-4, 1e4), "max_iter": (int, 10, 5_000)},
    ),
    "RandomForestClassifier": (
        "sklearn.ensemble.RandomForestClassifier",
        "classification",
        {"n_estimators": (int, 1, 300), "max_depth": (int, 1, 32), "min_samples_leaf": (int, 1, 100)},
    ),
    "RandomForestRegressor": (
        "sklearn.ensemble.RandomForestRegressor",
        "regression",
        {"n_estimators": (int, 1, 300), "max_depth": (int, 1, 32), "min_samples_leaf": (int, 1, 100)},
    ),
    "Ridge": ("sklearn.linear_model.Ridge", "regression", {"alpha": (float, 0.0, 1e6)}),
    "GradientBoostingClassifier": (
        "sklearn.ensemble.GradientBoostingClassifier",
        "classification",
        {"n_estimators": (int, 1, 500), "learning_rate": (float, 1e-3, 1.0), "max_depth": (int, 1, 16)},
    ),
    "GradientBoostingRegressor": (
        "sklearn.ensemble.GradientBoostingRegressor",
        "regression",
        {"n_estimators": (int, 1, 500), "learning_rate": (float, 1e-3, 1.0), "max_depth": (int, 1, 16)},
    ),
    "HistGradientBoostingClassifier": (
        "sklearn.ensemble.HistGradientBoostingClassifier",
        "classification",
        {"max_iter": (int, 1, 500), "learning_rate": (float, 1e-3, 1.0), "max_depth": (int, 1, 64)},
    ),
    "HistGradientBoostingRegressor": (
        "sklearn.ensemble.HistGradientBoostingRegressor",
        "regression",
        {"max_iter": (int, 1, 500), "learning_rate": (float, 1e-3, 1.0), "max_depth": (int, 1, 64)},
    ),
    "SVC": ("sklearn.svm.SVC", "classification", {"C": (float, 1e-4, 1e4)}),
    "SVR": ("sklearn.svm.SVR", "regression", {"C": (float, 1e-4, 1e4)}),
    "KNeighborsClassifier": (
        "sklearn.neighbors.KNeighborsClassifier",
        "classification",
        {"n_neighbors": (int, 1, 100)},
    ),
    "KNeighborsRegressor": ("sklearn.neighbors.KNeighborsRegressor", "regression", {"n_neighbors": (int, 1, 100)}),
}
METRICS = {"classification": ("accuracy", "f1_macro"), "regression": ("r2", "mae")}

#: How each estimator's fit uses a Dask cluster (`ethml worker --dask`), chosen so that the artifact is
#: byte-identical to a local fit's. "trees": the forest's trees are fitted on the cluster's workers, one
#: task per batch of trees, each from the seed the forest draws for it before any is sent, with code
#: that has no floating-point reduction whose order depends on the machine; the trees come back in
#: order. "in-job": the fit has no part that a cluster can run with identical results (boosting is
#: sequential; linear models, SVMs and neighbours go through BLAS/LAPACK kernels whose rounding depends
#: on the CPU and its thread count), so it stays in the job's own process, with joblib kept sequential
#: and native thread pools at one thread; the cluster still scores submissions of every estimator.
#: An estimator added to the allow-list must say which it is (a test checks that every one does and
#: that every one gives the same sha256 on a cluster as locally).
CLUSTER_FIT: dict[str, Literal["trees", "in-job"]] = {
    name: ("trees" if name.startswith("RandomForest") else "in-job") for name in ESTIMATORS
}

#: The schema's own bounds: what any spec may say, whoever runs it. A deployment's limits (how many rows,
#: bytes and seconds this worker or command accepts) are `TrainingLimits`.
MAX_COLUMNS = 256
MAX_TRAIN_SECONDS = 24 * 3600


@dataclass(frozen=True)
class TrainingLimits:
    """What one deployment (an `ethml worker`, an `ethml train` or `ethml validate`) accepts. The
    defaults are safe on a small machine (the parsed dataset stays under about 200 MB, see
    docs/training.md); a trainer with a cluster raises them (`--max-rows`, `--max-dataset-mb`,
    `--max-train-seconds`). A spec that asks for more time than `max_train_seconds` is refused by
    this deployment, not cut short."""

    max_rows: int = 100_000
    max_dataset_bytes: int = 16 * 1024 * 1024
    max_train_seconds: int = 600

    def __post_init__(self) -> None:
        if self.max_rows < 10 or self.max_dataset_bytes < 1024 or self.max_train_seconds < 1:
            raise ValueError("limits: at least 10 rows, 1 KiB of data and 1 second")

    def check(self, spec: TaskSpec) -> None:
        """SpecError when the spec asks for more time than this deployment gives a job."""
        if spec.max_train_seconds > self.max_train_seconds:
            raise SpecError(
                f"the spec asks for up to {spec.max_train_seconds} s per job; this deployment allows "
                f"{self.max_train_seconds} s (raise it with --max-train-seconds)"
            )


#: A column name: 1-64 characters, none of them a control character (C0, DEL, C1), an invisible format
#: character (zero-width, word joiner, byte-order mark) or a bidirectional mark, embedding, override or
#: isolate, so that a name reads as what it is wherever it is shown.
COLUMN_NAME = r"^[^\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]+$"
ColumnName = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=COLUMN_NAME)]


def _estimator_json_schema(schema: dict[str, Any]) -> None:
    """The allow-list in the JSON Schema: the estimator names, and for each the parameters it takes
    with their types and bounds (one `oneOf` branch per estimator)."""
    schema["properties"]["name"]["enum"] = list(ESTIMATORS)
    schema["oneOf"] = [
        {
            "properties": {
                "name": {"const": name},
                "params": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        key: {"type": "integer" if kind is int else "number", "minimum": low, "maximum": high}
                        for key, (kind, low, high) in params.items()
                    },
                },
            }
        }
        for name, (_path, _kind, params) in ESTIMATORS.items()
    ]


def _spec_json_schema(schema: dict[str, Any]) -> None:
    """What ties the fields together, as far as a JSON Schema can say it: distinct features, and per
    kind of estimator its metrics (and decimals 0 for a classifier). Not said: the target is not a feature."""
    schema["properties"]["features"]["uniqueItems"] = True
    branches = []
    for kind, metrics in METRICS.items():
        branch: dict[str, Any] = {
            "estimator": {"properties": {"name": {"enum": [n for n, e in ESTIMATORS.items() if e[1] == kind]}}},
            "metric": {"enum": list(metrics)},
        }
        if kind == "classification":
            branch["decimals"] = {"const": 0}
        branches.append({"properties": branch})
    schema["oneOf"] = branches


class SpecError(EthmlError, ValueError):
    """A task spec that does not follow the schema; the message names the field."""


class EstimatorSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra=_estimator_json_schema)

    name: str = Field(
        description="An allow-listed estimator. RandomForestClassifier and RandomForestRegressor fit their "
        "trees across a Dask cluster when the trainer has one; every other estimator fits in the job's own "
        "process. Either way the artifact is byte-identical to a local fit's (see CLUSTER_FIT)."
    )
    params: dict[str, float | int] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _bounded(self) -> EstimatorSpec:
        if self.name not in ESTIMATORS:
            raise ValueError(f"estimator {self.name!r} is not allowed (allowed: {', '.join(ESTIMATORS)})")
        allowed = ESTIMATORS[self.name][2]
        for key, value in list(self.params.items()):
            if key not in allowed:
                raise ValueError(f"{self.name} takes no parameter {key!r} (allowed: {', '.join(allowed)})")
            kind, low, high = allowed[key]
            if kind is int:
                value = self.params[key] = integral(value)
            if isinstance(value, bool) or (kind is int and not isinstance(value, int)):
                raise ValueError(f"{key} must be an integer")
            if not low <= value <= high:
                raise ValueError(f"{key} = {value} is outside {low:g}..{high:g}")
        return self


def _not_a_bool(value: Any) -> Any:
    """pydantic takes `true` for `Literal[1]` (True == 1), strict mode included: the version is an integer."""
    if isinstance(value, bool):
        raise ValueError("must be the integer 1, not a boolean")
    return value


class TaskSpec(BaseModel):
    """What the requester asks for. The dataset (a CSV with a header) is the task's datasetCid; the
    hidden test set is a CSV of the same columns."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_spec_json_schema)

    version: Annotated[Literal[1], BeforeValidator(_not_a_bool)] = 1
    target: ColumnName
    features: list[ColumnName] = Field(min_length=1, max_length=MAX_COLUMNS)
    estimator: EstimatorSpec
    metric: Literal["accuracy", "f1_macro", "r2", "mae"]
    #: Share of the dataset the trainer holds out to compute the score it claims (seeded by the task id).
    holdout_fraction: float = Field(default=0.25, ge=0.1, le=0.5)
    #: Fixed-point decimals of a regression model's predictions in EthML (0 for classification).
    decimals: JsonInt = Field(default=0, ge=0, le=18)
    max_train_seconds: JsonInt = Field(default=120, ge=1, le=MAX_TRAIN_SECONDS)

    @property
    def kind(self) -> str:
        return ESTIMATORS[self.estimator.name][1]

    @property
    def cluster_fit(self) -> Literal["trees", "in-job"]:
        """How this spec's fit uses a Dask cluster (CLUSTER_FIT)."""
        return CLUSTER_FIT[self.estimator.name]

    @model_validator(mode="after")
    def _consistent(self) -> TaskSpec:
        if self.metric not in METRICS[self.kind]:
            raise ValueError(f"metric {self.metric!r} does not fit a {self.kind} estimator ({METRICS[self.kind]})")
        if self.kind == "classification" and self.decimals != 0:
            raise ValueError("decimals must be 0 for a classification estimator")
        if self.target in self.features or len(set(self.features)) != len(self.features):
            raise ValueError("features must be distinct and must not include the target")
        return self

    def to_json(self) -> bytes:
        return canonical_json(self.model_dump(mode="json"))


def canonical_json(spec: dict[str, Any]) -> bytes:
    """A spec's canonical JSON (sorted keys, no spaces, ASCII, one newline) from its JSON-mode dump:
    the bytes whose CID a task names and its requester signs."""
    return (json.dumps(spec, sort_keys=True, separators=(",", ":")) + "\n").encode()


def parse_spec(raw: bytes | str | dict[str, Any]) -> TaskSpec:
    """A validated spec, or SpecError naming the field."""
    try:
        data = raw if isinstance(raw, dict) else safejson.loads(raw)  # (from IPFS: see ethml.safejson)
        return TaskSpec.model_validate(data)
    except (ValueError, UnicodeDecodeError) as exc:
        if isinstance(exc, ValidationError):
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'spec'}: {e['msg']}" for e in exc.errors(include_url=False)
            )
            raise SpecError(f"invalid task spec: {problems}") from None
        raise SpecError(f"invalid task spec: not JSON ({exc})") from None
