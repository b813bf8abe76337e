"""`ethml ipfs serve`: a read-only trustless gateway (raw blocks) over the local blockstore."""

from __future__ import annotations

from typing import Protocol

from aiohttp import web
from multiformats import CID

from ethml.errors import IpfsError
from ethml.ipfs.blockstore import Blockstore
from ethml.ipfs.cid import parse_cid
from ethml.ipfs.client import RAW_BLOCK


class BlockSource(Protocol):
    """What the gateway serves from: a blockstore, or several read in turn."""

    def get(self, cid: CID) -> bytes | None: ...


BLOCKSTORE = web.AppKey("blockstore", BlockSource)


async def _block(request: web.Request) -> web.Response:
    wants_raw = request.query.get("format") == "raw" or RAW_BLOCK in request.headers.get("Accept", "")
    if not wants_raw:
        return web.Response(
            status=406, text="this gateway serves verifiable raw blocks only: add ?format=raw or Accept: " + RAW_BLOCK
        )
    try:
        cid = parse_cid(request.match_info["cid"])
    except IpfsError as exc:
        return web.Response(status=400, text=str(exc))
    data = request.app[BLOCKSTORE].get(cid)
    if data is None:
        return web.Response(status=404, text=f"block {cid} is not in this blockstore")
    return web.Response(
        body=data,
        content_type=RAW_BLOCK,
        headers={
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "public, max-age=29030400, immutable",
            "X-Ipfs-Roots": str(cid),
        },
    )


def make_app(blockstore: Blockstore) -> web.Application:
    app = web.Application()
    app[BLOCKSTORE] = blockstore
    app.router.add_get("/ipfs/{cid}", _block)
    return app
