"""The node's durable journal (SQLite): each round's secret before its commitment is sent, every
transaction before it is sent, and the log checkpoint.

A round is named by its round id and challenge (a reorg, or a restarted devnet that answers other
block hashes, can give a round id a new challenge). The answer vector and salt are written before the
commitment goes out, so a node killed between commit and reveal reveals after a restart; a restart
re-sends the identical signed transaction of an unfinished commit, reveal or close instead of making a
second one; a round that has a commit row for its challenge is never committed again.

The file's schema has a version (`PRAGMA user_version`); a journal of an older version (one request per
round) holds nothing a node of this version can use, and is started afresh.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ethml.errors import JournalLocked

SCHEMA_VERSION = 2
SCHEMA = """
CREATE TABLE IF NOT EXISTS secrets (
    round_id INTEGER NOT NULL,
    challenge TEXT NOT NULL,
    answers TEXT NOT NULL,          -- JSON list of the round's answers (ints as strings)
    salt TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (round_id, challenge)
);
CREATE TABLE IF NOT EXISTS transactions (
    round_id INTEGER NOT NULL,
    challenge TEXT NOT NULL,
    kind TEXT NOT NULL,             -- commit | reveal | reveal_close | close | claim
    args TEXT NOT NULL,             -- JSON list of the call's arguments (ints as strings, bytes as hex)
    tx_nonce INTEGER NOT NULL,
    raw_txs TEXT NOT NULL,          -- JSON list of signed raw transactions (fee bumps append)
    tx_hashes TEXT NOT NULL,        -- JSON list, same order
    status TEXT NOT NULL,           -- signed | sent | mined | reverted | dropped
    detail TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    updated REAL NOT NULL,
    PRIMARY KEY (round_id, challenge, kind)
);
CREATE TABLE IF NOT EXISTS checkpoint (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    block INTEGER NOT NULL,
    block_hash TEXT NOT NULL
);
"""

OPEN_STATUSES = ("signed", "sent")


@dataclass
class Secret:
    round_id: int
    challenge: str
    answers: list[int]
    salt: bytes


@dataclass
class Submission:
    """One transaction of a round: its call (`kind` and `args`) and every signed version of it."""

    round_id: int
    challenge: str
    kind: str
    args: list[str]
    tx_nonce: int
    raw_txs: list[str]
    tx_hashes: list[str]
    status: str
    detail: str = ""


class Journal:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock: IO[bytes] | None = None
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock = open(self.path.with_suffix(".lock"), "wb")  # noqa: SIM115 - held for the node's life
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._lock.close()
                raise JournalLocked(str(self.path)) from None
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        if version != SCHEMA_VERSION:
            self._db.executescript(
                "DROP TABLE IF EXISTS secrets; DROP TABLE IF EXISTS transactions; DROP TABLE IF EXISTS checkpoint;"
            )
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()
        if self._lock is not None:
            with contextlib.suppress(OSError):
                self._lock.close()
            self._lock = None

    # ---------------------------------------------------------------- secrets

    def save_secret(self, secret: Secret) -> Secret:
        """Write a round's answers and salt durably; an existing secret for the round wins."""
        answers = json.dumps([str(a) for a in secret.answers])
        self._db.execute(
            "INSERT OR IGNORE INTO secrets VALUES (?, ?, ?, ?, ?)",
            (secret.round_id, secret.challenge, answers, secret.salt.hex(), time.time()),
        )
        stored = self.secret(secret.round_id, secret.challenge)
        assert stored is not None
        return stored

    def secret(self, round_id: int, challenge: str) -> Secret | None:
        return self._secret("WHERE round_id = ? AND challenge = ?", (round_id, challenge))

    def latest_secret(self, round_id: int) -> Secret | None:
        return self._secret("WHERE round_id = ? ORDER BY created DESC LIMIT 1", (round_id,))

    def _secret(self, where: str, params: tuple[object, ...]) -> Secret | None:
        row = self._db.execute(f"SELECT round_id, challenge, answers, salt FROM secrets {where}", params).fetchone()
        if row is None:
            return None
        return Secret(int(row[0]), str(row[1]), [int(a) for a in json.loads(row[2])], bytes.fromhex(row[3]))

    # ----------------------------------------------------------- transactions

    def record(self, s: Submission) -> None:
        """Write a signed transaction durably (before it is sent). Fails if the round has one of its kind."""
        now = time.time()
        self._db.execute(
            "INSERT INTO transactions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                s.round_id,
                s.challenge,
                s.kind,
                json.dumps(s.args),
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
            "UPDATE transactions SET raw_txs = ?, tx_hashes = ?, updated = ? "
            "WHERE round_id = ? AND challenge = ? AND kind = ?",
            (json.dumps(s.raw_txs), json.dumps(s.tx_hashes), time.time(), s.round_id, s.challenge, s.kind),
        )

    def set_status(self, s: Submission, status: str, detail: str = "") -> None:
        s.status, s.detail = status, detail
        self._db.execute(
            "UPDATE transactions SET status = ?, detail = ?, updated = ? "
            "WHERE round_id = ? AND challenge = ? AND kind = ?",
            (status, detail, time.time(), s.round_id, s.challenge, s.kind),
        )

    def get(self, round_id: int, challenge: str, kind: str = "commit") -> Submission | None:
        row = self._db.execute(
            "SELECT * FROM transactions WHERE round_id = ? AND challenge = ? AND kind = ?",
            (round_id, challenge, kind),
        ).fetchone()
        return self._row(row) if row else None

    def has(self, round_id: int, challenge: str, kind: str = "commit") -> bool:
        return self.get(round_id, challenge, kind) is not None

    def open_submissions(self) -> list[Submission]:
        rows = self._db.execute(
            "SELECT * FROM transactions WHERE status IN (?, ?) ORDER BY tx_nonce", OPEN_STATUSES
        ).fetchall()
        return [self._row(r) for r in rows]

    def all(self, kind: str | None = None) -> list[Submission]:
        if kind is None:
            rows = self._db.execute("SELECT * FROM transactions ORDER BY created")
        else:
            rows = self._db.execute("SELECT * FROM transactions WHERE kind = ? ORDER BY created", (kind,))
        return [self._row(r) for r in rows]

    @staticmethod
    def _row(row: tuple[object, ...]) -> Submission:
        return Submission(
            round_id=int(row[0]),  # type: ignore[call-overload]
            challenge=str(row[1]),
            kind=str(row[2]),
            args=json.loads(str(row[3])),
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
