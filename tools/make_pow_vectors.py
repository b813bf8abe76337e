"""Write tests/vectors/pow.json: proof-of-work vectors from the pure-Python reference.

Shared by the forge tests, the C core's tests and the Python tests. Deterministic (fixed seed).
Run: python tools/make_pow_vectors.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from ethml.pow._reference import MAX_UINT256, pow_hash, target_for

OUT = Path(__file__).resolve().parents[1] / "tests" / "vectors" / "pow.json"


def vector(challenge: bytes, miner: bytes, nonce: int, difficulty: int) -> dict[str, object]:
    h = pow_hash(challenge, miner, nonce)
    return {
        "challenge": "0x" + challenge.hex(),
        "miner": "0x" + miner.hex(),
        "nonce": hex(nonce),
        "hash": "0x" + h.hex(),
        "difficulty": hex(difficulty),
        "valid": int.from_bytes(h, "big") < target_for(difficulty),
    }


def main() -> None:
    rng = random.Random(20261127)
    vectors = []
    # Edge values of every field.
    for challenge in (bytes(32), b"\xff" * 32):
        for miner in (bytes(20), b"\xff" * 20):
            for nonce in (0, 1, 2**64 - 1, 2**64, MAX_UINT256):
                for difficulty in (1, 2**255, MAX_UINT256):
                    vectors.append(vector(challenge, miner, nonce, difficulty))
    # Random inputs over a range of difficulties.
    for _ in range(150):
        challenge = rng.randbytes(32)
        miner = rng.randbytes(20)
        nonce = rng.getrandbits(rng.choice((8, 64, 128, 256)))
        difficulty = max(1, rng.getrandbits(rng.choice((1, 2, 4, 8, 16))))
        vectors.append(vector(challenge, miner, nonce, difficulty))
    # Boundaries: difficulties set so the hash sits exactly on either side of the target.
    for _ in range(40):
        challenge = rng.randbytes(32)
        miner = rng.randbytes(20)
        nonce = rng.getrandbits(64)
        h = int.from_bytes(pow_hash(challenge, miner, nonce), "big")
        # target(d) = MAX // d; the largest d with MAX // d > h is valid, one above it may not be.
        d = MAX_UINT256 // (h + 1)
        if d >= 1:
            vectors.append(vector(challenge, miner, nonce, d))
            vectors.append(vector(challenge, miner, nonce, d + 1))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"format": "abi.encodePacked(bytes32,address,uint256)", "vectors": vectors}, indent=1))
    print(f"wrote {len(vectors)} vectors to {OUT}")


if __name__ == "__main__":
    main()
