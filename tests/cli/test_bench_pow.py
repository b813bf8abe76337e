from __future__ import annotations

import json
import subprocess
import sys

from typer.testing import CliRunner

from ethml.cli import app

runner = CliRunner()


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
