"""Fetching through real aiohttp gateways on loopback: good, tampered, hanging, missing, huge."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from ethml.errors import (
    AllGatewaysFailed,
    BlockNotFound,
    ContentTooLarge,
    InvalidCID,
    IpfsTimeout,
    UnsupportedCID,
)
from ethml.ipfs import Blockstore, IpfsClient, IpfsConfig, build_file, make_app, parse_cid

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[web.Application], Awaitable[str]]]:
    servers: list[TestServer] = []

    async def start(app: web.Application) -> str:
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return str(server.make_url("")).rstrip("/")

    yield start
    for s in servers:
        await s.close()


def _app(handler: Handler) -> web.Application:
    app = web.Application()
    app.router.add_get("/ipfs/{cid}", handler)
    return app


def _good_store(tmp_path, data: bytes, version: int = 0):  # type: ignore[no-untyped-def]
    store = Blockstore(tmp_path / "origin")
    root, blocks = build_file(data, version)
    for b in blocks:
        store.put(b.cid, b.data)
    return store, root


async def test_multi_block_file_through_our_gateway(tmp_path, blockstore, serve) -> None:  # type: ignore[no-untyped-def]
    data = random.Random(1).randbytes(3 * 1024 * 1024)
    for version in (0, 1):
        origin, root = _good_store(tmp_path, data, version)
        url = await serve(make_app(origin))
        async with IpfsClient(blockstore, IpfsConfig(gateways=[url], max_size=4 * 1024 * 1024)) as client:
            assert await client.cat(str(root)) == data
        # Everything fetched is now local and verified.
        async with IpfsClient(blockstore, IpfsConfig(gateways=[], max_size=4 * 1024 * 1024)) as offline:
            assert await offline.cat(root) == data


async def test_each_bad_gateway_is_skipped_for_the_next(tmp_path, blockstore, serve) -> None:  # type: ignore[no-untyped-def]
    data = b"[1.0, 2.0, 3.0, 4.0]\n"
    origin, root = _good_store(tmp_path, data)
    good = await serve(make_app(origin))
    block = origin.get(root)
    assert block is not None

    async def tampered(request: web.Request) -> web.Response:
        return web.Response(body=block.replace(b"1.0", b"9.0"), content_type="application/vnd.ipld.raw")

    async def hangs(request: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.Response(body=block)

    async def missing(request: web.Request) -> web.Response:
        return web.Response(status=404)

    async def huge(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        for _ in range(64):  # 4 MiB, over the 2 MiB block limit, without a Content-Length
            await resp.write(b"\0" * 65536)
        return resp

    bad = [await serve(_app(h)) for h in (tampered, hangs, missing, huge)]
    config = IpfsConfig(gateways=[*bad, good], gateway_timeout=0.5)
    async with IpfsClient(blockstore, config) as client:
        assert await client.cat(root) == data
    assert blockstore.get(root) == block

    # Without the good one: every reason is reported, nothing unverified is stored.
    fresh = Blockstore(tmp_path / "fresh")
    async with IpfsClient(fresh, IpfsConfig(gateways=bad, gateway_timeout=0.5)) as client:
        with pytest.raises(AllGatewaysFailed) as info:
            await client.cat(root)
    reasons = [f.reason for f in info.value.failures]
    assert "does not hash to its CID" in reasons[0] and bad[0] in str(info.value)
    assert "timed out" in reasons[1]
    assert reasons[2] == "HTTP 404"
    assert "over 2,097,152 bytes" in reasons[3]
    assert len(fresh) == 0


async def test_limits_and_bad_cids(tmp_path, blockstore, serve) -> None:  # type: ignore[no-untyped-def]
    data = random.Random(2).randbytes(600 * 1024)
    origin, root = _good_store(tmp_path, data)
    url = await serve(make_app(origin))
    async with IpfsClient(blockstore, IpfsConfig(gateways=[url], max_size=512 * 1024)) as client:
        with pytest.raises(ContentTooLarge, match="614,400 bytes, over the 524,288-byte limit"):
            await client.cat(root)
        with pytest.raises(InvalidCID):
            await client.cat("Qm-not-a-cid")
        with pytest.raises(UnsupportedCID, match="codec dag-cbor"):
            await client.cat("bafyreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy")
    async with IpfsClient(blockstore, IpfsConfig()) as offline:
        with pytest.raises(BlockNotFound, match="--gateway"):
            await offline.cat("QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG")


async def test_total_timeout(tmp_path, blockstore, serve) -> None:  # type: ignore[no-untyped-def]
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.Response(status=500)

    url = await serve(_app(slow))
    config = IpfsConfig(gateways=[url], gateway_timeout=20, total_timeout=0.3)
    async with IpfsClient(blockstore, config) as client:
        with pytest.raises(IpfsTimeout):
            await client.cat("QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG")


def test_blockstore_refuses_and_drops_corrupt_blocks(blockstore) -> None:  # type: ignore[no-untyped-def]
    from ethml.errors import HashMismatch

    root, _ = build_file(b"hello", 1)
    with pytest.raises(HashMismatch):
        blockstore.put(root, b"other")
    blockstore.put(root, b"hello")
    path = next(blockstore.root.glob("*/*"))
    path.write_bytes(b"corrupted on disk")
    assert blockstore.get(root) is None and not path.exists()


async def test_gateway_server_answers(tmp_path, serve) -> None:  # type: ignore[no-untyped-def]
    import aiohttp

    origin, root = _good_store(tmp_path, b"data")
    url = await serve(make_app(origin))
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{url}/ipfs/{root}?format=raw") as r:
            assert r.status == 200 and r.content_type == "application/vnd.ipld.raw"
        async with s.get(f"{url}/ipfs/{root}") as r:
            assert r.status == 406
        async with s.get(f"{url}/ipfs/nonsense?format=raw") as r:
            assert r.status == 400
        # A multihash declaring a digest longer than sha2-256's (33 bytes, then 54): its digest could not be
        # read, and the gateway answered 500 (ethml serve: with a traceback of 12 KB in its log per request).
        long_digest = "bafybent43saorqg4efhunvtbansrajftdj37q4xziexywwf4u2mfxbevmxpozwgixf7v5cm7d6aojukhqbxac5h5qgdjk"
        for bad in ("f01551221" + "00" * 33, long_digest):
            async with s.get(f"{url}/ipfs/{bad}?format=raw") as r:
                assert r.status == 400 and "max digest size 32" in await r.text(), bad
        # A long text is not repeated whole in the answer.
        async with s.get(f"{url}/ipfs/{'b' * 6000}?format=raw") as r:
            text = await r.text()
            assert r.status == 400 and "(6,000 characters)" in text and len(text) < 400, text
        async with s.get(f"{url}/ipfs/{parse_cid('QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG')}?format=raw") as r:
            assert r.status == 404


def test_a_durable_blockstore_syncs_each_block_and_its_directory_before_put_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What `ethml serve` stores (uploads answered 201, artifacts) survives a crash right after: each block's
    file is synced, then its directory once the file is renamed into it, and the root's when the shard is new.
    A plain blockstore (a miner's cache) syncs nothing."""
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    _root, blocks = build_file(os.urandom(300 * 1024), 1)
    plain = Blockstore(tmp_path / "plain")
    for block in blocks:
        plain.put(block.cid, block.data)
    assert synced == []
    durable = Blockstore(tmp_path / "durable", durable=True)
    for block in blocks:
        synced.clear()
        shard = durable._path(block.cid).parent
        new_shard = not shard.exists()
        durable.put(block.cid, block.data)
        assert durable.get(block.cid) == block.data
        assert synced[0].startswith(f"{shard}/.tmp-"), synced  # the file, before it is renamed into place
        assert synced[1:] == [str(shard), *([str(durable.root)] if new_shard else [])], synced
    synced.clear()
    durable.put(blocks[0].cid, blocks[0].data)  # stored already: nothing written, nothing synced
    assert synced == []


