from __future__ import annotations

import pytest

from ethml.chain import load_artifact
from ethml.chain._artifacts import ARTIFACT_NAMES, compute_source_hash
from tests.conftest import ROOT


@pytest.mark.parametrize("name", ARTIFACT_NAMES)
def test_artifact_is_built_from_the_current_sources(name: str) -> None:
    if not (ROOT / "node_modules" / "@openzeppelin" / "contracts").exists():
        pytest.fail("node_modules is missing: run `npm ci` (the artifact check needs the OpenZeppelin version)")
    artifact = load_artifact(name)
    assert artifact.source_hash == compute_source_hash(ROOT), (
        f"{name} artifact is stale: run `make contracts` and commit src/ethml/chain/artifacts"
    )
    assert artifact.compiler.startswith("0.8.28+")
    assert artifact.bytecode.startswith("0x") and len(artifact.bytecode) > 1000
