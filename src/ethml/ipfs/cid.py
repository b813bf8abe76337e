"""CIDs through the `multiformats` library: parsing, checking, and the two forms ethml writes."""

from __future__ import annotations

import hashlib
import re

from multiformats import CID, multibase, multihash

from ethml.errors import HashMismatch, InvalidCID, UnsupportedCID

SUPPORTED_CODECS = ("raw", "dag-pb")
SUPPORTED_HASH = "sha2-256"


#: The longest CID text and binary `parse_cid` decodes: a v1 CID of a sha2-256 digest is 36 bytes, 289 characters
#: in its longest multibase (base2); a longer one is refused unread.
MAX_CID_CHARS = 300
MAX_CID_BYTES = 64


def parse_cid(value: str | bytes | CID) -> CID:
    """Decode and check a CID: v0 or v1, codec raw or dag-pb, sha2-256."""
    if isinstance(value, CID):
        cid = value
    else:
        text = value if isinstance(value, str) else value.hex()
        size, limit = (len(value.strip()), MAX_CID_CHARS) if isinstance(value, str) else (len(value), MAX_CID_BYTES)
        if size > limit:  # refused unread: base58 (base36, base10) decodes in time quadratic in the length
            raise InvalidCID(
                text, f"longer than any CID ethml takes ({limit} {'characters' if isinstance(value, str) else 'bytes'})"
            )
        try:
            cid = CID.decode(value.strip() if isinstance(value, str) else value)
        except (ValueError, KeyError, IndexError) as exc:  # IndexError: multiformats on an empty string
            raise InvalidCID(text, str(exc) or type(exc).__name__) from None
    if cid.codec.name not in SUPPORTED_CODECS:
        raise UnsupportedCID(str(cid), f"codec {cid.codec.name}")
    if cid.hashfun.name != SUPPORTED_HASH:
        raise UnsupportedCID(str(cid), f"hash function {cid.hashfun.name}")
    try:  # the multihash may declare a length its hash function cannot have (a 33-byte sha2-256)
        digest = cid.raw_digest
    except ValueError as exc:
        raise InvalidCID(str(cid), str(exc) or type(exc).__name__) from None
    if len(digest) != 32:
        raise InvalidCID(str(cid), f"sha2-256 digest of {len(digest)} bytes")
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


_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(_B58)}


def _b58decode(text: str) -> bytes:
    n = 0
    for ch in text:
        n = n * 58 + _B58_INDEX[ch]
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return b"\0" * (len(text) - len(text.lstrip("1"))) + raw


#: A CIDv1 in lowercase base32 with codec raw (0x55) or dag-pb (0x70) and a sha2-256 multihash: the
#: 4 header bytes fix the first 7 characters but for 3 digest bits (so the 7th is a..h), and the 2
#: padding bits of the 58th character are zero (so it is a multiple of 4 in the alphabet).
_V1_SHA256 = re.compile(r"^b(afkrei|afybei)[a-h][a-z2-7]{50}[aeimquy4]$")


def check_cid_text(text: str) -> str:
    """`str(parse_cid(text))` without the generic decoder for the two forms ethml writes and gateways
    print (v1 base32 `b...` and v0 `Qm...`, raw or dag-pb, sha2-256): a regular expression or a few
    microseconds of base58 instead of about a millisecond; anything else goes through `parse_cid`."""
    if _V1_SHA256.match(text):
        return text
    try:
        if len(text) == 46 and text.startswith("Qm"):
            raw = _b58decode(text)
            if len(raw) == 34 and raw[:2] == b"\x12\x20":
                return text
    except KeyError:
        pass
    return str(parse_cid(text))
