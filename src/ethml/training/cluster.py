"""Training and validation on a Dask cluster (`ethml worker --dask tcp://HOST:8786`, `--dask local:N`).

The job still runs in its own child process with the spec's time limit (`jobs.run_limited`); with a
cluster, that child is a Dask client which sends the parallel parts of the job to the cluster's
workers through joblib's `dask` backend, the way scikit-learn's own docs spread a forest's trees:

- training: the trees of a RandomForest (`CLUSTER_FIT == "trees"`); the forest draws each tree's
  seed before any is sent and collects them in order, so the artifact is byte-identical to a local
  fit's. The training matrix is scattered to the cluster once per fit (joblib scatters an argument
  over 1 kB once per call and the workers share it), not once per tree. Every other estimator fits in
  the child itself: nothing in its fit is exact across machines (spec.CLUSTER_FIT).
- validation: the holdout and the test set are parsed once and broadcast to every worker; the
  submissions are scored in parallel, one task each.

Determinism needs one more thing: the same code everywhere. Before a job uses the cluster, every
worker's versions of the libraries that decide a model's bits are compared with the job's own
(`PINNED`), and a difference is refused with the packages named. A killed Dask worker is survived:
the scheduler runs its tasks again elsewhere (up to `distributed.scheduler.allowed-failures`, 3 by
default), and since every task is a pure function of its inputs, the result is the same. A validator's
scoring runs in a child process of its worker's, stopped at the spec's time limit and capped at the
worker's memory, so that a submission that runs long, runs out of memory or crashes fails alone
(`_score_task`, `assess_on_cluster`).

Time limits hold: when the child is killed at the job's limit its client disconnects, the scheduler
forgets the job's queued tasks and the tasks in flight (one batch of trees, one scoring each) finish
and are dropped. An unreachable scheduler is a `ClusterError` after `connect_timeout`, never a hang.

A Dask scheduler runs whatever its clients send: keep it on a private network (or TLS), as Dask's
docs say; `local[:N]` binds to 127.0.0.1.

dask and distributed are the optional extra `ethml[dask]`; they are imported only here, and only when
a cluster is used.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import importlib.metadata
import json
import os
import re
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ethml.training.jobs import (
    Assessment,
    ClusterError,
    ScoringData,
    TrainingError,
    scoring_data,
)
from ethml.training.spec import TaskSpec, TrainingLimits

DEFAULT_CONNECT_TIMEOUT = 10.0
#: The libraries whose versions decide the bits of a fitted tree or a score.
PINNED = ("ethml", "scikit-learn", "numpy", "scipy", "joblib", "skops", "threadpoolctl")
_ADDRESS = re.compile(r"^(tcp|tls)://(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):(\d{1,5})$")


@dataclass(frozen=True)
class Cluster:
    """A Dask scheduler that jobs send work to (picklable: it goes to the job's child process)."""

    address: str
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT


@dataclass(frozen=True)
class ClusterInfo:
    address: str
    workers: int
    threads: int
    memory_bytes: int

    def as_dict(self) -> dict[str, Any]:
        return {"address": self.address, "workers": self.workers, "threads": self.threads, "memory": self.memory_bytes}


def parse_target(value: str) -> tuple[str | None, int | None]:
    """`tcp://HOST:PORT` or `tls://HOST:PORT` (a running scheduler): (address, None); `local` or
    `local:N`: (None, N), a LocalCluster of N single-threaded worker processes (N = the CPU count)."""
    text = value.strip()
    if text == "local" or text.startswith("local:"):
        count = text.partition(":")[2]
        if not count:
            return None, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        if not count.isdigit() or not 1 <= int(count) <= 256:
            raise ClusterError(f"--dask {value!r}: local:N needs N between 1 and 256")
        return None, int(count)
    match = _ADDRESS.match(text)
    if match is None or not 1 <= int(match.group(3)) <= 65535:
        raise ClusterError(
            f"--dask {value!r} is not a scheduler address (tcp://HOST:PORT, tls://HOST:PORT) or local[:N]"
        )
    return text, None


def _needs_distributed() -> None:
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise ClusterError("--dask needs the dask extra: pip install 'ethml[dask]'") from None


class LocalDaskCluster:
    """A LocalCluster of `workers` single-threaded worker processes on 127.0.0.1, for one machine with
    several cores; `with LocalDaskCluster(2) as cluster:` gives the `Cluster` jobs use. Each worker
    process is capped at `memory_limit` (Dask's nanny restarts one that passes 95 % of it)."""

    def __init__(self, workers: int, *, memory_limit: str | int = "auto") -> None:
        self.workers = workers
        self.memory_limit = memory_limit
        self._cluster: Any = None

    def __enter__(self) -> Cluster:
        _needs_distributed()
        import logging

        import dask
        from distributed import LocalCluster

        # Dask's statistical profiler samples every worker thread a hundred times a second, for its
        # dashboard, which a local cluster of ethml's does not serve: about a tenth of a forest's CPU.
        # The Active Memory Manager's ReduceReplicas policy drops, every 2 s, each extra copy of a key
        # that no task running on that worker needs at that instant: a broadcast training matrix and
        # target lose their copy on a worker between the broadcast and its first tree (or between two
        # of its trees), and the next tree there fetches them again from the other. A fit's data is
        # released with its client anyway, so the copies are kept for as long as the fit lasts.
        with dask.config.set(
            {
                "distributed.worker.profile.enabled": False,
                "distributed.scheduler.active-memory-manager.start": False,
            }
        ):
            self._cluster = LocalCluster(  # type: ignore[no-untyped-call]
                n_workers=self.workers,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address="127.0.0.1:0",  # its HTTP endpoints on a free local port
                memory_limit=self.memory_limit,
                silence_logs=logging.ERROR,
            )
        return Cluster(str(self._cluster.scheduler_address))

    def __exit__(self, *exc: object) -> None:
        if self._cluster is not None:
            self._cluster.close(timeout=10)
            self._cluster = None


async def _identity(address: str, timeout: float) -> dict[str, Any]:  # noqa: ASYNC109
    from distributed.comm.core import connect
    from distributed.security import Security

    # TLS settings, for tls:// addresses, come from Dask's configuration, as for a Client.
    tls = Security().get_connection_args("client")  # type: ignore[no-untyped-call]
    comm = await connect(address, timeout=timeout, **tls)  # type: ignore[no-untyped-call]
    try:
        await comm.write({"op": "identity", "reply": True})
        reply = await asyncio.wait_for(comm.read(), timeout)
    finally:
        comm.abort()
    if not isinstance(reply, dict) or reply.get("type") != "Scheduler":
        raise ValueError("it answered, but not as a Dask scheduler")
    return reply


def cluster_info(cluster: Cluster) -> ClusterInfo:
    """The scheduler's workers, threads and memory, asked over one connection (no client is made, so a
    wrong address fails fast and cleanly). ClusterError when nothing usable answers."""
    _needs_distributed()
    try:
        reply = asyncio.run(_identity(cluster.address, cluster.connect_timeout))
    except Exception as exc:  # noqa: BLE001 - refused, timed out, TLS, a server that is not Dask: all unusable
        reason = str(exc) or type(exc).__name__
        if isinstance(exc, MemoryError):
            reason = "it answered, but not as a Dask scheduler"
        raise ClusterError(
            f"no Dask scheduler answers at {cluster.address} ({reason}); start one with `dask scheduler` "
            "and workers with `dask worker ADDRESS`, or use --dask local:N"
        ) from None
    workers = reply.get("workers") or {}
    return ClusterInfo(
        cluster.address,
        len(workers),
        sum(int(w.get("nthreads", 0)) for w in workers.values()),
        sum(int(w.get("memory_limit") or 0) for w in workers.values()),
    )


def versions() -> dict[str, str]:
    """This process's Python and `PINNED` versions (also run on every worker of a cluster)."""
    found = {"python": f"{sys.version_info.major}.{sys.version_info.minor}"}
    for name in PINNED:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "missing"
    return found


@contextmanager
def connected(cluster: Cluster) -> Iterator[Any]:
    """A distributed Client of `cluster` whose workers all run this process's versions (checked)."""
    cluster_info(cluster)  # a clean ClusterError for a wrong or dead address, before a Client exists
    from distributed import Client

    try:
        client = Client(cluster.address, timeout=cluster.connect_timeout, set_as_default=False)  # type: ignore[no-untyped-call]
    except Exception as exc:  # noqa: BLE001 - the scheduler went away between the two steps
        raise ClusterError(f"cannot connect to the Dask scheduler at {cluster.address}: {exc}") from None
    try:
        try:
            client.wait_for_workers(1, timeout=cluster.connect_timeout)
        except TimeoutError:
            raise ClusterError(
                f"the Dask scheduler at {cluster.address} has no workers (start `dask worker {cluster.address}` "
                "on the hosts that should compute)"
            ) from None
        check_versions(client, cluster.address)
        yield client
    finally:
        client.close(timeout=cluster.connect_timeout)  # type: ignore[no-untyped-call]


def check_versions(client: Any, address: str) -> None:
    """ClusterError when a worker runs other versions of `PINNED` than this process: its trees or
    scores might differ in the last bit from a local run's, which validators would see."""
    mine = versions()
    try:
        theirs: dict[str, dict[str, str]] = client.run(versions)
    except Exception as exc:  # noqa: BLE001 - typically: ethml is not installed on a worker
        raise ClusterError(
            f"the workers of the Dask cluster at {address} cannot run ethml's check ({type(exc).__name__}: {exc}); "
            "install the same ethml[dask] on every worker host"
        ) from None
    problems = [
        f"{worker}: {name} {found.get(name, 'missing')} (this job: {version})"
        for worker, found in sorted(theirs.items())
        for name, version in mine.items()
        if found.get(name) != version
    ]
    if problems:
        raise ClusterError(
            "the Dask cluster's workers run other versions than this job, so a model trained or scored there "
            "might not be byte-identical to a local one: " + "; ".join(problems[:6])
        )


@contextmanager
def trees_on(cluster: Cluster) -> Iterator[None]:
    """joblib's `dask` backend for the duration of a fit: scikit-learn's `Parallel` calls (a forest's
    trees) run on the cluster's workers, all their threads, while the estimator's own `n_jobs` stays
    unset, so its parameters (and artifact) are those of a local fit."""
    from joblib import parallel_config

    with connected(cluster) as client:
        broadcasting = _Broadcasting(client)
        with parallel_config(
            backend="dask", client=broadcasting, n_jobs=-1, wait_for_workers_timeout=cluster.connect_timeout
        ):
            yield


class _Broadcasting:
    """The Client as joblib's dask backend sees it, except that what the backend scatters (it scatters
    each argument over 1 kB once per fit: the training matrix, the target) goes to every worker at
    once. Scattered to one worker only, the data pulls every tree task to that worker and the others
    idle until work stealing notices; broadcast, the trees spread from the first one. The copies last
    only while the scheduler's Active Memory Manager leaves them: `LocalDaskCluster` turns it off; on a
    scheduler of your own (`distributed.scheduler.active-memory-manager.start: false` to turn it off)
    it may drop a worker's copy when none of its tasks is running there, and that worker fetches it again."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def scatter(self, data: Any, **kwargs: Any) -> Any:
        return self._client.scatter(data, **{**kwargs, "broadcast": True})

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


#: Seconds a scoring process is given to start (an interpreter that imports scikit-learn and reads its input)
#: before the spec's time limit for the scoring itself starts: a local validator's child comes from a fork
#: server that has imported them already, and its limit is the scoring's alone.
SCORING_START_SECONDS = 60.0


def _score_task(
    spec_json: bytes, artifact: bytes, sha256: str, claimed: int, task_id: int, data: ScoringData, seconds: float
) -> tuple[str, Any]:
    """One submission's assessment, on a cluster's worker, in a child process of the worker's
    (ethml.training.scoring_child): given `seconds` from the moment it is ready to score, its memory capped
    at the worker's limit, so that a scoring that runs long, runs out of memory or crashes ends there, as that
    submission's failure, and the worker goes on. Errors come back as text."""
    import subprocess

    from distributed import get_worker

    from ethml.training.scoring_child import MAX_REASON

    try:
        memory = int(get_worker().memory_manager.memory_limit or 0)
    except (ValueError, AttributeError):  # (not on a worker, or a worker without a memory manager)
        memory = 0
    cpu = int(SCORING_START_SECONDS + seconds) + 1
    lifeline, keep = _pipe()  # the child reads `lifeline` until this worker closes `keep` (or dies)
    answers, answer = _pipe()
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "ethml.training.scoring_child", str(lifeline), str(answer), str(memory), str(cpu)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(lifeline, answer),
        )
    except BaseException:
        os.close(keep)
        os.close(answers)
        raise
    finally:
        os.close(lifeline)
        os.close(answer)
    feeder = threading.Thread(
        target=_feed, args=(process, (spec_json, artifact, sha256, claimed, task_id, data)), daemon=True
    )
    feeder.start()
    try:
        reply = _answer(answers, seconds)
        if isinstance(reply, str):
            return "error", reply
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        os.close(keep)
        os.close(answers)
        feeder.join(timeout=5)
    try:
        found = json.loads(bytes(reply))
        if "ok" in found:
            test, holdout, reproduced = found["ok"]
            return "ok", Assessment(int(test), int(holdout), bool(reproduced))
        return "error", str(found["error"])[: MAX_REASON + 1]
    except (ValueError, KeyError, TypeError):
        code = process.returncode
        how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        return "error", f"its scoring process died on the Dask worker ({how})"


