"""Per-CPU autotune: time every native search path this CPU supports and remember the fastest.

Which path is fastest depends on the CPU, not only on its instruction sets: a Zen 1 core runs AVX2 on
128-bit units with one vector-shift pipe, so a batch that adds one scalar candidate to the four AVX2
lanes wins there, while a core with full-width vector units may prefer plain AVX2. So `auto` is decided
by measurement: the first search in a process looks up DATA_DIR/pow-tune.json; without an entry for
this CPU model and this exact build of the native core, it times each path for a fraction of a second
(interleaved, best of several rounds, single-threaded) and records the winner. `ethml bench-pow --tune`
measures again. `ETHML_POW_PATH` still forces a path and bypasses all of this.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ethml.paths import data_home
from ethml.pow import _native_core as _core

CACHE_FILE = "pow-tune.json"
CACHE_VERSION = 1
#: Seconds each path is timed per round, and the rounds (the best round counts).
ROUND_SECONDS = 0.025
ROUNDS = 8

_CHALLENGE = bytes(range(32))
_MINER = bytes(range(100, 120))
_BASE = bytes(32)
_NEVER = bytes(32)  # target 0: no candidate succeeds, so every call runs its full count


def _time_search(path: str, count: int) -> float:
    """Seconds one native search of `count` candidates takes on `path` (single thread)."""
    started = time.perf_counter()
    _core.search(path, _CHALLENGE, _MINER, _BASE, _NEVER, 0, count, None)
    return time.perf_counter() - started


@dataclass(frozen=True)
class TuneResult:
    path: str
    rates: dict[str, float]  # single-thread hashes/s of each path measured
    cpu: str
    build: str
    measured_at: float  # unix time
    source: str  # "measured" (this process timed it) or "cache" (read from cache_file)
    cache_file: str

    def reason(self) -> str:
        ranked = sorted(self.rates.items(), key=lambda kv: kv[1], reverse=True)
        table = ", ".join(f"{p} {r / 1e6:.2f} M/s" for p, r in ranked)
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(self.measured_at))
        how = "measured now" if self.source == "measured" else f"measured {when}, cached in {self.cache_file}"
        return f"fastest on {self.cpu} ({how}): {table}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "reason": self.reason()}


def cpu_model() -> str:
    """The CPU as a cache key: its model name, family/model/stepping, and how many logical CPUs."""
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "cpu family", "model", "stepping") and key not in fields:
                fields[key] = value.strip()
            if not line.strip() and fields:
                break
    name = fields.get("model name") or platform.processor() or platform.machine()
    ident = "/".join(fields.get(k, "?") for k in ("cpu family", "model", "stepping"))
    return f"{name} [{ident}] x{os.cpu_count() or 1}"


def core_build() -> str:
    """A digest of the compiled native core: a rebuilt core is a new build and is measured again."""
    library = _core.library_file()
    if library is None:
        return "none"
    return hashlib.sha256(Path(library).read_bytes()).hexdigest()[:16]


def measure_paths(paths: list[str], round_seconds: float = ROUND_SECONDS, rounds: int = ROUNDS) -> dict[str, float]:
    """Single-thread hashes/s of each path: rounds interleave the paths, the best round counts."""
    count = {p: 1 << 12 for p in paths}
    best = dict.fromkeys(paths, 0.0)
    for p in paths:  # calibrate: a count that takes about round_seconds
        while True:
            elapsed = _time_search(p, count[p])
            if elapsed >= round_seconds / 4 or count[p] >= 1 << 30:
                count[p] = max(1 << 12, int(count[p] * round_seconds / max(elapsed, 1e-6)))
                break
            count[p] *= 4
    for _ in range(rounds):
        for p in paths:
            best[p] = max(best[p], count[p] / _time_search(p, count[p]))
    return best


def cache_path(data_dir: Path | None = None) -> Path:
    return (data_dir or data_home()) / CACHE_FILE


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION or not isinstance(data.get("cpus"), dict):
        return {}
    return data


def _write_cache(path: Path, result: TuneResult) -> None:
    data = _read_cache(path) or {"version": CACHE_VERSION, "cpus": {}}
    entry = {k: v for k, v in asdict(result).items() if k not in ("source", "cache_file", "cpu")}
    data["cpus"][result.cpu] = entry
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".pow-tune.")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only data dir only costs a measurement per process


def _cached(path: Path, cpu: str, build: str, paths: list[str]) -> TuneResult | None:
    entry = _read_cache(path).get("cpus", {}).get(cpu)
    if not isinstance(entry, dict) or entry.get("build") != build:
        return None
    rates = entry.get("rates")
    if not isinstance(rates, dict) or sorted(rates) != sorted(paths) or entry.get("path") not in paths:
        return None  # measured with another set of paths: measure again
    return TuneResult(
        path=entry["path"],
        rates={k: float(v) for k, v in rates.items()},
        cpu=cpu,
        build=build,
        measured_at=float(entry.get("measured_at", 0.0)),
        source="cache",
        cache_file=str(path),
    )


_lock = threading.Lock()
_memo: dict[Path, TuneResult] = {}


def autotune(data_dir: Path | None = None, *, retune: bool = False) -> TuneResult:
    """The fastest native path on this CPU: from this process, else the cache, else measured now."""
    path = cache_path(data_dir)
    with _lock:
        if not retune and path in _memo:
            return _memo[path]
        paths = _core.supported_paths()
        cpu, build = cpu_model(), core_build()
        result = None if retune else _cached(path, cpu, build, paths)
        if result is None:
            rates = measure_paths(paths)
            result = TuneResult(
                path=max(rates, key=lambda p: rates[p]),
                rates=rates,
                cpu=cpu,
                build=build,
                measured_at=time.time(),
                source="measured",
                cache_file=str(path),
            )
            _write_cache(path, result)
        _memo[path] = result
        return result
