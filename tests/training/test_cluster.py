"""Training and validation on a real Dask LocalCluster (two worker processes): the same artifact bytes as
a local fit for every estimator, a forest's trees spread over both workers with its data sent once, many
submissions scored in parallel with the local results, a worker killed mid-fit survived with the same
bytes, a job's time limit holding on a hung cluster, and clear errors for a cluster that cannot be used."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from typing import Any

import pytest

from ethml.training import ESTIMATORS, assess, fit_and_claim, parse_spec, sklearn_dataset_csv, split_csv
from ethml.training.cluster import Cluster, _runs_tasks, assess_many, cluster_info, connected, parse_target
from ethml.training.jobs import (
    DEFAULT_LIMITS,
    Assessment,
    ClusterError,
    Compute,
    TrainingTimeout,
    run_limited,
    score_submissions,
)
from ethml.training.spec import CLUSTER_FIT, TrainingLimits
from tests.conftest import free_port
from tests.training.conftest import forest_spec, generated_csv, local_cluster

LIMITS = TrainingLimits(max_rows=1_000_000, max_dataset_bytes=256 * 1024 * 1024)


def _wait(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout:g} s")
        time.sleep(0.05)


def _small_spec(name: str) -> tuple[Any, bytes]:
    kind = ESTIMATORS[name][1]
    public, _hidden = split_csv(sklearn_dataset_csv("wine" if kind == "classification" else "diabetes"), 0.3, seed=1)
    spec = parse_spec(
        {
            "target": "target",
            "features": public.decode().splitlines()[0].split(",")[:-1],
            "estimator": {"name": name},
            "metric": "accuracy" if kind == "classification" else "r2",
            "decimals": 0 if kind == "classification" else 2,
        }
    )
    return spec, public


def test_every_estimator_declares_how_it_uses_a_cluster() -> None:
    assert set(CLUSTER_FIT) == set(ESTIMATORS)
    assert {n for n, mode in CLUSTER_FIT.items() if mode == "trees"} == {
        "RandomForestClassifier",
        "RandomForestRegressor",
    }


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_every_estimator_gives_the_local_artifact_on_the_cluster(name: str, dask_cluster: Any) -> None:
    cluster, _client = dask_cluster
    spec, public = _small_spec(name)
    local = fit_and_claim(spec, public, 42)
    remote = fit_and_claim(spec, public, 42, DEFAULT_LIMITS, cluster)
    assert (remote.sha256, remote.claimed_score) == (local.sha256, local.claimed_score)


def test_a_forest_is_fitted_across_both_workers_its_data_sent_once_with_the_local_bytes(dask_cluster: Any) -> None:
    cluster, client = dask_cluster
    spec, data = forest_spec(trees=40), generated_csv(20_000)
    local = fit_and_claim(spec, data, 7, LIMITS)
    client.get_task_stream(count=0)  # the scheduler records tasks from now on
    started = time.time()
    remote = fit_and_claim(spec, data, 7, LIMITS, cluster)
    assert remote.sha256 == local.sha256 and remote.claimed_score == local.claimed_score
    records = [r for r in client.get_task_stream(start=started) if "_parallel_build_trees" in r["key"]]
    assert len(records) >= 10, len(records)  # the trees ran as tasks on the cluster...
    assert len({r["worker"] for r in records}) == 2  # ...on both workers
    transfers = [s for r in records for s in r["startstops"] if s["action"] == "transfer"]
    # The training matrix and the target went to both workers once, before the trees: no tree task
    # carried them or waited for them.
    assert transfers == [], transfers


def _submissions(spec: Any, data: bytes, task_id: int) -> list[tuple[bytes, str, int]]:
    import hashlib
    import pickle

    honest = fit_and_claim(spec, data, task_id, LIMITS)
    other = fit_and_claim(forest_spec(trees=30, depth=8), data, task_id, LIMITS)  # honest too, another model
    wrong_kind = fit_and_claim(forest_spec(trees=5, name="RandomForestRegressor"), data, task_id, LIMITS)
    blob = pickle.dumps({"not": "skops"})
    return [
        (honest.artifact, honest.sha256, honest.claimed_score),
        (honest.artifact, honest.sha256, honest.claimed_score + 1),  # a claim it did not reach
        (other.artifact, other.sha256, other.claimed_score),
        (wrong_kind.artifact, wrong_kind.sha256, wrong_kind.claimed_score),
        (blob, hashlib.sha256(blob).hexdigest(), 900_000),
        (honest.artifact, "00" * 32, honest.claimed_score),  # the artifact is not what the sha256 says
    ]


def test_a_validator_scores_several_submissions_in_parallel_with_the_local_results(dask_cluster: Any) -> None:
    cluster, client = dask_cluster
    spec = forest_spec(trees=40)
    data = generated_csv(60_000, seed=1)
    public, hidden = split_csv(data, 0.5, seed=3)  # a large test set: each scoring takes a while
    subs = _submissions(spec, public, 11)
    expected: list[Assessment | str] = []
    for artifact, sha, claimed in subs:
        try:
            expected.append(assess(spec, artifact, sha, claimed, public, hidden, 11, LIMITS))
        except Exception as exc:  # noqa: BLE001 - the local reason, compared with the cluster's
            expected.append(str(exc))
    client.get_task_stream(count=0)
    started = time.time()
    found = assess_many(cluster, spec, subs, public, hidden, 11, LIMITS, 300.0)
    assert found == expected
    assert [type(f).__name__ for f in found] == ["Assessment"] * 3 + ["str"] * 3
    assert found[0].claim_reproduced and not found[1].claim_reproduced  # type: ignore[union-attr]
    assert "RandomForestRegressor" in str(found[3]) and "not a skops archive" in str(found[4])
    assert "sha256" in str(found[5])
    scored = [r for r in client.get_task_stream(start=started) if "_score_task" in r["key"]]
    assert len(scored) == len(subs) and len({r["worker"] for r in scored}) == 2
    spans = sorted(
        (s["start"], s["stop"], r["worker"]) for r in scored for s in r["startstops"] if s["action"] == "compute"
    )
    overlapping = any(a[2] != b[2] and a[0] < b[1] and b[0] < a[1] for i, a in enumerate(spans) for b in spans[i + 1 :])
    assert overlapping, spans  # two workers scored at the same time


def test_a_model_that_prints_as_it_predicts_is_scored_as_locally(dask_cluster: Any) -> None:
    """A forest set to print its progress (`verbose`, which the loader leaves alone: it does not change an
    answer) scores on the cluster as locally: a scoring process's stdout is not its answer channel (when it
    was, the review's Dask validator voted 0 where a local one scored it, and could be outvoted at will)."""
    import hashlib

    from ethml.training.artifact import canonical_dumps
    from ethml.training.jobs import load_submission

    cluster, _client = dask_cluster
    spec, public = _small_spec("RandomForestClassifier")
    _p, hidden = split_csv(sklearn_dataset_csv("wine"), 0.3, seed=1)
    trained = fit_and_claim(spec, public, 5)
    model = load_submission(spec, trained.artifact, trained.sha256, 5)
    model.verbose = 100
    chatty = canonical_dumps(model)
    sub = (chatty, hashlib.sha256(chatty).hexdigest(), trained.claimed_score)
    local = assess(spec, *sub, public, hidden, 5, LIMITS)
    assert isinstance(local, Assessment)
    assert assess_many(cluster, spec, [sub], public, hidden, 5, LIMITS, 300.0) == [local]


