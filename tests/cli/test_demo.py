from __future__ import annotations

import json
import subprocess
import sys

from typer.testing import CliRunner

from ethml.cli import app
from ethml.ml import Manifest, ModelStore
from tests.conftest import ROOT

runner = CliRunner()


def test_demo_json_every_request_finalized_with_sklearns_answer() -> None:
    result = runner.invoke(app, ["demo", "--requests", "3", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    rows = report["rows"]
    assert len(rows) == 3
    manifest = Manifest.load()
    store = ModelStore(manifest)
    invalid = [r for r in rows if r["status"] == "invalid_input"]
    assert len(invalid) == 1 and invalid[0]["prediction"] is None
    for row in rows:
        assert row["status"] in ("finalized", "invalid_input")
        assert row["agreeing"] == 5 and row["final_gas"] > 0
        if row["status"] == "finalized":
            entry = manifest.by_name(row["model"])
            point = next(p for p in entry.data_points if p.label == row["truth"])
            raw = manifest.data_point_path(point).read_bytes()
            assert row["raw_prediction"] == store.get(entry.name).predict_one(raw)
    store.close()
    assert all(v > 0 for v in report["minted_per_miner"].values())
    assert report["total_hashes"] > 0


def test_demo_rejects_too_few_nodes() -> None:
    result = runner.invoke(app, ["demo", "--nodes", "3"])
    assert result.exit_code != 0
    assert "greater than or equal to 5" in result.output


def test_embedding_example_runs() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "embedded_node.py")], capture_output=True, text=True, timeout=180
    )
    assert out.returncode == 0, out.stderr
    assert "the consumer contract received prediction 1 (true label 1)" in out.stdout
