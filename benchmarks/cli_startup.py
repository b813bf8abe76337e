"""How fast the command line answers: `ethml --help` and `ethml <command> --help` for every command.

Each is run as a fresh process (`python -m ethml ... --help`, as the `ethml` script does) several
times; the median counts. Beside them, the floor every command pays (the interpreter starting, and
it importing typer), and with --baseline another interpreter with ethml installed (another checkout's
virtualenv) measured in the same run, interleaved, so the ratio survives a noisy machine.

Run: python benchmarks/cli_startup.py [--runs 5] [--baseline /path/to/other/.venv/bin/python] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import typer

from ethml.cli import app

LIMIT_S = 0.5


def command_paths() -> list[tuple[str, ...]]:
    """`()` for `ethml --help`, then every command and group, `ipfs add` and `task create` included."""

    def walk(group: object, prefix: tuple[str, ...]) -> list[tuple[str, ...]]:
        found: list[tuple[str, ...]] = []
        for name, command in sorted(getattr(group, "commands", {}).items()):
            found.append((*prefix, name))
            found.extend(walk(command, (*prefix, name)))
        return found

    return [(), *walk(typer.main.get_command(app), ())]


def run_once(python: str, args: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run([python, *args], capture_output=True, env=env, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{python} {' '.join(args)} failed: {done.stderr.decode(errors='replace')}")
    return elapsed


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs of each command (the median counts)")
    parser.add_argument("--baseline", metavar="PYTHON", help="another interpreter with ethml, measured alongside")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    opts = parser.parse_args()

    env = {**os.environ, "NO_COLOR": "1"}
    # The baseline is someone else's checkout: read its bytecode caches, never write them (this one's are
    # written by the warm-up run, as an installed package has them).
    baseline_env = {**env, "PYTHONDONTWRITEBYTECODE": "1"}
    pythons = {"this": sys.executable, **({"baseline": opts.baseline} if opts.baseline else {})}
    floor = {"python": ["-c", "pass"], "import typer": ["-c", "import typer"]}
    cases = {"ethml " + " ".join([*path, "--help"]): ["-m", "ethml", *path, "--help"] for path in command_paths()}
    times: dict[str, dict[str, list[float]]] = {who: {} for who in pythons}
    envs = {"this": env, "baseline": baseline_env}
    for who, python in pythons.items():  # warm the caches: the first run of anything reads the disk
        run_once(python, ["-m", "ethml", "--help"], envs[who])
    for _ in range(opts.runs):  # interleaved: a busy moment hits every case alike
        for label, args in {**floor, **cases}.items():
            for who, python in pythons.items():
                if label in floor and who != "this":
                    continue
                times[who].setdefault(label, []).append(run_once(python, args, envs[who]))
    medians = {who: {label: statistics.median(ts) for label, ts in by.items()} for who, by in times.items()}
    this = medians["this"]
    worst = max((this[label], label) for label in cases)
    result = {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "runs": opts.runs,
        "median_s": medians,
        "slowest": {"command": worst[1], "median_s": worst[0]},
        "all_under_limit": worst[0] < LIMIT_S,
    }
    if opts.json:
        print(json.dumps(result, indent=2))
        return
    print(f"CPU: {result['cpu']} ({result['cores']} cores); median of {opts.runs} runs, fresh process each")
    for label in floor:
        print(f"  {label:<36} {this[label] * 1000:7.0f} ms")
    base = medians.get("baseline", {})
    for label in cases:
        extra = f"   baseline {base[label] * 1000:6.0f} ms ({base[label] / this[label]:.1f}x)" if label in base else ""
        print(f"  {label:<36} {this[label] * 1000:7.0f} ms{extra}")
    verdict = "under" if result["all_under_limit"] else "OVER"
    print(f"slowest: {worst[1]} at {worst[0] * 1000:.0f} ms, {verdict} the {LIMIT_S * 1000:.0f} ms limit")


if __name__ == "__main__":
    main()
