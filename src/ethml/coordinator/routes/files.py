"""Files: datasets, test sets and model artifacts go into the coordinator's blockstore by
POST /api/files; anyone (workers, miners) fetches their raw blocks by CID from GET /ipfs/{cid}.

What one uploader may add is bounded. A requester's API key has a quota of bytes per hour (an admin's
key is not counted). A worker uploads only the model artifact its account committed to in a task this
coordinator tracks: the upload carries the opening of the commitment (the artifact's CID and SHA-256,
the claim, the salt), which must match the commitment TrainingTasks holds for that account, and the
body must be that very file. So a worker's upload token, which any staked account gets by logging in,
adds at most one file (of at most MAX_FILE_BYTES) per submission to a tracked task, and only until the task's
reveal window closes. An artifact is kept apart until then (`ethml.coordinator.artifacts`): once the window
has closed it goes into the blockstore if it was revealed and is deleted if not. No upload may leave the
blockstore's disk with less than its free-space floor; an artifact may use the lower half of it, so a
requester's uploads cannot keep a trainer from publishing the artifact its bond depends on."""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Callable
from shutil import disk_usage
from typing import IO, Any, TypeVar

from aiohttp import web
from multiformats import CID

from ethml.coordinator.appkeys import CHAIN, CONFIG, IPFS, PENDING, STORE, UPLOADS
from ethml.coordinator.artifacts import Layered, PendingArtifacts, reveal_closed
from ethml.coordinator.auth import principal, rate_limit, required
from ethml.coordinator.edge import (
    ApiError,
    DiskFailed,
    DiskFull,
    defer_continue,
    disk_errors,
    refuse_encoded,
    spool_body,
)
from ethml.coordinator.schemas import MAX_FILE_BYTES
from ethml.coordinator.uploads import MAX_FAILED_BODIES, MAX_UPLOADS_PER_KEY, MIB, QUOTA_SECONDS
from ethml.errors import IpfsError
from ethml.ipfs.cid import parse_cid
from ethml.ipfs.gateway import _block as ipfs_block
from ethml.ipfs.unixfs import MAX_LINKS, build_file, decode_file_node
from ethml.training.onchain import TaskError, read_struct
from ethml.training.terms import SCORE_SCALE, min_score_units
from ethml.training.trainer import Opening

routes = web.RouteTableDef()
T = TypeVar("T")

routes.get("/ipfs/{cid}")(ipfs_block)


@routes.post("/api/files", expect_handler=defer_continue)
async def post_file(request: web.Request) -> web.Response:
    """Add a file; needs an API key, or a worker's upload token (X-Worker-Token, from its login) with the
    opening of its submission's commitment (the X-Artifact-* headers). The disk's floor is checked before
    the uploader's quota is taken, and what was taken is given back when the file is not stored (a 507, a
    body that does not arrive), so a full disk costs no one its quota."""
    store, ipfs = request.app[STORE], request.app[IPFS]
    token = request.headers.get("X-Worker-Token")
    owner = await store.upload_token_owner(token) if token else None
    if owner is not None:
        await rate_limit(request, None)
        return await _post_artifact(request, owner)
    if token and await principal(request, required=None) is None:  # a token, and no API key to fall back on
        await rate_limit(request, None)  # guessing tokens costs tokens
        raise ApiError(401, "unknown worker upload token (a worker's token ends with its login: log in again)")
    who = await required(request, "requester", "admin")
    await rate_limit(request, who["key"])
    refuse_encoded(request, MAX_FILE_BYTES)  # a 415 or 413 before the floor and the quota
    uploader = None if who["role"] == "admin" else f"upload:key:{who['key']}"
    with _Upload(request, key=who["key"]) as upload:
        taken = 0
        try:
            # Before the body is read: a refused upload's body is not read, and its connection is closed.
            reserved = upload.reserve()
            if uploader is not None and reserved:
                taken = await _take_quota(request, uploader, reserved, close=True, chunked=upload.chunked)
            size = await upload.receive()
            if not size:
                raise ApiError(422, "the file is empty")
            if uploader is not None and upload.chunked:  # charged as the largest file until it arrived
                kept, refund = min(size, taken), max(0, taken - size)
                taken = kept  # before the await: a handler cancelled in it gives back only what it kept
                if refund:
                    await store.take_amount(uploader, *_bucket(request), -refund)
            cid = await upload.write(ipfs.add_bytes, 1)
        except BaseException:  # a cancelled handler (a server shutting down) too
            if uploader is not None and taken:
                await store.take_amount(uploader, *_bucket(request), -taken)  # given back: nothing was stored
            raise
    return web.json_response({"cid": str(cid), "size": size}, status=201)


