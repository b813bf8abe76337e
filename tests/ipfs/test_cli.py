"""`ethml ipfs add|cat|serve` as a user runs them, in separate processes."""

from __future__ import annotations

import random
import socket
import subprocess
import sys
import time
from pathlib import Path

from typer.testing import CliRunner

from ethml.cli import app
from ethml.ml import Manifest
from tests.conftest import ROOT, free_port
from tests.ipfs.test_cid_interop import _ipfs_cid_v0, _ipfs_only_hash

runner = CliRunner()


def test_add_bundled_data_points_agrees_with_independent_tools(tmp_path: Path) -> None:
    manifest = Manifest.load(ROOT / "models")
    points = [manifest.data_point_path(p) for m in manifest.models for p in m.data_points]
    ours_v0 = []
    ours_v1 = []
    for path in points:
        r0 = runner.invoke(app, ["ipfs", "add", str(path), "--data-dir", str(tmp_path)])
        r1 = runner.invoke(app, ["ipfs", "add", "--cid-version", "1", str(path), "--data-dir", str(tmp_path)])
        assert r0.exit_code == 0 and r1.exit_code == 0, r0.output + r1.output
        ours_v0.append(r0.stdout.strip())
        ours_v1.append(r1.stdout.strip())
    assert ours_v0 == [_ipfs_cid_v0(p) for p in points]
    assert ours_v0 == _ipfs_only_hash(points, 0)
    assert ours_v1 == _ipfs_only_hash(points, 1)


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    r = runner.invoke(app, ["ipfs", "cat", "not-a-cid", "--data-dir", str(tmp_path)])
    assert r.exit_code == 1 and r.output.startswith("error: 'not-a-cid' is not a valid CID")
    r = runner.invoke(app, ["ipfs", "add", str(tmp_path / "missing"), "--data-dir", str(tmp_path)])
    assert r.exit_code == 1 and "cannot read" in r.output


def test_serve_and_cat_round_trip_3_mib_between_processes(tmp_path: Path) -> None:
    data = random.Random(3).randbytes(3 * 1024 * 1024)
    src = tmp_path / "payload"
    src.write_bytes(data)
    ethml = [sys.executable, "-m", "ethml", "ipfs"]
    cid = subprocess.run(
        [*ethml, "add", str(src), "--data-dir", str(tmp_path / "a")], capture_output=True, text=True, check=True
    ).stdout.strip()
    port = free_port()
    server = subprocess.Popen([*ethml, "serve", "--port", str(port), "--data-dir", str(tmp_path / "a")])
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "the gateway did not start"
                time.sleep(0.05)
        out = tmp_path / "out"
        subprocess.run(
            [
                *ethml,
                "cat",
                cid,
                "--gateway",
                f"http://127.0.0.1:{port}",
                "--data-dir",
                str(tmp_path / "b"),
                "-o",
                str(out),
            ],
            check=True,
        )
        assert out.read_bytes() == data
    finally:
        server.terminate()
        server.wait(timeout=10)
