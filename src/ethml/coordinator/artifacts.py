"""Model artifacts of submissions not yet revealed, kept apart from the blockstore until the chain decides.

A worker uploads its artifact right before it reveals, and until the task's reveal window has closed nobody
knows whether it will: a sybil may commit to junk, upload it and never reveal, losing one bond. So a worker's
artifact is kept here first, in a blockstore of its own with one manifest per submission naming its blocks,
and the gateway serves it from here as from the blockstore. Once a confirmed block is past the task's reveal
deadline by SETTLE_GRACE, no reveal can come any more, nor a reorg undo one: the chain has decided, as that
block shows it. A revealed artifact's blocks are copied into the blockstore for good, and an unrevealed one's
are deleted (`ArtifactSettler`, on every instance, for its own data directory).

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
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from eth_utils.address import to_checksum_address
from multiformats import CID

from ethml.coordinator.chain import Chain
from ethml.coordinator.metrics import Metrics
from ethml.coordinator.schemas import MAX_FILE_BYTES
from ethml.errors import IpfsError
from ethml.ipfs.blockstore import Blockstore, fsync_dir
from ethml.ipfs.cid import block_key, parse_cid
from ethml.ipfs.unixfs import CHUNK_SIZE
from ethml.training import clock
from ethml.training.onchain import TaskError, read_struct

log = structlog.get_logger("ethml.coordinator")

#: How often each instance looks for artifacts whose task's reveal window has closed (seconds).
SETTLE_INTERVAL = 30.0
#: How far past a task's reveal deadline (chain time) the confirmed block must be before its artifacts are
#: settled: longer than any reorg (mainnet finalizes in about 13 minutes), so a reveal mined in the last slot
#: and dropped by a short reorg for a moment is not taken for one never made. Until then the artifact is served.
SETTLE_GRACE = 900

_KEY = re.compile(r"[a-z2-7]{10,120}")  # a block key: a multihash in lowercase base32, no padding
#: A block's CID as the server writes it (base32 or base58btc); the artifact's CID is kept as the worker sent it.
_CID = re.compile(r"[0-9A-Za-z]{10,128}")
#: The blocks of one artifact at most: MAX_FILE_BYTES in chunks, and a root.
MAX_BLOCKS = 1 + -(-MAX_FILE_BYTES // CHUNK_SIZE)
_NAME = re.compile(r"(\d{1,20})-(0x[0-9a-f]{40})\.json")


class UnreadableManifest(Exception):
    """A manifest file could not be read now (the disk, the process's files): nothing is settled this turn."""


class DamagedManifest(Exception):
    """A manifest that reads as one names a block whose CID does not parse: it is set aside."""


@dataclass(frozen=True)
class Manifest:
    """The artifact of `account`'s submission to on-chain task `task`: its CID as committed, and each of its
    blocks' CID and key (`block_key`, what the pending store files it under)."""

    task: int
    account: str  # lowercase
    cid: str
    blocks: tuple[str, ...]
    keys: frozenset[str]


class PendingArtifacts:
    """The artifacts of submissions whose reveal the chain has not decided yet (see the module)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blocks = Blockstore(root / "blocks", durable=True)
        self._manifests = root / "manifests"
        self._unreadable = root / "unreadable"

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
        manifest = {
            "task": task,
            "account": account.lower(),
            "cid": cid,
            "blocks": [str(c) for c, _ in blocks],
            "keys": [block_key(c) for c, _ in blocks],
        }
        path = self._path(task, account)
        with self._locked():
            tmp = path.with_name(f".tmp-{path.name}")
            with tmp.open("w") as f:
                f.write(json.dumps(manifest))
                f.flush()
                os.fsync(f.fileno())
            tmp.replace(path)
            fsync_dir(path.parent)  # on disk before its blocks: a power loss leaves no block without it
            for block_cid, data in blocks:
                self.blocks.put(block_cid, data)

    def manifests(self) -> list[Manifest]:
        """Every artifact kept here. A manifest whose content is not one (a file damaged or edited by hand) is
        moved to `unreadable/` with a warning, its blocks no longer held by it; one that cannot be read now (an
        OSError) raises UnreadableManifest, so that nothing is settled on a partial view."""
        if not self._manifests.exists():
            return []
        found = []
        for path in sorted(self._manifests.iterdir()):
            if not _NAME.fullmatch(path.name):
                continue  # a manifest being written (.tmp-*), or not ours
            try:
                raw = path.read_bytes()
            except FileNotFoundError:
                continue  # settled meanwhile (by another instance on this directory)
            except (IsADirectoryError, PermissionError):
                self._set_aside(path)  # never readable: not a manifest
                continue
            except OSError as exc:
                raise UnreadableManifest(f"{path}: {exc}") from exc
            manifest = _parse(raw, path.name)
            if manifest is None:
                self._set_aside(path)
            else:
                found.append(manifest)
        return found

    def manifests_locked(self) -> list[Manifest]:
        """`manifests()` under the lock: one set aside is not one being rewritten by an upload."""
        with self._locked():
            return self.manifests()

    def _set_aside(self, path: Path) -> None:
        log.warning("artifact_manifest_unreadable", file=str(path), moved_to=str(self._unreadable))
        self._unreadable.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            path.replace(self._unreadable / path.name)

    def settle(self, decisions: Iterable[tuple[Manifest, bool]], into: Blockstore) -> list[Manifest]:
        """The chain has decided on these submissions: for each (manifest, kept), copy a kept artifact's blocks
        into `into`, then delete the manifest and every block of it that no other manifest names; the manifests
        settled (not those settled already, by another instance sharing this directory). Under the lock, the
        manifests read once."""
        settled = []
        with self._locked():
            current = {(m.task, m.account): m for m in self.manifests()}
            held: Counter[str] = Counter(key for m in current.values() for key in m.keys)
            # A manifest set aside named blocks no one knows now: none is deleted until the operator has looked
            # (the orphan pass at the next start deletes them then).
            keep_blocks = self._set_aside_any()
            for manifest, kept in decisions:
                found = current.pop((manifest.task, manifest.account), None)
                if found is None:
                    continue
                try:
                    if kept:
                        missing = self._copy(found, into)
                        if missing:
                            log.warning(
                                "artifact_kept_incomplete", task=found.task, trainer=found.account, missing=missing
                            )
                    self._path(found.task, found.account).unlink()
                except DamagedManifest:
                    self._set_aside(self._path(found.task, found.account))
                    keep_blocks = True
                    continue
                except Exception as exc:  # noqa: BLE001 - this one stays pending (and served), the others go on
                    log.warning("artifact_settle_failed", task=found.task, trainer=found.account, error=str(exc))
                    continue
                held.subtract(found.keys)
                for key in found.keys:
                    if held[key] <= 0 and not keep_blocks:
                        self.blocks.remove_key(key)
                settled.append(found)
        return settled

    def _set_aside_any(self) -> bool:
        return self._unreadable.exists() and any(self._unreadable.iterdir())

    def set_aside_count(self) -> int:
        """How many files are set aside in `unreadable/` (for the operator to look at)."""
        return sum(1 for _ in self._unreadable.iterdir()) if self._unreadable.exists() else 0

    def _copy(self, manifest: Manifest, into: Blockstore) -> list[str]:
        """Copy the manifest's blocks into `into` (a copy there already is read, so a damaged one is replaced);
        the CIDs of those neither here nor there. DamagedManifest, before anything is copied, when a block's CID
        does not parse."""
        try:
            cids = [parse_cid(text) for text in manifest.blocks]
        except IpfsError as exc:
            raise DamagedManifest(str(exc)) from exc
        missing = []
        for cid in cids:
            data = self.blocks.get(cid)
            if data is not None:
                if into.get(cid) is None:
                    into.put(cid, data)
            elif into.get(cid) is None:
                missing.append(str(cid))
        return missing

    def drop_orphans(self) -> int:
        """Delete the blocks that no manifest names (left by a crash between a manifest's deletion and its
        blocks') and manifests left half-written; how many blocks. Under the lock, so a manifest being
        written, which comes before its blocks, is seen. Nothing is deleted while a manifest set aside as
        unreadable is there: the blocks it named are not known."""
        with self._locked():
            for tmp in self._manifests.glob(".tmp-*"):
                tmp.unlink(missing_ok=True)
            named = {key for manifest in self.manifests() for key in manifest.keys}
            if self._set_aside_any():
                # Their blocks may be an artifact's that was revealed: kept until the operator looks.
                log.warning("artifact_orphans_kept", unreadable=str(self._unreadable))
                return 0
            orphans = self.blocks.keys() - named
            for key in orphans:
                self.blocks.remove_key(key)
            return len(orphans)


def _parse(raw: bytes, name: str) -> Manifest | None:
    """The manifest in a file's bytes, each field checked (block keys and CIDs against their patterns; the CIDs
    are parsed only when an artifact is kept), and its name matching its task and account; None if it is not
    one, whatever is wrong with it."""
    try:
        data = json.loads(raw)
        task, account, cid, blocks, keys = (data[k] for k in ("task", "account", "cid", "blocks", "keys"))
        if not (isinstance(task, int) and isinstance(account, str) and isinstance(cid, str)):
            return None
        if not (isinstance(blocks, list) and isinstance(keys, list) and len(blocks) == len(keys) <= MAX_BLOCKS):
            return None
        if not 0 < len(cid) <= 128 or not all(isinstance(b, str) and _CID.fullmatch(b) for b in blocks):
            return None
        if not all(isinstance(k, str) and _KEY.fullmatch(k) for k in keys):
            return None
    except Exception:  # noqa: BLE001 - bytes that are not a manifest, whichever way
        return None
    if name != f"{task}-{account}.json":
        return None
    return Manifest(task, account, cid, tuple(blocks), frozenset(keys))


class Layered:
    """Blockstores read in turn: the blockstore, then the pending artifacts (what the gateway serves). A block
    missed in both is looked for in the first once more: settling copies into the blockstore before it deletes
    from the pending store, so one that moved in between is found there."""

    def __init__(self, *stores: Blockstore) -> None:
        self.stores = stores

    def get(self, cid: CID) -> bytes | None:
        for store in self.stores:
            data = store.get(cid)
            if data is not None:
                return data
        return self.stores[0].get(cid) if len(self.stores) > 1 else None

    def has(self, cid: CID) -> bool:
        return any(store.has(cid) for store in self.stores) or self.stores[0].has(cid)


async def reveal_closed(chain: Chain, task: int, deadline: int | None = None) -> bool:
    """Whether the latest block is past task `task`'s reveal deadline (`deadline` when known: it never
    changes): no reveal can be mined after it (block timestamps only grow, and the contract refuses a reveal
    after the deadline)."""
    if deadline is None:
        deadline = int((await read_struct(chain.tasks, "getTask", task))["revealDeadline"])
    _number, stamp = await clock.latest(chain.w3)
    return stamp > deadline


async def revealed_as(chain: Chain, task: int, account: str, block: int) -> str | None:
    """The model CID `account` had revealed in task `task` as of `block`, or None (no submission, or one not
    revealed)."""
    call = chain.tasks.functions.submissionOf(task, to_checksum_address(account))
    index = int(await call.call(block_identifier=block))
    if index == 0:
        return None
    submission = await read_struct(chain.tasks, "getSubmission", task, index - 1, block=block)
    return str(submission["modelCid"]) if submission["revealed"] else None


class ArtifactSettler:
    """Settles the pending artifacts whose task's reveal window has closed, a confirmed block past its deadline
    by SETTLE_GRACE: one revealed as of that block goes into the blockstore, any other is deleted (see the
    module). Each artifact is decided on its own: one the chain cannot answer for now waits for the next turn."""

    def __init__(
        self, chain: Chain, pending: PendingArtifacts, blockstore: Blockstore, metrics: Metrics | None = None
    ) -> None:
        self.chain, self.pending, self.blockstore, self.metrics = chain, pending, blockstore, metrics
        self._started = False
        self._deadlines: dict[int, int] = {}  # a task's reveal deadline never changes

    async def _deadline(self, task: int) -> int:
        if task not in self._deadlines:
            self._deadlines[task] = int((await read_struct(self.chain.tasks, "getTask", task))["revealDeadline"])
        return self._deadlines[task]

    async def step(self) -> None:
        if not self._started:  # once per start: what a crash in the middle of a settling left
            dropped = await asyncio.to_thread(self.pending.drop_orphans)
            if dropped:
                log.info("artifact_orphans_deleted", blocks=dropped)
            self._started = True
        manifests = await asyncio.to_thread(self.pending.manifests_locked)
        if self.metrics is not None:
            self.metrics.artifacts.labels("pending").set(len(manifests))
            self.metrics.artifacts.labels("unreadable").set(await asyncio.to_thread(self.pending.set_aside_count))
        if not manifests:
            return
        confirmed = max(0, await self.chain.confirmed_head())
        now = int((await self.chain.w3.eth.get_block(confirmed))["timestamp"])
        decisions: list[tuple[Manifest, bool]] = []
        for manifest in manifests:
            fields: dict[str, Any] = {"task": manifest.task, "trainer": manifest.account}
            try:
                if now <= await self._deadline(manifest.task) + SETTLE_GRACE:
                    continue
                revealed = await revealed_as(self.chain, manifest.task, manifest.account, confirmed)
            except TaskError as exc:  # not a task this chain knows (a wrong RPC?): kept, nothing decided
                log.warning("artifact_task_unknown", **fields, error=str(exc))
                continue
            except Exception as exc:  # noqa: BLE001 - the node's failure: this one waits for the next turn
                log.warning("artifact_undecided", **fields, error=str(exc))
                continue
            decisions.append((manifest, revealed == manifest.cid))
        if not decisions:
            return
        decisions.sort(key=lambda decision: decision[1])  # deletions first: they free room the copies need
        kept = {(m.task, m.account): keep for m, keep in decisions}
        settled = await asyncio.to_thread(self.pending.settle, decisions, self.blockstore)
        for manifest in settled:
            outcome = "kept" if kept[(manifest.task, manifest.account)] else "deleted"
            log.info(f"artifact_{outcome}", task=manifest.task, trainer=manifest.account, cid=manifest.cid)
            if self.metrics is not None:
                self.metrics.artifacts_settled.labels(outcome).inc()
        if self.metrics is not None:
            self.metrics.artifacts.labels("pending").dec(len(settled))
