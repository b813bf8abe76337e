"""`ethml serve` (the training coordinator) and `ethml worker` (a trainer or validator of it)."""

from __future__ import annotations

import gc
import os
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ethml.cli._common import ChainOptions, check_rpc_url, handle_errors
from ethml.cli._compute import ComputeOptions, compute_for
from ethml.cli._config import ConfigError, load_account
from ethml.cli._options import option_groups
from ethml.devnet import check_port_free
from ethml.errors import ChainError
from ethml.paths import data_home
from ethml.urls import check_url, mask_url

if TYPE_CHECKING:
    import asyncio

    from aiohttp import web
    from eth_account.signers.local import LocalAccount
    from web3 import AsyncWeb3

    from ethml.chain.deploy import Deployment
    from ethml.coordinator.worker import Worker

app = typer.Typer(rich_markup_mode=None)

Account = Annotated[int | None, typer.Option("--account", "--mnemonic-index", min=0, help="Account index.")]
PrivateKey = Annotated[
    str | None, typer.Option("--private-key", help="Sign with this key instead.", envvar="ETHML_PRIVATE_KEY")
]


async def _check_training(w3: AsyncWeb3[Any], dep: Deployment) -> None:
    if dep.training is None:
        raise ChainError("this deployment has no TrainingTasks contract (redeploy with a current ethml)")
    if not await w3.eth.get_code(w3.to_checksum_address(dep.training)):
        raise ChainError(f"no contract at TrainingTasks {dep.training}: the deployment file is stale")


async def _check_relayer(w3: AsyncWeb3[Any], address: str) -> None:
    """The relayer pays the gas of the tasks it creates (the requesters pay the rewards): it needs ETH."""
    if int(await w3.eth.get_balance(w3.to_checksum_address(address))) == 0:
        raise ConfigError(
            f"the relayer account {address} holds no ETH to pay for the transactions it relays: fund it, or choose "
            "another with --account or --private-key"
        )


def _signer(
    account: int | None, private_key: str | None, chain_id: int, purpose: str, default: int | None = None
) -> LocalAccount:
    return load_account(
        index=None if private_key is not None else (account if account is not None else default),
        mnemonic_file=None,
        keystore=None,
        password_file=None,
        chain_id=chain_id,
        private_key=private_key,
        purpose=purpose,
        takes_keystore=False,
    )[0]