class _Upload:
    """One upload in progress, as `Uploads` counts it: in `per_key` (for an API key's upload: 429 when the key
    has MAX_UPLOADS_PER_KEY in progress already), in `in_flight` from before its body is read (`reserve`: its
    Content-Length, or the largest file without one) until it is written, then by its size (`receive`), and its
    spool's bytes in `spooled` until the writer is done with them (`write`). Leaving the `with` block takes out
    whatever is still counted and closes a spool not handed to the writer, however the upload ended: no await
    in between, so a cancelled handler cannot leave a count behind."""

    def __init__(self, request: web.Request, *, key: str | None = None, floor: float | None = None) -> None:
        self.request, self.uploads, self.key, self.floor = request, request.app[UPLOADS], key, floor
        self.chunked = request.content_length is None
        self.counted = self.size = 0
        self.body: IO[bytes] | None = None

    def __enter__(self) -> _Upload:
        if self.key is not None:
            if self.uploads.per_key[self.key] >= MAX_UPLOADS_PER_KEY:
                raise ApiError(
                    429,
                    f"this API key has {MAX_UPLOADS_PER_KEY} uploads in progress, the most it may have at once",
                    headers={"Retry-After": "5"},
                    close=True,
                )
            self.uploads.per_key[self.key] += 1
        return self

    def reserve(self) -> int:
        """Count the body from before it is read (507 when the disk's floor has no room for it) and return what
        is counted: its Content-Length, else the largest a file may be."""
        declared = self.request.content_length
        reserved = MAX_FILE_BYTES if declared is None else declared
        if reserved:
            _check_floor(self.request, reserved, close=True, floor=self.floor)
            self.uploads.in_flight += reserved  # with the check above, one step of the event loop
            self.counted = reserved
        return reserved

    async def receive(self) -> int:
        """Spool the body and count it by its size from then on; return the size."""
        cfg = self.request.app[CONFIG]
        self.body, self.size = await spool_body(
            self.request, cfg.data_dir, MAX_FILE_BYTES, cfg.file_timeout, self.uploads
        )
        self.uploads.in_flight += self.size - self.counted
        self.counted = self.size
        return self.size

    async def write(self, fn: Callable[..., T], *args: object) -> T:
        """`fn(data, *args)` in a writer thread (`Uploads.write`), `data` the body, which the writer closes: chunking,
        hashing and writing 16 MiB takes ~0.1 s, off the event loop, which serves everyone. A disk (the
        blockstore's, the pending store's) with no room is a DiskFull (507), one that fails otherwise a 503."""
        assert self.body is not None, "receive() first"
        body, self.body = self.body, None
        try:
            with disk_errors():
                return await self.uploads.write(fn, body, *args)
        finally:
            self.uploads.spooled -= self.size  # its spool is closed, or about to be in the writer thread
            self.size = 0

    def __exit__(self, *_exc: object) -> None:
        if self.body is not None:
            self.body.close()
            self.uploads.spooled -= self.size
        self.uploads.in_flight -= self.counted
        if self.key is not None:
            self.uploads.per_key[self.key] -= 1
            if not self.uploads.per_key[self.key]:
                del self.uploads.per_key[self.key]


#: The headers of a worker's upload: the opening of its submission's commitment.
OPENING_HEADERS = {
    "X-Task": "the on-chain id of the task",
    "X-Artifact-Cid": "the model artifact's CID",
    "X-Artifact-Sha256": "the artifact's SHA-256 (64 hex digits)",
    "X-Artifact-Claim": "the claimed holdout score (millionths)",
    "X-Artifact-Salt": "the commitment's salt (64 hex digits)",
}
_HEX32 = re.compile(r"(0x)?[0-9a-fA-F]{64}")


def _opening(request: web.Request) -> tuple[Opening, CID]:
    """The opening in a worker's upload headers, each present once and well formed (else 422), and its CID."""
    values: dict[str, Any] = {}
    for name, what in OPENING_HEADERS.items():
        sent = request.headers.getall(name, [])
        if len(sent) != 1:
            problem = "is missing" if not sent else "is sent more than once"
            raise ApiError(
                422,
                f"{name} {problem}: a worker uploads the model artifact of its submission with the opening of its "
                f"commitment ({', '.join(OPENING_HEADERS)}), as it will reveal it",
                name,
                close=True,
            )
        try:
            values[name] = _PARSERS[name](sent[0])
        except ValueError:
            raise ApiError(422, f"{name} must be {what}", name, close=True) from None
    # The CID as sent: the commitment hashes this string.
    opening = Opening(
        values["X-Task"],
        request.headers["X-Artifact-Cid"],
        values["X-Artifact-Sha256"],
        values["X-Artifact-Claim"],
        values["X-Artifact-Salt"],
    )
    return opening, values["X-Artifact-Cid"]


