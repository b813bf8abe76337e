"""`ethml demo`: the whole oracle in one process on the embedded chain, with a results table."""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import structlog
from web3.logs import DISCARD

from ethml.chain import (
    EML,
    INVALID_INPUT,
    Parameters,
    Status,
    consumer_contract,
    deploy_system,
    dev_account,
    embedded_chain,
    ethml_contract,
    send,
    token_contract,
)
from ethml.ipfs import Blockstore, IpfsClient
from ethml.ml import Manifest, decode_prediction
from ethml.node import ChallengeSeen, Finalized, Node, NodeConfig
from ethml.requester import consumer_deposit

INVALID_POINT = b'{"features": [1.0, 2.0]}\n'


@dataclass
class DemoRow:
    request_id: int
    model: str
    data_cid: str
    tip_eml: float
    status: str = "pending"
    prediction: float | int | None = None
    raw_prediction: int | None = None
    truth: float | int | None = None
    agreeing: int = 0
    seconds: float | None = None
    #: The round that answered it, and the gas of the transaction that closed that round (shared by its
    #: requests).
    round_id: int = 0
    final_gas: int | None = None


@dataclass
class DemoReport:
    rows: list[DemoRow]
    minted_per_miner: dict[str, float] = field(default_factory=dict)
    total_hashes: int = 0
    accuracy: float | None = None
    regression_mae: float | None = None
    wall_seconds: float = 0.0
    difficulty: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _plan(manifest: Manifest, count: int) -> list[tuple[str, bytes, float | int | None, float]]:
    """(model, data point, true label, tip in EML): round-robin over models and points, one invalid."""
    pool = [
        (entry.name, manifest.data_point_path(p).read_bytes(), p.label)
        for i in range(max(len(e.data_points) for e in manifest.models))
        for entry in manifest.models
        for j, p in enumerate(entry.data_points)
        if j == i
    ]
    plan: list[tuple[str, bytes, float | int | None, float]] = []
    for i in range(count - 1):
        name, raw, label = pool[i % len(pool)]
        plan.append((name, raw, label, 1.0 if i % 2 == 0 else 0.0))
    plan.insert(min(2, len(plan)), (manifest.models[0].name, INVALID_POINT, None, 0.0))
    return plan


