"""Accounts: the development mnemonic and HD derivation (m/44'/60'/0'/0/N)."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from eth_account import Account
    from eth_account.signers.local import LocalAccount

#: The public development mnemonic (anvil's `ethml devnet` accounts). Never hold real funds with it.
DEV_MNEMONIC = "hawk couple problem quantum lemon lava saddle swallow want become forum educate"


@functools.cache
def _account_class() -> type[Account]:
    """eth-account's Account with HD wallets enabled, imported on first use (it takes a while)."""
    from eth_account import Account

    Account.enable_unaudited_hdwallet_features()
    return Account


def account_from_mnemonic(mnemonic: str, index: int) -> LocalAccount:
    if index < 0:
        raise ValueError(f"account index must be >= 0, got {index}")
    path = f"m/44'/60'/0'/0/{index}"
    account: LocalAccount = _account_class().from_mnemonic(mnemonic, account_path=path)
    return account


def dev_account(index: int) -> LocalAccount:
    return account_from_mnemonic(DEV_MNEMONIC, index)


def dev_accounts(count: int = 10) -> list[LocalAccount]:
    return [dev_account(i) for i in range(count)]
