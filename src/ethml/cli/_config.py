"""Options from the command line, ETHML_* environment variables, or a TOML config file, in that order.

The config file's schema and loader live in `ethml.cli._config_file` (pydantic, imported by `mine` when
it runs); this module stays light for `--help`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ethml.chain.accounts import DEV_MNEMONIC, account_from_mnemonic
from ethml.errors import EthmlError

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

#: Log polling bounds: faster is a busy loop, slower misses rounds.
MIN_POLL_INTERVAL = 0.01
MAX_POLL_INTERVAL = 60.0


class ConfigError(EthmlError, ValueError):
    pass


def default_config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "ethml" / "config.toml"


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
    private_key: str | None = None,
    password: str | None = None,
    purpose: str = "the mining account",
    takes_keystore: bool = True,
) -> tuple[LocalAccount, str]:
    """The signing account and a phrase saying where it came from. A keystore's password comes from
    `password_file`, or `password` (asked for on a terminal by the command). `takes_keystore`: whether the
    command has a --keystore option to name when no key was chosen."""
    from eth_account import Account

    from ethml.node.miner import DEV_CHAIN_IDS  # anvil, hardhat/ganache, the embedded eth-tester chain

    if private_key is not None:
        if index is not None or keystore is not None:
            raise ConfigError("--private-key, --keystore and --account each choose the signing key: give one of them")
        try:
            key_account: LocalAccount = Account.from_key(private_key.strip())
        except Exception:  # noqa: BLE001 - eth-account raises several types for a malformed key
            raise ConfigError("--private-key is not a 32-byte hex private key (0x followed by 64 hex digits)") from None
        return key_account, "--private-key"
    if keystore is not None:
        if index is not None:
            raise ConfigError("--keystore and --account both choose the signing key: give one of them")
        if password_file is None and password is None:
            raise ConfigError("--keystore needs --password-file (or ETHML_PASSWORD_FILE)")
        try:
            text = keystore.read_text()
            if password_file is not None:
                password = password_file.read_text().rstrip("\n")
        except OSError as exc:
            raise ConfigError(f"cannot read {exc.filename}: {exc.strerror}") from None
        try:
            key = Account.decrypt(text, password or "")
        except Exception as exc:  # noqa: BLE001 - bad JSON, missing fields, wrong password: all unusable
            reason = str(exc) or type(exc).__name__
            if isinstance(exc, KeyError | TypeError):
                reason = f"not an Ethereum JSON keystore (missing {exc})"
            raise ConfigError(f"cannot unlock keystore {keystore}: {reason}") from None
        account: LocalAccount = Account.from_key(key)
        return account, f"keystore {keystore}"
    if index is None:
        ways = (
            ", --keystore FILE, or ETHML_PRIVATE_KEY" if takes_keystore else " or --private-key KEY (ETHML_PRIVATE_KEY)"
        )
        raise ConfigError(f"choose {purpose}: --account N (with ETHML_MNEMONIC){ways}")
    mnemonic = os.environ.get("ETHML_MNEMONIC")
    source = "ETHML_MNEMONIC"
    if mnemonic_file is not None:
        try:
            mnemonic = mnemonic_file.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read mnemonic file {mnemonic_file}: {exc}") from None
        if not mnemonic:
            raise ConfigError(f"mnemonic file {mnemonic_file} is empty")
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
