"""Gas of every oracle transaction for rounds of K = 1, 4 and 8 requests and queues of 1, 100 and 1,000,
and the all-in gas per answered request.

Runs on the embedded py-evm chain (real transactions, `gasUsed` from the receipts) and writes Markdown:
    python benchmarks/gas_table.py [--ks 1,4,8] [--sizes 1,100,1000] [--out docs/gas-table.md]

For each K and queue length N (the heap holds N requests besides the K each close opens the next round
with; all tips equal, 1 EML):
- requestPrediction with a tip equal to the queued ones (it sorts last), and with a new highest tip
  (worst case: it rises to the top of the heap);
- commit: by miners that never committed (their slot is created and the bond is pulled from their EML),
  by new miners that called `fund` first (the documented path: `fund` creates the slot), by returning
  miners (the bond comes from their balance held by the oracle), the fifth (which retargets and opens
  the reveal phase) included, and by a returning miner that claimed its whole balance (the bond is
  pulled from its EML); and that `fund`;
- reveal: the largest of the 1st-4th (non-closing);
- the closing reveal (`revealAndClose`: the fifth reveal, consensus and settlement of the K requests,
  rewards, bonds, the next round opened with K requests popped from the queue), with EOA requesters (no
  callbacks);
- `closeRound` by a third party after the reveal window with four of five reveals (one bond burned);
- claimRewards, cancelRequest (last in the queue), expireQueued;
- all in per answered request: (K requests + five commits + four reveals + the closing reveal) / K, for
  returning miners and requests with the equal tip.
Then the close of a round of K = 8 whose eight requests each have a 100,000-gas callback that burns all
of its gas (HeavyConsumer from contracts/test, built with forge), and the same at K = 16.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eth_account.signers.local import LocalAccount
from web3 import AsyncWeb3

from ethml.chain import (
    EML,
    ModelKind,
    ModelSpec,
    Parameters,
    answer_table,
    commitment_for,
    deploy_system,
    dev_account,
    embedded_chain,
    ethml_contract,
    token_contract,
)
from ethml.chain.embedded import time_travel
from ethml.chain.tx import send
from ethml.pow._reference import search, target_for

ROOT = Path(__file__).resolve().parents[1]
CID = "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG"
MODEL = ModelSpec("bench", CID, "0x" + "11" * 32, ModelKind.CLASSIFICATION, 0, 4)
USER = 9
#: Accounts 10..19 of the embedded chain hold ETH but never committed; they are given EML to bond.
FRESH = list(range(10, 15))
#: New miners that `fund` their balance on the oracle before their first commitment.
FUNDED = list(range(15, 20))
CALLBACK_GAS = 100_000


PREAMBLE = """# Gas

Measured by `make gas` (`python benchmarks/gas_table.py`, then `python benchmarks/training_gas.py`) on
the embedded py-evm chain: the `gasUsed` of real receipts, intrinsic gas included. K is the most
requests a round opens with; "queue N" means the heap holds N requests besides the K that each close
opens the next round with (all tips equal). Every oracle transaction, then **the all-in gas per answered
request**: the K requests, the five commitments, the four plain reveals and the closing reveal of a
round, divided by K. The targets are issue 17's.