def test_a_scoring_past_the_time_limit_is_stopped_alone_on_the_cluster(dask_cluster: Any) -> None:
    """Each scoring on the cluster has the spec's time limit of its own, counted from when its process is
    ready, as a local validator's: one past it (a nearest-neighbours model of 4,000,000 stored points, whose
    scan of the test rows takes seconds) is stopped and votes 0, and the one beside it is scored as locally.
    Before, a slow scoring held its worker thread until the job's whole deadline, and scorings queued or
    retried behind it ran out of time (the review's slow sybil)."""
    import hashlib

    cluster, client = dask_cluster
    spec, public = _small_spec("KNeighborsClassifier")
    spec = parse_spec({**spec.model_dump(mode="json"), "max_train_seconds": 1})
    _p, hidden = split_csv(sklearn_dataset_csv("wine"), 0.3, seed=1)
    honest = fit_and_claim(spec, public, 5, LIMITS)
    slow = _neighbours_artifact(spec, 4_000_000, deflate=True)  # (about 3 s on this Xeon; the honest one 0.01 s)
    subs = [(slow, hashlib.sha256(slow).hexdigest(), 0), (honest.artifact, honest.sha256, honest.claimed_score)]
    local = assess(spec, *subs[1], public, hidden, 5, LIMITS)
    pids = client.run(os.getpid)
    found = assess_many(cluster, spec, subs, public, hidden, 5, LIMITS, 300.0)
    assert found[1] == local, found
    assert isinstance(found[0], str) and "not scored within 1 s" in found[0], found
    assert client.run(os.getpid) == pids  # the workers went on