@app.command("serve")
@handle_errors
@option_groups
def serve(
    chain: ChainOptions,
    account: Account = None,
    private_key: PrivateKey = None,
    redis: Annotated[
        str | None,
        typer.Option(
            "--redis",
            metavar="URL",
            help="A Redis to share with other instances (redis://host:6379/0). Default: a private Redis in DATA_DIR.",
            envvar="ETHML_REDIS",
        ),
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8600,
    key_rate: Annotated[float, typer.Option(min=0.01, help="Requests per second per API key.")] = 20.0,
    key_burst: Annotated[int, typer.Option(min=1, help="Burst per API key.")] = 40,
    ip_rate: Annotated[float, typer.Option(min=0.01, help="Requests per second per client address.")] = 50.0,
    ip_burst: Annotated[int, typer.Option(min=1, help="Burst per client address.")] = 100,
    login_rate: Annotated[
        float, typer.Option(min=0.01, help="Worker logins (/ws/worker connections) per second per client address.")
    ] = 1.0,
    login_burst: Annotated[int, typer.Option(min=1, help="Burst of worker logins per client address.")] = 30,
    trusted_proxy: Annotated[
        list[str] | None,
        typer.Option(
            "--trusted-proxy",
            metavar="IP|CIDR",
            help="A reverse proxy in front of this server (repeat for more): a request from one is counted "
            "against the client that X-Forwarded-For names, not against the proxy. Default: none (the header "
            "is ignored).",
        ),
    ] = None,
    max_client_connections: Annotated[
        int,
        typer.Option(
            min=0,
            metavar="N",
            help="Connections one client address (an IPv6 /64) may have open at once; more are closed as they "
            "are made. 0: no cap. A --trusted-proxy's connections are not counted.",
        ),
    ] = 256,
    upload_quota: Annotated[
        float,
        typer.Option(
            min=1.0,
            metavar="MIB",
            help="MiB each requester API key may add to the blockstore per hour, in bursts of as much (admin "
            "keys are not counted; a worker uploads only the artifacts its submissions committed to).",
        ),
    ] = 1024.0,
    min_free_disk: Annotated[
        float,
        typer.Option(
            min=0.0,
            metavar="MIB",
            help="MiB the blockstore's disk keeps free: an upload that would leave less gets 507 (a model "
            "artifact may use the lower half).",
        ),
    ] = 1024.0,
    job_timeout: Annotated[
        float, typer.Option(min=1.0, help="Seconds a silent worker keeps its jobs before they go to another.")
    ] = 30.0,
    max_deliveries: Annotated[
        int,
        typer.Option(
            min=1, help="Deliveries of a validator's seat before it is dead-lettered (a training job never is)."
        ),
    ] = 3,
    job_margin: Annotated[
        float,
        typer.Option(
            min=1.0,
            help="Seconds a job may take beyond its task's training time limit (per training it needs) before "
            "it is taken back from a connected worker that has not reported it.",
        ),
    ] = 600.0,
    confirmations: Annotated[
        int,
        typer.Option(
            min=0,
            help="Blocks behind the head the event follower stays; a task created by the relayer is linked "
            "to its document once this deep.",
        ),
    ] = 0,
    access_log: Annotated[
        bool, typer.Option("--access-log", help="Log every HTTP request (the metrics count them anyway).")
    ] = False,
    relay: Annotated[
        bool,
        typer.Option(
            help="Create posted tasks on chain here; --no-relay serves the API only (another instance relays)."
        ),
    ] = True,
) -> None:
    """Run the training coordinator: REST API, worker WebSocket, dashboard, Redis state, chain relayer.

    The relayer (--account, default 0) creates the tasks posted over the API on chain, exactly on the
    terms their requesters signed (it cannot change one), and pays the gas; it needs no role. It also
    reveals test sets given to it, draws panels, replaces no-shows and finalizes. On first start an
    admin API key is written to DATA_DIR/coordinator/admin.key; create requester keys with POST
    /api/keys. The state in Redis belongs to the deployment of its first start (chain, TrainingTasks,
    the block it was deployed in): a server for another deployment refuses to start on it, and a
    server whose chain is replaced under it (a devnet started afresh) stops.
    """
    import asyncio
    import signal

    from aiohttp import web
    from aiohttp.log import access_logger
    from aiohttp.web_log import AccessLogger

    from ethml.coordinator.appkeys import FATAL
    from ethml.coordinator.config import trusted_network
    from ethml.coordinator.deployment import AnotherDeployment
    from ethml.coordinator.redis_client import check_redis, check_redis_url
    from ethml.coordinator.server import ServeConfig, make_app, raise_open_files_limit

    check_rpc_url(chain.rpc)
    if redis is not None:
        try:
            check_redis_url(redis)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    try:
        proxies = tuple(trusted_network(value) for value in trusted_proxy or ())
    except ValueError as exc:
        raise ConfigError(f"--trusted-proxy {exc}") from None
    check_port_free(host, port, "the coordinator", "ethml serve")
    log_format = AccessLogger.LOG_FORMAT
    if proxies:  # the peer is a proxy: each line shows what its header says of the client as well
        log_format = log_format.replace("%a ", "%a (for %{X-Forwarded-For}i) ", 1)
    home = chain.data_dir or data_home()

    async def checked(w3: AsyncWeb3[Any], dep: Deployment) -> tuple[Deployment, LocalAccount]:
        await _check_training(w3, dep)
        relayer = _signer(account, private_key, dep.chain_id, "the relayer's account", default=0)
        if relay:
            await _check_relayer(w3, relayer.address)
        if redis is not None:
            await check_redis(redis)
        return dep, relayer

    dep, relayer = chain.run(checked)
    chain_id = dep.chain_id
    config = ServeConfig(
        rpc_url=chain.rpc,
        deployment=dep,
        relayer=relayer,
        data_dir=home,
        redis_url=redis,
        host=host,
        port=port,
        key_rate=key_rate,
        key_burst=key_burst,
        ip_rate=ip_rate,
        ip_burst=ip_burst,
        login_rate=login_rate,
        login_burst=login_burst,
        trusted_proxies=proxies,
        max_client_connections=max_client_connections,
        upload_quota_mib=upload_quota,
        min_free_disk_mib=min_free_disk,
        job_timeout=job_timeout,
        max_deliveries=max_deliveries,
        job_margin=job_margin,
        confirmations=confirmations,
        relay=relay,
    )
    application = make_app(config)
    open_files = raise_open_files_limit()

    async def settle(_app: web.Application) -> None:
        # Everything built at start-up lives as long as the server: keep it out of the collector's scans,
        # and collect the young generation less often (a request allocates a few hundred objects).
        gc.collect()
        gc.freeze()
        gc.set_threshold(20_000, 20, 20)

    application.on_startup.append(settle)
    watching: list[asyncio.Task[None]] = []

    async def stop_when_fatal(app: web.Application) -> None:
        # The chain under the server was replaced (coordinator.deployment.DeploymentWatch): the loops have stopped;
        # the server stops as on SIGTERM, and the reason is the last line it prints.
        async def wait() -> None:
            await app[FATAL].event.wait()
            os.kill(os.getpid(), signal.SIGTERM)

        watching.append(asyncio.create_task(wait()))

    application.on_startup.append(stop_when_fatal)
    if (warning := confirmations_warning(chain_id, confirmations)) is not None:
        typer.echo(warning, err=True)
    typer.echo(
        f"ethml coordinator on http://{host}:{port} (dashboard /, API /api, workers ws://{host}:{port}/ws/worker)\n"
        f"chain {chain_id}, TrainingTasks {dep.training}, relayer {relayer.address}, "
        f"redis {mask_url(redis) if redis else 'private in ' + str(home / 'coordinator' / 'redis')}"
        + (f", up to {open_files} open files" if open_files is not None else ""),
        err=True,
    )
    web.run_app(
        application,
        loop=_event_loop(),
        host=host,
        port=port,
        print=None,
        handle_signals=True,
        shutdown_timeout=5,
        access_log=access_logger if access_log else None,
        access_log_format=log_format,
    )
    if (fatal := application[FATAL].message) is not None:
        raise AnotherDeployment(fatal)


def confirmations_warning(chain_id: int, confirmations: int) -> str | None:
    """What `ethml serve` says at start when it follows a public chain at its head: a reorg there may drop a
    creation, or mine it again as another chain task, after the relayer linked a document to it."""
    from ethml.node.miner import DEV_CHAIN_IDS

    if confirmations > 0 or chain_id in DEV_CHAIN_IDS:
        return None
    return (
        f"warning: --confirmations 0 on chain {chain_id}, which is not a devnet: a reorg may move a task created "
        "here to another chain task after its document was linked; follow a public chain some blocks behind its "
        "head (--confirmations 12, say, or past its finality)"
    )


def _event_loop() -> asyncio.AbstractEventLoop:
    """uvloop where it is installed (a dependency on Linux and macOS): the same asyncio code, with the
    loop and transports in C."""
    import asyncio

    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


@app.command("worker")
@handle_errors
@option_groups
def worker(
    server: Annotated[str, typer.Option("--server", metavar="URL", help="The coordinator: ws://host:port.")],
    role: Annotated[str, typer.Option(help="trainer or validator (the stake it holds in TrainingTasks).")],
    chain: ChainOptions,
    account: Account = None,
    private_key: PrivateKey = None,
    capacity: Annotated[int, typer.Option(min=1, max=16, help="Jobs run at once.")] = 1,
    gateways: Annotated[
        list[str] | None,
        typer.Option("--gateway", metavar="URL", help="IPFS gateway (repeatable; default: the coordinator)."),
    ] = None,
    *,
    jobs: ComputeOptions,
) -> None:
    """Work for a coordinator as a trainer or validator: log in with the account's key, take jobs,
    send the transactions with that key, report results; reconnects by itself.

    Ctrl-C (or SIGTERM) stops it gracefully: no new jobs, the running ones are finished and reported,
    then it exits 0. A second Ctrl-C stops it at once: its jobs go back to the coordinator for
    another worker now (exit 130). Reveals still owed resume at its next start on the same data dir.

    A worker keeps its id on its data dir: started again after a crash (kill -9 included), it logs in
    under the same id and the jobs it was running come back to it. A second worker of the same account
    and role on the same data dir, while the first runs, takes an id of its own.

    With --dask, a forest's trees and the scoring of many submissions run on a Dask cluster (checked
    at the start: reachable, with workers, same library versions), with the same artifacts and scores
    as without it; the coordinator's dashboard shows the cluster's size.
    """
    from ethml.coordinator.worker import Worker, WorkerConfig, _http_base, worker_identity
    from ethml.ipfs import Blockstore, IpfsClient, IpfsConfig

    if role not in ("trainer", "validator"):
        raise ConfigError(f"--role must be trainer or validator, not {role!r}")
    try:
        check_url("--server", server, ("ws", "wss"), "ws://127.0.0.1:8600")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    check_rpc_url(chain.rpc)

    try:
        with compute_for(jobs) as (compute, _size):

            async def work(w3: AsyncWeb3[Any], dep: Deployment) -> bool:
                signer = _signer(account, private_key, dep.chain_id, f"the {role}'s account")
                home = chain.data_dir or data_home()
                ipfs = IpfsClient(Blockstore(home / "blocks"), IpfsConfig(gateways=gateways or [_http_base(server)]))
                with worker_identity(home, signer.address, role) as worker_id:
                    config = WorkerConfig(
                        server=server, role=role, capacity=capacity, worker_id=worker_id, compute=compute, data_dir=home
                    )
                    typer.echo(f"ethml worker {signer.address} as {role} for {server} (id {worker_id})", err=True)
                    async with ipfs:
                        running = Worker(config, w3, dep, signer, ipfs)
                        _stop_on_signals(running)
                        await running.run()
                        return running.stopped_now

            stopped_now = chain.run(work)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    if stopped_now:
        raise typer.Exit(130)


def _stop_on_signals(running: Worker) -> None:
    """The first SIGINT or SIGTERM drains the worker, the next stops it now. The handlers replace
    whatever the process inherited, so a worker started in the background by a script (SIGINT
    ignored) stops on `kill -INT` too."""
    import asyncio
    import signal

    loop = asyncio.get_running_loop()

    def stop() -> None:
        if not running.draining:
            jobs = running.drain()
            if running.stopped_now:
                typer.echo(
                    "ethml worker: stopping now: this coordinator does not take a drain (an older ethml serve); "
                    "the jobs running go to other workers after its job timeout",
                    err=True,
                )
                return
            what = f"finishing {', '.join(jobs)}" if jobs else "no job running"
            typer.echo(
                f"ethml worker: stopping after its jobs ({what}); Ctrl-C again to stop now and hand them back",
                err=True,
            )
        elif not running.stopped_now:
            handed, kept = running.stop_now()
            parts = [f"handing back {', '.join(handed)}"] if handed else []
            parts += [f"finishing {', '.join(kept)}, whose commitment is being sent"] if kept else []
            typer.echo(f"ethml worker: stopping now ({'; '.join(parts) or 'no job running'})", err=True)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