def _node(children: list[bytes], blocksizes: list[int], data: bytes | None = None) -> bytes:
    """A dag-pb UnixFS file node linking `children` (CIDs as bytes), as a tampered DAG would."""
    from ethml.ipfs._dagpb import PBLink, PBNode, UnixFSData, encode_node, encode_unixfs

    unixfs = UnixFSData(2, data, sum(blocksizes) + len(data or b""), blocksizes)
    return encode_node(PBNode(links=[PBLink(c, "", 0) for c in children], data=encode_unixfs(unixfs)))


async def test_a_dag_that_links_one_block_again_and_again_is_refused_and_never_holds_the_loop(
    blockstore: Blockstore,
) -> None:
    """A data point's root linking one 32 KiB block 40 times, that block linking nothing and holding no data: each
    link was read and decoded again, all on the event loop without a pause, so the total timeout never fired (4.5 s
    past a 1 s timeout) and the miner's other actors got no turn. Layers of such nodes (a 2 MiB root holds 45,000
    links, 32 levels deep) froze a miner for good with one request. The blocks read now count against twice the
    content's limit (plus 4 MiB), and each block is a turn of the loop."""
    from ethml.errors import MalformedDag
    from ethml.ipfs.cid import block_cid

    filler = _node([], [1] * 16_000)  # no data, and a long packed list of block sizes (slow to decode before)
    filler_cid = block_cid(filler, "dag-pb", 0)
    blockstore.put(filler_cid, filler)
    level, cid = filler, filler_cid
    for _ in range(3):  # each level links the one below 40 times: 64,000 reads of the filler
        level = _node([bytes(cid)] * 40, [0] * 40)
        cid = block_cid(level, "dag-pb", 0)
        blockstore.put(cid, level)
    client = IpfsClient(blockstore, IpfsConfig(gateways=[], total_timeout=600))
    turns = 0
    reading = True

    async def ticker() -> None:
        nonlocal turns
        while reading:
            turns += 1
            await asyncio.sleep(0)

    tick = asyncio.create_task(ticker())
    try:
        with pytest.raises(MalformedDag, match="links that repeat a block"):
            await client.cat(cid, max_size=1024 * 1024)
    finally:
        reading = False
        await tick
    assert turns > 10  # the loop went on while the blocks were read