async def test_score_submissions_runs_the_cluster_path_in_a_limited_child(dask_cluster: Any) -> None:
    cluster, _client = dask_cluster
    spec, public = _small_spec("RandomForestClassifier")
    _p, hidden = split_csv(sklearn_dataset_csv("wine"), 0.3, seed=1)
    trained = fit_and_claim(spec, public, 5)
    subs = [(trained.artifact, trained.sha256, trained.claimed_score)] * 3
    local = await score_submissions(spec, subs, public, hidden, 5, Compute())
    remote = await score_submissions(spec, subs, public, hidden, 5, Compute(cluster))
    assert remote == local and all(isinstance(r, Assessment) and r.claim_reproduced for r in remote)


def test_a_worker_killed_mid_fit_is_survived_with_the_same_artifact() -> None:
    spec, data = forest_spec(trees=60, depth=12), generated_csv(60_000, seed=2)
    local = fit_and_claim(spec, data, 3, LIMITS)
    with local_cluster(2) as (cluster, client):
        pids = client.run(os.getpid)
        client.get_task_stream(count=0)
        result: dict[str, Any] = {}

        def fit() -> None:
            try:
                result["trained"] = fit_and_claim(spec, data, 3, LIMITS, cluster)
            except Exception as exc:  # noqa: BLE001 - reported below
                result["error"] = exc

        thread = threading.Thread(target=fit)
        thread.start()
        # Mid-fit: some trees are done and the victim is working on one.
        victim: dict[str, Any] = {}

        def busy() -> bool:
            done = client.get_task_stream(count=1000)
            processing = {w: keys for w, keys in client.processing().items() if keys}
            if not done or not processing or "trained" in result:
                return False
            victim["worker"], victim["keys"] = next(iter(processing.items()))
            return True

        _wait(busy, 120, "a fit with trees done and trees in flight")
        # Frozen first, so that it finishes nothing more. What it had written to its socket still reaches the
        # scheduler; a finish it had not written is lost with it, and that key must run again. So the keys the
        # scheduler still counts as running there a second later, less any it reports finished by the victim
        # after all, are in flight.
        os.kill(pids[victim["worker"]], signal.SIGSTOP)
        try:
            time.sleep(1.0)
            victim["keys"] = client.processing().get(victim["worker"], ())
        finally:
            os.kill(pids[victim["worker"]], signal.SIGKILL)
        thread.join(timeout=300)
        assert not thread.is_alive() and "error" not in result, result
        assert result["trained"].sha256 == local.sha256
        assert result["trained"].claimed_score == local.claimed_score
        # The nanny restarted the killed worker, and the tasks it held when killed ran again elsewhere.
        _wait(lambda: len(client.nthreads()) == 2, 60, "the killed worker's restart")
        assert victim["worker"] not in client.nthreads()
        stream = client.get_task_stream(count=10_000)
        in_flight = set(victim["keys"]) - {r["key"] for r in stream if r["worker"] == victim["worker"]}
        assert in_flight, ("the scheduler counted nothing as running on the victim when it was killed", victim)
        rerun = [r for r in stream if r["key"] in in_flight]
        assert {r["key"] for r in rerun} == in_flight, (victim, rerun)
        assert all(r["worker"] != victim["worker"] for r in rerun), (victim, rerun)


