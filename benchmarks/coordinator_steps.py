"""What each step of `POST /api/tasks` costs, timed alone in one process (no HTTP, no Redis).

The bodies are the load benchmark's (`coordinator_load.bodies`: distinct requesters, terms and a
permit signed over the digests the server checks), for a market with made-up addresses; each step
is the server's own code, called as `ethml.coordinator.routes.tasks.post_task` calls it, on a pool
of 200 bodies in turn. Each figure is the best of `--rounds` rounds of `--count` calls, in
microseconds per call. Under load, with aiohttp and Redis around it, each step costs 1.5 to 2 times
this (docs/coordinator.md); the sum here is a floor for the handler, and the bare handler of the load
benchmark is the floor for everything around it.

    python benchmarks/coordinator_steps.py [--count 2000] [--rounds 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from coincurve import PublicKey

sys.path.insert(0, str(Path(__file__).resolve().parent))

from coordinator_load import Market, bodies

from ethml.chain import EML
from ethml.coordinator.permit import PermitDomain, address_of, recover_public_key
from ethml.coordinator.routes.tasks import _as_sent, _signer_key
from ethml.coordinator.schemas import TaskCreate
from ethml.ipfs.unixfs import file_cid_v1
from ethml.pow.tune import cpu_model
from ethml.training.rules import MarketRules
from ethml.training.spec import canonical_json

POOL = 200


def timed(fn: Callable[[int], Any], count: int, rounds: int) -> float:
    """Best of `rounds` rounds: microseconds per call of fn(i) for i in 0..count-1."""
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for i in range(count):
            fn(i)
        best = min(best, (time.perf_counter() - started) / count * 1e6)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=2000, help="calls per round")
    ap.add_argument("--rounds", type=int, default=5, help="rounds per step (the best is reported)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args()

    rules = MarketRules(
        version=1,
        min_period=60,
        max_period=30 * 86400,
        min_seat_reward=EML,
        validator_share_bps=2000,
        min_registration_reward=EML,
        registrations_per_period=10,
    )
    market = Market(PermitDomain(31337, "0x" + "11" * 20, "0x" + "22" * 20), rules)
    domain = market.terms  # one domain object, as the server keeps (its separator is computed once)
    raw = [b.encode() for b in bodies(market, 0, POOL, int(time.time()) + 3600)]
    parsed = [TaskCreate.model_validate_json(r, strict=True) for r in raw]
    terms = [b.terms() for b in parsed]
    terms_digests = [domain.digest(t, b.requester, b.nonce, b.expiry) for t, b in zip(terms, parsed, strict=True)]
    permits = [b.permit for b in parsed]
    assert all(p is not None for p in permits)
    permit_digests = [market.permits.digest(p.owner, p.value, p.nonce, p.deadline) for p in permits if p]
    signatures = [bytes.fromhex(b.signature[2:]) for b in parsed]
    keys = [_signer_key(_as_sent(b.signature), d) for b, d in zip(parsed, terms_digests, strict=True)]
    specs = [b.spec.model_dump(mode="json") for b in parsed]

    def terms_signer(i: int) -> bool:
        key = _signer_key(_as_sent(parsed[i % POOL].signature), terms_digests[i % POOL])
        return key is not None and address_of(key) == parsed[i % POOL].requester.lower()

    def permit_signer(i: int) -> bool:
        p = permits[i % POOL]
        assert p is not None
        return (
            recover_public_key(permit_digests[i % POOL], p.v, bytes.fromhex(p.r[2:]), bytes.fromhex(p.s[2:]))
            == keys[i % POOL]
        )

    def spec_cid(i: int) -> bool:
        return file_cid_v1(canonical_json(parsed[i % POOL].spec.model_dump(mode="json"))) == parsed[i % POOL].spec_cid

    def permit_digest(i: int) -> bytes:
        p = permits[i % POOL]
        assert p is not None
        return market.permits.digest(p.owner, p.value, p.nonce, p.deadline)

    def validate(i: int) -> TaskCreate:
        return TaskCreate.model_validate_json(raw[i % POOL], strict=True)

    def terms_digest(i: int) -> bytes:
        body = parsed[i % POOL]
        return domain.digest(terms[i % POOL], body.requester, body.nonce, body.expiry)

    def secp256k1_alone(i: int) -> PublicKey:
        signature = signatures[i % POOL]
        return PublicKey.from_signature_and_message(
            signature[:64] + bytes([signature[64] - 27]), terms_digests[i % POOL], hasher=None
        )

    def document(i: int) -> bytes:
        return orjson.dumps({"spec": specs[i % POOL]})

    steps: list[tuple[str, Callable[[int], Any]]] = [
        ("read and validate the body (pydantic, strict)", validate),
        ("  of which: parse the JSON alone (orjson)", lambda i: orjson.loads(raw[i % POOL])),
        ("the spec's CID (dump, canonical JSON, sha256, base32)", spec_cid),
        ("the terms from the body", lambda i: parsed[i % POOL].terms()),
        ("the terms against the market's rules", lambda i: rules.problems(terms[i % POOL])),
        ("the terms' EIP-712 digest", terms_digest),
        ("recover the terms' signer (key, address)", terms_signer),
        ("the permit's EIP-712 digest", permit_digest),
        ("recover the permit's signer (key, compared)", permit_signer),
        ("  of which: one recovery through coincurve's objects", secp256k1_alone),
        ("the task document as JSON (orjson)", document),
    ]
    figures = {name.strip(): timed(fn, args.count, args.rounds) for name, fn in steps}
    counted = [name for name, _ in steps if not name.startswith("  ")]
    total = sum(figures[name] for name in counted)
    recoveries = sum(figures[name] for name in counted if name.startswith("recover "))
    if args.json:
        print(json.dumps({"cpu": cpu_model(), "us": figures, "total_us": total, "recoveries_us": recoveries}))
        return
    print(f"CPU: {cpu_model()}; microseconds per call, best of {args.rounds} rounds of {args.count}")
    for name, _ in steps:
        print(f"{figures[name.strip()]:8.1f}  {name}")
    print(f"{total:8.1f}  all the steps above (the handler's work besides the Redis script and the response)")
    print(f"{total - recoveries:8.1f}  of which not the two signature recoveries")


if __name__ == "__main__":
    main()
