"""Compiled contract artifacts shipped inside the package (built by `make contracts`)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from ethml.errors import ArtifactError

ARTIFACT_NAMES = (
    "EthML",
    "EthMLSettlement",
    "EMLToken",
    "ModelRegistry",
    "ExampleConsumer",
    "RoundRules",
    "EthMLTimelock",
    "TrainingTasks",
    "TrainingValidation",
)
# Must match tools/compile_contracts.js.
_OPTIMIZER = {"enabled": True, "runs": 500}
_EVM_VERSION = "cancun"


@dataclass(frozen=True)
class Artifact:
    name: str
    abi: list[dict[str, Any]]
    bytecode: str
    deployed_bytecode: str
    compiler: str
    source_hash: str


@cache
def load_artifact(name: str) -> Artifact:
    try:
        text = resources.files("ethml.chain").joinpath("artifacts", f"{name}.json").read_text()
    except FileNotFoundError:
        raise ArtifactError(name, "not found in the package") from None
    try:
        data = json.loads(text)
        return Artifact(
            name=data["contractName"],
            abi=data["abi"],
            bytecode=data["bytecode"],
            deployed_bytecode=data["deployedBytecode"],
            compiler=data["compiler"],
            source_hash=data["sourceHash"],
        )
    except (ValueError, KeyError) as exc:
        raise ArtifactError(name, f"unreadable ({exc})") from exc


def compute_source_hash(project_root: Path) -> str:
    """The hash tools/compile_contracts.js records: sources, OpenZeppelin version, settings."""
    h = hashlib.sha256()
    src = project_root / "contracts" / "src"
    for path in sorted(src.glob("*.sol"), key=lambda p: p.name):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    oz = json.loads((project_root / "node_modules" / "@openzeppelin" / "contracts" / "package.json").read_text())
    settings = json.dumps(_OPTIMIZER, separators=(",", ":")) + _EVM_VERSION
    h.update(f"openzeppelin@{oz['version']}\0{settings}".encode())
    return h.hexdigest()
