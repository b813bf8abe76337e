"""What syncing each block costs an upload: a file added to a plain blockstore and to a durable one (each
block and its directory synced before `put` returns, as `ethml serve` stores uploads), side by side in
turns, each into a fresh directory on the disk of `--dir`. Prints the median seconds of each.

    python benchmarks/blockstore_write.py [--mib 16] [--rounds 5] [--dir .]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from ethml.ipfs import Blockstore, IpfsClient, IpfsConfig
from ethml.pow.tune import cpu_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=16, help="file size in MiB (default 16, an upload's limit)")
    parser.add_argument("--rounds", type=int, default=5, help="files added to each kind of blockstore")
    parser.add_argument("--dir", type=Path, default=Path("."), help="where the blockstores go (its disk is measured)")
    args = parser.parse_args()
    if args.mib < 1 or args.rounds < 1:
        parser.error("--mib and --rounds must be at least 1")
    times: dict[bool, list[float]] = {False: [], True: []}
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="ethml-bench-") as root:
        for n in range(args.rounds):
            for durable in (False, True):
                client = IpfsClient(Blockstore(Path(root) / f"{n}-{durable}", durable=durable), IpfsConfig())
                data = os.urandom(args.mib * 2**20)
                started = time.perf_counter()
                client.add_bytes(data, 1)
                times[durable].append(time.perf_counter() - started)
    plain, synced = statistics.median(times[False]), statistics.median(times[True])
    print(f"CPU: {cpu_model()}; {args.mib} MiB files, median of {args.rounds} each, on the disk of {args.dir}")
    print(f"plain blockstore   {plain:.3f} s")
    print(f"durable blockstore {synced:.3f} s  ({synced / plain:.2f}x)")


if __name__ == "__main__":
    main()