def _uint(text: str, *, positive: bool = False) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 20 or (positive and int(text) == 0):
        raise ValueError(text)
    return int(text)


def _hex32(text: str) -> str:
    """32 bytes in hex, as the trainer's secret holds them (lowercase, no 0x)."""
    if not _HEX32.fullmatch(text):
        raise ValueError(text)
    return text.removeprefix("0x").lower()


def _cid(text: str) -> CID:
    if len(text) > 128:
        raise ValueError(text)
    try:
        return parse_cid(text)
    except IpfsError:
        raise ValueError(text) from None


_PARSERS: dict[str, Callable[[str], Any]] = {
    "X-Task": lambda text: _uint(text, positive=True),
    "X-Artifact-Cid": _cid,
    "X-Artifact-Sha256": _hex32,
    "X-Artifact-Claim": _uint,
    "X-Artifact-Salt": _hex32,
}


async def _post_artifact(request: web.Request, account: str) -> web.Response:
    """A worker's upload: the model artifact of `account`'s submission to a task this coordinator tracks, the
    file the commitment on chain names (403 otherwise); 200 without reading the body when it is stored
    already."""
    cfg, store, ipfs, uploads, chain = (
        request.app[CONFIG],
        request.app[STORE],
        request.app[IPFS],
        request.app[UPLOADS],
        request.app[CHAIN],
    )
    opening, cid = _opening(request)
    doc = await store.task_by_chain_id(opening.task)
    if doc is None:
        raise ApiError(403, f"task {opening.task} is not a task of this coordinator", "X-Task", close=True)
    least = min_score_units(doc["min_score"]) if doc.get("min_score") is not None else 0
    if not least <= opening.claim <= SCORE_SCALE:
        raise ApiError(
            422,
            f"X-Artifact-Claim {opening.claim} could never be revealed in task {opening.task}: a claim is at least "
            f"its minimum score {least} and at most {SCORE_SCALE} (millionths)",
            "X-Artifact-Claim",
            close=True,
        )
    failed, retry = await store.failed_artifact_bodies(opening.task, account)
    if failed >= MAX_FAILED_BODIES:
        raise _too_many_failed(opening.task, account, retry)
    index = int(await chain.tasks.functions.submissionOf(opening.task, account).call())
    if index == 0:
        raise ApiError(
            403,
            f"{account} has committed no submission to task {opening.task} (or this server's chain node does not "
            "show it yet): a worker uploads the model artifact of its own submission once the commitment is mined",
            "X-Task",
            close=True,
        )
    try:
        submission = await read_struct(chain.tasks, "getSubmission", opening.task, index - 1)
    except TaskError as exc:  # a revert: not a submission the chain holds (now)
        raise ApiError(403, f"task {opening.task}'s submission by {account}: {exc}", "X-Task", close=True) from None
    if opening.commitment(account) != bytes(submission["commitment"]):
        raise ApiError(
            403,
            f"these X-Artifact-* headers do not open {account}'s commitment to task {opening.task}",
            "X-Artifact-Cid",
            close=True,
        )
    slot = (opening.task, account.lower())
    if slot in uploads.artifacts:
        raise ApiError(
            409, f"{account}'s artifact for task {opening.task} is being uploaded already", "X-Task", close=True
        )
    # Past the reveal deadline no reveal can come: an artifact not revealed by then is deleted, not taken again.
    if await reveal_closed(chain, opening.task, doc.get("reveal_deadline")):
        raise ApiError(
            403,
            f"task {opening.task}'s reveal window has closed: an artifact is taken only while its submission can "
            "still be revealed",
            "X-Task",
            close=True,
        )
    # Stored already (a retry, a restart): this server stored this very opening's file, and it is all still
    # there (blocks this server built and checked, so the walk is short); the body is not read. A block at the
    # CID alone proves nothing: anyone may upload a file whose one block has the digest of an artifact's root.
    pending = request.app[PENDING]
    if await store.artifact_stored(opening.task, account) == opening.model_cid:
        size = await asyncio.to_thread(_held, Layered(ipfs.blockstore, pending.blocks), cid)
        if size is not None:
            return web.json_response({"cid": opening.model_cid, "size": size}, status=200, headers=_CLOSE)
    uploads.artifacts.add(slot)  # one body at a time per submission (per instance)
    try:
        # Counted before it is read, forgiven once stored: a body that is another file, too large, late or cut
        # off counts, so one commitment cannot have the server read 16 MiB bodies without end.
        count, retry = await store.count_artifact_body(opening.task, account)
        if count > MAX_FAILED_BODIES:
            raise _too_many_failed(opening.task, account, retry)
        refuse_encoded(request, MAX_FILE_BYTES)
        with _Upload(request, floor=cfg.min_free_disk_mib * MIB / 2) as upload:
            try:
                upload.reserve()
            except ApiError:  # the server's lack of room, before any of the body is read: not counted
                await store.forgive_artifact_body(opening.task, account)
                raise
            try:
                size = await upload.receive()
                differs = await upload.write(_add_as, pending, account, opening, cid)
            except (DiskFull, DiskFailed, asyncio.CancelledError):  # the server's disk or its shutdown: not counted
                await store.forgive_artifact_body(opening.task, account)
                raise
    finally:
        uploads.artifacts.discard(slot)
    if differs:
        raise ApiError(422, f"the body is not the artifact the commitment names: {differs}")
    await store.artifact_is_stored(opening.task, account, opening.model_cid)
    return web.json_response({"cid": opening.model_cid, "size": size}, status=201)


