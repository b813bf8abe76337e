"""Model artifacts of submissions not yet revealed, kept apart from the blockstore until the chain decides.

A worker uploads its artifact right before it reveals, and until the task's reveal window has closed nobody
knows whether it will: a sybil may commit to junk, upload it and never reveal, losing one bond. So a worker's
artifact is kept here first, in a blockstore of its own with one manifest per submission naming its blocks,
and the gateway serves it from here as from the blockstore. Once a block past the task's reveal deadline is
confirmed, no reveal can come any more and the chain has decided: a revealed artifact's blocks are copied
into the blockstore for good, and an unrevealed one's are deleted (`ArtifactSettler`, on every instance, for
its own data directory).

Nothing is ever deleted from the blockstore itself: a junk artifact made of another file's chunks (a public
dataset's, say) is deleted only from its own copy here, so it cannot take a block some other file needs. Two
artifacts here may share blocks; a block is deleted only when no other manifest names it. Every change here
(a manifest and its blocks written, an artifact settled) holds an exclusive lock on a file in the directory,
so instances sharing a data directory, and the threads of one, never see half of one."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import structlog
from eth_utils.address import to_checksum_address
from multiformats import CID

from ethml.coordinator.chain import Chain
from ethml.errors import IpfsError
from ethml.ipfs.blockstore import Blockstore
from ethml.ipfs.cid import block_key, parse_cid
from ethml.training.onchain import TaskError, read_struct

log = structlog.get_logger("ethml.coordinator")

#: How often each instance looks for artifacts whose task's reveal window has closed (seconds).
SETTLE_INTERVAL = 30.0


@dataclass(frozen=True)
class Manifest:
    """The artifact of `account`'s submission to on-chain task `task`: its CID as committed, and every block."""

    task: int
    account: str  # lowercase
    cid: str
    blocks: tuple[str, ...]

    def block_keys(self) -> set[str]:
        return {block_key(parse_cid(text)) for text in self.blocks}


class PendingArtifacts:
    """The artifacts of submissions whose reveal the chain has not decided yet (see the module)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blocks = Blockstore(root / "blocks")
        self._manifests = root / "manifests"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self._manifests.mkdir(parents=True, exist_ok=True)
        with (self.root / ".lock").open("ab") as f:
            fcntl.flock(f, fcntl.LOCK_EX)  # released when the file is closed
            yield

    def _path(self, task: int, account: str) -> Path:
        return self._manifests / f"{task}-{account.lower()}.json"

    def add(self, task: int, account: str, cid: str, blocks: Iterable[tuple[CID, bytes]]) -> None:
        """Keep the artifact of `account`'s submission to `task` (its CID as committed; its blocks, root
        included). The manifest is written before the blocks: a crash in between leaves a manifest naming blocks
        that are not all here (settling takes what is here), never a block that no manifest names."""
        blocks = list(blocks)
        manifest = {"task": task, "account": account.lower(), "cid": cid, "blocks": [str(c) for c, _ in blocks]}
        path = self._path(task, account)
        with self._locked():
            tmp = path.with_name(f".tmp-{path.name}")
            tmp.write_text(json.dumps(manifest))
            tmp.replace(path)
            for block_cid, data in blocks:
                self.blocks.put(block_cid, data)

    def manifests(self) -> list[Manifest]:
        """Every artifact kept here (a manifest that cannot be read is logged and left out)."""
        if not self._manifests.exists():
            return []
        found = []
        for path in sorted(self._manifests.glob("*.json")):
            manifest = _read(path)
            if manifest is not None:
                found.append(manifest)
        return found

    def settle(self, manifest: Manifest, into: Blockstore | None) -> bool:
        """The chain has decided on `manifest`'s submission: copy its blocks into `into` (revealed) or not
        (`None`: never revealed), then delete the manifest and every block of it that no other manifest names.
        False when it was settled already (by another instance sharing this directory)."""
        path = self._path(manifest.task, manifest.account)
        with self._locked():
            current = _read(path) if path.exists() else None
            if current is None:
                return False
            if into is not None:
                for text in current.blocks:
                    cid = parse_cid(text)
                    data = self.blocks.get(cid)
                    if data is not None:
                        into.put(cid, data)
            named = {key for other in self.manifests() if other != current for key in other.block_keys()}
            path.unlink()
            for key in current.block_keys() - named:
                self.blocks.remove_key(key)
            return True

    def drop_orphans(self) -> int:
        """Delete the blocks that no manifest names (left by a crash between a manifest's deletion and its
        blocks'); how many. Under the lock, so a manifest being written, which comes before its blocks, is seen."""
        with self._locked():
            named = {key for manifest in self.manifests() for key in manifest.block_keys()}
            orphans = self.blocks.keys() - named
            for key in orphans:
                self.blocks.remove_key(key)
            return len(orphans)


def _read(path: Path) -> Manifest | None:
    try:
        raw = json.loads(path.read_text())
        manifest = Manifest(int(raw["task"]), str(raw["account"]), str(raw["cid"]), tuple(map(str, raw["blocks"])))
        manifest.block_keys()  # every block a CID
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, IpfsError) as exc:
        log.warning("artifact_manifest_unreadable", file=str(path), error=str(exc))
        return None
    return manifest