def _neighbours_artifact(spec: Any, rows: int, deflate: bool) -> bytes:
    """A nearest-neighbours model of the spec's kind with `rows` stored points (zeros: 104 MB a million once
    loaded), as a skops archive, deflated or as a fit stores it."""
    import io
    import zipfile

    import numpy as np
    from sklearn.neighbors import KNeighborsClassifier

    from ethml.training.artifact import canonical_dumps

    model = KNeighborsClassifier(algorithm="brute").fit(np.zeros((rows, len(spec.features))), np.arange(rows) % 3)
    plain = canonical_dumps(model)
    if not deflate:
        return plain
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(plain)) as stored, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as deflated:
        for name in stored.namelist():
            deflated.writestr(name, stored.read(name))
    return out.getvalue()


def test_a_scoring_past_the_workers_memory_fails_alone_and_a_killed_worker_costs_no_vote() -> None:
    """Each scoring runs in a child process of its Dask worker's, capped at the worker's memory: a submission
    whose model takes more (416 MB of stored points from a deflated archive of half a megabyte, on workers of
    700 MB) fails alone and votes 0, as locally, and neither the worker nor the submissions scored beside it
    are lost (before, the nanny killed the worker, the artifacts scattered to it were lost, and the validator's
    whole job failed without a vote). A worker killed from outside while it scores costs that scoring, which
    runs again alone; and a cluster that runs nothing fails the probe a submission is blamed after."""
    import hashlib

    spec, public = _small_spec("KNeighborsClassifier")
    _p, hidden = split_csv(sklearn_dataset_csv("wine"), 0.3, seed=1)
    honest = fit_and_claim(spec, public, 5, LIMITS)
    swollen = _neighbours_artifact(spec, 4_000_000, deflate=True)
    subs = [
        (honest.artifact, honest.sha256, honest.claimed_score),
        (swollen, hashlib.sha256(swollen).hexdigest(), 900_000),
        (honest.artifact, honest.sha256, honest.claimed_score),
    ]
    local = assess(spec, honest.artifact, honest.sha256, honest.claimed_score, public, hidden, 5, LIMITS)
    big = _neighbours_artifact(spec, 1_000_000, deflate=False)
    big_local = assess(spec, big, hashlib.sha256(big).hexdigest(), 0, public, hidden, 5, LIMITS)
    with local_cluster(2, memory_limit="700MB") as (cluster, client):
        pids = client.run(os.getpid)
        found = assess_many(cluster, spec, subs, public, hidden, 5, LIMITS, 300.0)
        assert found[0] == local and found[2] == local, found
        assert isinstance(found[1], str) and "allocate" in found[1], found  # (zlib's words: out of memory)
        assert client.run(os.getpid) == pids  # no worker died
        # A worker killed while it scores: that scoring runs again, alone, and is scored as locally.
        result: dict[str, Any] = {}
        one = [(big, hashlib.sha256(big).hexdigest(), 0)]
        thread = threading.Thread(
            target=lambda: result.update(found=assess_many(cluster, spec, one, public, hidden, 5, LIMITS, 300.0))
        )
        thread.start()
        victim: dict[str, Any] = {}

        def scoring() -> bool:
            busy = [w for w, keys in client.processing().items() if any("_score_task" in str(k) for k in keys)]
            if busy:
                victim["worker"] = busy[0]
            return bool(busy)

        _wait(scoring, 120, "a scoring in progress")
        os.kill(pids[victim["worker"]], signal.SIGKILL)
        thread.join(timeout=300)
        assert not thread.is_alive() and result["found"] == [big_local], result
        _wait(lambda: len(client.nthreads()) == 2, 60, "the killed worker's restart")
        # A cluster that runs nothing (every worker thread taken by a task that never ends) fails the probe that
        # a submission is blamed only after: no submission is blamed on a cluster that does not run tasks.
        blockers = [client.submit(_block_forever, pure=False, workers=[w]) for w in client.nthreads()]
        _wait(lambda: sum(len(k) for k in client.processing().values()) == 2, 60, "two blocked workers")
        assert not _runs_tasks(client, 3.0)
        client.cancel(blockers)


