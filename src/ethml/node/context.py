"""What every actor of one node shares: the chain client, the contract, the journal, the board."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import structlog
from eth_account.signers.local import LocalAccount
from web3 import AsyncWeb3
from web3.contract import AsyncContract

from ethml.chain.deploy import Deployment
from ethml.ipfs import IpfsClient
from ethml.ml import ModelStore
from ethml.node.events import NodeEvent, NodeStats, NodeWarning
from ethml.node.jobs import JobBoard
from ethml.node.journal import Journal

T = TypeVar("T")


@dataclass
class NodeConfig:
    threads: int | None = None
    poll_interval: float = 1.0
    pow_path: str | None = None
    gateways: list[str] = field(default_factory=list)
    data_dir: Path | None = None
    models_dir: Path | None = None
    #: Seconds without a receipt before the fee is bumped (same nonce, higher fee).
    bump_after: float = 30.0
    #: How long to keep retrying a data point that no gateway can serve before calling it invalid.
    fetch_retry_seconds: float = 20.0
    max_backoff: float = 30.0
    queue_size: int = 8
    #: Seconds `Node.stop()` lets work in flight finish (a transaction being sent, a search ending)
    #: before it cancels what is left; idle actors return at once.
    stop_grace: float = 1.0
    #: Claim the balance held by the oracle (rewards, bonds back) once it reaches this many wei of EML,
    #: keeping `bonds_kept` bonds there for the next commitments; None: never claim.
    claim_threshold: int | None = 10 * 10**18
    bonds_kept: int = 2


@dataclass
class NodeContext:
    w3: AsyncWeb3[Any]
    #: The oracle (EthML).
    contract: AsyncContract
    registry: AsyncContract
    deployment: Deployment
    account: LocalAccount
    config: NodeConfig
    journal: Journal
    ipfs: IpfsClient
    models: ModelStore
    board: JobBoard = field(default_factory=JobBoard)
    stats: NodeStats = field(default_factory=NodeStats)
    subscribers: list[asyncio.Queue[NodeEvent]] = field(default_factory=list)
    log: Any = field(default_factory=lambda: structlog.get_logger("ethml.node"))
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    reorgs: int = 0
    #: Rounds this node saw close or expire: nothing more is sent for them.
    closed_rounds: set[int] = field(default_factory=set)
    #: Per round, the revealers by slot from its RoundClosed event (to tell which answers agreed).
    round_miners: dict[int, tuple[str, ...]] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return str(self.account.address)

    def emit(self, event: NodeEvent) -> None:
        if isinstance(event, NodeWarning):
            self.stats.warnings = [*self.stats.warnings[-19:], event.message]
        for q in self.subscribers:
            if q.full():  # a slow reader loses the oldest event, never blocks the node
                q.get_nowait()
            q.put_nowait(event)

    async def next(self, queue: asyncio.Queue[T]) -> T | None:
        """The next item of an actor's input queue; None once the node is stopping and nothing is left in
        it, so an idle actor returns at once instead of holding `Node.stop()` to its grace period. What
        was queued before the stop is still handed out (an actor skips a job the stop cancelled)."""
        while True:
            if not queue.empty():
                return queue.get_nowait()
            if self.stopping.is_set():
                return None
            getter = asyncio.ensure_future(queue.get())
            stopper = asyncio.ensure_future(self.stopping.wait())
            try:
                await asyncio.wait({getter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:
                if getter.done() and not getter.cancelled():
                    with contextlib.suppress(asyncio.QueueFull):
                        queue.put_nowait(getter.result())  # taken as this actor was cancelled: not lost
                getter.cancel()
                raise
            finally:
                stopper.cancel()
            if getter.done():
                return getter.result()
            getter.cancel()  # a waiting get() that is cancelled leaves any item in the queue

    async def sleep(self, seconds: float) -> bool:
        """Sleep unless the node is stopping; True when it is."""
        try:
            await asyncio.wait_for(self.stopping.wait(), timeout=seconds)
        except TimeoutError:
            return False
        return True


def is_connection_error(exc: BaseException) -> bool:
    """RPC unreachable or dropped, or answering what cannot be read (as opposed to a revert or a bug)."""
    import aiohttp
    from web3.exceptions import TimeExhausted

    from ethml.chain.rpc import UnreadableAnswer

    return isinstance(
        exc, OSError | aiohttp.ClientError | TimeExhausted | asyncio.TimeoutError | ConnectionError | UnreadableAnswer
    )