def _pipe() -> tuple[int, int]:
    """`os.pipe()` with both ends above 2. A worker started with its stdin, stdout or stderr closed got one
    of those numbers for a pipe to its scoring process, whose stdin, stdout and stderr then took its place in
    the child: every scoring ended at once, and every submission voted 0."""
    read, write = os.pipe()
    return _above_stdio(read), _above_stdio(write)


def _above_stdio(fd: int) -> int:
    if fd > 2:
        return fd
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    os.close(fd)
    return moved


def _feed(process: Any, payload: tuple[Any, ...]) -> None:
    """The child's input (ethml.training.scoring_child.write_framed), written from a thread: a child that dies
    or stops reading leaves it to end with a broken pipe."""
    from ethml.training.scoring_child import write_framed

    try:
        write_framed(process.stdin, payload)
        process.stdin.close()
    except (BrokenPipeError, OSError, ValueError):
        pass


def _answer(fd: int, seconds: float) -> bytes | str:
    """What a scoring process sends on `fd` until it ends, less its ready mark; or, as text, why there is
    nothing to read: it was not ready within SCORING_START_SECONDS, or did not finish within `seconds` of
    being ready."""
    import select

    from ethml.training.scoring_child import READY

    readable = select.poll()  # (not select.select, which refuses a descriptor of 1024 or more)
    readable.register(fd, select.POLLIN)
    got = bytearray()
    ready = False
    deadline = time.monotonic() + SCORING_START_SECONDS
    while True:
        if not ready and got[: len(READY)] == READY:
            ready, deadline = True, time.monotonic() + seconds
        left = deadline - time.monotonic()
        if left <= 0 or not readable.poll(left * 1000):
            if ready:
                return f"not scored within {seconds:g} s on the Dask cluster (its scoring process was stopped)"
            return f"its scoring process did not start within {SCORING_START_SECONDS:g} s on the Dask worker"
        chunk = os.read(fd, 65536)
        if not chunk:
            return bytes(got[len(READY) :] if ready else got)  # (one that failed before it was ready: its reason)
        got += chunk


