"""End to end on anvil: five `ethml mine` processes, requests from a client, time to finalization.

    python benchmarks/e2e_latency.py [--requests 30] [--burst 30] [--difficulty 65536] [--poll 0.1]
                                     [--block-time 1]

1. Latency: requests one at a time (through the example consumer, so the close calls it back); for
   each, from the receipt of the request transaction until requestStatus says it is closed (polled
   every 10 ms; the callback runs in the closing transaction). Anvil automines unless --block-time.
2. Throughput: `--burst` requests queued at once, until the last is closed: requests per minute.
3. Memory: each miner's resident set size (VmRSS) at the end, models loaded.
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
from pathlib import Path
from typing import Any

from web3 import AsyncHTTPProvider, AsyncWeb3

from ethml.chain import Status, dev_account, ethml_contract
from ethml.devnet import start_devnet
from ethml.ipfs import Blockstore, IpfsClient
from ethml.ml import Manifest
from ethml.requester import request_prediction


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def closed(ethml: Any, rid: int) -> bool:
    status = Status(await ethml.functions.requestStatus(rid).call())
    return status.closed


async def main(args: argparse.Namespace) -> None:
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        net = await start_devnet(
            port=port, difficulty=args.difficulty, data_dir=data_dir, block_time=args.block_time or None
        )
        env = {**os.environ, "ETHML_DATA_DIR": str(data_dir), "ETHML_RPC": net.url}
        miners = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "ethml",
                    "mine",
                    "--account",
                    str(i),
                    "--threads",
                    "1",
                    "--poll-interval",
                    str(args.poll),
                    "--log-format",
                    "json",
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for i in range(5)
        ]
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
            user = dev_account(9)
            # Warm-up: the first request waits for five Python processes to import, load their models and
            # make their first log poll; it is reported separately, not counted below.
            warm_start = time.perf_counter()
            warm = await request_prediction(w3, net.deployment, user, *points[0], 0)
            while not await closed(ethml, warm):
                await asyncio.sleep(0.01)
            warm_up = time.perf_counter() - warm_start
            latencies = []
            for i in range(args.requests):
                model_id, cid = points[i % len(points)]
                rid = await request_prediction(w3, net.deployment, user, model_id, cid, 0)
                started = time.perf_counter()
                while not await closed(ethml, rid):
                    await asyncio.sleep(0.01)
                latencies.append(time.perf_counter() - started)
            burst_start = time.perf_counter()
            ids = [
                await request_prediction(w3, net.deployment, user, *points[i % len(points)], 0)
                for i in range(args.burst)
            ]
            while not await closed(ethml, ids[-1]):
                await asyncio.sleep(0.05)
            burst = time.perf_counter() - burst_start
            memory = [rss_mb(m.pid) for m in miners]
        finally:
            for m in miners:
                m.send_signal(signal.SIGINT)
            for m in miners:
                m.wait(timeout=20)
            await w3.provider.disconnect()
            net.stop()
    q = statistics.quantiles(latencies, n=20)
    blocks = f"{args.block_time:g}-second blocks" if args.block_time else "automine"
    print(f"difficulty {args.difficulty:,}, 5 miners x 1 thread, log poll every {args.poll:g} s, anvil {blocks}")
    print(f"warm-up request (miners still starting): {warm_up:.2f} s")
    print(
        f"latency over {len(latencies)} requests: median {statistics.median(latencies):.3f} s, p95 {q[18]:.3f} s, "
        f"max {max(latencies):.3f} s"
    )
    print(
        f"throughput: {args.burst} queued requests closed in {burst:.1f} s = "
        f"{args.burst / burst * 60:.0f} requests/minute"
    )
    print("miner resident memory: " + ", ".join(f"{m:.0f} MB" for m in memory))
    print("each latency (s): " + " ".join(f"{t:.2f}" for t in latencies))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--burst", type=int, default=30)
    parser.add_argument("--difficulty", type=int, default=1 << 16)
    parser.add_argument("--poll", type=float, default=0.1, help="the miners' --poll-interval (devnet default 0.1)")
    parser.add_argument("--block-time", type=float, default=0.0, help="anvil's block time in seconds (0: automine)")
    asyncio.run(main(parser.parse_args()))
