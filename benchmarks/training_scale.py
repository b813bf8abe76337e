"""Training that outgrows one core: one forest task trained locally on one core and on a Dask
LocalCluster of two single-threaded worker processes, side by side in one run.

    python benchmarks/training_scale.py [--rows 1000000] [--features 10] [--trees 200] [--depth 10] [--json]

The task is a generated classification dataset (`make_classification`, seeded) as CSV, with a
RandomForestClassifier spec; both runs go through the product's `fit_and_claim` (CSV parsing, holdout
split, fit, claimed score, canonical artifact) in a fresh process each: the local one single-threaded
(one core's work at any moment; it is not pinned to a CPU, since on a shared machine a pinned process
pushes the other load onto the other core and gets a core to itself, which no worker of the cluster
run gets), the cluster one as the job's driver with the trees on the two Dask workers (the figure
that says the cluster path scales per worker, as it would across hosts). Reported: wall time of the job, peak
resident memory of every process (the driver, each Dask worker), and the sha256 of both artifacts,
which must be equal. Goal on two cores: the cluster at least 1.7x faster, identical artifacts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

TASK_ID = 2026
GOAL = 1.7


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def peak_mb() -> float:
    """This process's peak resident memory (Linux: ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds() -> float:
    """CPU time (user + system) this process has used."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def write_dataset(path: Path, rows: int, features: int) -> None:
    """The CSV in chunks of 100,000 rows, so generating a million rows stays near 200 MB."""
    from sklearn.datasets import make_classification

    x, y = make_classification(rows, features, n_informative=max(2, features // 2), random_state=7, flip_y=0.05)
    header = ",".join([*(f"f{i}" for i in range(features)), "target"])
    with path.open("w") as out:
        out.write(header + "\n")
        for start in range(0, rows, 100_000):
            chunk = np.column_stack([x[start : start + 100_000], y[start : start + 100_000]])
            np.savetxt(out, chunk, fmt=["%.5g"] * features + ["%d"], delimiter=",")


def spec_for(features: int, trees: int, depth: int) -> Any:
    from ethml.training import parse_spec

    return parse_spec(
        {
            "target": "target",
            "features": [f"f{i}" for i in range(features)],
            "estimator": {"name": "RandomForestClassifier", "params": {"n_estimators": trees, "max_depth": depth}},
            "metric": "accuracy",
            "max_train_seconds": 3600,
        }
    )


def run_job(args: argparse.Namespace) -> None:
    """One side, in its own process: print {seconds, peak_mb, sha256, claimed} as JSON."""
    from ethml.training.cluster import Cluster
    from ethml.training.jobs import fit_and_claim
    from ethml.training.spec import TrainingLimits

    data = Path(args.data).read_bytes()
    limits = TrainingLimits(max_rows=args.rows, max_dataset_bytes=len(data), max_train_seconds=3600)
    cluster = Cluster(args.address) if args.address else None
    started, cpu = time.perf_counter(), cpu_seconds()
    trained = fit_and_claim(spec_for(args.features, args.trees, args.depth), data, TASK_ID, limits, cluster)
    out = {
        "seconds": time.perf_counter() - started,
        "cpu_seconds": cpu_seconds() - cpu,
        "peak_mb": peak_mb(),
        "sha256": trained.sha256,
        "claimed": trained.claimed_score,
    }
    print(json.dumps(out))


def _warm_up() -> None:
    """What a cluster's workers have done after their first job: imported the fitting code."""
    import sklearn.ensemble  # noqa: F401

    import ethml.training.cluster  # noqa: F401


def _worker_peak() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def side(args: argparse.Namespace, data: Path, address: str | None) -> dict[str, Any]:
    argv = [sys.executable, __file__, "--_job", "--data", str(data), "--rows", str(args.rows)]
    argv += ["--features", str(args.features), "--trees", str(args.trees), "--depth", str(args.depth)]
    if address:
        argv += ["--address", address]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the {'cluster' if address else 'local'} run failed:\n{done.stderr[-4000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=10)
    parser.add_argument("--trees", type=int, default=200)
    parser.add_argument("--depth", type=int, default=10)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--_job", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._job:
        run_job(args)
        return

    from distributed import Client

    from ethml.training.cluster import LocalDaskCluster

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "task.csv"
        made = time.perf_counter()
        write_dataset(data, args.rows, args.features)
        print(
            f"dataset: {args.rows:,} rows x {args.features} features, {data.stat().st_size / 2**20:.0f} MiB CSV "
            f"(made in {time.perf_counter() - made:.0f} s); forest: {args.trees} trees, max_depth {args.depth}",
            file=sys.stderr,
        )
        print("local run (one single-threaded process)...", file=sys.stderr)
        local = side(args, data, None)
        print(f"  {local['seconds']:.1f} s", file=sys.stderr)
        with LocalDaskCluster(2) as cluster:
            client = Client(cluster.address, set_as_default=False)
            client.wait_for_workers(2, timeout=60)
            client.run(_warm_up)
            before = client.run(cpu_seconds)
            print("cluster run (two single-threaded Dask worker processes)...", file=sys.stderr)
            remote = side(args, data, cluster.address)
            print(f"  {remote['seconds']:.1f} s", file=sys.stderr)
            after = client.run(cpu_seconds)
            workers = client.run(_worker_peak)
            client.close()
        remote["cpu_seconds"] += sum(after[w] - before[w] for w in after if w in before)
    result = {
        "cpu": cpu_name(),
        "cores": len(os.sched_getaffinity(0)),
        "rows": args.rows,
        "features": args.features,
        "trees": args.trees,
        "max_depth": args.depth,
        "local": local,
        "cluster": {**remote, "driver_peak_mb": remote["peak_mb"], "worker_peak_mb": sorted(workers.values())},
        "speedup": local["seconds"] / remote["seconds"],
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "identical": local["sha256"] == remote["sha256"],
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"CPU: {result['cpu']} ({result['cores']} cores available; load average {load_before:.1f} before, "
            f"{result['load_average'][1]:.1f} after: other work on the machine slows both runs)"
        )
        print("| run | wall time | CPU time | peak memory per process | artifact sha256 |")
        print("|---|---:|---:|---|---|")
        print(
            f"| local, one single-threaded process | {local['seconds']:.1f} s | {local['cpu_seconds']:.0f} s "
            f"| {local['peak_mb']:.0f} MB | `{local['sha256'][:16]}…` |"
        )
        worker_mb = ", ".join(f"{mb:.0f}" for mb in sorted(workers.values()))
        print(
            f"| LocalCluster, 2 single-threaded workers | {remote['seconds']:.1f} s | {remote['cpu_seconds']:.0f} s | "
            f"driver {remote['peak_mb']:.0f} MB; workers {worker_mb} MB | `{remote['sha256'][:16]}…` |"
        )
        print(
            f"speedup {result['speedup']:.2f}x (goal {GOAL}x), artifacts "
            + ("identical" if result["identical"] else "DIFFERENT")
        )
    if not result["identical"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