def assess_on_cluster(
    cluster: Cluster,
    spec: TaskSpec,
    submissions: list[tuple[bytes, str, int]],
    data: ScoringData,
    task_id: int,
    timeout: float,
) -> list[Assessment | str]:
    """Score `(artifact, sha256, claimed)` submissions in parallel on the cluster: the scoring data is
    broadcast to every worker once, the artifacts are spread over the workers, one task each. An
    Assessment per submission, or the reason it could not be scored (which votes 0). A submission not
    scored within `timeout` seconds of the start is reported as such.

    Each scoring runs in a child process of its worker's (`_score_task`), stopped at the spec's time limit
    and capped at the worker's memory, as a local validator's is: one that runs long, runs out of memory or
    crashes fails alone and votes 0. A worker can still die while it scores (killed from outside, its host
    gone): the scheduler counts that death against every task assigned to it (a worker takes more than one
    at a time), and an artifact scattered to it is lost with it. So each submission whose scoring was lost
    so is scored again alone on the cluster, one after another; one whose worker dies again, alone, votes 0
    once a probe task shows that the cluster still runs tasks, and a cluster that does not is a
    ClusterError (no submission is to blame)."""
    deadline = time.monotonic() + timeout
    with connected(cluster) as client:
        spec_json = spec.to_json()
        args = (client, spec_json, float(spec.max_train_seconds), submissions, data, task_id, deadline, timeout)
        found, lost = _score_round(*args, list(range(len(submissions))), cluster.address)
        killers = []
        for index in lost:  # alone, one after another
            again, still_lost = _score_round(*args, [index], cluster.address)
            found.update(again)
            killers.extend(still_lost)
        if killers:
            if not _runs_tasks(client, min(60.0, max(PROBE_SECONDS, deadline - time.monotonic()))):
                raise ClusterError(
                    f"the Dask cluster at {cluster.address} lost its workers while scoring, and then did not run a "
                    "probe task either"
                )
            for index in killers:
                found[index] = (
                    "the Dask worker scoring it died each time it was tried, alone on the cluster too, while the "
                    "cluster runs other tasks"
                )
        return [found[index] for index in range(len(submissions))]


