"""`Worker.drain` and `Worker.stop_now` against a scripted coordinator socket: what the worker sends,
in what order, and that `run()` returns whatever the connection is doing (a job to finish, a login
that never ends, a server that does not take a drain)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import WSMsgType, web

from ethml.chain import dev_account
from ethml.chain.reverts import Revert
from ethml.coordinator import worker as worker_module
from ethml.coordinator.worker import Worker, WorkerConfig, WorkerRefused
from ethml.errors import TransactionReverted
from tests.node.conftest import wait_until


def _job(job: str, delivery: int) -> dict[str, Any]:
    return {"type": "job", "job": job, "kind": "train", "task": "t", "chain_task": 1, "delivery": delivery}


class Script:
    """The server's side: `mode` ok (takes drain and release), old (an ethml serve without them) or
    silent (accepts the socket, answers pings, never sends the challenge)."""

    def __init__(
        self, mode: str, jobs: list[dict[str, Any]], on_drain: list[dict[str, Any]], *, restart_on_drain: bool = False
    ) -> None:
        self.mode, self.jobs, self.on_drain = mode, jobs, on_drain
        self.restart_on_drain = restart_on_drain  # the first connection closes right after the drain's jobs
        self.received: list[dict[str, Any]] = []
        self.later: list[dict[str, Any]] = []  # sent on the first connection once `go` is set ({"type": "_close"}
        # closes it, as a coordinator restart would)
        self.early: list[dict[str, Any]] = []  # sent on the first connection before the welcome
        self.running_after: list[str] = []  # the welcome's `running` on later connections (adopted jobs)
        self.go = asyncio.Event()
        self.connected = asyncio.Event()
        self.connections = 0
        self.unproven = 0  # results answered `retry` (no commitment on chain yet) before one is recorded

    async def handler(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.connected.set()
        self.connections += 1
        first = self.connections == 1
        if self.mode == "silent":
            async for _msg in ws:  # pings are answered by aiohttp; nothing else ever comes
                pass
            return ws
        await ws.send_json({"type": "challenge", "nonce": "n", "server": "s", "chain_id": 1})
        await ws.receive_json()
        for message in self.early if first else []:
            await ws.send_json(message)
        running = [] if first else self.running_after
        welcome: dict[str, Any] = {"type": "welcome", "worker_id": "w", "heartbeat": 0.2, "running": running}
        if self.mode == "ok":
            welcome["features"] = ["drain", "release"]
        await ws.send_json(welcome)
        for job in self.jobs if first else []:
            await ws.send_json(job)

        async def send_later() -> None:
            await self.go.wait()
            for message in self.later:
                if message["type"] == "_close":
                    await ws.close()
                    return
                await ws.send_json(message)

        later = asyncio.create_task(send_later()) if first else None
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                break
            data = json.loads(msg.data)
            if data["type"] == "load":
                continue
            self.received.append(data)
            if self.mode == "old" and data["type"] in ("drain", "release"):
                await ws.send_json({"type": "error", "message": f"message: Input tag {data['type']!r} ..."})
            elif data["type"] == "drain":
                for job in self.on_drain if first else []:  # dispatched before the drain was read
                    await ws.send_json(job)
                if first and self.restart_on_drain:
                    await ws.close()  # the coordinator restarts
                    break
                await ws.send_json({"type": "draining", "running": []})
            elif data["type"] == "release":
                await ws.send_json({"type": "released", "job": data["job"], "released": True})
            elif data["type"] == "result" and self.unproven > 0:
                self.unproven -= 1
                await ws.send_json(
                    {"type": "ack", "job": data["job"], "recorded": False, "retry": True, "refused": "no"}
                )
            elif data["type"] == "result":
                await ws.send_json({"type": "ack", "job": data["job"], "recorded": True})
        if later is not None:
            later.cancel()
        return ws


class HeldWorker(Worker):
    """A worker whose jobs run until the test lets them finish (no chain, no IPFS)."""

    def __init__(self, server: str, data_dir: Path, committing: set[str] | None = None) -> None:
        # Room for every job these tests send at once (`test_hostile_server` checks jobs over the capacity).
        config = WorkerConfig(server=server, role="trainer", data_dir=data_dir, load_interval=0.2, capacity=4)
        super().__init__(config, None, None, dev_account(5), None)  # type: ignore[arg-type]
        self.release_jobs = asyncio.Event()
        self.cancelled: list[str] = []
        self.committing = committing or set()

    def _resume_duties(self) -> None:
        pass

    def _committing(self, job_id: str) -> bool:
        return job_id in self.committing

    async def _execute(self, job: dict[str, Any]) -> tuple[Any, str | None]:
        try:
            await self.release_jobs.wait()
        except asyncio.CancelledError:
            self.cancelled.append(job["job"])
            raise
        return {"done": True}, None


async def _event(worker: Worker, name: str) -> dict[str, Any]:
    while True:
        event = await asyncio.wait_for(worker.events.get(), 30)
        if event["event"] == name:
            return event


async def _report_and_drain(worker: HeldWorker, run: asyncio.Task[None], script: Script) -> list[tuple[Any, ...]]:
    """Let the held jobs finish, wait for the acknowledgement, drain, and return what the worker sent:
    (type, job, delivery) of each message."""
    worker.release_jobs.set()
    await _event(worker, "acked")
    worker.drain()
    await asyncio.wait_for(run, 30)
    return [(m["type"], m.get("job"), m.get("delivery")) for m in script.received]


async def test_a_drain_finishes_the_job_and_hands_back_one_that_was_on_its_way(serve: Any, tmp_path: Path) -> None:
    script = Script("ok", [_job("1:train:0", 1)], on_drain=[_job("2:train:0", 3)])
    worker = HeldWorker(await serve(script), tmp_path)
    run = asyncio.create_task(worker.run())
    await _event(worker, "job_started")
    assert worker.drain() == ["1:train:0"]
    await _event(worker, "draining")
    assert not run.done()  # still finishing its job
    worker.release_jobs.set()
    await asyncio.wait_for(run, 30)
    sent = [(m["type"], m.get("job"), m.get("delivery")) for m in script.received]
    assert sent == [("drain", None, None), ("release", "2:train:0", 3), ("result", "1:train:0", 1)]
    assert not worker.stopped_now and worker.cancelled == []


async def test_stop_now_hands_back_running_jobs_and_finishes_one_whose_commitment_is_being_sent(
    serve: Any, tmp_path: Path
) -> None:
    script = Script("ok", [_job("1:train:0", 1), _job("3:train:0", 2)], on_drain=[])
    worker = HeldWorker(await serve(script), tmp_path, committing={"3:train:0"})
    worker.config.capacity = 2
    run = asyncio.create_task(worker.run())
    await _event(worker, "job_started")
    await _event(worker, "job_started")
    assert worker.stop_now() == (["1:train:0"], ["3:train:0"])
    await _event(worker, "released")
    assert not run.done()  # the committing job goes on
    worker.release_jobs.set()
    await asyncio.wait_for(run, 30)
    sent = [(m["type"], m.get("job"), m.get("delivery")) for m in script.received]
    assert sent == [("drain", None, None), ("release", "1:train:0", 1), ("result", "3:train:0", 2)]
    assert worker.cancelled == ["1:train:0"] and worker.stopped_now


async def test_a_stop_during_a_login_that_never_ends_returns_at_once(serve: Any, tmp_path: Path) -> None:
    script = Script("silent", [], on_drain=[])
    worker = HeldWorker(await serve(script), tmp_path)
    run = asyncio.create_task(worker.run())
    await asyncio.wait_for(script.connected.wait(), 30)
    assert worker.drain() == []
    await asyncio.wait_for(run, 10)


async def test_against_a_server_without_drain_a_drain_is_a_stop_now_without_release(serve: Any, tmp_path: Path) -> None:
    script = Script("old", [_job("1:train:0", 1)], on_drain=[])
    worker = HeldWorker(await serve(script), tmp_path)
    run = asyncio.create_task(worker.run())
    await _event(worker, "job_started")
    assert worker.drain() == [] and worker.stopped_now
    await asyncio.wait_for(run, 10)
    assert script.received == [] and worker.cancelled == ["1:train:0"]


async def test_a_drain_survives_a_coordinator_restart_that_cut_off_a_hand_back(serve: Any, tmp_path: Path) -> None:
    """Draining with a job to finish, a job arrives and the socket closes before its release is answered
    (the coordinator restarts): the release is forgotten with the connection (that job times out at
    the server), the worker reconnects, drains again, reports its job and stops."""
    script = Script("ok", [_job("1:train:0", 1)], on_drain=[_job("2:train:0", 1)], restart_on_drain=True)
    script.running_after = ["1:train:0"]  # the restarted coordinator keeps it for this worker
    worker = HeldWorker(await serve(script), tmp_path)
    worker.config.max_backoff = 0.2
    run = asyncio.create_task(worker.run())
    await _event(worker, "job_started")
    worker.drain()
    await _event(worker, "draining")  # on the second connection
    assert script.connections == 2 and not run.done()
    worker.release_jobs.set()
    await asyncio.wait_for(run, 30)
    kinds = [m["type"] for m in script.received]
    assert kinds[-2:] == ["drain", "result"] and kinds[0] == "drain", kinds


async def test_a_revoked_job_stops_unless_its_commitment_is_being_sent(serve: Any, tmp_path: Path) -> None:
    """The server takes back two jobs (past their time limit): the first is stopped and reports nothing;
    the second has written its commitment's secret, so it is finished, and when the server then sends
    it to this worker again as delivery 2, its result answers delivery 2. A revoke of a job the worker
    does not run changes nothing."""
    revoked = [{"type": "revoked", "job": job, "reason": "past its time limit"} for job in ("1:train:0", "3:train:0")]
    script = Script("ok", [_job("1:train:0", 1), _job("3:train:0", 1)], on_drain=[])
    script.later = [*revoked, _job("3:train:0", 2), {**revoked[0], "job": "9:train:0"}]
    worker = HeldWorker(await serve(script), tmp_path, committing={"3:train:0"})
    worker.config.capacity = 2
    run = asyncio.create_task(worker.run())
    await _event(worker, "job_started")
    await _event(worker, "job_started")
    script.go.set()
    assert (await _event(worker, "revoked"))["job"] == "1:train:0"

    async def resent() -> bool:
        return worker.jobs.get("3:train:0", {}).get("delivery") == 2

    await wait_until(resent, timeout=30, what="the second delivery of the kept job")
    assert sorted(worker.running) == ["3:train:0"]
    sent = await _report_and_drain(worker, run, script)
    assert sent == [("result", "3:train:0", 2), ("drain", None, None)]
    assert worker.cancelled == ["1:train:0"]


async def test_jobs_taken_back_while_disconnected_are_stopped_on_reconnect(serve: Any, tmp_path: Path) -> None:
    """The connection breaks while two jobs run; when the worker reconnects, the server holds only one of
    them for it (the other timed out and went to another worker meanwhile): that one stops, the other
    runs on and is reported."""
    script = Script("ok", [_job("1:train:0", 1), _job("3:train:0", 1)], on_drain=[])
    script.later = [{"type": "_close"}]
    script.running_after = ["3:train:0"]
    worker = HeldWorker(await serve(script), tmp_path)
    worker.config.capacity = 2
    worker.config.max_backoff = 0.2
    run = asyncio.create_task(worker.run())
    await _event(worker, "job_started")
    await _event(worker, "job_started")
    script.go.set()
    revoked = await _event(worker, "revoked")
    assert revoked["job"] == "1:train:0" and "disconnected" in revoked["reason"]
    assert script.connections == 2 and sorted(worker.running) == ["3:train:0"]
    sent = await _report_and_drain(worker, run, script)
    assert sent == [("result", "3:train:0", 1), ("drain", None, None)]
    assert worker.cancelled == ["1:train:0"]


async def test_messages_before_the_welcome_are_handled_once_connected(serve: Any, tmp_path: Path) -> None:
    """A server that sends a job and a revoke before its welcome: the worker logs in all the same and
    runs the job (before, it took the job for the welcome, and a worker that reports at the server's
    heartbeat, as `ethml worker` does, died of a KeyError)."""
    script = Script("ok", [], on_drain=[])
    script.early = [_job("1:train:0", 1), {"type": "revoked", "job": "9:train:0"}]
    worker = HeldWorker(await serve(script), tmp_path)
    worker.config.load_interval = None  # as `ethml worker` runs: at the server's heartbeat
    run = asyncio.create_task(worker.run())
    assert (await _event(worker, "job_started"))["job"] == "1:train:0"
    assert await _report_and_drain(worker, run, script) == [("result", "1:train:0", 1), ("drain", None, None)]


async def test_a_job_delivered_again_right_after_its_revoke_runs_again(serve: Any, tmp_path: Path) -> None:
    """A drawn validator's seat goes only to its validator: taken back, it comes straight back to the same
    worker, the revoke and the new delivery in one breath. The revoked run stops and the new delivery
    runs, its result answering delivery 2 (before, the worker took it for a re-send of the run it was
    stopping, and dropped it). Messages it cannot read on the way are skipped, not fatal."""
    script = Script("ok", [_job("1:train:0", 1)], on_drain=[])
    malformed: list[dict[str, Any]] = [
        {"type": "job"},
        {"type": "ack", "job": [1]},
        {"type": "job", "job": "2:train:0", "kind": "x"},
    ]
    script.later = [*malformed, {"type": "revoked", "job": "1:train:0", "reason": "taken back"}, _job("1:train:0", 2)]
    worker = HeldWorker(await serve(script), tmp_path)
    run = asyncio.create_task(worker.run())
    await _event(worker, "job_started")
    script.go.set()
    assert (await _event(worker, "revoked"))["job"] == "1:train:0"
    again = await _event(worker, "job_started")
    assert (again["job"], again["delivery"]) == ("1:train:0", 2)
    sent = await _report_and_drain(worker, run, script)
    assert sent == [("result", "1:train:0", 2), ("drain", None, None)]
    assert worker.cancelled == ["1:train:0"]


async def test_a_result_answered_retry_is_sent_again_until_it_counts_and_a_drain_waits_for_it(
    serve: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trainer's result the server cannot count yet (its node does not show the commitment: a block behind
    the worker's) is answered `retry`: the worker keeps it and sends it again after RESULT_RETRY, until it
    is acknowledged; a drain ends only then."""
    monkeypatch.setattr(worker_module, "RESULT_RETRY", 0.2)
    script = Script("ok", [_job("1:train:0", 1)], on_drain=[])
    script.unproven = 2
    worker = HeldWorker(await serve(script), tmp_path)
    run = asyncio.create_task(worker.run())
    await _event(worker, "job_started")
    assert worker.drain() == ["1:train:0"]
    worker.release_jobs.set()
    acked = await _event(worker, "acked")
    assert acked["recorded"] is True and worker.unacked == {}
    await asyncio.wait_for(run, 30)
    sent = [(m["type"], m.get("job"), m.get("delivery")) for m in script.received]
    assert sent == [("drain", None, None)] + [("result", "1:train:0", 1)] * 3


