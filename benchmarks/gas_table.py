"""Gas of the oracle's transactions against the length of the pending queue.

Runs on the embedded py-evm chain (no node needed) and prints a Markdown table:
    python benchmarks/gas_table.py [--sizes 1,100,1000] [--out docs/gas-table.md]

Rows, for each queue length N (requests pending behind the current one):
- requestPrediction with a tip equal to the queued ones (the new request sorts last), and with a new
  highest tip (worst case: it rises to the top of the heap);
- commit, by miners that never committed or held EML before (their reward slot is created) and by
  returning miners;
- the largest non-closing reveal (1st..4th);
- the closing (5th) reveal: consensus, rewards accrued to five miners, the queue pop and the next round,
  with an EOA requester so no callback runs (a callback adds its own gas, which the requester's deposit
  reimburses), for first-time and for returning miners;
- claimRewards by a miner that held no EML before (its balance slot is created);
- cancelRequest of the last-queued request.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

from eth_account.signers.local import LocalAccount
from web3 import AsyncWeb3

from ethml.chain import (
    EML,
    ModelKind,
    ModelSpec,
    Parameters,
    commitment_for,
    deploy_system,
    dev_account,
    embedded_chain,
)
from ethml.chain.deploy import ethml_contract
from ethml.chain.tx import send
from ethml.pow._reference import search, target_for

CID = "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG"
MODEL = ModelSpec("bench", CID, "0x" + "11" * 32, ModelKind.CLASSIFICATION, 0, 4)


async def _round(w3: AsyncWeb3, ethml: Any, miners: list[LocalAccount]) -> tuple[list[int], list[int]]:
    """Commit and reveal with `miners`; the gas of each commit and each reveal."""
    await send(w3, dev_account(9), ethml.functions.approve(dev_account(8).address, 0))  # a block after opening
    request_id, challenge, difficulty, *_ = await ethml.functions.getCurrentRound().call()
    commits, reveals = [], []
    for i, miner in enumerate(miners):
        found, _ = search(challenge, bytes.fromhex(miner.address[2:]), target_for(difficulty), 0, 1 << 16)
        salt = bytes([i + 1]) * 32
        commitment = commitment_for(request_id, miner.address, 1, salt)
        receipt = await send(w3, miner, ethml.functions.commit(request_id, found, commitment))
        commits.append(int(receipt["gasUsed"]))
    for i, miner in enumerate(miners):
        receipt = await send(w3, miner, ethml.functions.reveal(request_id, 1, bytes([i + 1]) * 32))
        reveals.append(int(receipt["gasUsed"]))
    return commits, reveals


async def measure(w3: AsyncWeb3, pending: int) -> dict[str, int]:
    deployment = await deploy_system(
        w3, dev_account(0), parameters=Parameters(min_difficulty=1, max_difficulty=1), models=[MODEL]
    )
    ethml = ethml_contract(w3, deployment.ethml)
    user = dev_account(9)
    tip = 1 * EML
    nonce = await w3.eth.get_transaction_count(user.address)
    # The first request becomes current; `pending` more wait behind it (all with equal tips, so no
    # heap movement while filling, which keeps the set-up fast).
    for _ in range(pending + 1):
        await send(w3, user, ethml.functions.requestPrediction(1, CID, tip, 0), gas=400_000, nonce=nonce)
        nonce += 1
    assert await ethml.functions.pendingCount().call() == pending
    equal = await send(w3, user, ethml.functions.requestPrediction(1, CID, tip, 0), nonce=nonce)
    equal_id = await ethml.functions.requestCount().call()
    highest = await send(w3, user, ethml.functions.requestPrediction(1, CID, 50 * EML, 0), nonce=nonce + 1)
    position = await ethml.functions.queuePosition(equal_id).call()
    cancel = await send(w3, user, ethml.functions.cancelRequest(equal_id, position))
    await send(w3, user, ethml.functions.requestPrediction(1, CID, tip, 0))  # the queue keeps its length
    current = await ethml.functions.getCurrentRound().call()
    if await w3.eth.block_number >= current[7]:
        # Filling a long queue outlasted the first round's commit window: open the next one.
        await send(w3, user, ethml.functions.expireRequest(current[0]))
        await send(w3, user, ethml.functions.requestPrediction(1, CID, tip, 0))

    # Accounts 10..14 of the embedded chain hold ETH but never held EML nor committed.
    fresh = [dev_account(i) for i in range(10, 15)]
    first_commits, first_reveals = await _round(w3, ethml, fresh)
    claim = await send(w3, fresh[0], ethml.functions.claimRewards())
    commits, reveals = await _round(w3, ethml, fresh)
    return {
        "request_equal_tip": int(equal["gasUsed"]),
        "request_highest_tip": int(highest["gasUsed"]),
        "commit_first": max(first_commits),
        "commit": max(commits),
        "reveal_non_final": max(reveals[:4] + first_reveals[:4]),
        "close_first": first_reveals[4],
        "close": reveals[4],
        "claim_first": int(claim["gasUsed"]),
        "cancel": int(cancel["gasUsed"]),
    }


async def main(sizes: list[int]) -> str:
    rows = {}
    for n in sizes:
        started = time.monotonic()
        rows[n] = await measure(await embedded_chain(accounts=15), n)
        print(f"queue {n}: measured in {time.monotonic() - started:.1f} s", flush=True)
    labels = [
        ("request_equal_tip", "requestPrediction (tip equal to the queue)", 160_000),
        ("request_highest_tip", "requestPrediction (new highest tip, worst case)", 160_000),
        ("commit_first", "commit, a miner's first (largest of five)", 70_000),
        ("commit", "commit, returning miner (largest of five)", 70_000),
        ("reveal_non_final", "reveal, non-closing (largest of 1st-4th)", 60_000),
        ("close_first", "closing reveal, five first-time miners (no callback)", 200_000),
        ("close", "closing reveal, returning miners (no callback)", 200_000),
        ("claim_first", "claimRewards, first claim", None),
        ("cancel", "cancelRequest (last in the queue)", None),
    ]
    head = "| transaction | " + " | ".join(f"queue {n}" for n in sizes) + " | target |"
    sep = "|---|" + "---:|" * len(sizes) + "---|"
    lines = [head, sep]
    for key, label, target in labels:
        cells = " | ".join(f"{rows[n][key]:,}" for n in sizes)
        lines.append(f"| {label} | {cells} | {'<= ' + format(target, ',') if target else '-'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,100,1000", help="comma-separated queue lengths")
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    args = parser.parse_args()
    table = asyncio.run(main([int(s) for s in args.sizes.split(",")]))
    print(table)
    if args.out:
        args.out.write_text(table + "\n")
