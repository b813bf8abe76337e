"""Write docs/commands.md from the commands' own --help (their click definitions).

Everything below the MARKER line of the existing page is hand-written and kept as it is.

Run: python tools/gen_command_docs.py   (tests/cli/test_command_docs.py fails when it is stale)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from ethml.cli import app

OUT = Path(__file__).resolve().parents[1] / "docs" / "commands.md"
MARKER = "<!-- Generated above by tools/gen_command_docs.py; written by hand below. -->"


def _option_line(param: Any) -> str:
    if param.param_type_name == "argument":
        return f"| `{str(param.name).upper()}` (argument) | {getattr(param, 'help', '') or ''} |"
    names = ", ".join(f"`{n}`" for n in param.opts)
    extra = []
    if param.envvar:
        extra.append(f"env `{param.envvar}`")
    if param.default not in (None, False, [], ()) and not param.is_flag:
        extra.append(f"default `{param.default}`")
    text = (param.help or "").replace("|", "\\|")
    return f"| {names} | {text}{' (' + '; '.join(extra) + ')' if extra else ''} |"


def render() -> str:
    root = typer.main.get_command(app)
    ctx = typer.Context(root)
    parts = ["# Commands", "", "Generated from the commands' `--help` by `tools/gen_command_docs.py`.", ""]

    def walk(group: Any, prefix: str) -> None:
        for name in sorted(group.list_commands(ctx)):
            cmd = group.get_command(ctx, name)
            assert cmd is not None
            full = f"{prefix} {name}"
            if hasattr(cmd, "list_commands"):
                walk(cmd, full)
                continue
            parts.extend([f"## `{full}`", "", (cmd.help or "").strip(), "", "| option | meaning |", "|---|---|"])
            parts.extend(_option_line(p) for p in cmd.params if p.name != "help")
            parts.append("")

    walk(root, "ethml")
    return "\n".join(parts)


def hand_written(page: str) -> str:
    """The part of `page` from MARKER on ("" when it has none)."""
    at = page.find(MARKER)
    return page[at:] if at >= 0 else ""


def page(existing: str) -> str:
    tail = hand_written(existing)
    return render() + ("\n" + tail if tail else "")


if __name__ == "__main__":
    OUT.write_text(page(OUT.read_text() if OUT.exists() else ""))
    print(f"wrote {OUT}")