class UnstakedWorker(HeldWorker):
    """A worker whose account has lost its stake: job 1:train:0 finds out (the contract says NotStaked); the others
    run until the test lets them finish."""

    async def _execute(self, job: dict[str, Any]) -> tuple[Any, str | None]:
        if job["job"] == "1:train:0":
            reason = (
                f"account {self.account.address} is not staked as a trainer; stake with `ethml stake --role trainer`"
            )
            raise TransactionReverted("commitSubmission", reason, error=Revert("NotStaked"), preflight=True)
        return await super()._execute(job)


async def test_a_worker_whose_account_lost_its_stake_takes_no_more_jobs_and_says_why(
    serve: Any, tmp_path: Path
) -> None:
    """A trainer unstaked (or slashed below the minimum) while it worked stayed connected: every job it took failed
    on NotStaked, and each cost its account the one try it has at that task. The first such failure now drains the
    worker: its other job is finished and reported, a job sent after the drain is handed straight back, and the
    process ends with the reason."""
    script = Script("ok", [_job("2:train:0", 1), _job("1:train:0", 1)], on_drain=[_job("3:train:0", 1)])
    worker = UnstakedWorker(await serve(script), tmp_path)
    run = asyncio.create_task(worker.run())
    await _event(worker, "draining")
    assert not run.done()  # still finishing 2:train:0
    worker.release_jobs.set()
    with pytest.raises(WorkerRefused, match=r"stopped taking jobs: account 0x.* is not staked as a trainer"):
        await asyncio.wait_for(run, 30)
    sent = [(m["type"], m.get("job"), m.get("ok")) for m in script.received]
    assert sent == [
        ("result", "1:train:0", False),
        ("drain", None, None),
        ("release", "3:train:0", None),
        ("result", "2:train:0", True),
    ], sent


