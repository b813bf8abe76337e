"""`--dask` on the commands that run jobs, through the real `python -m ethml`: a cluster that cannot be
used is one clear line at the start (before the chain or the coordinator is even contacted), never a
hung job; dask is imported only when `--dask` is given."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, free_port
from tests.training.conftest import local_cluster
from tests.training.test_cluster import _pretend_other_sklearn

NOWHERE_RPC = "http://127.0.0.1:1"  # the commands would say "cannot reach the RPC" if they got that far


def _ethml(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1", "ETHML_RPC": NOWHERE_RPC}
    env.pop("ETHML_DEBUG", None)
    env.pop("ETHML_DASK", None)
    return subprocess.run(
        [sys.executable, "-m", "ethml", *argv], env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


def _one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr + done.stdout, done.stderr
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, done.stderr
    return errors[0]


WORKER = ["worker", "--server", "ws://127.0.0.1:1", "--role", "trainer", "--account", "5"]


@pytest.mark.parametrize(
    "command",
    [WORKER, ["train", "--task", "1", "--account", "5"], ["validate", "--task", "1", "--account", "6"]],
    ids=["worker", "train", "validate"],
)
def test_an_unreachable_cluster_is_a_clear_error_at_the_start(command: list[str]) -> None:
    port = free_port()
    started = time.monotonic()
    done = _ethml(*command, "--dask", f"tcp://127.0.0.1:{port}", "--dask-timeout", "2")
    line = _one_error_line(done)
    assert f"no Dask scheduler answers at tcp://127.0.0.1:{port}" in line and "dask scheduler" in line, line
    assert time.monotonic() - started < 60  # the connect timeout, plus starting Python on a busy machine


@pytest.mark.parametrize("value", ["8786", "http://10.0.0.5:8786", "local:0", "tcp://host"])
def test_a_malformed_dask_address_is_named(value: str) -> None:
    line = _one_error_line(_ethml(*WORKER, "--dask", value))
    assert f"--dask {value!r}" in line, line


def test_a_cluster_running_other_versions_is_refused_at_the_start() -> None:
    with local_cluster(2) as (cluster, client):
        odd = sorted(client.nthreads())[0]
        client.run(_pretend_other_sklearn, workers=[odd])
        line = _one_error_line(_ethml(*WORKER, "--dask", cluster.address))
    assert "run other versions" in line and "scikit-learn 1.0.0" in line, line


def test_dask_is_imported_only_when_used() -> None:
    code = (
        "import sys\n"
        "from ethml.cli import run\n"
        "for argv in (['worker', '--help'], ['train', '--help'], ['validate', '--help']):\n"
        "    try:\n"
        "        run(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed'))\n"
        "print(loaded)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
