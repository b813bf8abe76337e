"""Time from a data point's CID to the encoded prediction, from the local blockstore.

Each iteration: read and verify the blocks by CID, parse the JSON data point, run the model on the
prediction thread pool, encode the result as the int256 a miner submits. Models are loaded once
beforehand, as the node does.

Run: python benchmarks/cid_to_prediction.py [--rounds 200]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from ethml.ipfs import Blockstore, IpfsClient
from ethml.ml import Manifest, ModelStore


async def main(rounds: int) -> None:
    manifest = Manifest.load()
    store = ModelStore(manifest)
    with tempfile.TemporaryDirectory() as tmp:
        client = IpfsClient(Blockstore(Path(tmp)))
        cases = []
        for entry in manifest.models:
            model = store.get(entry.name)
            for point in entry.data_points:
                cid = client.add_bytes(manifest.data_point_path(point).read_bytes())
                cases.append((entry.name, model, str(cid)))
        for _, model, cid in cases:  # warm-up: thread pool, sklearn's first-call paths
            await store.predict(model, await client.cat(cid))
        per_model: dict[str, list[float]] = {}
        for _ in range(rounds):
            for name, model, cid in cases:
                started = time.perf_counter()
                await store.predict(model, await client.cat(cid))
                per_model.setdefault(name, []).append((time.perf_counter() - started) * 1e3)
        await client.close()
    store.close()
    everything = [t for times in per_model.values() for t in times]
    print(f"{'model':<14} {'median ms':>10} {'p95 ms':>8}")
    for name, times in per_model.items():
        q = statistics.quantiles(times, n=20)
        print(f"{name:<14} {statistics.median(times):>10.3f} {q[18]:>8.3f}")
    q = statistics.quantiles(everything, n=20)
    print(f"{'all':<14} {statistics.median(everything):>10.3f} {q[18]:>8.3f}   ({len(everything)} predictions)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    asyncio.run(main(parser.parse_args().rounds))
