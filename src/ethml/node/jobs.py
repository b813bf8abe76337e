"""A job is one current request as this node works on it; the board cancels superseded jobs."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from ethml.pow import StopFlag


@dataclass
class Job:
    request_id: int
    challenge: bytes
    difficulty: int
    model_id: int
    data_cid: str
    block_number: int
    block_hash: str
    stop: StopFlag = field(default_factory=StopFlag)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    reason: str = ""
    data: bytes | None = None
    prediction: int | None = None
    invalid_reason: str = ""
    nonce: int | None = None

    def cancel(self, reason: str) -> None:
        if not self.cancelled.is_set():
            self.reason = reason
            self.cancelled.set()
            self.stop.set()

    @property
    def is_cancelled(self) -> bool:
        return self.cancelled.is_set()


class JobBoard:
    """The current job. A new challenge, a closed request or a reorg cancels what is superseded."""

    def __init__(self) -> None:
        self.current: Job | None = None

    def start(self, job: Job) -> None:
        if self.current is not None and self.current is not job:
            self.current.cancel(f"request {job.request_id} became current")
        self.current = job

    def close_request(self, request_id: int, reason: str) -> None:
        if self.current is not None and self.current.request_id == request_id:
            self.current.cancel(reason)
            self.current = None

    def retract_blocks(self, removed_hashes: set[str]) -> Job | None:
        """Cancel the job whose RoundOpened log was in a block a reorg removed."""
        job = self.current
        if job is not None and job.block_hash in removed_hashes:
            job.cancel("its challenge was removed by a reorg")
            self.current = None
            return job
        return None

    def cancel_all(self, reason: str) -> None:
        if self.current is not None:
            self.current.cancel(reason)
