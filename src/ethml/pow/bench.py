"""Hash-rate benchmark of every search path, 1..N threads, and the pure-Python reference, in one run."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from ethml.pow.core import StopFlag, available_paths, find_nonce
from ethml.pow.parallel import parallel_search

CHALLENGE = bytes(range(32))
MINER = bytes(range(100, 120))


@dataclass(frozen=True)
class BenchRow:
    path: str
    threads: int
    hashes: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.hashes / self.seconds if self.seconds > 0 else 0.0


@dataclass
class BenchReport:
    rows: list[BenchRow] = field(default_factory=list)
    python_rate: float = 0.0
    call_overhead_us: float = 0.0
    stop_latency_ms: float = 0.0

    def single_thread_rate(self, path: str) -> float:
        return next((r.rate for r in self.rows if r.path == path and r.threads == 1), 0.0)

    def speedup(self, row: BenchRow) -> float:
        return row.rate / self.python_rate if self.python_rate else 0.0

    def efficiency(self, row: BenchRow) -> float:
        one = self.single_thread_rate(row.path)
        return row.rate / (row.threads * one) if one else 0.0

    def batch_for_overhead(self, fraction: float = 0.01) -> int:
        """Candidates per call that make the per-call overhead `fraction` of the call's time."""
        best = max((self.single_thread_rate(r.path) for r in self.rows), default=0.0)
        return int(self.call_overhead_us * 1e-6 * best / fraction)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": [
                {
                    **asdict(r),
                    "hashes_per_second": r.rate,
                    "per_core": r.rate / r.threads,
                    "speedup_over_python": self.speedup(r),
                    "scaling_efficiency": self.efficiency(r),
                }
                for r in self.rows
            ],
            "python_hashes_per_second": self.python_rate,
            "call_overhead_us": self.call_overhead_us,
            "batch_for_1pct_overhead": self.batch_for_overhead(),
            "stop_latency_ms": self.stop_latency_ms,
        }


def measure(path: str, threads: int, seconds: float) -> BenchRow:
    """Search an unreachable target for `seconds` with `threads` threads; count the hashes."""
    flag = StopFlag()
    timer = threading.Timer(seconds, flag.set)
    started = time.perf_counter()
    timer.start()
    try:
        result = parallel_search(CHALLENGE, MINER, 0, threads=threads, path=path, stop=flag, base=0)
    finally:
        timer.cancel()
    return BenchRow(path, threads, result.hashes, time.perf_counter() - started)


def measure_python(seconds: float) -> float:
    count, elapsed = 2048, 0.0
    while elapsed < seconds:
        started = time.perf_counter()
        find_nonce(CHALLENGE, MINER, 0, count=count, path="python")
        elapsed = time.perf_counter() - started
        if elapsed < seconds:
            count *= 2
    return count / elapsed


def measure_call_overhead(path: str, calls: int = 20_000) -> float:
    """Microseconds per find_nonce call beyond its hashing (calls of one candidate each)."""
    started = time.perf_counter()
    for i in range(calls):
        find_nonce(CHALLENGE, MINER, 0, count=1, start=i, path=path)
    return (time.perf_counter() - started) / calls * 1e6


def measure_stop_latency(path: str, threads: int) -> float:
    """Milliseconds from setting the stop flag to every search thread having returned."""
    flag = StopFlag()
    finished = threading.Event()

    def run() -> None:
        parallel_search(CHALLENGE, MINER, 0, threads=threads, path=path, stop=flag)
        finished.set()

    t = threading.Thread(target=run)
    t.start()
    time.sleep(0.1)
    asked = time.perf_counter()
    flag.set()
    finished.wait()
    latency = (time.perf_counter() - asked) * 1e3
    t.join()
    return latency


def run_benchmark(
    paths: list[str],
    max_threads: int,
    seconds: float,
    progress: Callable[[str], None] | None = None,
) -> BenchReport:
    """Measure `paths` at 1..max_threads threads, plus the Python reference and the call overhead."""
    report = BenchReport()
    note = progress or (lambda _msg: None)
    native = [p for p in paths if p != "python"]
    for path in native:
        for threads in range(1, max_threads + 1):
            note(f"{path} x{threads}")
            report.rows.append(measure(path, threads, seconds))
    note("python reference")
    report.python_rate = measure_python(min(seconds, 1.0))
    if native:
        note("call overhead and stop latency")
        report.call_overhead_us = measure_call_overhead(native[0])
        report.stop_latency_ms = measure_stop_latency(native[0], max_threads)
    return report


def default_paths() -> list[str]:
    return [p for p in available_paths() if p != "python"]
