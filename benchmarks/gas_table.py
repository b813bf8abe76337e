"""Gas of the oracle's hot paths against the length of the pending queue.

Runs on the embedded py-evm chain (no node needed) and prints a Markdown table:
    python benchmarks/gas_table.py [--sizes 1,100,1000] [--out docs/gas.md]

Rows, for each queue length N (requests pending behind the current one):
- requestPrediction with a tip equal to the queued ones (the new request sorts last),
- requestPrediction with a new highest tip (worst case: it rises to the top of the heap),
- the largest non-final submission (1st..4th),
- the final (5th) submission, which pays five miners and opens the next request, with an EOA requester
  so no callback runs (a callback adds at most its own callbackGasLimit plus ~3,000).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

from web3 import AsyncWeb3

from ethml.chain import EML, ModelKind, ModelSpec, Parameters, deploy_system, dev_account, embedded_chain
from ethml.chain.deploy import ethml_contract
from ethml.chain.tx import send
from ethml.pow._reference import search, target_for

CID = "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG"
MODEL = ModelSpec("bench", CID, "0x" + "11" * 32, ModelKind.CLASSIFICATION, 0, 4)


async def measure(w3: AsyncWeb3, pending: int) -> dict[str, int]:
    deployment = await deploy_system(
        w3, dev_account(0), parameters=Parameters(min_difficulty=1, max_difficulty=1), models=[MODEL]
    )
    ethml = ethml_contract(w3, deployment.ethml)
    user = dev_account(9)
    await send(w3, user, ethml.functions.approve(deployment.ethml, 2**255))
    tip = 1 * EML
    nonce = await w3.eth.get_transaction_count(user.address)
    # The first request becomes current; `pending` more wait behind it (all with equal tips, so no
    # heap movement while filling, which keeps the set-up fast).
    for _ in range(pending + 1):
        await send(w3, user, ethml.functions.requestPrediction(1, CID, tip, 0), gas=400_000, nonce=nonce)
        nonce += 1
    assert await ethml.functions.pendingCount().call() == pending
    equal = await send(w3, user, ethml.functions.requestPrediction(1, CID, tip, 0), nonce=nonce)
    highest = await send(w3, user, ethml.functions.requestPrediction(1, CID, 50 * EML, 0), nonce=nonce + 1)

    challenge, request_id, difficulty, *_ = await ethml.functions.getCurrentVariables().call()
    gas = []
    for i in range(5):
        miner = dev_account(i)
        found, _ = search(challenge, bytes.fromhex(miner.address[2:]), target_for(difficulty), 0, 1 << 16)
        receipt = await send(w3, miner, ethml.functions.submitMiningSolution(request_id, 1, found))
        gas.append(int(receipt["gasUsed"]))
    return {
        "request_equal_tip": int(equal["gasUsed"]),
        "request_highest_tip": int(highest["gasUsed"]),
        "submission_non_final": max(gas[:4]),
        "submission_final": gas[4],
    }


async def main(sizes: list[int]) -> str:
    rows = {}
    for n in sizes:
        started = time.monotonic()
        rows[n] = await measure(await embedded_chain(), n)
        print(f"queue {n}: measured in {time.monotonic() - started:.1f} s", flush=True)
    labels = [
        ("request_equal_tip", "requestPrediction (tip equal to the queue)", 150_000),
        ("request_highest_tip", "requestPrediction (new highest tip, worst case)", None),
        ("submission_non_final", "submitMiningSolution, non-final (largest of 1st-4th)", 70_000),
        ("submission_final", "submitMiningSolution, final (no callback)", 250_000),
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
