"""`ethml.Node`: one miner, embeddable in any asyncio application."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from eth_account.signers.local import LocalAccount
from web3 import AsyncWeb3

from ethml.chain.deploy import Deployment, ethml_contract, registry_contract
from ethml.chain.rpc import http_web3
from ethml.ipfs import Blockstore, IpfsClient, IpfsConfig
from ethml.ml import Manifest, ModelStore
from ethml.node.context import NodeConfig, NodeContext
from ethml.node.events import NodeEvent, NodeStats, NodeWarning
from ethml.node.fetcher import IpfsFetcher
from ethml.node.grinder import PowGrinder
from ethml.node.jobs import Job
from ethml.node.journal import Journal
from ethml.node.predictor import Predictor
from ethml.node.revealer import Revealer
from ethml.node.sender import TxSender
from ethml.node.submitter import TxSubmitter
from ethml.node.watcher import EventWatcher
from ethml.paths import data_home

SHUTDOWN_TIMEOUT = 10.0


class Node:
    """A miner: watches the chain, fetches data, predicts, grinds the nonce, submits.

    ```python
    async with Node(rpc_url="http://127.0.0.1:8545", deployment=dep, account=acct) as node:
        async for event in node.events():
            print(event)
    ```
    Every actor runs under the node's TaskGroup; one that fails is logged and restarted with
    backoff, so a bad request or a flaky RPC never stops the node. `await node.stop()` (or leaving
    the `async with`) stops watching first, lets an in-flight submission finish or stay journaled,
    then cancels the rest; it is idempotent.
    """

    def __init__(
        self,
        *,
        deployment: Deployment,
        account: LocalAccount,
        rpc_url: str | None = None,
        w3: AsyncWeb3[Any] | None = None,
        config: NodeConfig | None = None,
        name: str | None = None,
    ) -> None:
        if (rpc_url is None) == (w3 is None):
            raise ValueError("pass exactly one of rpc_url= and w3=")
        self.deployment = deployment
        self.account = account
        self.config = config or NodeConfig()
        self.name = name or account.address[:10]
        self._rpc_url = rpc_url
        self._w3 = w3
        self._ctx: NodeContext | None = None
        self._runner: asyncio.Task[None] | None = None
        self._grinder: PowGrinder | None = None
        self._stopped = False

    # ----------------------------------------------------------------- life cycle

    async def __aenter__(self) -> Node:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _data_dir(self) -> Path:
        return self.config.data_dir or data_home()

    async def start(self) -> None:
        if self._runner is not None:
            return
        w3 = self._w3 if self._w3 is not None else http_web3(str(self._rpc_url))  # one of them is set: see __init__
        data_dir = self._data_dir()
        journal = Journal(data_dir / "nodes" / f"{self.deployment.chain_id}-{self.account.address}.sqlite")
        ipfs = IpfsClient(Blockstore(data_dir / "blocks"), IpfsConfig(gateways=list(self.config.gateways)))
        models = ModelStore(Manifest.load(self.config.models_dir))
        self._ctx = NodeContext(
            w3=w3,
            contract=ethml_contract(w3, self.deployment.ethml),
            registry=registry_contract(w3, self.deployment.registry),
            deployment=self.deployment,
            account=self.account,
            config=self.config,
            journal=journal,
            ipfs=ipfs,
            models=models,
        )
        self._ctx.log = self._ctx.log.bind(node=self.name)
        self._runner = asyncio.create_task(self._run(), name=f"ethml-node-{self.name}")

    async def _run(self) -> None:
        ctx = self._ctx
        assert ctx is not None
        size = self.config.queue_size
        fetch_q: asyncio.Queue[Job] = asyncio.Queue(size)
        predict_q: asyncio.Queue[Job] = asyncio.Queue(size)
        grind_q: asyncio.Queue[Job] = asyncio.Queue(size)
        submit_q: asyncio.Queue[Job] = asyncio.Queue(size)
        reveal_q: asyncio.Queue[tuple[int, int]] = asyncio.Queue(size)
        self._grinder = PowGrinder(ctx, grind_q, submit_q)
        sender = TxSender(ctx)
        actors: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("watcher", EventWatcher(ctx, fetch_q, reveal_q).run),
            ("fetcher", IpfsFetcher(ctx, fetch_q, predict_q).run),
            ("predictor", Predictor(ctx, predict_q, grind_q).run),
            ("grinder", self._grinder.run),
            ("submitter", TxSubmitter(ctx, submit_q, sender, grind_q).run),
            ("revealer", Revealer(ctx, reveal_q, sender).run),
        ]
        async with asyncio.TaskGroup() as group:
            for name, run in actors:
                group.create_task(self._supervise(name, run), name=f"{self.name}-{name}")

    async def _supervise(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        ctx = self._ctx
        assert ctx is not None
        backoff = 1.0
        while not ctx.stopping.is_set():
            try:
                await run()
                if ctx.stopping.is_set():
                    return
                error = f"actor {name} returned while the node was running"
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                error = f"actor {name} failed: {type(exc).__name__}: {exc}"
                ctx.log.exception("actor_failed", actor=name)
            ctx.stats.last_error = error
            ctx.emit(NodeWarning(f"{error}; restarting in {backoff:g} s"))
            if await ctx.sleep(backoff):
                return
            backoff = min(backoff * 2, self.config.max_backoff)

    async def stop(self) -> None:
        if self._stopped or self._runner is None:
            self._stopped = True
            return
        self._stopped = True
        ctx = self._ctx
        assert ctx is not None
        ctx.stopping.set()
        ctx.board.cancel_all("node stopping")
        try:
            await asyncio.wait_for(asyncio.shield(self._runner), timeout=self.config.stop_grace)
        except TimeoutError:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._runner, timeout=SHUTDOWN_TIMEOUT)
        except Exception as exc:  # noqa: BLE001
            ctx.log.warning("node_stopped_with_error", error=str(exc))
        await ctx.ipfs.close()
        ctx.models.close()
        ctx.journal.close()
        if self._w3 is None:
            with contextlib.suppress(Exception):
                await ctx.w3.provider.disconnect()  # type: ignore[attr-defined]

    # ----------------------------------------------------------------- observing

    @property
    def stats(self) -> NodeStats:
        if self._ctx is None:
            return NodeStats()
        if self._grinder is not None:
            self._ctx.stats.hashrate = self._grinder.meter.rate()
            self._ctx.stats.hashes = self._grinder.meter.total
            self._ctx.stats.grinding_share = self._grinder.meter.grinding_share()
        return replace(self._ctx.stats)

    @property
    def address(self) -> str:
        return str(self.account.address)

    def events(self, maxsize: int = 1000) -> EventStream:
        """Every event from this call on, until the node stops: `async for event in node.events()`."""
        if self._ctx is None:
            raise RuntimeError("start the node first (async with Node(...) as node)")
        return EventStream(self._ctx, maxsize)


class EventStream:
    """An async iterator over one subscriber's events; subscribed from creation, so nothing is missed."""

    def __init__(self, ctx: NodeContext, maxsize: int) -> None:
        self._ctx = ctx
        self._queue: asyncio.Queue[NodeEvent] = asyncio.Queue(maxsize)
        ctx.subscribers.append(self._queue)
        self._closed = False

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> NodeEvent:
        if not self._queue.empty():
            return self._queue.get_nowait()
        if self._closed or self._ctx.stopping.is_set():
            await self.aclose()
            raise StopAsyncIteration
        getter = asyncio.ensure_future(self._queue.get())
        stopper = asyncio.ensure_future(self._ctx.stopping.wait())
        done, _ = await asyncio.wait({getter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if getter in done:
            return getter.result()
        getter.cancel()
        await self.aclose()
        raise StopAsyncIteration

    def drain(self) -> list[NodeEvent]:
        """The events already delivered, without waiting for more."""
        events = []
        while not self._queue.empty():
            events.append(self._queue.get_nowait())
        return events

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            if self._queue in self._ctx.subscribers:
                self._ctx.subscribers.remove(self._queue)
