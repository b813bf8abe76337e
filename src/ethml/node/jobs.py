"""A job is the open round as this node works on it; the board cancels superseded jobs."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from ethml.pow import StopFlag


@dataclass
class Job:
    """One round: its challenge and difficulty, and per request (in answer-vector order) the model,
    the data CID, then the fetched data and the answer."""

    round_id: int
    challenge: bytes
    difficulty: int
    request_ids: list[int]
    model_ids: list[int]
    data_cids: list[str]
    block_number: int
    block_hash: str
    bond: int = 0
    stop: StopFlag = field(default_factory=StopFlag)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    reason: str = ""
    datas: list[bytes | None] = field(default_factory=list)
    invalid_reasons: list[str] = field(default_factory=list)
    answers: list[int] | None = None
    nonce: int | None = None

    def cancel(self, reason: str) -> None:
        if not self.cancelled.is_set():
            self.reason = reason
            self.cancelled.set()
            self.stop.set()

    @property
    def is_cancelled(self) -> bool:
        return self.cancelled.is_set()

    def regrind(self, challenge: bytes) -> None:
        """The round's challenge turned out to be another (the contract refused the nonce as invalid):
        search again for it, with the answers already made."""
        self.challenge = challenge
        self.nonce = None
        self.stop = StopFlag()


class JobBoard:
    """The current job. A new round, a closed round or a reorg cancels what is superseded."""

    def __init__(self) -> None:
        self.current: Job | None = None

    def start(self, job: Job) -> None:
        if self.current is not None and self.current is not job:
            self.current.cancel(f"round {job.round_id} opened")
        self.current = job

    def close_round(self, round_id: int, reason: str) -> None:
        if self.current is not None and self.current.round_id == round_id:
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
