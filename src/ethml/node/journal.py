"""The node's durable journal (SQLite): every submission before it is sent, and the log checkpoint.

A restart re-sends the identical signed transaction of an unfinished submission instead of making
a second one, and a round (request id and challenge) that has a row here is never submitted again.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS submissions (
    request_id INTEGER NOT NULL,
    challenge TEXT NOT NULL,        -- with the id, names one round: a reorg can reuse an id with a new challenge
    prediction TEXT NOT NULL,
    pow_nonce TEXT NOT NULL,
    tx_nonce INTEGER NOT NULL,
    raw_txs TEXT NOT NULL,          -- JSON list of signed raw transactions (fee bumps append)
    tx_hashes TEXT NOT NULL,        -- JSON list, same order
    status TEXT NOT NULL,           -- signed | sent | mined | reverted | dropped
    detail TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    updated REAL NOT NULL,
    PRIMARY KEY (request_id, challenge)
);
CREATE TABLE IF NOT EXISTS checkpoint (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    block INTEGER NOT NULL,
    block_hash TEXT NOT NULL
);
"""

OPEN_STATUSES = ("signed", "sent")


@dataclass
class Submission:
    request_id: int
    challenge: str
    prediction: int
    pow_nonce: int
    tx_nonce: int
    raw_txs: list[str]
    tx_hashes: list[str]
    status: str
    detail: str = ""


class Journal:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

    # ------------------------------------------------------------ submissions

    def record(self, s: Submission) -> None:
        """Write a signed submission durably (before it is sent). Fails if the request has one."""
        now = time.time()
        self._db.execute(
            "INSERT INTO submissions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                s.request_id,
                s.challenge,
                str(s.prediction),
                str(s.pow_nonce),
                s.tx_nonce,
                json.dumps(s.raw_txs),
                json.dumps(s.tx_hashes),
                s.status,
                s.detail,
                now,
                now,
            ),
        )

    def add_replacement(self, s: Submission, raw_tx: str, tx_hash: str) -> None:
        s.raw_txs.append(raw_tx)
        s.tx_hashes.append(tx_hash)
        self._db.execute(
            "UPDATE submissions SET raw_txs = ?, tx_hashes = ?, updated = ? WHERE request_id = ? AND challenge = ?",
            (json.dumps(s.raw_txs), json.dumps(s.tx_hashes), time.time(), s.request_id, s.challenge),
        )

    def set_status(self, s: Submission, status: str, detail: str = "") -> None:
        s.status, s.detail = status, detail
        self._db.execute(
            "UPDATE submissions SET status = ?, detail = ?, updated = ? WHERE request_id = ? AND challenge = ?",
            (status, detail, time.time(), s.request_id, s.challenge),
        )

    def get(self, request_id: int, challenge: str) -> Submission | None:
        row = self._db.execute(
            "SELECT * FROM submissions WHERE request_id = ? AND challenge = ?", (request_id, challenge)
        ).fetchone()
        return self._row(row) if row else None

    def has(self, request_id: int, challenge: str) -> bool:
        return self.get(request_id, challenge) is not None

    def open_submissions(self) -> list[Submission]:
        rows = self._db.execute(
            "SELECT * FROM submissions WHERE status IN (?, ?) ORDER BY tx_nonce", OPEN_STATUSES
        ).fetchall()
        return [self._row(r) for r in rows]

    def all(self) -> list[Submission]:
        return [self._row(r) for r in self._db.execute("SELECT * FROM submissions ORDER BY created")]

    @staticmethod
    def _row(row: tuple[object, ...]) -> Submission:
        return Submission(
            request_id=int(row[0]),  # type: ignore[call-overload]
            challenge=str(row[1]),
            prediction=int(str(row[2])),
            pow_nonce=int(str(row[3])),
            tx_nonce=int(row[4]),  # type: ignore[call-overload]
            raw_txs=json.loads(str(row[5])),
            tx_hashes=json.loads(str(row[6])),
            status=str(row[7]),
            detail=str(row[8]),
        )

    # ------------------------------------------------------------ checkpoint

    def checkpoint(self) -> tuple[int, str] | None:
        row = self._db.execute("SELECT block, block_hash FROM checkpoint WHERE id = 1").fetchone()
        return (int(row[0]), str(row[1])) if row else None

    def set_checkpoint(self, block: int, block_hash: str) -> None:
        self._db.execute(
            "INSERT INTO checkpoint VALUES (1, ?, ?) ON CONFLICT(id) DO UPDATE SET block = ?, block_hash = ?",
            (block, block_hash, block, block_hash),
        )
