"""The API's fast CID check agrees with the generic multiformats path."""

from __future__ import annotations

import os
import random

from ethml.errors import IpfsError
from ethml.ipfs.cid import MAX_CID_BYTES, MAX_CID_CHARS, block_cid, check_cid_text, parse_cid
from ethml.ipfs.unixfs import CHUNK_SIZE, build_file, file_cid_v1


def _generic(text: str) -> str | None:
    try:
        return str(parse_cid(text))
    except IpfsError:
        return None


def _fast(text: str) -> str | None:
    try:
        return check_cid_text(text)
    except IpfsError:
        return None


def test_fast_check_accepts_what_ethml_writes() -> None:
    for size in (0, 1, 31, 32, 33, 1000):
        data = os.urandom(size)
        for text in (
            str(block_cid(data, "raw", 1)),
            str(block_cid(data, "dag-pb", 1)),
            str(block_cid(data, "dag-pb", 0)),
        ):
            assert check_cid_text(text) == text == _generic(text)


def test_fast_check_agrees_with_the_generic_decoder_on_mutations() -> None:
    rng = random.Random(2026)
    alphabet = "abcdefghijklmnopqrstuvwxyz234567AQZ01lO+/"
    bases = [str(block_cid(b"x", "raw", 1)), str(block_cid(b"y", "dag-pb", 1)), str(block_cid(b"z", "dag-pb", 0))]
    for _ in range(4000):
        text = list(rng.choice(bases))
        for _ in range(rng.randint(1, 2)):
            text[rng.randrange(len(text))] = rng.choice(alphabet)
        mutated = "".join(text)
        assert _fast(mutated) == _generic(mutated), mutated
    for other in ("", "Qm", "b", "bafkrei", "zdj7W", "f01551220" + "00" * 32, "QmQmQm"):
        assert _fast(other) == _generic(other), other


def test_file_cid_v1_is_the_cid_build_file_gives() -> None:
    rng = random.Random(7)
    for size in (0, 1, 31, 32, 33, 269, 65_536, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 3 * CHUNK_SIZE):
        data = rng.randbytes(size)
        assert file_cid_v1(data) == str(build_file(data, 1)[0])
    # Kubo (`ipfs add --cid-version 1`) for "hello world\n".
    assert file_cid_v1(b"hello world\n") == "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4"


def test_a_cid_longer_than_any_valid_one_is_refused_unread() -> None:
    """Found by an outside review: base58 (base36, base10) decode in time quadratic in the text's length, and
    `GET /ipfs/{cid}` took 12 ms of the event loop for an 8 KB path segment; a consumer contract's request
    names its CID too. A text longer than the longest multibase form of a CID ethml takes is refused before it
    is decoded, and every form of a valid one still parses."""
    cid = block_cid(os.urandom(100), "raw", 1)
    for base in ("base2", "base8", "base10", "base16", "base32", "base36", "base58btc", "base64"):
        assert parse_cid(cid.encode(base)) == cid, base
    assert len(cid.encode("base2")) <= MAX_CID_CHARS
    for text in ("z" + "2" * 8100, "k" + "1" * 400, "9" + "1" * 400):
        try:
            parse_cid(text)
        except IpfsError as exc:
            assert f"longer than any CID ethml takes ({MAX_CID_CHARS} characters)" in str(exc)
            assert len(str(exc)) < 300, str(exc)  # the text itself is not repeated whole
        else:
            raise AssertionError(f"{text[:10]}... was taken")
    try:
        parse_cid(bytes(MAX_CID_BYTES + 1))
    except IpfsError as exc:
        assert "longer than any CID ethml takes" in str(exc)
    else:
        raise AssertionError("65 bytes were taken")
