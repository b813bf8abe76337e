"""`ethml mine`: run a miner node against an RPC endpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from ethml.cli._common import check_rpc_url, handle_errors, is_tty
from ethml.cli._config import MAX_POLL_INTERVAL, MIN_POLL_INTERVAL, load_account, pick

app = typer.Typer(rich_markup_mode=None)

LogLevel = Literal["debug", "info", "warning", "error"]


@app.command("mine")
@handle_errors
def mine(
    account: Annotated[
        int | None,
        typer.Option(
            "--account",
            "--mnemonic-index",
            min=0,
            help="Derive m/44'/60'/0'/0/N from the mnemonic.",
            envvar="ETHML_ACCOUNT",
        ),
    ] = None,
    private_key: Annotated[
        str | None,
        typer.Option(
            metavar="HEX", help="Sign with this private key (instead of --account).", envvar="ETHML_PRIVATE_KEY"
        ),
    ] = None,
    rpc: Annotated[
        str | None,
        typer.Option(
            "--rpc-url",
            "--rpc",
            help="JSON-RPC URL (default: http://127.0.0.1:8545).",
            envvar=["ETHML_RPC", "ETH_RPC_URL"],
        ),
    ] = None,
    deployment: Annotated[
        Path | None,
        typer.Option(
            help="Deployment file (default: looked up by chain id in the data dir).", envvar="ETHML_DEPLOYMENT"
        ),
    ] = None,
    threads: Annotated[
        int | None, typer.Option(min=1, help="Search threads (default: all cores).", envvar="ETHML_THREADS")
    ] = None,
    models_dir: Annotated[
        Path | None,
        typer.Option(help="Directory with manifest.json and the model artifacts.", envvar="ETHML_MODELS_DIR"),
    ] = None,
    gateway: Annotated[
        list[str] | None,
        typer.Option(
            metavar="URL", help="IPFS trustless gateway URL, tried in order (repeatable).", envvar="ETHML_GATEWAYS"
        ),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(help="Blockstore, journal and deployments (default: XDG data dir).", envvar="ETHML_DATA_DIR"),
    ] = None,
    log_format: Annotated[
        str | None, typer.Option(help="console or json (default: console on a terminal).", envvar="ETHML_LOG_FORMAT")
    ] = None,
    log_level: Annotated[
        LogLevel | None,
        typer.Option(
            "--log-level",
            "-v",
            help="Lowest level logged (default: info; warning under the live status line).",
            envvar="ETHML_LOG_LEVEL",
        ),
    ] = None,
    mnemonic_file: Annotated[
        Path | None,
        typer.Option(help="File holding the mnemonic (instead of ETHML_MNEMONIC).", envvar="ETHML_MNEMONIC_FILE"),
    ] = None,
    keystore: Annotated[Path | None, typer.Option(help="Encrypted JSON keystore (instead of --account).")] = None,
    password_file: Annotated[
        Path | None, typer.Option(help="File with the keystore password.", envvar="ETHML_PASSWORD_FILE")
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(help="TOML config file (default: XDG config dir/ethml/config.toml).", envvar="ETHML_CONFIG"),
    ] = None,
    poll_interval: Annotated[
        float | None,
        typer.Option(
            min=MIN_POLL_INTERVAL,
            max=MAX_POLL_INTERVAL,
            help="Seconds between log polls (default: 0.1 on a devnet, else 1).",
        ),
    ] = None,
) -> None:
    """Mine: watch for requests, predict, grind the proof of work, submit. Ctrl-C stops cleanly."""
    import asyncio

    from ethml._logging import configure_logging
    from ethml.chain.deploy import Deployment
    from ethml.cli._config_file import load_config
    from ethml.node.miner import MinerSettings, run_miner

    cfg = load_config(config)
    fmt = pick(log_format, cfg, "log_format")
    if fmt not in (None, "console", "json"):
        raise typer.BadParameter("--log-format must be console or json")
    status_line = is_tty() and fmt != "json"
    configure_logging(fmt, level=log_level or ("warning" if status_line else "info"), status_line=status_line)
    settings = MinerSettings(
        rpc=check_rpc_url(pick(rpc, cfg, "rpc", "http://127.0.0.1:8545")),
        deployment_file=_path(pick(deployment, cfg, "deployment")),
        threads=pick(threads, cfg, "threads"),
        models_dir=_path(pick(models_dir, cfg, "models_dir")),
        gateways=list(pick(gateway, cfg, "gateways", [])),
        data_dir=_path(pick(data_dir, cfg, "data_dir")),
        status_line=status_line,
        poll_interval=_float(pick(poll_interval, cfg, "poll_interval")),
    )
    index = pick(account, cfg, "account")

    def resolve_account(chain_id: int):  # type: ignore[no-untyped-def]
        return load_account(
            index=index,
            mnemonic_file=_path(pick(mnemonic_file, cfg, "mnemonic_file")),
            keystore=_path(pick(keystore, cfg, "keystore")),
            password_file=_path(pick(password_file, cfg, "password_file")),
            chain_id=chain_id,
            private_key=pick(private_key, cfg, "private_key"),
        )

    def find_deployment(chain_id: int) -> Deployment:
        if settings.deployment_file is not None:
            return Deployment.load(settings.deployment_file)
        return Deployment.find(chain_id, settings.data_dir)

    raise typer.Exit(asyncio.run(run_miner(settings, resolve_account, find_deployment)))


def _float(value: object) -> float | None:
    return float(str(value)) if value is not None else None


def _path(value: object) -> Path | None:
    return Path(str(value)).expanduser() if value is not None else None
