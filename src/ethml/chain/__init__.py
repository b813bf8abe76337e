"""Talking to the ethml contracts: artifacts, accounts, transactions, deployment."""

from ethml.chain._artifacts import Artifact, load_artifact
from ethml.chain.accounts import DEV_MNEMONIC, account_from_mnemonic, dev_account, dev_accounts
from ethml.chain.deploy import (
    EML,
    INVALID_INPUT,
    Deployment,
    ModelKind,
    ModelSpec,
    Parameters,
    Status,
    TrainingParameters,
    challenge_for,
    commitment_for,
    consumer_contract,
    deploy_system,
    deployment_path,
    ethml_contract,
    register_model,
    training_contract,
)
from ethml.chain.embedded import embedded_chain
from ethml.chain.tx import decode_revert, send

__all__ = [
    "DEV_MNEMONIC",
    "EML",
    "INVALID_INPUT",
    "Artifact",
    "Deployment",
    "ModelKind",
    "ModelSpec",
    "Parameters",
    "Status",
    "TrainingParameters",
    "account_from_mnemonic",
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
    "send",
    "training_contract",
]
