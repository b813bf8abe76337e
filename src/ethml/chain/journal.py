"""The journal of a multi-step deployment: every signed transaction is written down before it is sent.

A deployment onto a public chain is a few dozen transactions over minutes; the process can be killed,
the RPC can drop, a transaction can fall out of the mempool. The journal records, per step (a stable
key such as `oracle` or `model:iris`), each transaction signed for it (hash, nonce, fees and the
signed bytes) *before* it is broadcast, and the step's outcome once mined. A rerun reads it and
picks up where the last run stopped (ethml.chain.steps): a mined step is not sent again, a signed
transaction the node never saw is broadcast again byte for byte, one whose nonce went to another
transaction is signed afresh. With no path the journal lives in memory only (an in-process chain, a
devnet deployed in one go).

The file is replaced atomically (written beside, fsynced, renamed), so a crash leaves either the old
or the new journal, never half of one. One process at a time holds it: `lock()` takes an exclusive
`flock` on a `.lock` file beside it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from ethml.errors import DeploymentError

VERSION = 1


@dataclass
class Attempt:
    """One signed transaction for a step. A step has more than one when a transaction was replaced
    (re-priced with the same nonce) or re-signed after its nonce went to another transaction."""

    hash: str
    nonce: int
    gas: int
    max_fee: int
    tip: int
    #: The signed transaction (0x-hex): broadcast again, as it is, if the node lost it.
    raw: str
    #: Mined and reverted: the step is signed afresh on the next run.
    reverted: bool = False


@dataclass
class Outcome:
    """A step's mined transaction."""

    tx: str
    block: int
    gas_used: int
    #: The contract a deployment step created.
    address: str | None = None


@dataclass
class StepRecord:
    key: str
    what: str
    attempts: list[Attempt] = field(default_factory=list)
    done: Outcome | None = None

    def live_attempts(self) -> list[Attempt]:
        return [a for a in self.attempts if not a.reverted]


class Journal:
    """Steps by key, in the order they were first recorded; saved to `path` after every change."""

    def __init__(self, path: Path | None = None, header: dict[str, Any] | None = None) -> None:
        self.path = path
        self.header: dict[str, Any] = dict(header or {})
        self.steps: dict[str, StepRecord] = {}
        self._lock: TextIO | None = None

    # ------------------------------------------------------------------ reading and writing

    @classmethod
    def load(cls, path: Path) -> Journal:
        try:
            data = json.loads(path.read_text())
            if data.get("version") != VERSION:
                raise ValueError(f"version {data.get('version')!r}, this ethml reads version {VERSION}")
            journal = cls(path, data["header"])
            for raw in data["steps"]:
                done = raw.get("done")
                journal.steps[raw["key"]] = StepRecord(
                    raw["key"],
                    raw["what"],
                    [Attempt(**a) for a in raw.get("attempts", [])],
                    Outcome(**done) if done else None,
                )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DeploymentError(f"unreadable deployment journal {path}: {exc}") from None
        return journal

    def to_json(self) -> str:
        steps = [asdict(s) for s in self.steps.values()]
        return json.dumps({"version": VERSION, "header": self.header, "steps": steps}, indent=1) + "\n"

    def save(self) -> None:
        """Write the journal durably (no-op in memory): a crash right after this keeps what it says."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w") as f:
            f.write(self.to_json())
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.path)
        with contextlib.suppress(OSError):  # the rename itself made durable, where the platform allows
            fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    # ------------------------------------------------------------------ steps

    def step(self, key: str) -> StepRecord | None:
        return self.steps.get(key)

    def record_attempt(self, key: str, what: str, attempt: Attempt) -> StepRecord:
        record = self.steps.setdefault(key, StepRecord(key, what))
        record.attempts.append(attempt)
        self.save()
        return record

    def mark_reverted(self, key: str, tx_hash: str) -> None:
        for attempt in self.steps[key].attempts:
            if attempt.hash == tx_hash:
                attempt.reverted = True
        self.save()

    def record_done(self, key: str, what: str, outcome: Outcome) -> None:
        record = self.steps.setdefault(key, StepRecord(key, what))
        record.done = outcome
        self.save()

    def done_keys(self) -> set[str]:
        return {k for k, s in self.steps.items() if s.done is not None}

    def sent_count(self) -> int:
        return sum(len(s.attempts) for s in self.steps.values())

    # ------------------------------------------------------------------ one process at a time

    def lock(self) -> None:
        """Hold the journal for this process; DeploymentError if another process holds it."""
        if self.path is None or self._lock is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = self.path.with_name(self.path.name + ".lock").open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise DeploymentError(
                f"another deployment is using {self.path} (pid {holder}); wait for it to finish or stop it"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._lock = handle

    def unlock(self) -> None:
        if self._lock is not None:
            if self.path is not None:  # removed while still held, so nobody locks a file about to vanish
                with contextlib.suppress(OSError):
                    self.path.with_name(self.path.name + ".lock").unlink()
            self._lock.close()
            self._lock = None
