"""What every command shares: error handling at the edge and logging set-up.

Import on use: this module and every command module import typer and the standard library at the
top, and what a command needs (web3, the node, scikit-learn, aiohttp) inside its body, so `ethml
--help` loads nothing else (tests/cli/test_startup.py checks it).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, ParamSpec, TypeVar

import typer

from ethml.cli._options import OptionGroup
from ethml.errors import ChainError, EthmlError
from ethml.urls import check_url

if TYPE_CHECKING:
    from web3 import AsyncWeb3

    from ethml.chain.deploy import Deployment

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


def debug_enabled() -> bool:
    return os.environ.get("ETHML_DEBUG", "") not in ("", "0")


def handle_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """EthmlError (and a file or network error from the operating system) becomes one red line and exit
    code 1; tracebacks only with --debug/ETHML_DEBUG."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except EthmlError as exc:
            if debug_enabled():
                raise
            fail(str(exc))
        except OSError as exc:
            if debug_enabled():
                raise
            fail(describe_os_error(exc))

    return wrapper


def fail(message: str) -> NoReturn:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


def describe_os_error(exc: OSError) -> str:
    """`cannot write /x/y: Permission denied` rather than a traceback."""
    what = exc.strerror or str(exc) or type(exc).__name__
    if exc.filename is not None:
        return f"{exc.filename}: {what}"
    return what


RPC_HELP = "JSON-RPC URL (http:// or https://)."
DEFAULT_RPC = "http://127.0.0.1:8545"

# Options shared by the commands that read or write the oracle's contracts.
RpcOption = Annotated[str, typer.Option("--rpc-url", "--rpc", help=RPC_HELP, envvar=["ETHML_RPC", "ETH_RPC_URL"])]
DeploymentOption = Annotated[
    Path | None, typer.Option(help="Deployment file (default: by chain id).", envvar="ETHML_DEPLOYMENT")
]
DataDirOption = Annotated[
    Path | None,
    typer.Option(
        help="Blockstore, task secrets and deployments directory.", envvar="ETHML_DATA_DIR", resolve_path=True
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ChainOptions(OptionGroup):
    """--rpc-url, --deployment and --data-dir: the chain a command works on and its deployment."""

    rpc: RpcOption = DEFAULT_RPC
    deployment: DeploymentOption = None
    data_dir: DataDirOption = None

    def run(self, body: Callable[[AsyncWeb3[Any], Deployment], Awaitable[T]]) -> T:
        """Run `body` against the deployment of this chain (see with_chain)."""
        return with_chain(self.rpc, self.deployment, self.data_dir, body)


def check_rpc_url(url: str) -> str:
    try:
        check_url("--rpc-url", url, ("http", "https"), "http://127.0.0.1:8545")
    except ValueError as exc:
        raise ChainError(str(exc)) from None
    return url


async def connect(url: str) -> tuple[AsyncWeb3[Any], int]:
    """An AsyncWeb3 for a checked URL and the chain id it answers with (a clear error if it does not)."""
    from ethml.chain.rpc import http_web3

    w3: AsyncWeb3[Any] = http_web3(check_rpc_url(url))
    try:
        chain_id = int(await w3.eth.chain_id)
    except json.JSONDecodeError as exc:  # it answered, but not as an Ethereum node does (see ethml.chain.rpc)
        await w3.provider.disconnect()  # type: ignore[attr-defined]
        raise ChainError(f"the RPC at {url} answered with something that is not JSON-RPC ({exc.msg})") from None
    except Exception as exc:  # noqa: BLE001 - connection refused, DNS, HTTP errors: all "unreachable"
        await w3.provider.disconnect()  # type: ignore[attr-defined]
        raise ChainError(f"cannot reach the RPC at {url} ({type(exc).__name__}); is `ethml devnet` running?") from None
    return w3, chain_id


def is_tty() -> bool:
    return sys.stderr.isatty()


def echo_json(data: Any) -> None:
    import json

    typer.echo(json.dumps(data, indent=2))


def with_chain(
    rpc: str, deployment: Path | None, data_dir: Path | None, body: Callable[[AsyncWeb3[Any], Deployment], Awaitable[T]]
) -> T:
    """Run `body` against the deployment of the chain at `rpc` (checked to be that chain's)."""
    import asyncio

    from ethml.chain.deploy import Deployment

    async def run() -> T:
        w3, chain_id = await connect(rpc)
        try:
            dep = Deployment.load(deployment) if deployment else Deployment.find(chain_id, data_dir)
            if dep.chain_id != chain_id:
                raise ChainError(f"the deployment is for chain {dep.chain_id} but {rpc} serves chain {chain_id}")
            return await body(w3, dep)
        finally:
            await w3.provider.disconnect()  # type: ignore[attr-defined]

    return asyncio.run(run())
