"""What uploads (`POST /api/files`) may add to the blockstore: each uploader's quota of bytes per hour,
and the free space the disk keeps (the bytes this instance has accepted and not yet written counted as
used, so uploads in flight together cannot each see the same free space)."""

from __future__ import annotations

from dataclasses import dataclass, field

MIB = 1024 * 1024
#: An uploader's quota is refilled over an hour.
QUOTA_SECONDS = 3600
#: Bodies a worker may send for one submission in an hour that do not end in its artifact stored (another
#: file, one too large, one that does not arrive, a hang-up) before no more are read that hour.
MAX_FAILED_BODIES = 5
FAILED_BODIES_SECONDS = 3600


@dataclass
class Uploads:
    """This instance's uploads accepted and not yet written to the blockstore, in bytes, and the submissions
    (on-chain task, account) whose artifact is being uploaded."""

    in_flight: int = 0
    artifacts: set[tuple[int, str]] = field(default_factory=set)
