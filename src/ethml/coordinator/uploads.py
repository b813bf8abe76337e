"""What uploads (`POST /api/files`) may add to the blockstore: each uploader's quota of bytes per hour,
and the free space the disk keeps (the bytes this instance has accepted and not yet written counted as
used, so uploads in flight together cannot each see the same free space)."""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1024 * 1024
#: An uploader's quota is refilled over an hour.
QUOTA_SECONDS = 3600


@dataclass
class Uploads:
    """This instance's uploads accepted and not yet written to the blockstore, in bytes."""

    in_flight: int = 0
