"""`ethml mine`: run a miner node against an RPC endpoint."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from ethml.cli._common import check_rpc_url, handle_errors, is_tty
from ethml.cli._config import MAX_POLL_INTERVAL, MIN_POLL_INTERVAL, load_account, pick

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

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
    from ethml.ml import Manifest
    from ethml.node.miner import DEV_CHAIN_IDS, MinerSettings, run_miner

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
    key_file = _path(pick(mnemonic_file, cfg, "mnemonic_file"))
    key = pick(private_key, cfg, "private_key")
    store = _path(pick(keystore, cfg, "keystore"))

    def resolve_account(chain_id: int) -> tuple[LocalAccount, str]:
        return load_account(
            index=index,
            mnemonic_file=key_file,
            keystore=store,
            password_file=_path(pick(password_file, cfg, "password_file")),
            chain_id=chain_id,
            private_key=key,
        )

    # Everything local is checked before the RPC is reached (which `mine` waits for, retrying, when it
    # is down): a malformed key, a keystore or mnemonic file that cannot be used, a missing deployment
    # file or model manifest, a gateway that is not a URL. Only the public development mnemonic, the
    # default of --account on a devnet, waits for the chain id that allows it.
    devnet_default = key is None and store is None and index is not None and key_file is None
    early: tuple[LocalAccount, str] | None = None
    if devnet_default and not os.environ.get("ETHML_MNEMONIC"):
        resolve_account(min(DEV_CHAIN_IDS))  # checks the index against the development mnemonic
    else:
        early = resolve_account(0)  # no chain needed (and a keystore is decrypted once)
    from ethml.ipfs.client import check_gateway

    for url in settings.gateways:
        check_gateway(url)  # before anything starts (IpfsConfig checks them again when the node builds it)
    chosen = Deployment.load(settings.deployment_file) if settings.deployment_file is not None else None
    Manifest.load(settings.models_dir)

    def find_deployment(chain_id: int) -> Deployment:
        if chosen is not None:
            return chosen
        return Deployment.find(chain_id, settings.data_dir)

    def account_for(chain_id: int) -> tuple[LocalAccount, str]:
        return early if early is not None else resolve_account(chain_id)

    raise typer.Exit(asyncio.run(run_miner(settings, account_for, find_deployment)))


def _float(value: object) -> float | None:
    return float(str(value)) if value is not None else None


def _path(value: object) -> Path | None:
    return Path(str(value)).expanduser() if value is not None else None
