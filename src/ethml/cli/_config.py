"""Options from the command line, ETHML_* environment variables, or a TOML config file, in that order."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount

from ethml.chain.accounts import DEV_MNEMONIC, account_from_mnemonic
from ethml.errors import EthmlError
from ethml.node.miner import DEV_CHAIN_IDS  # anvil, hardhat/ganache, the embedded eth-tester chain


class ConfigError(EthmlError, ValueError):
    pass


def default_config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "ethml" / "config.toml"


def load_config(path: Path | None) -> dict[str, Any]:
    """The [ethml] table (or the top level) of the TOML file; {} when the default file is absent."""
    target = path or default_config_path()
    if not target.exists():
        if path is not None:
            raise ConfigError(f"config file {path} does not exist")
        return {}
    try:
        data = tomllib.loads(target.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {target} is not valid TOML: {exc}") from None
    table = data.get("ethml", data)
    return {str(k).replace("-", "_"): v for k, v in table.items()}


def pick(cli: Any, config: dict[str, Any], key: str, default: Any = None) -> Any:
    """The command line (or its environment variable) wins, then the config file, then the default."""
    if cli is not None and cli != [] and cli != ():
        return cli
    return config.get(key, default)


def load_account(
    *,
    index: int | None,
    mnemonic_file: Path | None,
    keystore: Path | None,
    password_file: Path | None,
    chain_id: int,
) -> tuple[LocalAccount, str]:
    """The signing account and a phrase saying where it came from."""
    if keystore is not None:
        if password_file is None:
            raise ConfigError("--keystore needs --password-file (or ETHML_PASSWORD_FILE)")
        try:
            key = Account.decrypt(keystore.read_text(), password_file.read_text().rstrip("\n"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot unlock keystore {keystore}: {exc}") from None
        account: LocalAccount = Account.from_key(key)
        return account, f"keystore {keystore}"
    if index is None:
        raise ConfigError("choose the mining account: --account N (with ETHML_MNEMONIC) or --keystore FILE")
    mnemonic = os.environ.get("ETHML_MNEMONIC")
    source = "ETHML_MNEMONIC"
    if mnemonic_file is not None:
        try:
            mnemonic = mnemonic_file.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read mnemonic file {mnemonic_file}: {exc.strerror}") from None
        source = str(mnemonic_file)
    if not mnemonic:
        if chain_id not in DEV_CHAIN_IDS:
            raise ConfigError(
                f"no mnemonic for --account {index}: set ETHML_MNEMONIC or --mnemonic-file "
                f"(chain {chain_id} is not a devnet)"
            )
        mnemonic, source = DEV_MNEMONIC, "the public development mnemonic (devnet only)"
    try:
        return account_from_mnemonic(mnemonic, index), f"account {index} of {source}"
    except Exception as exc:  # noqa: BLE001 - eth-account raises several types for bad phrases
        raise ConfigError(f"cannot derive account {index} from {source}: {exc}") from None
