"""`ethml serve`: the coordinator's aiohttp application factory.

HTTP: the REST API under /api (JSON in and out, every rejection a 4xx JSON body naming the field),
/healthz, /metrics (Prometheus), /api/openapi.json, the dashboard at /, raw IPFS blocks at /ipfs/<cid>.
WebSocket: /ws/worker, where `ethml worker` processes log in with their Ethereum key and take jobs.
Each route table is a module of `ethml.coordinator.routes`; the shared objects are under the typed
keys of `ethml.coordinator.appkeys`, made and closed by the cleanup contexts below, in this order:
Redis and the store, the chain client, the worker side (blockstore, dispatcher), the background loops.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import structlog
from aiohttp import web
from redis.exceptions import RedisError
from web3.exceptions import Web3Exception

from ethml.chain.rpc import http_web3
from ethml.coordinator.appkeys import (
    CHAIN,
    CONFIG,
    DISPATCHER,
    FATAL,
    IDENTITY,
    IPFS,
    METRICS,
    PENDING,
    PERMITS,
    RULES,
    STOPPING,
    STORE,
    TERMS,
    UPLOADS,
)
from ethml.coordinator.artifacts import SETTLE_INTERVAL, ArtifactSettler, Layered, PendingArtifacts
from ethml.coordinator.auth import API_KEYS, KeyCache
from ethml.coordinator.background import Loops, cancel_and_wait, forever
from ethml.coordinator.chain import Chain
from ethml.coordinator.config import ServeConfig
from ethml.coordinator.deployment import WATCH_INTERVAL, AnotherDeployment, DeploymentWatch, Fatal, identity, said
from ethml.coordinator.dispatch import PROOF_TIMEOUT, Dispatcher, WorkerConn
from ethml.coordinator.edge import BACKEND_ERRORS, errors_and_metrics, install_edge_server, one_line_protocol_errors
from ethml.coordinator.leader import Leader
from ethml.coordinator.metrics import Metrics
from ethml.coordinator.observe import Observer
from ethml.coordinator.permit import PermitDomain
from ethml.coordinator.redis_client import connect, redis_failure
from ethml.coordinator.redis_server import EmbeddedRedis, RedisUnavailable
from ethml.coordinator.relayer import Relayer
from ethml.coordinator.routes import TABLES
from ethml.coordinator.routes.dashboard import SNAPSHOT, SnapshotCache
from ethml.coordinator.routes.health import REDIS_ANSWERS, redis_answers
from ethml.coordinator.schemas import MAX_FILE_BYTES
from ethml.coordinator.store import Store
from ethml.coordinator.uploads import Uploads
from ethml.ipfs import Blockstore, IpfsClient, IpfsConfig
from ethml.ipfs.gateway import BLOCKSTORE
from ethml.training.rules import RulesCache
from ethml.training.terms import TermsDomain
from ethml.urls import mask_url

__all__ = ["ServeConfig", "make_app"]

log = structlog.get_logger("ethml.coordinator")


def make_app(config: ServeConfig) -> web.Application:
    one_line_protocol_errors()
    app = web.Application(
        middlewares=[errors_and_metrics],
        client_max_size=MAX_FILE_BYTES + 1024,
        # Bodies are read as sent: a packed one is refused (edge.read_body), never unpacked to many times its
        # size before any limit sees it.
        handler_args={"auto_decompress": False},
    )
    app[CONFIG] = config
    app[METRICS] = Metrics()
    install_edge_server(app, app[METRICS], config.max_client_connections, config.trusted_proxies)
    app[API_KEYS] = KeyCache()
    app[SNAPSHOT] = SnapshotCache()
    app[REDIS_ANSWERS] = redis_answers(app)
    app[UPLOADS] = Uploads()
    app[FATAL] = Fatal()
    app[STOPPING] = asyncio.Event()
    app.cleanup_ctx.extend([redis_ctx, chain_ctx, workers_ctx, loops_ctx])
    app.on_shutdown.append(end_long_lived)
    for table in TABLES:
        app.add_routes(table)
    return app


async def redis_ctx(app: web.Application) -> AsyncIterator[None]:
    """The Redis connection pool (a private Redis server without --redis) and the store on it."""
    cfg = app[CONFIG]
    embedded = None
    supervisor: asyncio.Task[None] | None = None
    if cfg.redis_url is None:
        embedded = EmbeddedRedis(cfg.data_dir / "coordinator" / "redis")
        await embedded.start()
        redis = connect(socket=str(embedded.socket))
    else:
        redis = connect(url=cfg.redis_url)
    try:
        store = Store(redis)
        try:
            await store.setup()
        except RedisError as exc:  # unreachable, a password refused, a server too old for streams
            where = f"unix://{embedded.socket}" if embedded is not None else mask_url(cfg.redis_url or "")
            raise RedisUnavailable(f"the Redis at {where} {redis_failure(exc)}") from exc
        app[STORE] = store
        await _admin_key(store, cfg.data_dir / "coordinator" / "admin.key")
        if embedded is not None:
            supervisor = asyncio.create_task(embedded.keep_running(), name="embedded-redis")
        yield
    finally:
        if supervisor is not None:
            await cancel_and_wait(supervisor, 5)  # before the stop below: nothing starts it again
        with contextlib.suppress(Exception):
            await asyncio.wait_for(redis.aclose(), 5)
        if embedded is not None:
            embedded.stop()


async def chain_ctx(app: web.Application) -> AsyncIterator[None]:
    """The chain client (TrainingTasks, the relayer key) and the permit domain of this chain."""
    cfg = app[CONFIG]
    w3 = http_web3(cfg.rpc_url, timeout=30)
    try:
        chain = await Chain.connect(w3, cfg.deployment, cfg.relayer)
        ours = await identity(w3, chain.chain_id, cfg.deployment)
        other = await app[STORE].bind_deployment(ours)
        if other is not None:
            raise AnotherDeployment(_another_deployment(cfg, ours, other))
        app[IDENTITY] = ours
        chain.head = int(await w3.eth.block_number)
        chain.confirmations = cfg.confirmations
        app[CHAIN] = chain
        assert cfg.deployment.training is not None
        app[PERMITS] = PermitDomain(chain.chain_id, cfg.deployment.token, cfg.deployment.training)
        app[TERMS] = TermsDomain(chain.chain_id, cfg.deployment.training)
        app[RULES] = RulesCache(w3, cfg.deployment)
        yield
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(w3.provider.disconnect(), 5)  # type: ignore[attr-defined]


def _another_deployment(cfg: ServeConfig, identity: dict[str, object], other: dict[str, object]) -> str:
    where = (
        "another Redis database for this deployment (--redis redis://host:port/<n>), or clear this one (FLUSHDB)"
        if cfg.redis_url is not None
        else f"another --data-dir, or remove {cfg.data_dir / 'coordinator' / 'redis'}"
    )
    return (
        f"this coordinator's Redis holds the state of {said(other)}, not of this deployment, {said(identity)}: its "
        "tasks, jobs and chain checkpoint would be taken for this chain's (a devnet started afresh numbers its tasks "
        f"from 1 again). Use {where}, if the old deployment's state is no longer needed"
    )


async def workers_ctx(app: web.Application) -> AsyncIterator[None]:
    """The blockstore and the pending artifacts (files and the IPFS gateway, which serves both) and the job
    dispatcher with its worker sockets."""
    cfg = app[CONFIG]
    cfg.data_dir.mkdir(parents=True, exist_ok=True)  # where upload bodies are spooled as they arrive
    # Durable: an upload answered 201 is on disk, a crash right after it included (a sync per block: a 16 MiB
    # file takes 1.6-1.7 times as long to write, benchmarks/blockstore_write.py; in a writer thread).
    blockstore = Blockstore(cfg.data_dir / "blocks", durable=True)
    # One store per chain and TrainingTasks, as the training secrets: a redeployed devnet's task 1 is not an
    # earlier one's, and the chain decides only on its own tasks' artifacts.
    chain = app[CHAIN]
    pending = PendingArtifacts(cfg.data_dir / "artifacts" / f"{chain.chain_id}-{chain.tasks.address.lower()}")
    app[BLOCKSTORE] = Layered(blockstore, pending.blocks)
    app[IPFS] = IpfsClient(blockstore, IpfsConfig())
    app[PENDING] = pending
    dispatcher = Dispatcher(
        app[STORE],
        cfg.instance,
        job_timeout=cfg.job_timeout,
        max_deliveries=cfg.max_deliveries,
        job_margin=cfg.job_margin,
        committed=lambda task, account: _committed(chain, task, account),
    )
    app[DISPATCHER] = dispatcher
    yield
    await _close_workers(dispatcher)  # any that logged in while the server was stopping
    app[UPLOADS].writers.shutdown(wait=False)  # the handlers are done: idle writer threads end


async def end_long_lived(app: web.Application) -> None:
    """As the server begins to stop (it listens no more): the workers' connections are closed with 1001
    (going away; each worker reconnects, to this server once it is back or to another instance, and gets its
    jobs back there) and the dashboard's event streams end. aiohttp would otherwise wait out its shutdown
    timeout for these handlers, which never end by themselves, before the server could stop."""
    app[STOPPING].set()
    if DISPATCHER in app:
        await _close_workers(app[DISPATCHER])


async def _close_workers(dispatcher: Dispatcher) -> None:
    async def close(conn: WorkerConn) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.ws.close(code=1001, message=b"server shutting down"), 2)

    await asyncio.gather(*(close(conn) for conn in list(dispatcher.conns.values())))


async def _committed(chain: Chain, chain_task: int, account: str) -> bool | None:
    """Whether the chain shows `account`'s commitment to on-chain task `chain_task`; None when the node did not
    answer within PROOF_TIMEOUT, or answered with an error (asked again later: a worker's connection never
    ends on it)."""
    try:
        call = chain.tasks.functions.submissionOf(chain_task, account).call()
        return int(await asyncio.wait_for(call, PROOF_TIMEOUT)) != 0
    except (*BACKEND_ERRORS, Web3Exception, TimeoutError) as exc:  # (a node answering 0x or a revert included)
        log.warning("commitment_unknown", task=chain_task, account=account, error=str(exc) or type(exc).__name__)
        return None


async def loops_ctx(app: web.Application) -> AsyncIterator[None]:
    """The background loops: leader (follower and keeper), dispatch, observer, artifacts, relayer."""
    cfg, store, chain, metrics = app[CONFIG], app[STORE], app[CHAIN], app[METRICS]
    dispatcher = app[DISPATCHER]
    loops = Loops()
    leader = Leader(chain, store, metrics)
    observer = Observer(chain, store, dispatcher, metrics, cfg.heartbeat_timeout)
    loops.start("leader", forever("leader", cfg.poll_interval, leader.step))
    loops.start("dispatch", forever("dispatch", cfg.poll_interval, dispatcher.run_pass))
    loops.start("observe", forever("observe", 1.0, observer.step))
    # The blockstore is durable: copies into it are on disk before their pending originals are deleted.
    settler = ArtifactSettler(chain, app[PENDING], app[IPFS].blockstore, metrics)
    loops.start("artifacts", forever("artifacts", SETTLE_INTERVAL, settler.step))
    if cfg.relay:
        relayer = Relayer(chain, store, app[IPFS], cfg.instance, idle_timeout=cfg.relay_timeout)
        loops.start("relayer", relayer.run())
    watch = DeploymentWatch(chain.w3, cfg.deployment, app[IDENTITY], app[FATAL])
    loops.start("deployment", forever("deployment", WATCH_INTERVAL, watch.step))
    stopper = asyncio.create_task(_stop_loops_when_fatal(app[FATAL], loops))
    try:
        yield
    finally:
        stopper.cancel()
        await loops.stop()


async def _stop_loops_when_fatal(fatal: Fatal, loops: Loops) -> None:
    """Once the server must not go on (`Fatal`), no loop relays, follows or dispatches any more; the HTTP side is
    left to whoever stops the process (`ethml serve` stops itself)."""
    await fatal.event.wait()
    await loops.stop()


#: The most open files `raise_open_files_limit` asks for when the hard limit is unlimited (Linux's default
#: fs.nr_open: a soft limit above it is refused).
MAX_OPEN_FILES = 1 << 20


def raise_open_files_limit() -> int | None:
    """Take the hard limit of open files as the soft one, and return it (None where there are no such limits, or
    the system refuses it). Each connection of a client or worker, each upload's spool file and each Redis
    connection is a file descriptor; a soft limit of 1,024, a common default, would refuse connections long
    before the server is busy."""
    try:
        import resource
    except ImportError:  # not a POSIX system
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = MAX_OPEN_FILES if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError) as exc:  # a system that caps it lower (macOS's OPEN_MAX, say)
            log.warning("open_files_limit_kept", soft=soft, wanted=wanted, error=str(exc))
            return None
        return wanted
    return None if soft == resource.RLIM_INFINITY else soft


async def _admin_key(store: Store, path: Path) -> None:
    """The first start on a Redis creates an admin key, written (0600) to `path` and never stored in clear."""
    if await store.has_admin_key():
        return
    key = await store.add_api_key("admin", "admin")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    log.info("admin_key_created", file=str(path))
