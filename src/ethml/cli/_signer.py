"""The signing-key options of the commands that administer a deployment (`deploy`, `model`): a keystore
(with a password file, or asked for on a terminal), ETHML_PRIVATE_KEY, or a mnemonic index."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ethml.cli._config import ConfigError, load_account
from ethml.cli._options import OptionGroup

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

PrivateKeyOption = Annotated[
    str | None,
    typer.Option(
        metavar="HEX",
        help=(
            "Private key (0x + 64 hex digits). Prefer the ETHML_PRIVATE_KEY environment variable or --keystore: "
            "a key typed here stays in your shell history and shows in the process list."
        ),
        envvar="ETHML_PRIVATE_KEY",
    ),
]
KeystoreOption = Annotated[
    Path | None,
    typer.Option(
        help="Encrypted JSON keystore (geth, `cast wallet new`, or eth-account's Account.encrypt).",
        envvar="ETHML_KEYSTORE",
    ),
]
PasswordFileOption = Annotated[
    Path | None,
    typer.Option(
        help="File with the keystore's password (asked for on a terminal if absent).", envvar="ETHML_PASSWORD_FILE"
    ),
]
AccountOption = Annotated[
    int | None,
    typer.Option("--account", min=0, help="Derive m/44'/60'/0'/0/N from ETHML_MNEMONIC or --mnemonic-file."),
]
MnemonicFileOption = Annotated[
    Path | None,
    typer.Option(help="File holding the mnemonic (instead of ETHML_MNEMONIC).", envvar="ETHML_MNEMONIC_FILE"),
]


@dataclasses.dataclass(frozen=True, kw_only=True)
class SignerOptions(OptionGroup):
    """--private-key, --keystore, --password-file, --account and --mnemonic-file: the signing key."""

    private_key: PrivateKeyOption = None
    keystore: KeystoreOption = None
    password_file: PasswordFileOption = None
    account: AccountOption = None
    mnemonic_file: MnemonicFileOption = None

    def load(self, *, chain_id: int, purpose: str) -> tuple[LocalAccount, str]:
        """The account and where it came from; a keystore's password is asked for on a terminal when no
        password file is given."""
        password = None
        if (
            self.keystore is not None
            and self.password_file is None
            and self.private_key is None
            and self.account is None
        ):
            if not sys.stdin.isatty():
                raise ConfigError("--keystore needs --password-file (or ETHML_PASSWORD_FILE) when not on a terminal")
            password = typer.prompt(f"password for {self.keystore}", hide_input=True, err=True)
        return load_account(
            index=self.account,
            mnemonic_file=self.mnemonic_file,
            keystore=self.keystore,
            password_file=self.password_file,
            chain_id=chain_id,
            private_key=self.private_key,
            password=password,
            purpose=purpose,
        )
