"""`ethml bench-pow`: hash rate of every search path, 1..N threads, against the Python reference."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from ethml.cli._common import echo_json, handle_errors, is_tty
from ethml.errors import UnknownPowPath

if TYPE_CHECKING:
    from ethml.pow.bench import BenchReport
    from ethml.pow.tune import TuneResult

app = typer.Typer(rich_markup_mode=None)


def _table(report: BenchReport, tuned: TuneResult | None) -> str:
    lines = [
        f"{'path':<13} {'threads':>7} {'hashes/s':>14} {'per core':>12} {'vs python':>10} {'scaling':>8}",
        "-" * 69,
    ]
    for row in report.rows:
        lines.append(
            f"{row.path:<13} {row.threads:>7} {row.rate / 1e6:>12.2f} M {row.rate / row.threads / 1e6:>10.2f} M "
            f"{report.speedup(row):>9.0f}x {report.efficiency(row) * 100:>7.0f}%"
        )
    lines.append(f"{'python':<13} {1:>7} {report.python_rate / 1e6:>12.3f} M {report.python_rate / 1e6:>10.3f} M")
    lines.append("")
    if tuned is not None:
        lines.append(f"auto = {tuned.path}: {tuned.reason()}")
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
    path: Annotated[
        str,
        typer.Option(
            help="avx512, avx512-hybrid, avx2, avx2-hybrid, bmi2 or scalar (if this CPU supports it), or all."
        ),
    ] = "all",
    tune: Annotated[
        bool,
        typer.Option(
            "--tune", help="Measure again which path `auto` uses on this CPU and store it in DATA_DIR/pow-tune.json."
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
) -> None:
    """Measure the native proof-of-work search: every path, 1..N threads, and the pure-Python reference.

    Also shows which path `auto` (the default of every search) uses on this CPU and the measurement
    that chose it; --tune measures that choice again. ETHML_POW_PATH forces a path everywhere.
    """
    from ethml.pow import available_paths, default_threads
    from ethml.pow.bench import default_paths, run_benchmark
    from ethml.pow.tune import autotune

    max_threads = threads or default_threads()
    if path == "all":
        paths = default_paths()
    elif path in available_paths() and path != "python":
        paths = [path]
    else:
        raise UnknownPowPath(path, [*default_paths(), "all"])
    steps = len(paths) * max_threads + 3
    done = 0

    def progress(label: str) -> None:
        nonlocal done
        done += 1
        if is_tty() or not as_json:
            typer.echo(f"[{done}/{steps}] measuring {label} ...", err=True)

    progress("the autotuned choice" + (" (measuring again)" if tune else ""))
    tuned = autotune(retune=tune) if default_paths() else None
    report = run_benchmark(paths, max_threads, seconds, progress)
    if as_json:
        echo_json({**report.to_dict(), "auto": tuned.to_dict() if tuned is not None else None})
    else:
        typer.echo(_table(report, tuned))
