"""What uploads (`POST /api/files`) may add to the blockstore: each uploader's quota of bytes per hour,
and the free space the disk keeps (the bytes of this instance's uploads in progress counted as used from
before their bodies are read, so uploads in flight together cannot each see the same free space); and
where their bodies wait (a spool file each) and who writes them (two threads of their own)."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TypeVar

T = TypeVar("T")

MIB = 1024 * 1024
#: An uploader's quota is refilled over an hour.
QUOTA_SECONDS = 3600
#: Bodies a worker may send for one submission in an hour that do not end in its artifact stored (another
#: file, one too large, one that does not arrive, a hang-up) before no more are read that hour.
MAX_FAILED_BODIES = 5
FAILED_BODIES_SECONDS = 3600
#: Files written to the blockstore at once, each in a thread of its own. A body waits on disk, not in memory,
#: until it is written (`spool`); a file being written is in memory twice (its bytes and its blocks), so
#: writing uploads takes at most 2 x 2 x 16 MiB, however many arrive at once.
WRITERS = 2
#: Uploads one API key may have in progress at once (each holds a connection and a spool file): more get 429.
MAX_UPLOADS_PER_KEY = 8
#: Bytes written in small files between two garbage collections (a file of a MiB or more is followed by one).
COLLECT_BYTES = 16 * MIB


@dataclass
class Uploads:
    """This instance's uploads in progress: the bytes they may still add to the blockstore (a body being
    received counts its Content-Length, or the largest file when it has none, from before it is read), the
    submissions (on-chain task, account) whose artifact is being uploaded, and the uploads of each API key."""

    in_flight: int = 0
    #: Bytes in the spool files of uploads in progress: on the disk now, and gone once their files are written
    #: (so `in_flight` already counts them: the floor's check adds them back to the disk's free space).
    spooled: int = 0
    artifacts: set[tuple[int, str]] = field(default_factory=set)
    per_key: Counter[str] = field(default_factory=Counter)
    #: The threads that write uploads (not the event loop's default pool, which other work shares).
    writers: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(WRITERS, thread_name_prefix="ethml-upload")
    )
    _uncollected: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    async def write(self, fn: Callable[..., T], body: IO[bytes], *args: object) -> T:
        """`fn(data, *args)` in one of the writer threads, `data` the bytes of the spool file `body`, which the
        thread reads and then closes: a handler cancelled (a
        server shutting down) while the thread reads it does not close it under the thread; one cancelled
        before the thread starts closes it here. The garbage a large file leaves is collected (`_collect`).
        The caller's context (its log fields) goes with it."""
        context = contextvars.copy_context()
        try:
            future = self.writers.submit(context.run, self._job, fn, body, *args)
        except BaseException:  # shut down
            body.close()
            raise
        future.add_done_callback(lambda done: body.close() if done.cancelled() else None)
        return await asyncio.wrap_future(future)

    def _job(self, fn: Callable[..., T], body: IO[bytes], *args: object) -> T:
        size = 0
        try:
            with body:  # on the disk until its file is written, as `spooled` counts it
                body.seek(0)
                data = body.read()
                size = len(data)
                return fn(data, *args)
        finally:
            self._collect(size)

    def _collect(self, size: int) -> None:
        """A full garbage collection after a file of a MiB or more, or once smaller ones add up to COLLECT_BYTES.
        Every CID that multiformats builds or reads leaves a reference cycle (its type checks keep each failed
        union member's exception, whose traceback holds the frame) that holds the frames of every caller, so
        the file's bytes and its blocks: tens of MiB per file that would wait for a full collection, which
        comes after millions of allocations (`ethml serve` collects its young generation every 20,000). The
        server's start-up objects are frozen (`gc.freeze`), so a collection scans only what came after them
        (2 to 8 ms, under the interpreter lock); small files share one, so tiny uploads cannot make the
        server collect without end. The collection is this thread's own (`full_collection`), not one that
        another thread had under way."""
        with self._lock:
            self._uncollected += size
            due = size >= MIB or self._uncollected >= COLLECT_BYTES
            if due:
                self._uncollected = 0
        if due:
            full_collection()


class _Collected(threading.local):
    full = False


_collected = _Collected()


def _note_collection(phase: str, info: dict[str, int]) -> None:
    if phase == "stop" and info["generation"] == 2:
        _collected.full = True  # in the thread that collected


gc.callbacks.append(_note_collection)

#: How long `full_collection` waits for another thread's collection to end before it gives up.
COLLECTION_WAIT_SECONDS = 60.0


def full_collection() -> bool:
    """A full garbage collection in this thread. `gc.collect()` does nothing while another thread's collection is
    under way (one whose finalizers let this thread run, as any Python `__del__` can): that one may have begun
    before this thread's garbage was made, so this waits for it to end and collects again. False if no
    collection of its own could run within COLLECTION_WAIT_SECONDS."""
    deadline = time.monotonic() + COLLECTION_WAIT_SECONDS
    while True:
        _collected.full = False
        gc.collect()
        if _collected.full:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.002)


def spool(directory: Path) -> IO[bytes]:
    """A file without a name in `directory` for a body as it arrives: gone once closed, or when the process
    dies (Linux's O_TMPFILE; on a filesystem without it, a named file unlinked at once, which a crash at that
    moment leaves behind)."""
    return tempfile.TemporaryFile(dir=directory)
