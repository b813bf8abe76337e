from __future__ import annotations

import json
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ethml.cli import app
from ethml.pow import available_paths
from ethml.pow import tune as tune_mod

runner = CliRunner()


@pytest.fixture(autouse=True)
def private_tune_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ETHML_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("ETHML_POW_PATH", raising=False)
    # Short timing rounds for the autotune (every path still measured): these tests check what is shown
    # and cached, not how steady the figures are.
    monkeypatch.setattr(tune_mod, "measure_paths", partial(tune_mod.measure_paths, round_seconds=0.005, rounds=2))
    tune_mod._memo.clear()


def test_bench_pow_json_reports_every_measurement() -> None:
    result = runner.invoke(app, ["bench-pow", "--json", "--seconds", "0.2", "--threads", "2", "--path", "scalar"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    rows = data["rows"]
    assert [(r["path"], r["threads"]) for r in rows] == [("scalar", 1), ("scalar", 2)]
    for r in rows:
        assert r["hashes"] > 0 and r["hashes_per_second"] > 0
        assert r["speedup_over_python"] > 1
    assert data["python_hashes_per_second"] > 0
    assert data["call_overhead_us"] > 0 and data["batch_for_1pct_overhead"] > 0
    assert data["stop_latency_ms"] >= 0
    auto = data["auto"]
    assert auto["path"] in available_paths() and auto["path"] in auto["rates"]
    assert auto["source"] == "measured" and auto["path"] in auto["reason"]


def test_bench_pow_shows_the_cached_choice_and_tune_measures_again(tmp_path: Path) -> None:
    args = ["bench-pow", "--seconds", "0.1", "--threads", "1", "--path", "scalar"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    chosen = json.loads((tmp_path / "pow-tune.json").read_text())["cpus"][tune_mod.cpu_model()]
    assert f"auto = {chosen['path']}: fastest on {tune_mod.cpu_model()} (measured now)" in first.stdout
    tune_mod._memo.clear()
    cached = runner.invoke(app, args)
    assert f"auto = {chosen['path']}: fastest on {tune_mod.cpu_model()} (measured " in cached.stdout
    assert "cached in" in cached.stdout
    tune_mod._memo.clear()
    again = runner.invoke(app, [*args, "--tune", "--json"])
    assert json.loads(again.stdout)["auto"]["source"] == "measured"
    remeasured = json.loads((tmp_path / "pow-tune.json").read_text())["cpus"][tune_mod.cpu_model()]
    assert remeasured["measured_at"] > chosen["measured_at"]


def test_bench_pow_table_and_bad_path() -> None:
    result = runner.invoke(app, ["bench-pow", "--seconds", "0.1", "--threads", "1", "--path", "scalar"])
    assert result.exit_code == 0
    assert "scalar" in result.stdout and "per-call overhead" in result.stdout
    bad = runner.invoke(app, ["bench-pow", "--path", "mmx"])
    assert bad.exit_code == 1
    assert "PoW path 'mmx' is not available" in bad.output


def test_python_dash_m_ethml_works() -> None:
    out = subprocess.run([sys.executable, "-m", "ethml", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("ethml ")
