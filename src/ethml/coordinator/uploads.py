"""What uploads (`POST /api/files`) may add to the blockstore: each uploader's quota of bytes per hour,
and the free space the disk keeps (the bytes this instance has accepted and not yet written counted as
used, so uploads in flight together cannot each see the same free space)."""

from __future__ import annotations

import asyncio
import gc
import tempfile
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


@dataclass
class Uploads:
    """This instance's uploads accepted and not yet written to the blockstore, in bytes, and the submissions
    (on-chain task, account) whose artifact is being uploaded."""

    in_flight: int = 0
    artifacts: set[tuple[int, str]] = field(default_factory=set)
    #: The threads that write uploads (not the event loop's default pool, which other work shares).
    writers: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(WRITERS, thread_name_prefix="ethml-upload")
    )

    async def write(self, fn: Callable[..., T], *args: object) -> T:
        """`fn(*args)` in one of the writer threads, then the garbage it left collected (`_collected`)."""
        return await asyncio.get_running_loop().run_in_executor(self.writers, _collected, fn, *args)


def _collected(fn: Callable[..., T], *args: object) -> T:
    """`fn(*args)`, then a full garbage collection. Every CID that multiformats builds or reads leaves a
    reference cycle (its type checks keep each failed union member's exception, whose traceback holds the
    frame) that holds the frames of every caller, so the file's bytes and its blocks: tens of MiB per file
    that wait for a full collection, which comes after millions of allocations (`ethml serve` collects its
    young generation every 20,000). The server's start-up objects are frozen (`gc.freeze`), so the
    collection scans only what came after them."""
    try:
        return fn(*args)
    finally:
        gc.collect()


def spool(directory: Path) -> IO[bytes]:
    """A file without a name in `directory` for a body as it arrives: gone once closed, or when the process
    dies (Linux's O_TMPFILE; elsewhere a file unlinked at once), so a crash leaves nothing to clean."""
    return tempfile.TemporaryFile(dir=directory)
