"""Getting file bytes by CID: the local blockstore first, then trustless HTTP gateways.

Every block is verified against its CID before it is used or stored; dag-pb links are followed
block by block. Limits: total size, time per gateway request, concurrent requests.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import aiohttp
from multiformats import CID

from ethml.errors import (
    AllGatewaysFailed,
    BlockNotFound,
    ContentTooLarge,
    GatewayFailure,
    HashMismatch,
    InvalidGateway,
    IpfsTimeout,
    MalformedDag,
)
from ethml.ipfs.blockstore import Blockstore
from ethml.ipfs.cid import parse_cid, verify_block
from ethml.ipfs.unixfs import build_file, decode_file_node
from ethml.urls import check_url

RAW_BLOCK = "application/vnd.ipld.raw"
#: The largest block a gateway may send (Kubo's own hard limit is 2 MiB; `ipfs add` makes 256 KiB leaves).
MAX_BLOCK_SIZE = 2 * 1024 * 1024
DATA_POINT_LIMIT = 1024 * 1024
MAX_DEPTH = 32
#: Bytes of blocks a read may go through beyond twice the content it may return: a DAG whose links repeat one
#: block, or whose nodes hold no data, would otherwise be read (and decoded, block after block) without end.
READ_SLACK = 4 * 1024 * 1024


@dataclass
class IpfsConfig:
    gateways: list[str] = field(default_factory=list)
    max_size: int = DATA_POINT_LIMIT
    gateway_timeout: float = 10.0
    total_timeout: float = 60.0
    concurrency: int = 8

    def __post_init__(self) -> None:
        for url in self.gateways:  # one that cannot be fetched from fails here, not at the first fetch
            check_gateway(url)


def check_gateway(url: str) -> None:
    """InvalidGateway, saying why, unless `url` is an http:// or https:// URL with a host and a valid port."""
    try:
        check_url("--gateway", url, ("http", "https"), "https://ipfs.io")
    except ValueError as exc:
        raise InvalidGateway(str(exc)) from None


class IpfsClient:
    """Read (and add) content by CID. Use as `async with IpfsClient(...) as ipfs:`."""

    def __init__(self, blockstore: Blockstore | None = None, config: IpfsConfig | None = None) -> None:
        self.blockstore = blockstore if blockstore is not None else Blockstore()
        self.config = config or IpfsConfig()
        self._session: aiohttp.ClientSession | None = None
        self._owns_session = False
        self._semaphore = asyncio.Semaphore(self.config.concurrency)

    async def __aenter__(self) -> IpfsClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None and self._owns_session:
            await self._session.close()
        self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(headers={"User-Agent": "ethml"})
            self._owns_session = True
        return self._session

    # ----------------------------------------------------------------- adding

    def add_bytes(self, data: bytes, cid_version: int = 0) -> CID:
        """Store `data` as a UnixFS file in the blockstore; return the CID `ipfs add` prints."""
        root, blocks = build_file(data, cid_version)
        for block in blocks:
            self.blockstore.put(block.cid, block.data)
        return root

    # ----------------------------------------------------------------- reading

    async def cat(self, cid: str | CID, *, max_size: int | None = None) -> bytes:
        """The file's bytes. Raises an IpfsError subclass naming what went wrong."""
        root = parse_cid(cid)
        limit = self.config.max_size if max_size is None else max_size
        try:
            async with asyncio.timeout(self.config.total_timeout):
                return await self._read(root, limit)
        except TimeoutError:
            raise IpfsTimeout(str(root), self.config.total_timeout) from None

    async def _read(self, root: CID, limit: int) -> bytes:
        parts: list[bytes] = []
        total = 0
        # Depth-first, left to right: the file's bytes in order. The children of a node are fetched
        # concurrently (bounded by the semaphore) while earlier ones are consumed.
        stack: list[tuple[CID, int]] = [(root, 0)]
        pending: dict[CID, asyncio.Task[bytes]] = {}
        # Every block read counts, a repeated link's included: a file's blocks add up to about its size.
        budget, read = 2 * limit + READ_SLACK, 0
        try:
            while stack:
                cid, depth = stack.pop()
                if depth > MAX_DEPTH:
                    raise MalformedDag(str(root), f"deeper than {MAX_DEPTH} levels")
                task = pending.pop(cid, None)
                payload = await task if task is not None else await self.get_block(cid)
                read += len(payload)
                if read > budget:
                    raise MalformedDag(
                        str(root),
                        f"its blocks add up to more than {budget:,} bytes for at most {limit:,} bytes of content "
                        "(links that repeat a block, or nodes without data)",
                    )
                await asyncio.sleep(0)  # a block at a time: the timeout and the node's other actors go on meanwhile
                node = decode_file_node(cid, payload)
                if cid == root and node.filesize is not None and node.filesize > limit:
                    raise ContentTooLarge(str(root), node.filesize, limit)
                if node.data:
                    total += len(node.data)
                    if total > limit:
                        raise ContentTooLarge(str(root), total, limit)
                    parts.append(node.data)
                for link in node.links:
                    if link not in pending:
                        pending[link] = asyncio.create_task(self.get_block(link))
                stack.extend((link, depth + 1) for link in reversed(node.links))
        finally:
            for task in pending.values():
                task.cancel()
            if pending:
                await asyncio.gather(*pending.values(), return_exceptions=True)
        return b"".join(parts)

    async def get_block(self, cid: CID) -> bytes:
        local = self.blockstore.get(cid)
        if local is not None:
            return local
        if not self.config.gateways:
            raise BlockNotFound(str(cid))
        failures: list[GatewayFailure] = []
        async with self._semaphore:
            for gateway in self.config.gateways:
                try:
                    data = await self._fetch(gateway, cid)
                except GatewayFailure as failure:
                    failures.append(failure)
                    continue
                self.blockstore.put(cid, data)
                return data
        raise AllGatewaysFailed(str(cid), failures)

    async def _fetch(self, gateway: str, cid: CID) -> bytes:
        url = f"{gateway.rstrip('/')}/ipfs/{cid}?format=raw"
        timeout = aiohttp.ClientTimeout(total=self.config.gateway_timeout)
        try:
            async with self._http().get(url, headers={"Accept": RAW_BLOCK}, timeout=timeout) as resp:
                if resp.status != 200:
                    raise GatewayFailure(gateway, str(cid), f"HTTP {resp.status}")
                declared = resp.content_length
                if declared is not None and declared > MAX_BLOCK_SIZE:
                    raise GatewayFailure(gateway, str(cid), f"block of {declared:,} bytes is over {MAX_BLOCK_SIZE:,}")
                body = bytearray()
                async for piece in resp.content.iter_chunked(65536):
                    body += piece
                    if len(body) > MAX_BLOCK_SIZE:
                        raise GatewayFailure(gateway, str(cid), f"block is over {MAX_BLOCK_SIZE:,} bytes")
                data = bytes(body)
        except TimeoutError:
            raise GatewayFailure(gateway, str(cid), f"timed out after {self.config.gateway_timeout:g} s") from None
        except aiohttp.ClientError as exc:
            raise GatewayFailure(gateway, str(cid), f"{type(exc).__name__}: {exc}") from None
        try:
            verify_block(cid, data, gateway)
        except HashMismatch as exc:
            raise GatewayFailure(gateway, str(cid), str(exc)) from None
        return data