class Layered:
    """Blockstores read in turn: the blockstore, then the pending artifacts (what the gateway serves)."""

    def __init__(self, *stores: Blockstore) -> None:
        self.stores = stores

    def get(self, cid: CID) -> bytes | None:
        for store in self.stores:
            data = store.get(cid)
            if data is not None:
                return data
        return None

    def has(self, cid: CID) -> bool:
        return any(store.has(cid) for store in self.stores)


async def reveal_closed(
    chain: Chain, task: int, *, block: int | Literal["latest"] = "latest", deadline: int | None = None
) -> bool:
    """Whether `block` (a number, or "latest") is past task `task`'s reveal deadline (`deadline` when known: it
    never changes): no reveal can be mined after it (block timestamps only grow, and the contract refuses a
    reveal after the deadline)."""
    if deadline is None:
        deadline = int((await read_struct(chain.tasks, "getTask", task))["revealDeadline"])
    return int((await chain.w3.eth.get_block(block))["timestamp"]) > deadline


async def revealed_as(chain: Chain, task: int, account: str) -> str | None:
    """The model CID `account` revealed in task `task`, or None (no submission, or one not revealed)."""
    index = int(await chain.tasks.functions.submissionOf(task, to_checksum_address(account)).call())
    if index == 0:
        return None
    submission = await read_struct(chain.tasks, "getSubmission", task, index - 1)
    return str(submission["modelCid"]) if submission["revealed"] else None


class ArtifactSettler:
    """Settles the pending artifacts whose task's reveal window has closed, a confirmed block past its deadline:
    a revealed one goes into the blockstore, an unrevealed one is deleted (see the module)."""

    def __init__(self, chain: Chain, pending: PendingArtifacts, blockstore: Blockstore) -> None:
        self.chain, self.pending, self.blockstore = chain, pending, blockstore
        self._started = False

    async def step(self) -> None:
        if not self._started:  # once per start: what a crash in the middle of a settling left
            dropped = await asyncio.to_thread(self.pending.drop_orphans)
            if dropped:
                log.info("artifact_orphans_deleted", blocks=dropped)
            self._started = True
        manifests = await asyncio.to_thread(self.pending.manifests)
        if not manifests:
            return
        confirmed = max(0, await self.chain.confirmed_head())
        closed: dict[int, bool] = {}
        for manifest in manifests:
            if manifest.task not in closed:
                try:
                    closed[manifest.task] = await reveal_closed(self.chain, manifest.task, block=confirmed)
                except TaskError as exc:  # not a task this chain knows (a wrong RPC?): kept, nothing decided
                    log.warning("artifact_task_unknown", task=manifest.task, error=str(exc))
                    closed[manifest.task] = False
            if not closed[manifest.task]:
                continue
            revealed = await revealed_as(self.chain, manifest.task, manifest.account)
            kept = revealed == manifest.cid
            if await asyncio.to_thread(self.pending.settle, manifest, self.blockstore if kept else None):
                fields: dict[str, Any] = {"task": manifest.task, "trainer": manifest.account, "cid": manifest.cid}
                log.info("artifact_kept" if kept else "artifact_deleted", **fields)