def _score_round(
    client: Any,
    spec_json: bytes,
    seconds: float,
    submissions: list[tuple[bytes, str, int]],
    data: ScoringData,
    task_id: int,
    deadline: float,
    timeout: float,
    indices: list[int],
    address: str,
) -> tuple[dict[int, Assessment | str], list[int]]:
    """The submissions at `indices` scored at once, each within `seconds` (the spec's time limit): what each
    gave, by index, and the indices of those whose scoring was lost with a worker that died (Dask's
    KilledWorker, or a scattered input lost with it)."""
    from concurrent.futures import CancelledError

    from distributed import KilledWorker, wait
    from distributed.client import FuturesCancelledError

    try:
        shared = client.scatter(data, broadcast=True, hash=False)
        artifacts = client.scatter([submissions[index][0] for index in indices], hash=False)
    except TimeoutError:  # (no worker came back in time)
        raise ClusterError(f"the Dask cluster at {address} has no worker to score on") from None
    futures = [
        client.submit(
            _score_task,
            spec_json,
            art,
            submissions[index][1],
            submissions[index][2],
            task_id,
            shared,
            seconds,
            pure=False,
        )
        for art, index in zip(artifacts, indices, strict=True)
    ]
    with contextlib.suppress(TimeoutError, FuturesCancelledError), client.as_current():
        wait(futures, timeout=max(0.0, deadline - time.monotonic()))  # type: ignore[no-untyped-call]
    found: dict[int, Assessment | str] = {}
    lost = []
    for index, future in zip(indices, futures, strict=True):
        if future.status == "finished":
            try:
                status, value = future.result(timeout=PROBE_SECONDS)
            except (CancelledError, TimeoutError):  # (its result was lost with a worker as it was fetched)
                lost.append(index)
                continue
            found[index] = value if status == "ok" else str(value)
        elif future.status in ("cancelled", "lost") or (
            future.status == "error" and isinstance(future.exception(), KilledWorker)
        ):
            lost.append(index)
        elif future.status == "error":
            raise ClusterError(f"the Dask cluster at {address} failed a scoring task: {future.exception()}")
        else:
            found[index] = f"not scored within {timeout:g} s on the Dask cluster"
    client.cancel([f for f in futures if not f.done()])
    return found, lost


#: The least time a probe task, or the fetch of a finished result, is given.
PROBE_SECONDS = 10.0


def _alive() -> bool:
    return True


def _runs_tasks(client: Any, timeout: float) -> bool:
    """Whether the cluster runs a trivial task within `timeout` seconds."""
    try:
        return bool(client.submit(_alive, pure=False).result(timeout=timeout))
    except Exception:  # noqa: BLE001 - cancelled, timed out, a worker lost: it does not
        return False


def assess_many(
    cluster: Cluster,
    spec: TaskSpec,
    submissions: list[tuple[bytes, str, int]],
    dataset: bytes,
    test_set: bytes | None,
    task_id: int,
    limits: TrainingLimits,
    timeout: float,
) -> list[Assessment | str]:
    """The cluster path of `jobs.score_submissions`, in its child process: the dataset and test set
    are parsed once here (data that cannot be parsed is every submission's reason, as locally), then
    scored on the cluster."""
    try:
        data = scoring_data(spec, dataset, test_set, task_id, limits)
    except ClusterError:
        raise
    except TrainingError as exc:
        return [str(exc)] * len(submissions)
    return assess_on_cluster(cluster, spec, submissions, data, task_id, timeout)
