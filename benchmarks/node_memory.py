"""Resident memory of an idle `ethml mine` with the bundled models preloaded.

Starts `ethml devnet` (anvil, the system deployed, the four bundled models registered), then `ethml
mine` against it, waits for the miner's `models_preloaded` log line and then until its resident set
stops growing (idle: no request is ever sent), and reads VmRSS, VmHWM, RssAnon, RssFile and Threads from
/proc/PID/status. With --baseline PYTHON, another checkout's interpreter runs a second miner against
the same devnet in the same run (it is ready when its memory stops growing), for a side-by-side ratio.

Run: python benchmarks/node_memory.py [--baseline /path/to/other/.venv/bin/python] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LIMIT_MB = 150.0
#: The resident set counts as settled when it grew by less than this over SETTLE_S seconds.
SETTLE_KB, SETTLE_S = 512, 5.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def status(pid: int) -> dict[str, int]:
    """The memory fields of /proc/PID/status, in kB (Threads as a count)."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem", "Threads"):
            fields[key] = int(value.split()[0])
    return fields


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def start_devnet(python: str, data_dir: Path) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    proc = subprocess.Popen(
        [python, "-m", "ethml", "devnet", "--port", str(port), "--data-dir", str(data_dir), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # the devnet prints its addresses as one JSON line once deployed
    if not line:
        raise SystemExit(f"ethml devnet exited with {proc.wait()}")
    return proc, json.loads(line)["rpc_url"]


class Miner:
    def __init__(self, python: str, rpc: str, account: int, data_dir: Path) -> None:
        env = {**os.environ, "ETHML_DATA_DIR": str(data_dir), "PYTHONDONTWRITEBYTECODE": "1"}
        argv = [python, "-m", "ethml", "mine", "--account", str(account), "--rpc-url", rpc]
        argv += ["--data-dir", str(data_dir), "--log-format", "json", "--log-level", "info"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        self.selector = selectors.DefaultSelector()
        assert self.proc.stderr is not None
        os.set_blocking(self.proc.stderr.fileno(), False)
        self.selector.register(self.proc.stderr, selectors.EVENT_READ)
        self.events: list[str] = []
        self._buffer = ""

    def read_events(self, timeout: float) -> None:
        for key, _ in self.selector.select(timeout):
            chunk = key.fileobj.read()  # type: ignore[union-attr]
            if chunk:
                self._buffer += chunk
        *lines, self._buffer = self._buffer.split("\n")
        for line in lines:
            with contextlib.suppress(ValueError):
                self.events.append(str(json.loads(line).get("event")))

    def wait_idle(self, need_event: str | None, limit_s: float = 180.0) -> dict[str, int]:
        """Block until `need_event` was logged (if given) and the resident set has settled."""
        deadline = time.monotonic() + limit_s
        history: list[tuple[float, int]] = []
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the miner exited with {self.proc.returncode}: {self._buffer[-2000:]}")
            self.read_events(0.5)
            now, rss = time.monotonic(), status(self.proc.pid)["VmRSS"]
            history.append((now, rss))
            ready = need_event is None or need_event in self.events
            window = [r for t, r in history if t >= now - SETTLE_S]
            if ready and history[0][0] <= now - SETTLE_S and max(window) - min(window) < SETTLE_KB:
                return status(self.proc.pid)
        raise SystemExit(f"the miner did not settle within {limit_s:g} s (events: {self.events})")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", metavar="PYTHON", help="another interpreter with ethml, measured alongside")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    opts = parser.parse_args()

    results: dict[str, dict[str, int]] = {}
    with tempfile.TemporaryDirectory(prefix="ethml-mem-") as tmp:
        devnet, rpc = start_devnet(sys.executable, Path(tmp))
        miners: list[tuple[str, Miner, str | None]] = []
        try:
            miners.append(("this", Miner(sys.executable, rpc, 0, Path(tmp)), "models_preloaded"))
            if opts.baseline:
                miners.append(("baseline", Miner(opts.baseline, rpc, 1, Path(tmp)), "watcher_started"))
            for label, miner, event in miners:
                results[label] = miner.wait_idle(event)
        finally:
            for _, miner, _ in miners:
                miner.stop()
            devnet.send_signal(signal.SIGINT)
            devnet.wait(timeout=30)
    report = {"cpu": cpu_name(), "cores": os.cpu_count(), "limit_mb": LIMIT_MB, "kB": results}
    this = results["this"]
    report["under_limit"] = this["VmRSS"] / 1024 <= LIMIT_MB
    if opts.json:
        print(json.dumps(report, indent=2))
        return
    print(f"CPU: {report['cpu']} ({report['cores']} cores); idle `ethml mine`, four bundled models preloaded")
    for label, fields in results.items():
        mb = {k: v / 1024 for k, v in fields.items() if k != "Threads"}
        print(
            f"  {label:<9} VmRSS {mb['VmRSS']:6.1f} MB  VmHWM {mb['VmHWM']:6.1f} MB  "
            f"anon {mb['RssAnon']:6.1f} MB  file {mb['RssFile']:6.1f} MB  threads {fields['Threads']}"
        )
    if "baseline" in results:
        print(f"  this / baseline: {this['VmRSS'] / results['baseline']['VmRSS']:.2f} of the resident set")
    verdict = "within" if report["under_limit"] else "OVER"
    print(f"resident {this['VmRSS'] / 1024:.1f} MB: {verdict} the {LIMIT_MB:.0f} MB target")


if __name__ == "__main__":
    main()
