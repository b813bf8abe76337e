"""Running one miner until a signal: what `ethml mine` does, usable from Python too."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import structlog
from eth_account.signers.local import LocalAccount
from web3 import AsyncWeb3

from ethml.chain.deploy import Deployment, ethml_contract, token_contract
from ethml.chain.rpc import http_web3
from ethml.errors import DeploymentError
from ethml.node.context import NodeConfig, is_connection_error
from ethml.node.events import Finalized, NodeWarning, RewardReceived
from ethml.node.node import Node
from ethml.pow import default_threads, resolve_path

log = structlog.get_logger("ethml.mine")

DEV_CHAIN_IDS = {31337, 1337, 131277322940537}
DEVNET_POLL = 0.1
#: In JSON log mode, a stats line every this many half-second ticks (30 s).
STATS_EVERY_TICKS = 60
PUBLIC_POLL = 1.0


@dataclass
class MinerSettings:
    rpc: str = "http://127.0.0.1:8545"
    deployment_file: Path | None = None
    threads: int | None = None
    models_dir: Path | None = None
    gateways: list[str] = field(default_factory=list)
    data_dir: Path | None = None
    status_line: bool = False
    #: Seconds between log polls; None: 0.1 s on a devnet (local, instant blocks), 1 s elsewhere.
    poll_interval: float | None = None


async def wait_for_rpc(w3: AsyncWeb3[Any], url: str, stop: asyncio.Event) -> int | None:
    """The chain id once the RPC answers; retries with backoff and says so. None if stopped first."""
    delay = 1.0
    while not stop.is_set():
        try:
            return int(await w3.eth.chain_id)
        except Exception as exc:
            if not is_connection_error(exc):
                raise
            log.warning("rpc_unreachable", url=url, retry_in=delay, error=str(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            delay = min(delay * 2, 30.0)
    return None


async def check_deployment(w3: AsyncWeb3[Any], deployment: Deployment, chain_id: int) -> None:
    """Refuse to mine for a deployment of another chain, or where no EthML contract is."""
    if deployment.chain_id != chain_id:
        raise DeploymentError(
            f"the deployment is for chain {deployment.chain_id} but the RPC serves chain {chain_id}; "
            "point --deployment (or --rpc-url) at the matching one"
        )
    for name, address in (("EthML", deployment.ethml), ("EMLToken", deployment.token)):
        code = await w3.eth.get_code(w3.to_checksum_address(address))
        if len(code) == 0:
            raise DeploymentError(
                f"no {name} contract at {address} on chain {chain_id}: the deployment file is stale (a restarted "
                "devnet without --state?); run `ethml devnet` again or give the right --deployment"
            )


def format_status(node: Node, balance: int | None) -> str:
    s = node.stats
    current = f"round {s.current_round}" if s.current_round else "idle"
    eml = f"{balance / 10**18:,.4f} EML" if balance is not None else "? EML"
    return (
        f"{current} | difficulty {s.difficulty:,} | {s.hashrate / 1e6:6.2f} MH/s "
        f"({s.grinding_share:.0%} grinding) | "
        f"committed {s.submissions} accepted {s.accepted} | answers agreed {s.finalized_with_us} | "
        f"rewards {s.rewards / 10**18:,.4f} | {eml}"
    )


async def run_miner(
    settings: MinerSettings,
    resolve_account: Callable[[int], tuple[LocalAccount, str]],
    find_deployment: Callable[[int], Deployment],
) -> int:
    """Mine until SIGINT/SIGTERM; returns the exit code (0 on a clean stop)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)

    w3: AsyncWeb3[Any] = http_web3(settings.rpc)
    chain_id = await wait_for_rpc(w3, settings.rpc, stop)
    if chain_id is None:
        return 0
    account, source = resolve_account(chain_id)
    deployment = find_deployment(chain_id)
    await check_deployment(w3, deployment, chain_id)
    config = NodeConfig(
        threads=settings.threads,
        gateways=settings.gateways,
        data_dir=settings.data_dir,
        models_dir=settings.models_dir,
        poll_interval=settings.poll_interval or (DEVNET_POLL if chain_id in DEV_CHAIN_IDS else PUBLIC_POLL),
    )
    difficulty = int(await ethml_contract(w3, deployment.ethml).functions.difficulty().call())
    path = resolve_path(None)
    threads = settings.threads or default_threads()
    log.info(
        "miner_starting",
        address=account.address,
        source=source,
        chain_id=chain_id,
        ethml=deployment.ethml,
        pow_path=path,
        threads=threads,
        difficulty=difficulty,
    )
    if settings.status_line:
        sys.stderr.write(
            f"mining as {account.address} ({source})\n"
            f"chain {chain_id} via {settings.rpc}, EthML {deployment.ethml}\n"
            f"proof of work: {path} path, {threads} thread{'s' if threads != 1 else ''}, "
            f"difficulty {difficulty:,} (from the chain)\n"
        )
    node = Node(w3=w3, deployment=deployment, account=account, config=config)
    async with node:
        token = token_contract(w3, deployment.token)
        oracle = ethml_contract(w3, deployment.ethml)
        balance: int | None = None
        ticks = 0
        events = node.events()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
            for event in events.drain():
                if isinstance(event, NodeWarning) and settings.status_line:
                    sys.stderr.write(f"\r\033[K{event.message}\n")
                elif isinstance(event, Finalized | RewardReceived) and not settings.status_line:
                    log.info(type(event).__name__.lower(), **asdict(event))
            if not settings.status_line and ticks % STATS_EVERY_TICKS == 0 and ticks:
                log.info("stats", **asdict(node.stats))
            ticks += 1
            if settings.status_line:
                if ticks % 10 == 1:
                    with contextlib.suppress(Exception):
                        held = int(await oracle.functions.minerBalance(account.address).call())
                        balance = int(await token.functions.balanceOf(account.address).call()) + held
                sys.stderr.write("\r\033[K" + format_status(node, balance))
                sys.stderr.flush()
        await events.aclose()
        if settings.status_line:
            sys.stderr.write("\n")
        log.info("miner_stopping", submissions=node.stats.submissions, accepted=node.stats.accepted)
    with contextlib.suppress(Exception):
        await w3.provider.disconnect()  # type: ignore[attr-defined]
    return 0
