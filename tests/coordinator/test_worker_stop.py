"""`Worker.drain` and `Worker.stop_now` on their own, against a socket that records what is sent."""

from __future__ import annotations

import asyncio
from typing import Any

from ethml.coordinator.worker import Worker, WorkerConfig


class RecordingSocket:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.closed = False

    async def send_json(self, message: dict[str, Any]) -> None:
        assert not self.closed, message
        self.sent.append(message)

    async def close(self) -> None:
        self.closed = True


class BlockedWorker(Worker):
    """A worker whose jobs run until cancelled (no chain, no IPFS)."""

    def __init__(self) -> None:
        super().__init__(WorkerConfig(server="ws://127.0.0.1:1", role="trainer"), None, None, None, None)  # type: ignore[arg-type]
        self.cancelled: list[str] = []

    async def _execute(self, job: dict[str, Any]) -> tuple[Any, str | None]:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.append(job["job"])
            raise
        raise AssertionError("unreachable")


def _job(job: str, delivery: int) -> dict[str, Any]:
    return {"type": "job", "job": job, "kind": "train", "task": "t", "chain_task": 1, "delivery": delivery}


async def _settled(worker: Worker) -> None:
    while worker._background:
        await asyncio.gather(*list(worker._background))


async def test_a_job_arriving_while_draining_is_handed_straight_back() -> None:
    worker = BlockedWorker()
    ws = RecordingSocket()
    worker._ws = ws  # type: ignore[assignment]
    worker._start(_job("1:train:0", 1))
    assert worker.drain() == ["1:train:0"]
    worker._start(_job("2:train:0", 3))  # dispatched before the server read the drain
    await _settled(worker)
    assert ws.sent == [{"type": "drain"}, {"type": "release", "job": "2:train:0", "delivery": 3}]
    assert sorted(worker.running) == ["1:train:0"] and not ws.closed  # still finishing its own job
    assert not worker._finished.is_set()
    worker.stop_now()
    await _settled(worker)
    assert worker.cancelled == ["1:train:0"]
    assert ws.sent[2:] == [{"type": "release", "job": "1:train:0", "delivery": 1}] and ws.closed
    assert worker._finished.is_set() and worker.stopped_now


async def test_a_drain_with_nothing_left_closes_at_once_and_one_with_an_unacknowledged_result_waits() -> None:
    worker = BlockedWorker()
    ws = RecordingSocket()
    worker._ws = ws  # type: ignore[assignment]
    worker.unacked["1:train:0"] = {"type": "result", "job": "1:train:0", "delivery": 1, "ok": True}
    assert worker.drain() == []
    await _settled(worker)
    assert ws.sent == [{"type": "drain"}] and not ws.closed and not worker._finished.is_set()
    worker.unacked.clear()  # what the server's ack does, before the check below
    worker._check_drained()
    await _settled(worker)
    assert ws.closed and worker._finished.is_set() and not worker.stopped_now
