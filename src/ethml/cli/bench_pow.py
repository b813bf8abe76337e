"""`ethml bench-pow`: hash rate of every search path, 1..N threads, against the Python reference."""

from __future__ import annotations

from typing import Annotated

import typer

from ethml.cli._common import echo_json, handle_errors, is_tty
from ethml.errors import UnknownPowPath
from ethml.pow import available_paths, default_threads
from ethml.pow.bench import BenchReport, default_paths, run_benchmark

app = typer.Typer(rich_markup_mode=None)


def _table(report: BenchReport) -> str:
    lines = [
        f"{'path':<8} {'threads':>7} {'hashes/s':>14} {'per core':>12} {'vs python':>10} {'scaling':>8}",
        "-" * 64,
    ]
    for row in report.rows:
        lines.append(
            f"{row.path:<8} {row.threads:>7} {row.rate / 1e6:>12.2f} M {row.rate / row.threads / 1e6:>10.2f} M "
            f"{report.speedup(row):>9.0f}x {report.efficiency(row) * 100:>7.0f}%"
        )
    lines.append(f"{'python':<8} {1:>7} {report.python_rate / 1e6:>12.3f} M {report.python_rate / 1e6:>10.3f} M")
    lines.append("")
    lines.append(
        f"per-call overhead {report.call_overhead_us:.2f} us: calls of >= {report.batch_for_overhead():,} "
        "candidates keep it under 1 %"
    )
    lines.append(f"stop latency (flag set -> all threads returned): {report.stop_latency_ms:.1f} ms")
    return "\n".join(lines)


@app.command("bench-pow")
@handle_errors
def bench_pow(
    threads: Annotated[
        int | None, typer.Option(min=1, help="Measure 1..N threads (default: all cores).", envvar="ETHML_THREADS")
    ] = None,
    seconds: Annotated[float, typer.Option(min=0.1, help="Seconds per measurement.")] = 2.0,
    path: Annotated[str, typer.Option(help="avx512, avx2, scalar, or all (every path this CPU supports).")] = "all",
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
) -> None:
    """Measure the native proof-of-work search: every path, 1..N threads, and the pure-Python reference."""
    max_threads = threads or default_threads()
    if path == "all":
        paths = default_paths()
    elif path in available_paths() and path != "python":
        paths = [path]
    else:
        raise UnknownPowPath(path, [*default_paths(), "all"])
    steps = len(paths) * max_threads + 2
    done = 0

    def progress(label: str) -> None:
        nonlocal done
        done += 1
        if is_tty() or not as_json:
            typer.echo(f"[{done}/{steps}] measuring {label} ...", err=True)

    report = run_benchmark(paths, max_threads, seconds, progress)
    if as_json:
        echo_json(report.to_dict())
    else:
        typer.echo(_table(report))