class CommittedThenUnstaked(HeldWorker):
    """Job 2:train:0 commits (its reveal is owed once task 2's submission window closes); then the account's stake
    goes, and job 1:train:0's commitSubmission reverts NotStaked. The reveal waits for `reveal_window`."""

    def __init__(self, server: str, data_dir: Path) -> None:
        super().__init__(server, data_dir)
        self.reveal_window = asyncio.Event()
        self.reveals: list[str] = []

    async def _execute(self, job: dict[str, Any]) -> tuple[Any, str | None]:
        if job["job"] == "2:train:0":
            self._owe_reveal("train", 2)  # as `_execute` does when the window is not open yet
            return {"revealed": False}, None
        raise TransactionReverted(
            "commitSubmission", "account is not staked", error=Revert("NotStaked"), preflight=True
        )

    async def _reveal(self, kind: str, task_id: int) -> None:
        try:
            await self.reveal_window.wait()  # revealSubmission takes no stake: it succeeds then
            self.reveals.append("revealed")
        except asyncio.CancelledError:
            self.reveals.append("cancelled")
            raise


async def test_a_worker_that_lost_its_stake_makes_the_reveals_it_owes_before_it_exits(
    serve: Any, tmp_path: Path
) -> None:
    """A reveal needs no stake, and a commitment not revealed loses its bond: the worker that stops taking jobs on
    NotStaked exited at once and cancelled the reveals it owed (found by the outside review). It now waits for
    them, with no job running, then exits saying why."""
    script = Script("ok", [_job("2:train:0", 1), _job("1:train:0", 1)], on_drain=[])
    worker = CommittedThenUnstaked(await serve(script), tmp_path)
    run = asyncio.create_task(worker.run())
    await _event(worker, "draining")

    async def settled() -> bool:
        return not (worker.running or worker.unacked) and len(script.received) >= 3

    await wait_until(settled, timeout=30, what="both results acknowledged")
    assert not run.done() and worker.reveals == []  # waiting for task 2's reveal
    worker.reveal_window.set()
    with pytest.raises(WorkerRefused, match="it made the reveals it owed first"):
        await asyncio.wait_for(run, 30)
    assert worker.reveals == ["revealed"]