def _too_many_failed(task: int, account: str, retry: int) -> ApiError:
    return ApiError(
        403,
        f"{account} has sent {MAX_FAILED_BODIES} bodies for its submission to task {task} within the hour that were "
        "not its artifact stored (another file, one too large, late or cut off): no more are read this hour",
        "X-Task",
        headers={"Retry-After": str(max(1, retry))},
        close=True,
    )


def _held(blockstore: Layered, cid: CID) -> int | None:
    """The size of the file `cid` names when the blockstore holds every block of it, else None. Called only
    for a file this server built and stored itself: at most one root and its leaves (16 MiB is 64 chunks)."""
    block = blockstore.get(cid)
    if block is None:
        return None
    try:
        root = decode_file_node(cid, block)
    except IpfsError:
        return None
    if len(root.links) > MAX_LINKS or not all(blockstore.has(link) for link in root.links):
        return None
    return root.filesize if root.filesize is not None else len(root.data)


#: An answer given before the body was read closes the connection (the unread body would follow).
_CLOSE = {"Connection": "close"}


def _add_as(data: bytes, pending: PendingArtifacts, account: str, opening: Opening, cid: CID) -> str | None:
    """Keep the body `data` as `account`'s pending artifact if it is the opening's (its SHA-256, and `cid`, the
    opening's, when added as a file with the CID's version); else what differs, nothing stored. Hashing 16 MiB
    takes ~10 ms: in a writer thread."""
    if hashlib.sha256(data).hexdigest() != opening.sha256:
        return "its SHA-256 differs"
    root, blocks = build_file(data, cid.version)
    if root != cid:
        return f"added as a file it is {root}, not {opening.model_cid}"
    pending.add(opening.task, account, opening.model_cid, ((block.cid, block.data) for block in blocks))
    return None


def _bucket(request: web.Request) -> tuple[float, float]:
    """An uploader's bucket: its rate (bytes per second) and burst (bytes)."""
    quota = request.app[CONFIG].upload_quota_mib * MIB
    return quota / QUOTA_SECONDS, quota


def _check_floor(request: web.Request, size: int, *, close: bool, floor: float | None = None) -> None:
    """507 when storing `size` more bytes, beside what this instance's uploads in progress may add, would leave the
    blockstore's disk less than `floor` bytes free (default --min-free-disk; an artifact's is half). The bytes
    their bodies have in spool files count once: they are on the disk now and gone once their files are
    written, which `in_flight` counts."""
    cfg, ipfs, uploads = request.app[CONFIG], request.app[IPFS], request.app[UPLOADS]
    root = ipfs.blockstore.root
    free = disk_usage(root if root.exists() else cfg.data_dir).free
    floor = cfg.min_free_disk_mib * MIB if floor is None else floor
    if free + uploads.spooled - uploads.in_flight - size < floor:
        raise ApiError(
            507,
            f"the coordinator's disk is nearly full (it keeps {floor / MIB:g} MiB free); the file was not stored",
            headers={"Retry-After": "300"},
            close=close,
        )


async def _take_quota(request: web.Request, uploader: str, size: int, *, close: bool, chunked: bool = False) -> int:
    """Take `size` bytes from the uploader's hourly quota (a file larger than the quota takes all of it) and
    return what was taken, or answer 429 with the wait (closing the connection when the body was not read).
    `chunked`: a body without a Content-Length, charged as the largest file until it has arrived."""
    rate, burst = _bucket(request)
    amount = min(size, int(burst))
    wait = await request.app[STORE].take_amount(uploader, rate, burst, amount)
    if wait > 0:
        what = f"{size} bytes"
        if chunked:
            what = f"a body without a Content-Length is charged {size} bytes until it has arrived; they"
        raise ApiError(
            429,
            f"upload quota exceeded: {request.app[CONFIG].upload_quota_mib:g} MiB per hour per uploader (a worker "
            f"account or an API key); {what} fit in {wait:.0f} s",
            headers={"Retry-After": str(max(1, int(wait + 0.999)))},
            close=close,
        )
    return amount
