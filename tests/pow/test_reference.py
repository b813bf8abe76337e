from __future__ import annotations

import json

from ethml.pow._reference import MAX_UINT256, keccak256, pow_hash, pow_message, search, target_for
from tests.conftest import ROOT


def test_keccak_is_ethereum_keccak_not_sha3() -> None:
    assert keccak256(b"").hex() == "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"


def test_message_layout() -> None:
    m = pow_message(b"\x11" * 32, b"\x22" * 20, 0x0102)
    assert len(m) == 84
    assert m[:32] == b"\x11" * 32 and m[32:52] == b"\x22" * 20
    assert m[52:] == (0x0102).to_bytes(32, "big")


def test_shared_vectors() -> None:
    vectors = json.loads((ROOT / "tests" / "vectors" / "pow.json").read_text())["vectors"]
    assert len(vectors) >= 200
    for v in vectors:
        challenge = bytes.fromhex(v["challenge"][2:])
        miner = bytes.fromhex(v["miner"][2:])
        nonce = int(v["nonce"], 16)
        h = pow_hash(challenge, miner, nonce)
        assert "0x" + h.hex() == v["hash"]
        assert (int.from_bytes(h, "big") < target_for(int(v["difficulty"], 16))) is v["valid"]


def test_search_edges() -> None:
    c, m = b"\x01" * 32, b"\x02" * 20
    assert search(c, m, MAX_UINT256, 5, 0) == (None, 0)
    assert search(c, m, 0, 0, 50) == (None, 50)
    assert search(c, m, MAX_UINT256 + 1, 7, 10) == (7, 1)
    nonce, tried = search(c, m, target_for(64), 0, 100_000)
    assert nonce is not None and tried == nonce + 1
    assert int.from_bytes(pow_hash(c, m, nonce), "big") < target_for(64)
