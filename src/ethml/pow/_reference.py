"""Pure-Python proof-of-work reference: the executable form of the DESIGN.md format.

message = challenge (32 bytes) | miner (20 bytes) | nonce (32 bytes, big-endian)
hash    = Ethereum keccak256(message)          (pad 0x01 .. 0x80, not FIPS SHA3)
valid   = int(hash) < (2**256 - 1) // difficulty
"""

from __future__ import annotations

from Crypto.Hash import keccak

MAX_UINT256 = 2**256 - 1


def keccak256(data: bytes) -> bytes:
    return keccak.new(digest_bits=256, data=data).digest()


def pow_message(challenge: bytes, miner: bytes, nonce: int) -> bytes:
    return challenge + miner + nonce.to_bytes(32, "big")


def pow_hash(challenge: bytes, miner: bytes, nonce: int) -> bytes:
    return keccak256(pow_message(challenge, miner, nonce))


def target_for(difficulty: int) -> int:
    return MAX_UINT256 // difficulty


def search(challenge: bytes, miner: bytes, target: int, start: int, count: int) -> tuple[int | None, int]:
    """Return (first nonce in [start, start + count) whose hash is below target, hashes tried)."""
    prefix = challenge + miner
    new = keccak.new
    for i in range(count):
        nonce = start + i
        h = new(digest_bits=256, data=prefix + nonce.to_bytes(32, "big")).digest()
        if int.from_bytes(h, "big") < target:
            return nonce, i + 1
    return None, count
