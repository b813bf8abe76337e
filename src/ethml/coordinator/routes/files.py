"""Files: datasets, test sets and model artifacts go into the coordinator's blockstore by
POST /api/files; anyone (workers, miners) fetches their raw blocks by CID from GET /ipfs/{cid}.

What one uploader may add is bounded: each (a worker's account, whichever of its logins' tokens it
uses, or a requester's API key; an admin's key is not counted) has a quota of bytes per hour, and no
upload may leave the blockstore's disk with less than its free-space floor. Any staked account gets an
upload token by logging in as a worker, so without these one account could fill the disk that Redis
and the blockstore share."""

from __future__ import annotations

import asyncio
from shutil import disk_usage

from aiohttp import web

from ethml.coordinator.appkeys import CONFIG, IPFS, STORE, UPLOADS
from ethml.coordinator.auth import rate_limit, required
from ethml.coordinator.edge import ApiError, read_body
from ethml.coordinator.schemas import MAX_FILE_BYTES
from ethml.coordinator.uploads import MIB, QUOTA_SECONDS
from ethml.ipfs.gateway import _block as ipfs_block

routes = web.RouteTableDef()

routes.get("/ipfs/{cid}")(ipfs_block)


@routes.post("/api/files")
async def post_file(request: web.Request) -> web.Response:
    """Add a file; needs an API key or a worker's upload token (X-Worker-Token, from its login). The disk's
    floor is checked before the uploader's quota is taken, and what was taken is given back when the file
    is not stored (a 507, a body that does not arrive), so a full disk costs no one its quota."""
    cfg, store, ipfs, uploads = request.app[CONFIG], request.app[STORE], request.app[IPFS], request.app[UPLOADS]
    token = request.headers.get("X-Worker-Token")
    owner = await store.upload_token_owner(token) if token else None
    if owner is not None:
        await rate_limit(request, None)
        uploader: str | None = f"upload:account:{owner.lower()}"
    else:
        who = await required(request, "requester", "admin")
        await rate_limit(request, who["key"])
        uploader = None if who["role"] == "admin" else f"upload:key:{who['key']}"
    declared = request.content_length
    taken = 0
    if declared is not None and 0 < declared <= MAX_FILE_BYTES:
        # Before the body is read: a refused upload's body is not read, and its connection is closed.
        _check_floor(request, declared, close=True)
        if uploader is not None:
            taken = await _take_quota(request, uploader, declared, close=True)
    try:
        data = await read_body(request, MAX_FILE_BYTES, cfg.file_timeout)
        if not data:
            raise ApiError(422, "the file is empty")
        if uploader is not None and declared is None:  # chunked: its size is known only now
            taken = await _take_quota(request, uploader, len(data), close=False)
        _check_floor(request, len(data), close=False)
        uploads.in_flight += len(data)  # with the check above, one step of the event loop
        try:
            # Chunking, hashing and writing 16 MiB takes ~0.1 s: off the event loop, which serves everyone.
            cid = await asyncio.to_thread(ipfs.add_bytes, data, 1)
        finally:
            uploads.in_flight -= len(data)
    except Exception:
        if uploader is not None and taken:
            await store.take_amount(uploader, *_bucket(request), -taken)  # given back: nothing was stored
        raise
    return web.json_response({"cid": str(cid), "size": len(data)}, status=201)


def _bucket(request: web.Request) -> tuple[float, float]:
    """An uploader's bucket: its rate (bytes per second) and burst (bytes)."""
    quota = request.app[CONFIG].upload_quota_mib * MIB
    return quota / QUOTA_SECONDS, quota


def _check_floor(request: web.Request, size: int, *, close: bool) -> None:
    """507 when storing `size` more bytes, beside this instance's uploads not yet written, would leave the
    blockstore's disk less free space than --min-free-disk."""
    cfg, ipfs, uploads = request.app[CONFIG], request.app[IPFS], request.app[UPLOADS]
    root = ipfs.blockstore.root
    free = disk_usage(root if root.exists() else cfg.data_dir).free
    if free - uploads.in_flight - size < cfg.min_free_disk_mib * MIB:
        raise ApiError(
            507,
            f"the coordinator's disk is nearly full (it keeps {cfg.min_free_disk_mib:g} MiB free); the file was "
            "not stored",
            headers={"Retry-After": "300"},
            close=close,
        )


async def _take_quota(request: web.Request, uploader: str, size: int, *, close: bool) -> int:
    """Take `size` bytes from the uploader's hourly quota (a file larger than the quota takes all of it) and
    return what was taken, or answer 429 with the wait (closing the connection when the body was not read)."""
    rate, burst = _bucket(request)
    amount = min(size, int(burst))
    wait = await request.app[STORE].take_amount(uploader, rate, burst, amount)
    if wait > 0:
        raise ApiError(
            429,
            f"upload quota exceeded: {request.app[CONFIG].upload_quota_mib:g} MiB per hour per uploader (a worker "
            f"account or an API key); {size} bytes fit in {wait:.0f} s",
            headers={"Retry-After": str(max(1, int(wait + 0.999)))},
            close=close,
        )
    return amount