def test_a_varint_is_read_in_place() -> None:
    """Each varint was decoded from a copy of the rest of the block: quadratic in the block's fields (a 256 KiB
    block of packed block sizes took 1.5 s, a 2 MiB one minutes). It is read in place: a buffer that refuses to be
    sliced decodes."""
    from ethml.ipfs import _dagpb

    class NoSlices(bytes):
        def __getitem__(self, key):  # type: ignore[no-untyped-def,override]
            assert not isinstance(key, slice), "a varint was read from a copy"
            return super().__getitem__(key)

    packed = bytes(_node([], [3, 300, 70_000] * 2_000))
    for at in range(len(packed) + 1):  # every position, the end included: a value, or a refusal
        with contextlib.suppress(_dagpb.ProtobufError):
            _dagpb._varint(NoSlices(packed), at, "field")
    node = _dagpb.decode_unixfs(_dagpb.decode_node(packed).data or b"")
    assert node.blocksizes == [3, 300, 70_000] * 2_000


def test_varints_are_read_by_the_rules_and_with_the_messages_of_multiformats() -> None:
    """ethml reads varints itself (multiformats' reader checks its argument's type on every call, some 30 times
    the cost of reading it): the same values, lengths, refusals and messages, for random bytes and encoded
    values."""
    import random

    from multiformats import varint

    from ethml.ipfs._dagpb import ProtobufError, _varint

    rng = random.Random(11)
    cases = [b"", b"\x00", b"\x80", b"\x80\x00", b"\xff" * 8 + b"\x7f", b"\xff" * 9, b"\xff" * 10, b"\x81\x00"]
    for _ in range(20_000):
        choices = (rng.randrange(256), rng.randrange(128), 0x80 | rng.randrange(128), 0x80, 0)
        cases.append(bytes(rng.choice(choices) for _ in range(rng.randint(0, 11))))
    for value in [0, 127, 128, 2**14 - 1, 2**14, 2**63 - 1, *(rng.randrange(2**63) for _ in range(2_000))]:
        cases.append(bytes(varint.encode(value)) + bytes(rng.randrange(256) for _ in range(rng.randint(0, 3))))
    refused = 0
    for raw in cases:
        try:
            value, length, _ = varint.decode_raw(raw)
            expected: tuple[object, ...] = (value, length)
        except ValueError as exc:
            expected = ("refused", f"bad varint at byte 0: {exc}")
        try:
            got: tuple[object, ...] = _varint(raw, 0, "varint")
        except ProtobufError as exc:
            got = ("refused", str(exc))
            refused += 1
        assert got == expected, raw.hex()
    assert 1_000 < refused < len(cases) - 1_000  # both outcomes well represented
