"""The command line answers at once: `import ethml.cli` and every `--help` load typer and the standard
library, never web3, the node or scikit-learn (their cost is measured by benchmarks/cli_startup.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
import typer

from ethml.cli import app
from tests.conftest import ROOT

#: What a command imports when it runs, never before: each of these takes tens of milliseconds or more.
HEAVY = (
    "web3",
    "eth_account",
    "eth_abi",
    "eth_utils",
    "numpy",
    "scipy",
    "sklearn",
    "joblib",
    "aiohttp",
    "redis",
    "structlog",
    "ethml.node",
    "ethml.chain.deploy",
    "ethml.coordinator.server",
    "ethml.training",
)


def _commands(group: Any = None, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path of `ethml`, groups included (`ipfs`, `ipfs add`, `task`, `task create`, ...)."""
    root = group or typer.main.get_command(app)
    paths: list[tuple[str, ...]] = []
    for name, command in sorted(root.commands.items()):  # typer's own click: a group has .commands
        paths.append((*prefix, name))
        if hasattr(command, "commands"):
            paths.extend(_commands(command, (*prefix, name)))
    return paths


COMMANDS = _commands()


def _fresh_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)


def _loaded_heavy_after(code: str) -> list[str]:
    probe = f"{code}\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    done = _fresh_python(probe)
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout.splitlines()[-1]))


def test_the_command_tree_is_all_there() -> None:
    names = {" ".join(c) for c in COMMANDS}
    assert {"mine", "request", "devnet", "demo", "serve", "worker", "ipfs add", "task create", "bench-pow"} <= names


def test_importing_the_cli_loads_no_heavy_library() -> None:
    assert _loaded_heavy_after("import ethml.cli") == []


def test_importing_ethml_is_cheap_and_node_still_importable() -> None:
    assert _loaded_heavy_after("import ethml") == []
    assert "web3" in _loaded_heavy_after(
        "from ethml import Node, NodeConfig, NodeStats\nassert Node.__name__ == 'Node'"
    )


def test_every_help_in_one_process_loads_no_heavy_library() -> None:
    """`ethml --help` and `ethml <command> --help` for every command, in one fresh process: each prints its
    usage and exits 0, and none of them imports what the command needs only when it runs."""
    code = (
        "from typer.testing import CliRunner\n"
        "from ethml.cli import app\n"
        f"for argv in {[list(c) for c in [(), *COMMANDS]]!r}:\n"
        "    result = CliRunner().invoke(app, [*argv, '--help'])\n"
        "    assert result.exit_code == 0, (argv, result.output)\n"
        "    assert 'Usage: ' in result.output and '--help' in result.output, (argv, result.output)\n"
    )
    assert _loaded_heavy_after(code) == []


@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(c) for c in COMMANDS])
def test_help_of_every_command_through_the_real_entry_point(argv: tuple[str, ...]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ethml", *argv, "--help"], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"Usage: ethml {' '.join(argv)}"), done.stdout
    assert "Traceback" not in done.stderr


def test_serve_warns_when_it_follows_a_public_chain_at_its_head() -> None:
    """With --confirmations 0 a reorg may move a task created by the relayer to another chain task after its
    document was linked: fine on a devnet, said at start anywhere else."""
    from ethml.cli.coordinator import confirmations_warning

    assert confirmations_warning(31337, 0) is None  # anvil
    assert confirmations_warning(1, 12) is None
    warning = confirmations_warning(1, 0)
    assert warning is not None and warning.startswith("warning: --confirmations 0 on chain 1, which is not a devnet")
