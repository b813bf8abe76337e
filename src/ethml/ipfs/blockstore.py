"""A local content-addressed blockstore: one file per block, named by its multihash.

Blocks are verified before they are written and again when they are read, so a corrupt or planted
file is never served as content.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from multiformats import CID

from ethml.errors import HashMismatch
from ethml.ipfs.cid import block_key, verify_block
from ethml.paths import data_home


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a file renamed into it) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def default_blockstore_dir() -> Path:
    return data_home() / "blocks"


class Blockstore:
    def __init__(self, root: Path | str | None = None, *, durable: bool = False) -> None:
        """`durable`: each block is on disk (fsync) before `put` returns, at the cost of a sync per block."""
        self.root = Path(root) if root is not None else default_blockstore_dir()
        self.durable = durable

    def _path(self, cid: CID) -> Path:
        key = block_key(cid)
        return self.root / key[-3:-1] / key

    def has(self, cid: CID) -> bool:
        return self._path(cid).exists()

    def put(self, cid: CID, data: bytes) -> None:
        """Store a block after checking it hashes to `cid` (raises HashMismatch otherwise)."""
        verify_block(cid, data, "the caller")
        path = self._path(cid)
        if path.exists():
            return
        new_shard = not path.parent.exists()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                if self.durable:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        if self.durable:  # the file's name too: its directory, and the directory's own when it is new
            fsync_dir(path.parent)
            if new_shard:
                fsync_dir(self.root)

    def get(self, cid: CID) -> bytes | None:
        """The verified block, or None. A stored file that no longer matches is deleted."""
        path = self._path(cid)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            verify_block(cid, data, f"the local blockstore ({path})")
        except HashMismatch:
            path.unlink(missing_ok=True)
            return None
        return data

    def remove(self, cid: CID) -> None:
        """Delete the block (every CID of its multihash: they share one file); nothing when it is absent."""
        self._path(cid).unlink(missing_ok=True)

    def keys(self) -> set[str]:
        """The keys (`block_key`) of the blocks stored."""
        if not self.root.exists():
            return set()
        return {p.name for p in self.root.glob("*/*") if not p.name.startswith(".tmp-")}

    def remove_key(self, key: str) -> None:
        """Delete the block stored under `key` (one of `keys()`)."""
        (self.root / key[-3:-1] / key).unlink(missing_ok=True)

    def __len__(self) -> int:
        return len(self.keys())
