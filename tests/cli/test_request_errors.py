"""`ethml request` and the account options: one clear line for each kind of mistake."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from eth_account import Account
from typer.testing import CliRunner

from ethml.chain import EML, Deployment, Parameters, deploy_system, dev_account, embedded_chain
from ethml.cli import app
from ethml.cli._config import ConfigError, load_account
from ethml.cli._config_file import load_config
from ethml.errors import DeploymentNotFound
from ethml.ml import Manifest
from ethml.requester import RequestError, parse_tip, request_prediction, resolve_model

runner = CliRunner()


async def test_request_library_errors() -> None:
    w3 = await embedded_chain(accounts=12)
    manifest = Manifest.load()
    deployment = await deploy_system(w3, dev_account(0), parameters=Parameters(), models=manifest.registry_specs())
    assert resolve_model(deployment, "wine") == 4 and resolve_model(deployment, "2") == 2
    with pytest.raises(RequestError, match="unknown model 'mnist'; known models: breast-cancer \\(1\\)"):
        resolve_model(deployment, "mnist")
    with pytest.raises(RequestError, match="model 9 is not registered"):
        await request_prediction(w3, deployment, dev_account(9), 9, "QmX", 0)
    poor = dev_account(11)  # has ETH for gas, no EML
    with pytest.raises(RequestError, match="insufficient EML for the tip"):
        await request_prediction(w3, deployment, poor, 1, "QmX", 5 * EML)
    with pytest.raises(RequestError, match="not a number"):
        parse_tip("five")
    with pytest.raises(DeploymentNotFound, match="run `ethml devnet`"):
        Deployment.find(424242, Path("/nonexistent"))


def test_request_cli_without_a_devnet(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "request",
            "--model",
            "iris",
            "--data",
            "models/data/iris-0.json",
            "--rpc",
            "http://127.0.0.1:1",
            "--data-dir",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 1
    assert "cannot reach the RPC at http://127.0.0.1:1" in result.output
    result = runner.invoke(app, ["request", "--model", "iris"])
    assert result.exit_code != 0 and "exactly one of --data FILE and --cid CID" in result.output


def test_account_sources(tmp_path: Path) -> None:
    words = tmp_path / "mnemonic"
    words.write_text("hawk couple problem quantum lemon lava saddle swallow want become forum educate\n")
    account, source = load_account(index=3, mnemonic_file=words, keystore=None, password_file=None, chain_id=1)
    assert account.address == dev_account(3).address and str(words) in source
    with pytest.raises(ConfigError, match="set ETHML_MNEMONIC or --mnemonic-file"):
        load_account(index=3, mnemonic_file=None, keystore=None, password_file=None, chain_id=1)
    dev, source = load_account(index=2, mnemonic_file=None, keystore=None, password_file=None, chain_id=31337)
    assert dev.address == dev_account(2).address and "devnet only" in source
    keystore = tmp_path / "key.json"
    keystore.write_text(json.dumps(Account.encrypt(dev_account(5).key, "secret", iterations=2)))
    password = tmp_path / "pw"
    password.write_text("secret\n")
    unlocked, _ = load_account(index=None, mnemonic_file=None, keystore=keystore, password_file=password, chain_id=1)
    assert unlocked.address == dev_account(5).address
    password.write_text("wrong")
    with pytest.raises(ConfigError, match="cannot unlock keystore"):
        load_account(index=None, mnemonic_file=None, keystore=keystore, password_file=password, chain_id=1)
    with pytest.raises(ConfigError, match="choose the mining account"):
        load_account(index=None, mnemonic_file=None, keystore=None, password_file=None, chain_id=1)


def test_config_file(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[ethml]\nrpc = "http://x:1"\nthreads = 3\nlog-format = "json"\n')
    assert load_config(cfg) == {"rpc": "http://x:1", "threads": 3, "log_format": "json"}
    cfg.write_text("rpc = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(cfg)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")