async def run_demo(
    *,
    requests: int = 8,
    difficulty: int = 1 << 16,
    nodes: int = 5,
    progress: Callable[[str], None] | None = None,
    data_dir: Path | None = None,
) -> DemoReport:
    if nodes < 5:
        raise ValueError("the oracle needs at least 5 nodes to finalize a request")
    if requests < 1:
        raise ValueError("--requests must be at least 1")
    started = time.monotonic()
    say = progress or (lambda _m: None)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    say("starting the embedded chain and deploying ...")
    w3 = await embedded_chain(accounts=max(10, nodes + 1))
    manifest = Manifest.load()
    deployment = await deploy_system(
        w3,
        dev_account(0),
        parameters=Parameters(min_difficulty=difficulty, max_difficulty=difficulty),
        models=manifest.registry_specs(),
    )
    ethml = ethml_contract(w3, deployment.ethml)
    token = token_contract(w3, deployment.token)
    consumer = consumer_contract(w3, deployment.consumer)
    user = dev_account(nodes)  # the requester is not one of the miners
    await send(w3, dev_account(0), token.functions.transfer(user.address, 100 * EML))
    with tempfile.TemporaryDirectory(prefix="ethml-demo-") as tmp:
        root = data_dir or Path(tmp)
        ipfs = IpfsClient(Blockstore(root / "blocks"))
        config = NodeConfig(threads=1, poll_interval=0.05, data_dir=root, fetch_retry_seconds=1.0)
        miners = [Node(w3=w3, deployment=deployment, account=dev_account(i), config=config) for i in range(nodes)]
        for node in miners:
            await node.start()
        stream = miners[0].events()
        rows: dict[int, DemoRow] = {}
        truths: dict[int, Any] = {}
        became_current: dict[int, float] = {}
        total_tips = sum(int(t * EML) for *_, t in _plan(manifest, requests))
        if total_tips:
            await send(w3, user, token.functions.approve(deployment.consumer, total_tips))
        deposit = await consumer_deposit(w3, deployment)  # pays the consumer's callback
        for name, raw, label, tip in _plan(manifest, requests):
            cid = str(ipfs.add_bytes(raw))
            entry = manifest.by_name(name)
            receipt = await send(w3, user, consumer.functions.request(entry.id, cid, int(tip * EML)), value=deposit)
            rid = int(
                ethml.events.PredictionRequested().process_receipt(receipt, errors=DISCARD)[0]["args"]["requestId"]
            )
            if ethml.events.RoundOpened().process_receipt(receipt, errors=DISCARD):
                became_current[rid] = time.monotonic()  # the queue was idle: current at once
            rows[rid] = DemoRow(rid, name, cid, tip)
            truths[rid] = label
        say(f"{len(rows)} requests sent; {nodes} nodes mining at difficulty {difficulty:,}")
        done = 0
        async for event in stream:
            if isinstance(event, ChallengeSeen):
                for rid in event.request_ids:
                    became_current.setdefault(rid, time.monotonic())
            if isinstance(event, Finalized) and event.request_id in rows:
                row = rows[event.request_id]
                entry = manifest.by_name(row.model)
                row.status = Status(event.status).name.lower()
                row.raw_prediction = event.prediction
                row.prediction = (
                    None
                    if event.prediction == INVALID_INPUT
                    else decode_prediction(event.prediction, entry.kind, entry.decimals)
                )
                row.truth = truths[row.request_id]
                row.seconds = round(time.monotonic() - became_current.get(row.request_id, started), 3)
                done += 1
                hashrate = sum(n.stats.hashrate for n in miners)
                say(
                    f"finalized {done}/{len(rows)} (request {row.request_id}: {row.status}) | {hashrate / 1e6:.1f} MH/s"
                )
                if done == len(rows):
                    break
        await stream.aclose()
        stats = [n.stats for n in miners]
        await asyncio.gather(*(node.stop() for node in miners))
    # The round, the closing transaction's gas and the agreeing miners from the chain's own record.
    for log in await ethml.events.PredictionFinalized().get_logs(from_block=deployment.block):
        closed = rows.get(int(log["args"]["requestId"]))
        if closed is not None:
            row = closed
            row.agreeing = int(log["args"]["agreeing"])
            row.round_id = int(log["args"]["roundId"])
            receipt = await w3.eth.get_transaction_receipt(log["transactionHash"])
            row.final_gas = int(receipt["gasUsed"])
    report = DemoReport(list(rows.values()), difficulty=difficulty)
    report.minted_per_miner = {dev_account(i).address: s.rewards / EML for i, s in enumerate(stats)}
    report.total_hashes = sum(s.hashes for s in stats)
    classified = [r for r in report.rows if r.truth is not None and manifest.by_name(r.model).is_classifier]
    if classified:
        report.accuracy = sum(r.prediction == r.truth for r in classified) / len(classified)
    regressed = [r for r in report.rows if r.truth is not None and not manifest.by_name(r.model).is_classifier]
    if regressed:
        report.regression_mae = sum(abs(float(r.prediction or 0) - float(r.truth or 0)) for r in regressed) / len(
            regressed
        )
    report.wall_seconds = round(time.monotonic() - started, 2)
    return report


def render(report: DemoReport) -> str:
    head = (
        f"{'id':>3} {'model':<14} {'data CID':<18} {'tip':>4} {'status':<13} {'prediction':>10} "
        f"{'truth':>7} {'agree':>5} {'secs':>6} {'round':>5} {'close gas':>9}"
    )
    lines = [head, "-" * len(head)]
    for r in report.rows:
        pred = f"{r.prediction}" if r.prediction is not None else ("invalid" if r.status == "invalid_input" else "-")
        truth = "-" if r.truth is None else f"{r.truth:g}"
        cid = r.data_cid[:8] + ".." + r.data_cid[-6:]
        lines.append(
            f"{r.request_id:>3} {r.model:<14} {cid:<18} {r.tip_eml:>4g} {r.status:<13} "
            f"{pred:>10} {truth:>7} {r.agreeing:>5} {r.seconds or 0:>6.2f} {r.round_id:>5} {r.final_gas or 0:>9,}"
        )
    lines.append("")
    rounds = len({r.round_id for r in report.rows if r.round_id})
    lines.append(
        f"{len(report.rows)} requests answered in {rounds} rounds (close gas: the round's closing transaction)"
    )
    for address, minted in report.minted_per_miner.items():
        lines.append(f"  {address}: {minted:g} EML earned")
    if report.accuracy is not None:
        lines.append(f"classification accuracy against the true labels: {report.accuracy:.0%}")
    if report.regression_mae is not None:
        lines.append(f"regression mean absolute error: {report.regression_mae:.2f}")
    lines.append(
        f"{report.total_hashes:,} hashes at difficulty {report.difficulty:,}; "
        f"{len(report.rows)} requests in {report.wall_seconds:g} s"
    )
    return "\n".join(lines)
