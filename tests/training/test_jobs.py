"""The spec schema and the jobs, in process: every allowed estimator trains, its artifact loads only
through the skops allow-list, and an honest claim reproduces to the last digit."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ethml.errors import UntrustedArtifact
from ethml.training import ESTIMATORS, SpecError, assess, fit_and_claim, parse_spec, sklearn_dataset_csv, split_csv
from ethml.training.jobs import TrainingError
from tests.conftest import ROOT


def _spec(name: str, dataset: bytes, metric: str | None = None) -> object:
    kind = ESTIMATORS[name][1]
    features = dataset.decode().splitlines()[0].split(",")[:-1]
    return parse_spec(
        {
            "target": "target",
            "features": features,
            "estimator": {"name": name},
            "metric": metric or ("accuracy" if kind == "classification" else "r2"),
            "decimals": 0 if kind == "classification" else 2,
        }
    )


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_every_allowed_estimator_trains_and_validates(name: str) -> None:
    data = sklearn_dataset_csv("wine" if ESTIMATORS[name][1] == "classification" else "diabetes")
    public, hidden = split_csv(data, 0.3, seed=1)
    spec = _spec(name, public)
    trained = fit_and_claim(spec, public, 42)  # type: ignore[arg-type]
    again = fit_and_claim(spec, public, 42)  # type: ignore[arg-type]
    assert again.claimed_score == trained.claimed_score, "two honest trainers claim the same score"
    found = assess(spec, trained.artifact, trained.sha256, trained.claimed_score, public, hidden, 42)  # type: ignore[arg-type]
    assert found.claim_reproduced and 0 <= found.test_score <= 1_000_000
    lie = assess(spec, trained.artifact, trained.sha256, trained.claimed_score + 1, public, hidden, 42)  # type: ignore[arg-type]
    assert not lie.claim_reproduced


def test_an_artifact_of_another_estimator_is_refused() -> None:
    data = sklearn_dataset_csv("wine")
    public, hidden = split_csv(data, 0.3, seed=1)
    trained = fit_and_claim(_spec("SVC", public), public, 7)  # type: ignore[arg-type]
    with pytest.raises(Exception, match="the spec asks for a LogisticRegression"):
        assess(_spec("LogisticRegression", public), trained.artifact, trained.sha256, 0, public, hidden, 7)  # type: ignore[arg-type]
    with pytest.raises(UntrustedArtifact, match="not a skops archive"):
        import hashlib

        blob = b"\x80\x04K\x01."  # a pickle
        assess(_spec("SVC", public), blob, hashlib.sha256(blob).hexdigest(), 0, public, hidden, 7)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"estimator": {"name": "MLPClassifier"}}, "is not allowed"),
        ({"estimator": {"name": "RandomForestClassifier", "params": {"n_estimators": 100_000}}}, "outside 1..300"),
        (
            {"estimator": {"name": "RandomForestClassifier", "params": {"criterion": 1}}},
            "takes no parameter .criterion.",
        ),
        ({"metric": "r2"}, "does not fit a classification estimator"),
        ({"unknown": 1}, "unknown: Extra inputs are not permitted"),
        ({"holdout_fraction": 0.9}, "holdout_fraction"),
        ({"features": []}, "features"),
    ],
)
def test_spec_errors_name_the_field(change: dict[str, object], says: str) -> None:
    base: dict[str, object] = {
        "target": "target",
        "features": ["a", "b"],
        "estimator": {"name": "RandomForestClassifier"},
        "metric": "accuracy",
    }
    with pytest.raises(SpecError, match=says):
        parse_spec({**base, **change})


def test_bad_csv_is_a_clear_error() -> None:
    spec = parse_spec({"target": "y", "features": ["a"], "estimator": {"name": "Ridge"}, "metric": "r2", "decimals": 2})
    with pytest.raises(TrainingError, match="no column 'a'"):
        fit_and_claim(spec, b"x,y\n" + b"1,2\n" * 20, 1)  # type: ignore[arg-type]
    with pytest.raises(TrainingError, match="row 3 is not numeric"):
        fit_and_claim(spec, b"a,y\n1,2\nfoo,3\n" + b"1,2\n" * 20, 1)  # type: ignore[arg-type]


def _sleep_after_writing_pid(path: str) -> None:
    """A job that never ends by itself (run by `run_limited` in the test below)."""
    Path(path).write_text(str(os.getpid()))
    time.sleep(600)


def _hold_the_gil_after_writing_pid(path: str) -> None:
    """A job that never ends by itself and holds the GIL throughout, as a fit in compiled code may: a regular
    expression that backtracks for hours (the `re` module never lets another thread run)."""
    Path(path).write_text(str(os.getpid()))
    re.match(r"(a+)+$", "a" * 64 + "b")


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")  # exited (a zombie is dead, its parent has not reaped it yet)


@pytest.mark.parametrize("job", ["_sleep_after_writing_pid", "_hold_the_gil_after_writing_pid"])
def test_a_job_s_process_ends_when_the_worker_that_started_it_is_killed(tmp_path: Path, job: str) -> None:
    """A fit runs in a child process (of multiprocessing's forkserver, not of the worker): after `kill -9` of
    the worker it ran on until the fit ended, up to the spec's time limit, on a core beside the worker
    restarted. It now ends with the worker, also when the fit holds the GIL (the child's watch thread on its
    pipe to the worker could not run then, and the child ran on until the fit ended)."""
    pidfile = tmp_path / "job.pid"
    script = (
        "import asyncio\n"
        "from ethml.training.jobs import run_limited\n"
        f"from tests.training.test_jobs import {job}\n"
        f"asyncio.run(run_limited({job}, {str(pidfile)!r}, timeout=600))\n"
    )
    worker = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT)
    try:
        deadline = time.monotonic() + 120
        while not (pidfile.exists() and pidfile.read_text()):
            assert worker.poll() is None, "the worker exited"
            assert time.monotonic() < deadline, "the job did not start within 120 s"
            time.sleep(0.1)
        job = int(pidfile.read_text())
        assert not _gone(job)
        worker.kill()
        worker.wait(30)
        deadline = time.monotonic() + 60
        while not _gone(job):
            assert time.monotonic() < deadline, "the job outlived its worker by 60 s"
            time.sleep(0.1)
    finally:
        worker.kill()
        if pidfile.exists() and pidfile.read_text() and not _gone(int(pidfile.read_text())):
            os.kill(int(pidfile.read_text()), signal.SIGKILL)


def test_a_test_set_the_csv_module_cannot_read_is_unusable_not_a_failed_vote() -> None:
    """A field over the csv module's 131,072-character limit raised `_csv.Error` out of `test_set_problem`: the
    validator's job failed and it cast no vote, where the test set should be voted unusable."""
    from ethml.training.jobs import test_set_problem

    spec = parse_spec({"target": "t", "features": ["a"], "estimator": {"name": "Ridge", "params": {}}, "metric": "mae"})
    huge = b'a,t\n1,2\n"' + b"x" * 200_000 + b'",3\n' + b"1,2\n" * 20
    assert test_set_problem(spec, huge) == "row 3 is not CSV (field larger than field limit (131072))"
