"""CIDs through the `multiformats` library: parsing, checking, and the two forms ethml writes."""

from __future__ import annotations

import hashlib

from multiformats import CID, multibase, multihash

from ethml.errors import HashMismatch, InvalidCID, UnsupportedCID

SUPPORTED_CODECS = ("raw", "dag-pb")
SUPPORTED_HASH = "sha2-256"


def parse_cid(value: str | bytes | CID) -> CID:
    """Decode and check a CID: v0 or v1, codec raw or dag-pb, sha2-256."""
    if isinstance(value, CID):
        cid = value
    else:
        text = value if isinstance(value, str) else value.hex()
        try:
            cid = CID.decode(value.strip() if isinstance(value, str) else value)
        except (ValueError, KeyError) as exc:
            raise InvalidCID(text, str(exc) or type(exc).__name__) from None
    if cid.codec.name not in SUPPORTED_CODECS:
        raise UnsupportedCID(str(cid), f"codec {cid.codec.name}")
    if cid.hashfun.name != SUPPORTED_HASH:
        raise UnsupportedCID(str(cid), f"hash function {cid.hashfun.name}")
    if len(cid.raw_digest) != 32:
        raise InvalidCID(str(cid), f"sha2-256 digest of {len(cid.raw_digest)} bytes")
    return cid


def block_cid(data: bytes, codec: str, version: int) -> CID:
    """The CID of one block: v0 (dag-pb only, base58btc) or v1 (base32)."""
    mh = multihash.wrap(hashlib.sha256(data).digest(), SUPPORTED_HASH)
    if version == 0:
        return CID("base58btc", 0, "dag-pb", mh)
    return CID("base32", 1, codec, mh)


def verify_block(cid: CID, data: bytes, source: str) -> None:
    if hashlib.sha256(data).digest() != cid.raw_digest:
        raise HashMismatch(str(cid), source)


def block_key(cid: CID) -> str:
    """The blockstore key: the multihash in lowercase base32 (so v0 and v1 of a block share it)."""
    return str(multibase.encode(bytes(cid.digest), "base32"))[1:]
