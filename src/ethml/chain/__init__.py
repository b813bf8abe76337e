"""Talking to the ethml contracts: artifacts, accounts, transactions, deployment."""

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
from ethml.chain.rounds import (
    INVALID_INPUT,
    MINERS_PER_ROUND,
    Status,
    answer_table,
    challenge_for,
    commitment_for,
    revealed_hash,
)
from ethml.chain.tx import decode_revert, send

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
    "load_artifact",
    "register_model",
    "registry_contract",
    "revealed_hash",
    "send",
    "token_contract",
    "training_contract",
]
