"""The bundled models' manifest (models/manifest.json, written by models/build_models.py)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ethml.errors import ModelError, UnknownModelName

if TYPE_CHECKING:
    from ethml.chain.deploy import ModelSpec


@dataclass(frozen=True)
class DataPoint:
    file: str
    cid: str
    label: float


@dataclass(frozen=True)
class ModelEntry:
    id: int
    name: str
    kind: str  # "classification" | "regression"
    decimals: int
    feature_count: int
    artifact: str
    sha256: str
    cid: str
    feature_names: list[str] = field(default_factory=list)
    sklearn_version: str = ""
    metric: dict[str, float] = field(default_factory=dict)
    data_points: list[DataPoint] = field(default_factory=list)

    @property
    def is_classifier(self) -> bool:
        return self.kind == "classification"


def default_models_dir() -> Path:
    """ETHML_MODELS_DIR, else the models/ directory of this source tree."""
    env = os.environ.get("ETHML_MODELS_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "models"


@dataclass(frozen=True)
class Manifest:
    directory: Path
    models: list[ModelEntry]

    @classmethod
    def load(cls, directory: Path | None = None) -> Manifest:
        root = directory or default_models_dir()
        path = root / "manifest.json"
        try:
            raw: dict[str, Any] = json.loads(path.read_text())
        except FileNotFoundError:
            raise ModelError(f"no model manifest at {path}; pass --models-dir or set ETHML_MODELS_DIR") from None
        except ValueError as exc:
            raise ModelError(f"unreadable model manifest {path}: {exc}") from None
        entries = []
        for m in raw.get("models", []):
            points = [DataPoint(**p) for p in m.pop("data_points", [])]
            entries.append(ModelEntry(**m, data_points=points))
        return cls(root, entries)

    def by_name(self, name: str) -> ModelEntry:
        for m in self.models:
            if m.name == name:
                return m
        raise UnknownModelName(name, [m.name for m in self.models])

    def by_sha256(self, sha256: str) -> ModelEntry | None:
        wanted = sha256.lower().removeprefix("0x")
        return next((m for m in self.models if m.sha256 == wanted), None)

    def registry_specs(self) -> list[ModelSpec]:
        """The bundled models as `deploy_system(models=...)` registers them."""
        from ethml.chain.deploy import ModelKind, ModelSpec

        return [
            ModelSpec(
                m.name,
                m.cid,
                "0x" + m.sha256,
                ModelKind.CLASSIFICATION if m.is_classifier else ModelKind.REGRESSION,
                m.decimals,
                m.feature_count,
            )
            for m in self.models
        ]

    def artifact_path(self, entry: ModelEntry) -> Path:
        return self.directory / entry.artifact

    def data_point_path(self, point: DataPoint) -> Path:
        return self.directory / point.file