SCORE_WITH_CLOSED_STDIO = """
import json, os, sys
from ethml.training import assess, fit_and_claim, parse_spec, sklearn_dataset_csv
from ethml.training.cluster import _score_task
from ethml.training.jobs import scoring_data
iris = sklearn_dataset_csv("iris")
features = iris.split(b"\\n")[0].decode().split(",")[:-1]
spec = parse_spec({"target": "target", "features": features, "estimator": {"name": "LogisticRegression"},
                   "metric": "accuracy"})
fitted = fit_and_claim(spec, iris, 7)
out = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT)
for fd in sys.argv[2].split():
    os.close(int(fd))
kind, found = _score_task(spec.to_json(), fitted.artifact, fitted.sha256, fitted.claimed_score, 7,
                          scoring_data(spec, iris, iris, 7), 60.0)
local = assess(spec, fitted.artifact, fitted.sha256, fitted.claimed_score, iris, iris, 7)
os.write(out, json.dumps([kind, repr(found), repr(local)]).encode())
"""


@pytest.mark.parametrize("closed", ["0", "1", "2", "0 1 2"])
def test_a_worker_without_stdin_stdout_or_stderr_still_scores(tmp_path: Any, closed: str) -> None:
    """A worker started with one of them closed (a daemon's stdin, say) got that number for a pipe to its
    scoring process, and the child's stdin, stdout or stderr took the pipe's place: every scoring ended at
    once ("its scoring process died on the Dask worker (exit code 1)"), and every submission voted 0."""
    import json
    import subprocess
    import sys

    from tests.conftest import ROOT

    out = tmp_path / "scored.json"
    subprocess.run(
        [sys.executable, "-c", SCORE_WITH_CLOSED_STDIO, str(out), closed],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        check=True,
        timeout=300,
    )
    kind, found, local = json.loads(out.read_text())
    assert kind == "ok", found
    assert found == local
    assert local.startswith("Assessment(")


def test_a_scoring_answer_is_read_from_a_descriptor_above_1024() -> None:
    """A busy worker's pipe to its scoring process can get a number of 1024 or more, which `select.select`
    refuses (ValueError out of the scoring task)."""
    import fcntl
    import resource

    from ethml.training.cluster import _answer
    from ethml.training.scoring_child import READY

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert hard == resource.RLIM_INFINITY or hard > 1500, f"this test needs more than 1500 descriptors ({hard})"
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2048) if hard == resource.RLIM_INFINITY else hard, hard))
    read, write = os.pipe()
    high = fcntl.fcntl(read, fcntl.F_DUPFD_CLOEXEC, 1500)
    os.close(read)
    try:
        os.write(write, READY + b'{"ok": [1, 2, true]}')
        os.close(write)
        assert _answer(high, 30) == b'{"ok": [1, 2, true]}'
    finally:
        os.close(high)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _block_forever() -> None:
    time.sleep(3600)