A miner's first commitment also creates the miner's storage slot on the oracle (20,000 gas for a slot
that was zero, EIP-2200, which no layout avoids for a new address: a commitment must record the miner to
refuse its second one) and pulls the bond from its EML (a token transfer). The documented path for a new
miner is `fund` once before it mines: `fund` creates the slot and moves EML in, and every commitment
after it, the first included, costs what a returning miner's does (the commit target is met for every
commitment on that path; without it, the first one is the one transaction above 75,000)."""

BUDGET = """**The closing transaction's block-gas budget: 12,500,000 gas** (42 % of a 30,000,000-gas block). A close
runs the round's callbacks and, opening the next round, at most MAX_STALE_EXPIRIES (2) callbacks of
requests expired in the queue, together at most MAX_CALLBACK_GAS_PER_CLOSE (10,000,000) of callback gas
whatever the parameters were when the requests were queued: a round opens with requests whose callback
gas limits fit 10,000,000 less 2 x maxCallbackGasLimit, and the opening expires a stale request with a
callback only while it fits what the close already called (otherwise the request is served). RoundRules
also refuses parameters where (K + 2) x maxCallbackGasLimit passes 10,000,000, so a full round of K always
fits. Measured in forge (the gas of the call, not counting the transaction's 21,000 and calldata): K = 16,
every callback at 555,555 gas and burning all of it, two stale expiries, a queue of a thousand: 10,686,150
(`RoundsTest.test_the_worst_closing_transaction_fits_the_documented_budget`); requests queued with
3,333,333-gas callbacks under K = 1, then K = 16 (a round of two, and one stale expiry of the same size
that still fits): 10,121,522
(`ReviewFixesTest.test_callbacks_queued_under_older_parameters_never_pass_the_close_budget`, which runs
the close with a 12,500,000-gas limit). Both tests fail above the budget. The rows above it: K = 8 and
K = 16 with one 100,000-gas callback per request that burns all of it."""


@dataclass
class Round:
    commits: list[int] = field(default_factory=list)
    reveals: list[int] = field(default_factory=list)
    close: int = 0


async def poke(w3: AsyncWeb3[Any], token: Any) -> None:
    """Any transaction: one more block (the embedded chain mines one per transaction)."""
    await send(w3, dev_account(USER), token.functions.approve(dev_account(8).address, 0))


async def play_round(
    w3: AsyncWeb3[Any], ethml: Any, token: Any, miners: list[LocalAccount], *, withhold_last: bool = False
) -> Round:
    """Commit, reveal and close the open round with `miners`; every answer is 1. With `withhold_last`
    the fifth never reveals and a third party closes after the window."""
    await poke(w3, token)  # commitments are refused in the opening block
    current = await ethml.functions.getCurrentRound().call()
    round_id, challenge, difficulty = int(current[0]), bytes(current[1]), int(current[2])
    count = len(current[9])
    answers = [1] * count
    out = Round()
    for i, miner in enumerate(miners):
        nonce, _ = search(challenge, bytes.fromhex(miner.address[2:]), target_for(difficulty), 0, 1 << 20)
        commitment = commitment_for(round_id, miner.address, answers, _salt(i))
        receipt = await send(w3, miner, ethml.functions.commit(round_id, nonce, commitment))
        out.commits.append(int(receipt["gasUsed"]))
    for i, miner in enumerate(miners[:4]):
        receipt = await send(w3, miner, ethml.functions.reveal(round_id, answers, _salt(i)))
        out.reveals.append(int(receipt["gasUsed"]))
    slots = {i: m.address for i, m in enumerate(miners)}
    if withhold_last:
        who, table = answer_table(slots, {m.address: answers for m in miners[:4]}, count)
        reveal_blocks = int((await ethml.functions.parameters().call())[5])
        for _ in range(reveal_blocks + 1):  # past the reveal window
            await poke(w3, token)
        receipt = await send(w3, dev_account(8), ethml.functions.closeRound(round_id, who, table))
    else:
        who, table = answer_table(slots, {m.address: answers for m in miners}, count)
        receipt = await send(w3, miners[4], ethml.functions.revealAndClose(round_id, _salt(4), who, table))
    out.close = int(receipt["gasUsed"])
    return out


def _salt(i: int) -> bytes:
    return bytes([i + 1]) * 32


async def _fund_fresh(w3: AsyncWeb3[Any], token: Any, indices: list[int]) -> list[LocalAccount]:
    fresh = [dev_account(i) for i in indices]
    for miner in fresh:
        await send(w3, dev_account(0), token.functions.transfer(miner.address, 400 * EML))
    return fresh


async def _fill(w3: AsyncWeb3[Any], ethml: Any, count: int, tip: int) -> None:
    user = dev_account(USER)
    nonce = await w3.eth.get_transaction_count(user.address)
    for _ in range(count):
        await send(w3, user, ethml.functions.requestPrediction(1, CID, tip, 0), gas=400_000, nonce=nonce)
        nonce += 1


async def _top_up(w3: AsyncWeb3[Any], ethml: Any, length: int) -> None:
    """Queue requests (tip 1 EML) until `length` wait behind the open round."""
    await _fill(w3, ethml, max(0, length - int(await ethml.functions.pendingCount().call())), EML)


async def measure(k: int, pending: int) -> dict[str, float]:
    """One deployment, rounds of K requests; the heap holds `pending` requests besides the K that each
    close opens the next round with."""
    w3 = await embedded_chain(accounts=20)
    params = Parameters(min_difficulty=1, max_difficulty=1, requests_per_round=k, reveal_blocks=20)
    deployment = await deploy_system(w3, dev_account(0), parameters=params, models=[MODEL])
    ethml = ethml_contract(w3, deployment.ethml)
    token = token_contract(w3, deployment.token)
    fresh = await _fund_fresh(w3, token, FRESH)
    funded = await _fund_fresh(w3, token, FUNDED)
    funds = [int((await send(w3, m, ethml.functions.fund(100 * EML)))["gasUsed"]) for m in funded]
    user = dev_account(USER)
    await _fill(w3, ethml, 1, EML)  # round 1 opens alone
    await _top_up(w3, ethml, pending + k)
    equal = await send(w3, user, ethml.functions.requestPrediction(1, CID, EML, 0))
    equal_id = int(await ethml.functions.requestCount().call())
    highest = await send(w3, user, ethml.functions.requestPrediction(1, CID, 50 * EML, 0))
    position = await ethml.functions.queuePosition(equal_id).call()
    cancel = await send(w3, user, ethml.functions.cancelRequest(equal_id, position))

    await _top_up(w3, ethml, pending + k)
    await _reopen_if_expired(w3, ethml)
    await play_round(w3, ethml, token, [dev_account(i) for i in range(5)])  # round 1 (one request)
    time_travel(w3, 15)
    await _top_up(w3, ethml, pending + k)
    first = await play_round(w3, ethml, token, fresh)  # fresh miners
    time_travel(w3, 15)
    await _top_up(w3, ethml, pending + k)
    returning = await play_round(w3, ethml, token, fresh)  # returning miners, bonds from their balances
    # fresh[0] takes its whole balance: its next bond is pulled from its EML (in the `late` round).
    claim = await send(w3, fresh[0], ethml.functions.claimRewards())
    time_travel(w3, 15)
    await _top_up(w3, ethml, pending + k)
    funded_first = await play_round(w3, ethml, token, funded)  # new miners that funded first
    time_travel(w3, 15)
    await _top_up(w3, ethml, pending + k)
    late = await play_round(w3, ethml, token, fresh, withhold_last=True)
    # A request that waited past maxQueueBlocks, expired by anyone.
    stale = Parameters(min_difficulty=1, max_difficulty=1, requests_per_round=k, max_queue_blocks=1)
    await send(w3, dev_account(0), ethml.functions.setParameters(stale.as_tuple()))
    await play_round(w3, ethml, token, fresh)  # the change applies at this close
    await _fill(w3, ethml, 2, EML)
    await poke(w3, token)
    await poke(w3, token)
    queued = await _last_queued(ethml)
    position = await ethml.functions.queuePosition(queued).call()
    expire_queued = await send(w3, dev_account(8), ethml.functions.expireQueued(queued, position))
    request_gas = int(equal["gasUsed"])
    all_in = (k * request_gas + sum(returning.commits) + sum(returning.reveals) + returning.close) / k
    return {
        "request_equal_tip": request_gas,
        "request_highest_tip": int(highest["gasUsed"]),
        "commit_first": max(first.commits),
        "fund_first": max(funds),
        "commit_funded_first": max(funded_first.commits),
        "commit": max(returning.commits),
        "commit_claimed": late.commits[0],
        "reveal": max(first.reveals + returning.reveals),
        "close": returning.close,
        "close_round": late.close,
        "claim_first": int(claim["gasUsed"]),
        "cancel": int(cancel["gasUsed"]),
        "expire_queued": int(expire_queued["gasUsed"]),
        "all_in": all_in,
    }


async def _reopen_if_expired(w3: AsyncWeb3[Any], ethml: Any) -> None:
    """Filling a long queue outlasts the first round's commit window: expire it (no commitments yet),
    which opens the next round (round 2 below is then round 3, and so on)."""
    current = await ethml.functions.getCurrentRound().call()
    if await w3.eth.block_number >= int(current[6]):
        await send(w3, dev_account(USER), ethml.functions.expireRound(int(current[0]), []))
        await _top_up(w3, ethml, int(await ethml.functions.pendingCount().call()) + 1)


async def _last_queued(ethml: Any) -> int:
    count = int(await ethml.functions.requestCount().call())
    for rid in range(count, 0, -1):
        if int(await ethml.functions.requestStatus(rid).call()) == 1:
            return rid
    raise RuntimeError("no queued request left")


def heavy_consumer() -> tuple[list[dict[str, Any]], str]:
    """HeavyConsumer (contracts/test/Consumers.sol: burns all the callback gas it gets), built by forge."""
    path = ROOT / "build" / "forge-out" / "Consumers.sol" / "HeavyConsumer.json"
    if not path.exists():
        subprocess.run([str(ROOT / "node_modules" / ".bin" / "forge"), "build"], cwd=ROOT, check=True)
    data = json.loads(path.read_text())
    return data["abi"], data["bytecode"]["object"]


async def measure_callbacks(k: int) -> int:
    """The close of a round of K requests, each with a 100,000-gas callback that uses all of it."""
    w3 = await embedded_chain(accounts=20)
    params = Parameters(min_difficulty=1, max_difficulty=1, requests_per_round=k, max_callback_gas_limit=500_000)
    deployment = await deploy_system(w3, dev_account(0), parameters=params, models=[MODEL])
    ethml = ethml_contract(w3, deployment.ethml)
    token = token_contract(w3, deployment.token)
    abi, bytecode = heavy_consumer()
    factory: Any = w3.eth.contract(abi=abi, bytecode=bytecode)
    user = dev_account(USER)
    receipt = await send(w3, user, factory.constructor(deployment.ethml))
    consumer = w3.eth.contract(address=receipt["contractAddress"], abi=abi)
    await _fill(w3, ethml, 1, 0)  # round 1, alone
    deposit = int(await ethml.functions.minimumDeposit(CALLBACK_GAS).call()) * 4
    for _ in range(k):
        await send(w3, user, consumer.functions.request(1, CID, CALLBACK_GAS), value=deposit)
    miners = [dev_account(i) for i in range(5)]
    await play_round(w3, ethml, token, miners)
    time_travel(w3, 15)
    played = await play_round(w3, ethml, token, miners)
    reimbursed = await ethml.events.CallbackReimbursed().get_logs(from_block=0)
    if len(reimbursed) != k:
        raise RuntimeError(f"{len(reimbursed)} callbacks for {k} requests")
    return played.close


async def main(ks: list[int], sizes: list[int]) -> str:
    rows: dict[tuple[int, int], dict[str, float]] = {}
    for k in ks:
        for n in sizes:
            started = time.monotonic()
            rows[(k, n)] = await measure(k, n)
            print(f"K {k}, queue {n}: measured in {time.monotonic() - started:.1f} s", flush=True)
    callbacks = {k: await measure_callbacks(k) for k in (8, 16)}
    labels: list[tuple[str, str, str]] = [
        ("request_equal_tip", "requestPrediction (tip equal to the queue)", "<= 160,000"),
        ("request_highest_tip", "requestPrediction (new highest tip, worst case)", "<= 160,000"),
        ("commit", "commit, returning miner (bond from its balance here; largest of five)", "<= 75,000"),
        (
            "commit_claimed",
            "commit, returning miner that claimed its whole balance (bond pulled from its EML)",
            "-",
        ),
        ("fund_first", "fund, a new miner's first (creates its slot; the documented path)", "-"),
        (
            "commit_funded_first",
            "commit, a new miner's first after `fund` (bond from its balance; largest of five)",
            "<= 75,000",
        ),
        ("commit_first", "commit, a new miner's first without `fund` (slot created, bond from its EML)", "-"),
        ("reveal", "reveal, non-closing (largest of 1st-4th)", "<= 60,000 + 1,000 x K"),
        ("close", "revealAndClose: the fifth reveal and the close (no callbacks)", "-"),
        ("close_round", "closeRound after the window, 4 of 5 revealed (a third party)", "-"),
        ("claim_first", "claimRewards, first claim", "-"),
        ("cancel", "cancelRequest (last in the queue)", "-"),
        ("expire_queued", "expireQueued (a request past maxQueueBlocks, no callback)", "-"),
        (
            "all_in",
            "**all in per answered request** (K requests, 5 commits, 4 reveals, the close) / K",
            "<= 300,000 at K = 8",
        ),
    ]
    head = "| transaction | " + " | ".join(f"K {k}, queue {n}" for k in ks for n in sizes) + " | target |"
    sep = "|---|" + "---:|" * (len(ks) * len(sizes)) + "---|"
    lines = [*PREAMBLE.splitlines(), "", head, sep]
    for key, label, target in labels:
        cells = " | ".join(f"{int(rows[(k, n)][key]):,}" for k in ks for n in sizes)
        lines.append(f"| {label} | {cells} | {target} |")
    lines.append("")
    lines.append("| closing transaction with a 100,000-gas callback per request, each burning all of it | gas |")
    lines.append("|---|---:|")
    for k, gas in callbacks.items():
        lines.append(f"| revealAndClose, K = {k}, empty queue | {gas:,} |")
    lines += ["", *BUDGET.splitlines()]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", default="1,4,8", help="comma-separated round sizes K")
    parser.add_argument("--sizes", default="1,100,1000", help="comma-separated queue lengths")
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    args = parser.parse_args()
    table = asyncio.run(main([int(s) for s in args.ks.split(",")], [int(s) for s in args.sizes.split(",")]))
    print(table)
    if args.out:
        args.out.write_text(table + "\n")
