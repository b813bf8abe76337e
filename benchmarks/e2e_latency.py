"""End to end on anvil, rounds of one request against rounds of eight: five `ethml mine` processes, a
burst of requests posted at once, requests answered per minute and the request-to-result latency.

    python benchmarks/e2e_latency.py [--requests 40] [--ks 1,8] [--difficulty 65536] [--poll 0.1]
                                     [--block-time 0]

For each K, one after the other in this run: a fresh devnet (anvil, automine unless --block-time) whose
rounds take up to K requests, five `ethml mine` processes (one search thread each), one warm-up request
(the miners import, load their models and make their first poll; not counted), then `--requests`
requests signed beforehand and sent at once from one account (no callback). Each request's latency runs
from the moment the burst was sent until the oracle's PredictionFinalized (or RequestExpired) log for it
is seen (logs polled every 20 ms); throughput is the burst over the time until its last request closed.
Prints the two side by side with their ratio, the rounds each took, and the CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hexbytes import HexBytes
from web3 import AsyncHTTPProvider, AsyncWeb3

from ethml.chain import Status, dev_account, ethml_contract
from ethml.chain.tx import fee_fields
from ethml.devnet import start_devnet
from ethml.ipfs import Blockstore, IpfsClient
from ethml.ml import Manifest
from ethml.pow.tune import cpu_model
from ethml.requester import request_prediction

USER = 9


@dataclass
class Run:
    k: int
    latencies: list[float]
    seconds: float
    rounds: int
    statuses: dict[str, int]
    warm_up: float

    @property
    def per_minute(self) -> float:
        return len(self.latencies) / self.seconds * 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_miners(url: str, data_dir: Path, poll: float) -> list[subprocess.Popen[bytes]]:
    env = {**os.environ, "ETHML_DATA_DIR": str(data_dir), "ETHML_RPC": url}
    command = [sys.executable, "-m", "ethml", "mine", "--threads", "1", "--poll-interval", str(poll)]
    return [
        subprocess.Popen(
            [*command, "--account", str(i), "--log-format", "json"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for i in range(5)
    ]


async def closed(ethml: Any, rid: int) -> bool:
    return Status(await ethml.functions.requestStatus(rid).call()).closed


async def burst(w3: AsyncWeb3[Any], ethml: Any, points: list[tuple[int, str]], count: int) -> tuple[float, list[int]]:
    """Sign `count` requests with consecutive nonces, then send them all at once; (send time, their ids)."""
    user = dev_account(USER)
    nonce = await w3.eth.get_transaction_count(user.address)
    chain_id = await w3.eth.chain_id
    fees = await fee_fields(w3)
    first_id = int(await ethml.functions.requestCount().call()) + 1
    raws = []
    for i in range(count):
        model_id, cid = points[i % len(points)]
        tx = await ethml.functions.requestPrediction(model_id, cid, 0, 0).build_transaction(
            {"from": user.address, "nonce": nonce + i, "gas": 400_000, "chainId": chain_id, **fees}
        )
        raws.append(user.sign_transaction(tx).raw_transaction)
    started = time.perf_counter()
    await asyncio.gather(*(w3.eth.send_raw_transaction(HexBytes(raw)) for raw in raws))
    return started, list(range(first_id, first_id + count))


async def watch(
    ethml: Any, ids: list[int], started: float, from_block: int
) -> tuple[dict[int, float], set[int], dict[str, int]]:
    """Wall-clock latency of each request until its closing log appears; the rounds that closed them."""
    done: dict[int, float] = {}
    rounds: set[int] = set()
    statuses: dict[str, int] = {}
    wanted = set(ids)
    while len(done) < len(ids):
        for log in await ethml.events.PredictionFinalized().get_logs(from_block=from_block):
            rid = int(log["args"]["requestId"])
            if rid in wanted and rid not in done:
                done[rid] = time.perf_counter() - started
                rounds.add(int(log["args"]["roundId"]))
                label = Status(int(log["args"]["status"])).label
                statuses[label] = statuses.get(label, 0) + 1
        for log in await ethml.events.RequestExpired().get_logs(from_block=from_block):
            rid = int(log["args"]["requestId"])
            if rid in wanted and rid not in done:
                done[rid] = time.perf_counter() - started
                statuses["expired"] = statuses.get("expired", 0) + 1
        if time.perf_counter() - started > 1_800:
            raise RuntimeError(f"only {len(done)} of {len(ids)} requests closed in 30 minutes")
        await asyncio.sleep(0.02)
    return done, rounds, statuses


async def run(k: int, args: argparse.Namespace) -> Run:
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        net = await start_devnet(
            port=port,
            difficulty=args.difficulty,
            data_dir=data_dir,
            block_time=args.block_time or None,
            requests_per_round=k,
        )
        miners = start_miners(net.url, data_dir, args.poll)
        w3: AsyncWeb3[Any] = AsyncWeb3(AsyncHTTPProvider(net.url))
        try:
            ethml = ethml_contract(w3, net.deployment.ethml)
            manifest = Manifest.load()
            ipfs = IpfsClient(Blockstore(data_dir / "blocks"))
            points = [
                (e.id, str(ipfs.add_bytes(manifest.data_point_path(p).read_bytes())))
                for e in manifest.models
                for p in e.data_points
            ]
            warm_start = time.perf_counter()
            warm = await request_prediction(w3, net.deployment, dev_account(USER), *points[0], 0, direct=True)
            while not await closed(ethml, warm):
                await asyncio.sleep(0.02)
            warm_up = time.perf_counter() - warm_start
            from_block = int(await w3.eth.block_number)
            started, ids = await burst(w3, ethml, points, args.requests)
            done, rounds, statuses = await watch(ethml, ids, started, from_block)
        finally:
            for m in miners:
                m.send_signal(signal.SIGINT)
            for m in miners:
                m.wait(timeout=30)
            await w3.provider.disconnect()
            net.stop()
    latencies = [done[rid] for rid in ids]
    return Run(k, latencies, max(latencies), len(rounds), statuses, warm_up)


def report(runs: list[Run], args: argparse.Namespace) -> str:
    blocks = f"{args.block_time:g}-second blocks" if args.block_time else "automine"
    lines = [
        f"{args.requests} requests sent at once; 5 `ethml mine` x 1 thread, difficulty {args.difficulty:,}, "
        f"log polls every {args.poll:g} s; anvil {blocks}; CPU: {cpu_model()}",
        "",
        "| | " + " | ".join(f"K = {r.k}" for r in runs) + " |",
        "|---|" + "---:|" * len(runs),
        "| requests answered per minute | " + " | ".join(f"{r.per_minute:.0f}" for r in runs) + " |",
        "| median latency, burst to result (s) | "
        + " | ".join(f"{statistics.median(r.latencies):.2f}" for r in runs)
        + " |",
        "| p90 latency (s) | " + " | ".join(f"{statistics.quantiles(r.latencies, n=10)[8]:.2f}" for r in runs) + " |",
        "| last request closed after (s) | " + " | ".join(f"{r.seconds:.1f}" for r in runs) + " |",
        "| rounds | " + " | ".join(str(r.rounds) for r in runs) + " |",
        "| outcomes | " + " | ".join(", ".join(f"{n} {s}" for s, n in sorted(r.statuses.items())) for r in runs) + " |",
        "| warm-up request, not counted (s) | " + " | ".join(f"{r.warm_up:.1f}" for r in runs) + " |",
    ]
    if len(runs) == 2:
        a, b = runs
        lines += [
            "",
            f"K = {b.k} against K = {a.k}: {b.per_minute / a.per_minute:.1f}x the requests per minute, median latency "
            f"{statistics.median(b.latencies) / statistics.median(a.latencies):.2f}x",
        ]
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> None:
    runs = []
    for k in [int(x) for x in args.ks.split(",")]:
        print(f"K = {k}: devnet, five miners, {args.requests} requests ...", file=sys.stderr, flush=True)
        runs.append(await run(k, args))
    print(report(runs, args))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=40, help="requests in the burst")
    parser.add_argument("--ks", default="1,8", help="comma-separated round sizes to compare")
    parser.add_argument("--difficulty", type=int, default=1 << 16)
    parser.add_argument("--poll", type=float, default=0.1, help="the miners' --poll-interval (devnet default 0.1)")
    parser.add_argument("--block-time", type=float, default=0.0, help="anvil's block time in seconds (0: automine)")
    asyncio.run(main(parser.parse_args()))