async def test_the_time_limit_holds_on_a_hung_cluster_and_the_cluster_recovers() -> None:
    spec, data = forest_spec(trees=20, depth=6), generated_csv(5_000, seed=4)
    local = fit_and_claim(spec, data, 2, LIMITS)
    with local_cluster(2) as (cluster, client):
        # Every worker thread is taken by a task that never ends: the cluster accepts work and does none.
        blockers = [client.submit(_block_forever, pure=False, workers=[w]) for w in client.nthreads()]
        _wait(lambda: sum(len(k) for k in client.processing().values()) == 2, 60, "two blocked workers")
        started = time.monotonic()
        with pytest.raises(TrainingTimeout, match="did not finish within 8 s"):
            await run_limited(fit_and_claim, spec, data, 2, LIMITS, cluster, timeout=8)
        assert time.monotonic() - started < 60  # stopped at its limit (generous bound for a busy machine)
        # The killed job's client is gone, so the scheduler forgets its tasks.
        _wait(
            lambda: client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.clients)) == 2,
            60,
            "the killed job's client to be dropped",
        )
        client.cancel(blockers)
        client.restart()  # what an operator does to a cluster stuck in a task
        again = await run_limited(fit_and_claim, spec, data, 2, LIMITS, cluster, timeout=120)
        assert again.sha256 == local.sha256


def test_unreachable_and_foreign_addresses_are_clear_errors() -> None:
    port = free_port()
    started = time.monotonic()
    with pytest.raises(ClusterError, match=rf"no Dask scheduler answers at tcp://127.0.0.1:{port}"):
        cluster_info(Cluster(f"tcp://127.0.0.1:{port}", 2.0))
    assert time.monotonic() - started < 30
    # A server that is not Dask (it answers with HTTP).
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def answer() -> None:
        conn, _ = server.accept()
        conn.recv(100)
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n" * 4)
        conn.close()

    threading.Thread(target=answer, daemon=True).start()
    with pytest.raises(ClusterError, match="not as a Dask scheduler"):
        cluster_info(Cluster(f"tcp://127.0.0.1:{server.getsockname()[1]}", 5.0))
    server.close()
    for bad in ("8786", "http://host:8786", "tcp://host", "local:0", "local:x"):
        with pytest.raises(ClusterError):
            parse_target(bad)
    assert parse_target("tcp://10.0.0.5:8786") == ("tcp://10.0.0.5:8786", None)
    assert parse_target("local:3") == (None, 3)


async def test_a_job_on_an_unreachable_cluster_fails_with_the_reason_not_a_timeout() -> None:
    spec, data = forest_spec(trees=5), generated_csv(2_000)
    cluster = Cluster(f"tcp://127.0.0.1:{free_port()}", 2.0)
    with pytest.raises(ClusterError, match="no Dask scheduler answers"):
        await run_limited(fit_and_claim, spec, data, 1, LIMITS, cluster, timeout=120)
    with pytest.raises(ClusterError, match="no Dask scheduler answers"):
        await score_submissions(spec, [(b"x", "00" * 32, 1)], data, data, 1, Compute(cluster, LIMITS))


def test_a_scheduler_without_workers_is_refused() -> None:
    pytest.importorskip("distributed")
    from distributed import LocalCluster

    with LocalCluster(n_workers=0, host="127.0.0.1", dashboard_address="127.0.0.1:0") as empty:
        cluster = Cluster(empty.scheduler_address, 2.0)
        assert cluster_info(cluster).workers == 0
        with pytest.raises(ClusterError, match="has no workers"), connected(cluster):
            pass


def _pretend_other_sklearn() -> None:
    import importlib.metadata

    real = importlib.metadata.version
    importlib.metadata.version = lambda name: "1.0.0" if name == "scikit-learn" else real(name)  # type: ignore[assignment]


def test_workers_with_other_library_versions_are_refused() -> None:
    """A worker whose scikit-learn differs could fit other trees: refused before any work is sent."""
    spec, data = forest_spec(trees=5), generated_csv(2_000)
    with local_cluster(2) as (cluster, client):
        odd = sorted(client.nthreads())[0]
        client.run(_pretend_other_sklearn, workers=[odd])
        with pytest.raises(ClusterError, match=rf"{odd}: scikit-learn 1.0.0 \(this job: "):
            fit_and_claim(spec, data, 1, LIMITS, cluster)
