"""Talking to the ethml contracts: artifacts, accounts, transactions, deployment.

The names below load from their modules on first use (web3 and eth-account take a while to import),
so importing a light module of this package, such as `ethml.chain.accounts`, stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ethml.chain._artifacts import Artifact, load_artifact
    from ethml.chain.accounts import DEV_MNEMONIC, account_from_mnemonic, dev_account, dev_accounts
    from ethml.chain.deploy import (
        EML,
        Deployment,
        ModelKind,
        ModelSpec,
        Parameters,
        TrainingParameters,
        consumer_contract,
        deploy_system,
        deployment_path,
        ethml_contract,
        register_model,
        registry_contract,
        token_contract,
        training_contract,
    )
    from ethml.chain.embedded import embedded_chain
    from ethml.chain.reverts import Revert, decode_revert, explain
    from ethml.chain.rounds import (
        INVALID_INPUT,
        MINERS_PER_ROUND,
        Status,
        answer_table,
        challenge_for,
        commitment_for,
        revealed_hash,
    )
    from ethml.chain.tx import send

_SOURCES = {
    "ethml.chain._artifacts": ("Artifact", "load_artifact"),
    "ethml.chain.accounts": ("DEV_MNEMONIC", "account_from_mnemonic", "dev_account", "dev_accounts"),
    "ethml.chain.deploy": (
        "EML",
        "Deployment",
        "ModelKind",
        "ModelSpec",
        "Parameters",
        "TrainingParameters",
        "consumer_contract",
        "deploy_system",
        "deployment_path",
        "ethml_contract",
        "register_model",
        "registry_contract",
        "token_contract",
        "training_contract",
    ),
    "ethml.chain.embedded": ("embedded_chain",),
    "ethml.chain.reverts": ("Revert", "decode_revert", "explain"),
    "ethml.chain.rounds": (
        "INVALID_INPUT",
        "MINERS_PER_ROUND",
        "Status",
        "answer_table",
        "challenge_for",
        "commitment_for",
        "revealed_hash",
    ),
    "ethml.chain.tx": ("send",),
}
_LAZY = {name: module for module, names in _SOURCES.items() for name in names}

__all__ = [
    "DEV_MNEMONIC",
    "EML",
    "INVALID_INPUT",
    "MINERS_PER_ROUND",
    "Artifact",
    "Deployment",
    "ModelKind",
    "ModelSpec",
    "Parameters",
    "Revert",
    "Status",
    "TrainingParameters",
    "account_from_mnemonic",
    "answer_table",
    "challenge_for",
    "commitment_for",
    "consumer_contract",
    "decode_revert",
    "deploy_system",
    "deployment_path",
    "dev_account",
    "dev_accounts",
    "embedded_chain",
    "ethml_contract",
    "explain",
    "load_artifact",
    "register_model",
    "registry_contract",
    "revealed_hash",
    "send",
    "token_contract",
    "training_contract",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ethml.chain' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
