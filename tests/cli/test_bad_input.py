"""Every command, tried with the bad input a new user tries first, through `python -m ethml` (forked from a
Python that has imported ethml's libraries already, tests/cli/_zygote.py): one line on stderr that says
what is wrong, a non-zero exit, no traceback, and nothing sent on chain.

The transactions that would revert (a deadline passed, an account not staked, a vote cast already, a
model or task that does not exist) are refused by the pre-flight against the pending block, and the
one line names the reason in words; no account's nonce moves."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from web3 import Web3

from ethml.chain import EML, Deployment, dev_account
from ethml.chain.rpc import http_web3
from ethml.devnet import start_devnet
from tests.cli._zygote import Zygote
from tests.conftest import ROOT, find_anvil, free_port, missing_service

CID_NOWHERE = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"
#: A key that holds nothing on any chain (its address is derived from it, fixed, so the message can be checked).
UNFUNDED = Account.from_key("0x" + "5e" * 32)
#: An RPC URL nothing answers at (port 1 on this machine: connection refused).
OFFLINE = ["--rpc-url", "http://127.0.0.1:1"]


@dataclass
class Devnet:
    url: str
    port: int
    data_dir: Path
    files: Path
    ethml: str
    anvil_pid: int
    #: `python -m ethml` with this devnet's environment, forked from a Python that imported ethml already.
    cli: Zygote


@pytest.fixture(scope="module")
def devnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devnet]:
    if find_anvil() is None:
        missing_service("anvil (npm ci)")
    data_dir = tmp_path_factory.mktemp("data")
    files = tmp_path_factory.mktemp("files")
    port = free_port()
    net = asyncio.run(start_devnet(port=port, data_dir=data_dir))
    _write_files(files, net.deployment.chain_id)
    env = {
        **os.environ,
        "ETHML_RPC": net.url,
        "ETHML_DATA_DIR": str(data_dir),
        "XDG_CONFIG_HOME": str(files / "no-config"),
        "NO_COLOR": "1",
    }
    env.pop("ETHML_DEBUG", None)
    cli = Zygote(env, ROOT, tmp_path_factory.mktemp("outputs"))
    try:
        yield Devnet(net.url, port, data_dir, files, net.deployment.ethml, net.process.pid, cli)
    finally:
        cli.close()
        net.stop()


#: Accounts of the training cases: a staked trainer and validator, a second staked trainer that never
#: submits, an account with no stake.
TRAINER, VALIDATOR, LATE_TRAINER, UNSTAKED = 5, 6, 4, 2


@dataclass
class Tasks:
    closed: int  # its submission window closed; submitted, test set revealed, voted
    open: int  # its submission window open for an hour; nothing submitted


@pytest.fixture(scope="module")
def tasks(devnet: Devnet) -> Tasks:
    """Two wine tasks, made once for the cases that need them: one whose submission window has closed
    (the trainer committed and revealed, the test set is revealed, the one drawn validator voted), one
    still open."""
    return asyncio.run(_tasks(devnet))


async def _tasks(devnet: Devnet) -> Tasks:
    from web3 import AsyncWeb3

    from ethml.ipfs import Blockstore, IpfsClient
    from ethml.training import parse_spec, sklearn_dataset_csv, split_csv
    from ethml.training.flow import (
        create_task,
        reveal_submission,
        reveal_test_set,
        stake,
        task_info,
        train_and_submit,
        validate_task,
    )

    w3: AsyncWeb3[Any] = http_web3(devnet.url)
    try:
        dep = Deployment.find(await w3.eth.chain_id, devnet.data_dir)
        ipfs = IpfsClient(Blockstore(devnet.data_dir / "blocks"))
        for trainer in (TRAINER, LATE_TRAINER):
            await stake(w3, dep, dev_account(trainer), "trainer", 100 * EML)
        await stake(w3, dep, dev_account(VALIDATOR), "validator", 100 * EML)
        public, hidden = split_csv(sklearn_dataset_csv("wine"), 0.3, seed=0)
        ids = []
        for _ in range(2):
            created = await create_task(
                w3,
                dep,
                dev_account(9),
                ipfs,
                devnet.data_dir,
                spec=parse_spec((ROOT / "models" / "tasks" / "wine-forest.json").read_bytes()),
                dataset=public,
                test_set=hidden,
                reward=10 * EML,
                validations=1,
                min_score=500_000,
                submit_seconds=3600,
                score_seconds=3600,
            )
            ids.append(created.task_id)
        closed = ids[0]
        await train_and_submit(w3, dep, dev_account(TRAINER), ipfs, closed, data_dir=devnet.data_dir)

        async def jump_past(deadline: int) -> None:  # anvil's clock moves past the deadline: no waiting
            pending = int((await w3.eth.get_block("pending"))["timestamp"])
            await w3.provider.make_request("evm_increaseTime", [deadline - pending + 1])  # type: ignore[arg-type]

        await jump_past(int((await task_info(w3, dep, closed))["submit_deadline"]))
        await reveal_submission(w3, dep, dev_account(TRAINER), closed, devnet.data_dir)
        await jump_past(int((await task_info(w3, dep, closed))["reveal_deadline"]))
        await reveal_test_set(w3, dep, dev_account(9), closed, devnet.data_dir)
        vote = await validate_task(w3, dep, dev_account(VALIDATOR), ipfs, closed, data_dir=devnet.data_dir)
        assert vote["revealed"], vote
        # The open task is created after the jumps: its window is an hour from now on anvil's clock.
        created = await create_task(
            w3,
            dep,
            dev_account(9),
            ipfs,
            devnet.data_dir,
            spec=parse_spec((ROOT / "models" / "tasks" / "wine-forest.json").read_bytes()),
            dataset=public,
            test_set=hidden,
            reward=10 * EML,
            validations=1,
            min_score=500_000,
            submit_seconds=3600,
            score_seconds=3600,
        )
        return Tasks(closed, created.task_id)
    finally:
        await w3.provider.disconnect()


def _write_files(files: Path, chain_id: int) -> None:
    (files / "truncated.json").write_text("[5.1, 3.5,")
    (files / "empty.json").write_text("")
    (files / "bools.json").write_text("[true, false, true, false]")
    (files / "nan.json").write_text("[NaN, 3.5, 1.4, 0.2]")
    (files / "infinity.json").write_text("[Infinity, 3.5, 1.4, 0.2]")
    (files / "huge-values.json").write_text(json.dumps([1e308] * 10))
    (files / "big.json").write_text("[" + ",".join(["1.0"] * 700_000) + "]")
    (files / "unknown-key.toml").write_text("acount = 3\n")
    (files / "wrong-type.toml").write_text('threads = "two"\n')
    (files / "wrong-account.toml").write_text('account = "three"\n')
    (files / "wrong-poll.toml").write_text('poll_interval = "fast"\n')
    (files / "empty-mnemonic").write_text("\n")
    (files / "not-a-keystore.json").write_text('{"x": 1}')
    (files / "password").write_text("secret\n")
    (files / "wrong-password").write_text("not the password\n")
    keystore = Account.encrypt(dev_account(5).key, "secret", iterations=2)
    (files / "keystore.json").write_text(json.dumps(keystore))
    other = {"chain_id": 1, "ethml": "0x" + "11" * 20, "token": "0x" + "33" * 20, "registry": "0x" + "44" * 20}
    (files / "other-chain.json").write_text(
        json.dumps({**other, "consumer": "0x" + "22" * 20, "deployer": "", "block": 0})
    )


def _request(*extra: str) -> list[str]:
    return ["request", "--model", "iris", *extra]


def _iris() -> str:
    return str(ROOT / "models" / "data" / "iris-0.json")


# (case id, arguments with {files}/{url}/{port} placeholders, what the one line must say)
CASES: list[tuple[str, list[str], str]] = [
    ("request-truncated-json", _request("--data", "{files}/truncated.json"), "not JSON"),
    ("request-empty-file", _request("--data", "{files}/empty.json"), "the data point is empty"),
    ("request-booleans", _request("--data", "{files}/bools.json"), "feature 0 is bool, not a number"),
    ("request-nan", _request("--data", "{files}/nan.json"), "feature 0 is not finite"),
    ("request-infinity", _request("--data", "{files}/infinity.json"), "feature 0 is not finite"),
    (
        "request-1e308",
        ["request", "--model", "diabetes", "--data", "{files}/huge-values.json"],
        "the miners would answer this data point as invalid input",
    ),
    ("request-2.7-MB", _request("--data", "{files}/big.json"), "miners refuse data points over 1,048,576 bytes"),
    (
        "request-other-models-data",
        _request("--data", str(ROOT / "models" / "data" / "breast-cancer-0.json")),
        "the model takes 4 features, the data point has 30",
    ),
    ("request-cid-nowhere", _request("--cid", CID_NOWHERE), "miners would not find it either"),
    ("request-malformed-cid", _request("--cid", "Qm-not-a-cid"), "CID"),
    ("request-missing-file", _request("--data", "{files}/missing.json"), "cannot read"),
    ("request-unknown-model", ["request", "--model", "mnist", "--data", _iris()], "unknown model 'mnist'"),
    ("request-tip-nan", _request("--data", _iris(), "--tip", "nan"), "not a finite number of EML"),
    ("request-tip-words", _request("--data", _iris(), "--tip", "five"), "not a number of EML"),
    ("request-tip-below-a-wei", _request("--data", _iris(), "--tip", "0.0000000000000000001"), "18 decimal places"),
    ("request-tip-negative", _request("--data", _iris(), "--tip", "-1"), "must not be negative"),
    ("request-timeout-negative", _request("--data", _iris(), "--wait", "--timeout", "-5"), "--timeout"),
    ("request-rpc-malformed", _request("--data", _iris(), "--rpc-url", "foo"), "is not an http:// or https:// URL"),
    ("request-rpc-unreachable", _request("--data", _iris(), "--rpc-url", "http://127.0.0.1:1"), "cannot reach"),
    ("request-both-data-and-cid", _request("--data", _iris(), "--cid", CID_NOWHERE), "exactly one of"),
    ("mine-unknown-config-key", ["mine", "--config", "{files}/unknown-key.toml"], "acount: unknown key"),
    ("mine-config-wrong-type", ["mine", "--config", "{files}/wrong-type.toml"], "threads:"),
    ("mine-config-account-text", ["mine", "--config", "{files}/wrong-account.toml"], "account:"),
    ("mine-config-poll-text", ["mine", "--config", "{files}/wrong-poll.toml"], "poll_interval:"),
    ("mine-poll-negative", ["mine", "--account", "0", "--poll-interval", "-1"], "--poll-interval"),
    ("mine-rpc-malformed", ["mine", "--account", "0", "--rpc-url", "foo"], "is not an http:// or https:// URL"),
    (
        "mine-empty-mnemonic-file",
        ["mine", "--account", "0", "--mnemonic-file", "{files}/empty-mnemonic"],
        "is empty",
    ),
    (
        "mine-keystore-and-account",
        ["mine", "--account", "3", "--keystore", "{files}/keystore.json", "--password-file", "{files}/password"],
        "give one of them",
    ),
    (
        "mine-not-a-keystore",
        ["mine", "--keystore", "{files}/not-a-keystore.json", "--password-file", "{files}/password"],
        "not an Ethereum JSON keystore",
    ),
    (
        "mine-deployment-of-another-chain",
        ["mine", "--account", "0", "--deployment", "{files}/other-chain.json"],
        "the deployment is for chain 1",
    ),
    ("mine-private-key-malformed", ["mine", "--private-key", "0x1234"], "is not a 32-byte hex private key"),
    # `mine` waits for an RPC that is down (retrying); what is wrong locally is said first, at once.
    (
        "mine-private-key-malformed-rpc-unreachable",
        ["mine", "--private-key", "0x1234", *OFFLINE],
        "is not a 32-byte hex private key",
    ),
    (
        "mine-not-a-keystore-rpc-unreachable",
        ["mine", "--keystore", "{files}/not-a-keystore.json", "--password-file", "{files}/password", *OFFLINE],
        "not an Ethereum JSON keystore",
    ),
    (
        "mine-empty-mnemonic-file-rpc-unreachable",
        ["mine", "--account", "0", "--mnemonic-file", "{files}/empty-mnemonic", *OFFLINE],
        "is empty",
    ),
    (
        "mine-key-and-account-rpc-unreachable",
        ["mine", "--account", "0", "--private-key", "0x" + "11" * 32, *OFFLINE],
        "each choose the signing key",
    ),
    (
        "mine-missing-deployment-rpc-unreachable",
        ["mine", "--account", "0", "--deployment", "{files}/missing.json", *OFFLINE],
        "does not exist",
    ),
    (
        "mine-missing-models-dir-rpc-unreachable",
        ["mine", "--account", "0", "--models-dir", "{files}/no-models", *OFFLINE],
        "no model manifest",
    ),
    (
        "mine-gateway-malformed-rpc-unreachable",
        ["mine", "--account", "0", "--gateway", "ipfs.io", *OFFLINE],
        "is not an http:// or https:// URL",
    ),
    (
        "mine-private-key-and-account",
        ["mine", "--account", "0", "--private-key", "0x" + "11" * 32],
        "give one of them",
    ),
    ("request-private-key-malformed", _request("--data", _iris(), "--private-key", "nope"), "32-byte hex"),
    ("devnet-port-zero", ["devnet", "--port", "0"], "--port"),
    ("devnet-port-taken", ["devnet", "--port", "{port}"], "Address already in use"),
    ("ipfs-cat-unknown-cid", ["ipfs", "cat", CID_NOWHERE], "not in the local blockstore"),
    ("ipfs-cat-output-nowhere", ["ipfs", "cat", "-o", "/nonexistent/x", "{iris_cid}"], "/nonexistent/x"),
    ("ipfs-add-unwritable-data-dir", ["ipfs", "add", _iris(), "--data-dir", "/dev/null/x"], "Not a directory"),
    ("ipfs-serve-port-taken", ["ipfs", "serve", "--port", "{port}"], "address already in use"),
    ("ipfs-serve-port-out-of-range", ["ipfs", "serve", "--port", "99999"], "--port"),
    ("status-rpc-unreachable", ["status", "--rpc-url", "http://127.0.0.1:1"], "cannot reach"),
    ("requests-show-unknown", ["requests", "show", "999"], "no request 999"),
    ("balance-not-an-address", ["balance", "0x1234"], "is not an Ethereum address"),
    ("expire-nothing-open", ["expire", "1"], "no request 1 on this deployment"),
    # Transactions that would revert: refused before sending, the reason in words.
    ("request-unknown-model-id", ["request", "--model", "99", "--data", _iris()], "model 99 is not registered"),
    ("task-show-unknown", ["task", "show", "999"], "there is no task 999 (UnknownTask)"),
    ("train-unknown-task", ["train", "--task", "999", "--account", str(TRAINER)], "there is no task 999 (UnknownTask)"),
    (
        "validate-unknown-task",
        ["validate", "--task", "999", "--account", str(VALIDATOR)],
        "there is no task 999 (UnknownTask)",
    ),
    ("reveal-unknown-task", ["task", "reveal", "999"], "there is no task 999 (UnknownTask)"),
    ("finalize-unknown-task", ["task", "finalize", "999"], "there is no task 999 (UnknownTask)"),
    ("train-without-account", ["train", "--task", "{open}"], "needs --account N"),
    ("validate-without-account", ["validate", "--task", "{open}"], "needs --account N"),
    ("stake-without-account", ["stake", "--role", "trainer", "--amount", "100"], "needs --account N"),
    ("stake-unknown-role", ["stake", "--role", "miner", "--amount", "100", "--account", "2"], "trainer or validator"),
    ("unstake-nothing-staked", ["unstake", "--role", "trainer", "--account", str(UNSTAKED)], "has no trainer stake"),
    (
        "task-create-even-panel",
        [
            "task",
            "create",
            "--spec",
            "models/tasks/wine-forest.json",
            "--sklearn",
            "wine",
            "--reward",
            "5",
            "--validations",
            "2",
        ],
        "--validations must be odd",
    ),
    (
        "task-create-window-too-short",
        [
            "task",
            "create",
            "--spec",
            "models/tasks/wine-forest.json",
            "--sklearn",
            "wine",
            "--reward",
            "5",
            "--submit-hours",
            "0.001",
        ],
        "the submission period of 4 s is outside the market's 10 s to 7 d",
    ),
    (
        "task-create-window-too-long",
        [
            "task",
            "create",
            "--spec",
            "models/tasks/wine-forest.json",
            "--sklearn",
            "wine",
            "--reward",
            "5",
            "--submit-hours",
            "200",
        ],
        "the submission period of 8 d 8 h is outside the market's 10 s to 7 d",
    ),
    (
        "task-create-reward-below-seats",
        [
            "task",
            "create",
            "--spec",
            "models/tasks/wine-forest.json",
            "--sklearn",
            "wine",
            "--reward",
            "1",
            "--validations",
            "9",
        ],
        "a reward of 1 EML is too small for 9 validator seats: the validators' part (20 %) must pay each seat at "
        "least 0.1 EML, so the reward must be at least 4.5 EML",
    ),
    (
        "train-deadline-passed",
        ["train", "--task", "{closed}", "--account", str(LATE_TRAINER)],
        "the submission window of task {closed} closed at ",
    ),
    (
        "train-not-staked",
        ["train", "--task", "{open}", "--account", str(UNSTAKED)],
        f"account {dev_account(UNSTAKED).address} is not staked as a trainer",
    ),
    (
        "validate-already-voted",
        ["validate", "--task", "{closed}", "--account", str(VALIDATOR)],
        f"validator {dev_account(VALIDATOR).address} already revealed its scores for task {{closed}}",
    ),
    (
        "validate-not-drawn",
        ["validate", "--task", "{closed}", "--account", str(UNSTAKED)],
        f"validator {dev_account(UNSTAKED).address} holds no seat on task {{closed}}'s panel",
    ),
    (
        "validate-test-set-hidden",
        ["validate", "--task", "{open}", "--account", str(VALIDATOR)],
        "task {open}'s test set is not revealed yet",
    ),
    ("reveal-twice", ["task", "reveal", "{closed}"], "task {closed}'s test set is already revealed"),
    ("reveal-too-early", ["task", "reveal", "{open}"], "the test-set window of task {open} opens at "),
    ("finalize-too-early", ["task", "finalize", "{open}"], "the finalization window of task {open} opens at "),
    ("serve-port-taken", ["serve", "--port", "{port}"], "another ethml serve or program is using it"),
    ("serve-redis-not-a-url", ["serve", "--redis", "localhost:6379"], "is not a redis://"),
    (
        "serve-host-not-here",
        ["serve", "--host", "192.0.2.1", "--port", "{free}"],  # TEST-NET-1: no machine's own address
        "cannot start the coordinator on 192.0.2.1:{free}: Cannot assign requested address (not an address of this",
    ),
    ("serve-redis-malformed", ["serve", "--redis", "redis://[::1"], "--redis 'redis://[::1' is not a valid URL"),
    (
        "serve-redis-unreachable",
        ["serve", "--port", "{free}", "--redis", "redis://127.0.0.1:1/0"],
        "the Redis at redis://127.0.0.1:1/0 did not answer",
    ),
    (
        "serve-redis-unreachable-password-not-shown",
        ["serve", "--port", "{free}", "--redis", "redis://user:hunter2@127.0.0.1:1/0"],
        "the Redis at redis://***@127.0.0.1:1/0 did not answer",
    ),
    (
        "serve-trusted-proxy-not-an-address",
        ["serve", "--trusted-proxy", "10.0.0.0/8", "--trusted-proxy", "10.0.0.0/33"],
        "--trusted-proxy '10.0.0.0/33' is not an IP address or a network in CIDR notation",
    ),
    (
        "serve-relayer-without-eth",
        ["serve", "--port", "{free}", "--private-key", "0x" + "42" * 32],
        "holds no ETH to pay for the transactions it relays",
    ),
    ("serve-rpc-unreachable", ["serve", "--rpc-url", "http://127.0.0.1:1", "--port", "{free}"], "cannot reach"),
    ("worker-http-server", ["worker", "--server", "http://127.0.0.1:8600", "--role", "trainer"], "not a ws://"),
    (
        "worker-no-account",
        ["worker", "--server", "ws://127.0.0.1:1", "--role", "validator"],
        "choose the validator's account: --account N (with ETHML_MNEMONIC) or --private-key KEY (ETHML_PRIVATE_KEY)",
    ),
    ("worker-server-malformed", ["worker", "--server", "ws://[::1", "--role", "trainer"], "is not a valid URL"),
    (
        "worker-dataset-limit-infinite",
        ["worker", "--server", "ws://127.0.0.1:8600", "--role", "trainer", "--max-dataset-mb", "inf"],
        "Invalid value for '--max-dataset-mb'",
    ),
    (
        "worker-gateway-malformed",
        ["worker", "--server", "ws://127.0.0.1:1", "--role", "trainer", "--account", "2", "--gateway", "http://[::1"],
        "--gateway 'http://[::1' is not a valid URL",
    ),
    ("ipfs-cat-timeout-infinite", ["ipfs", "cat", CID_NOWHERE, "--timeout", "inf"], "Invalid value for '--timeout'"),
    ("worker-unknown-role", ["worker", "--server", "ws://127.0.0.1:8600", "--role", "miner"], "trainer or validator"),
    (
        "worker-server-unreachable-unstaked",
        [
            "worker",
            "--server",
            "ws://127.0.0.1:1",
            "--role",
            "trainer",
            "--account",
            "2",
            "--rpc-url",
            "http://127.0.0.1:1",
        ],
        "cannot reach",
    ),
    # `ethml deploy` and `ethml model`: refused before anything is sent.
    (
        "deploy-rpc-unreachable",
        ["deploy", "--yes", "--account", "0", "--rpc-url", "http://127.0.0.1:1"],
        "cannot reach",
    ),
    (
        "deploy-private-key-malformed",
        ["deploy", "--yes", "--private-key", "0xnothex"],
        "is not a 32-byte hex private key",
    ),
    (
        "deploy-unfunded-key",
        ["deploy", "--yes", "--private-key", "0x" + "5e" * 32, "--data-dir", "{files}/fresh"],
        f"{UNFUNDED.address} holds 0 ETH on chain 31337; the 12 transactions left need up to ",
    ),
    ("deploy-existing-deployment", ["deploy", "--yes", "--account", "0"], "chain 31337 already has a deployment file"),
    ("deploy-not-on-a-terminal", ["deploy", "--account", "0", "--data-dir", "{files}/fresh"], "pass --yes"),
    ("deploy-no-key", ["deploy", "--yes", "--data-dir", "{files}/fresh"], "choose the deployer's key: --account N"),
    (
        "deploy-keystore-wrong-password",
        ["deploy", "--yes", "--keystore", "{files}/keystore.json", "--password-file", "{files}/wrong-password"],
        "cannot unlock keystore",
    ),
    ("deploy-mint-malformed", ["deploy", "--yes", "--account", "0", "--mint", "nope"], "is not ADDRESS=EML"),
    ("deploy-supply-negative", ["deploy", "--yes", "--account", "0", "--supply", "-5"], "is not an amount of EML"),
    (
        "model-register-not-admin",
        ["model", "register", "--manifest-entry", "iris", "--account", "3"],
        "lacks the MODEL_ADMIN_ROLE and this deployment has no timelock",
    ),
    (
        "model-register-sha256-malformed",
        ["model", "register", "--cid", CID_NOWHERE, "--sha256", "xyz", "--kind", "classification", "--features", "4"],
        "is not a sha256 digest",
    ),
    (
        "model-register-cid-malformed",
        ["model", "register", "--cid", "Qm-no", "--sha256", "ab" * 32, "--kind", "regression", "--features", "4"],
        "is not a valid CID",
    ),
    (
        "model-register-half-the-fields",
        ["model", "register", "--cid", CID_NOWHERE],
        "--sha256, --kind, --features missing",
    ),
    (
        "model-register-unknown-entry",
        ["model", "register", "--manifest-entry", "mnist"],
        "the manifest has no model 'mnist'",
    ),
    (
        "model-deactivate-unknown",
        ["model", "deactivate", "99", "--account", "0"],
        "deactivating model 99 would revert: model 99 is not registered (UnknownModel)",
    ),
    (
        "model-execute-without-a-timelock",
        ["model", "register", "--manifest-entry", "iris", "--account", "0", "--execute"],
        "holds the MODEL_ADMIN_ROLE itself",
    ),
    ("unknown-command", ["mint-money"], "No such command"),
]


def _iris_cid(devnet: Devnet) -> str:
    from ethml.ipfs import Blockstore, IpfsClient

    return str(IpfsClient(Blockstore(devnet.data_dir / "blocks")).add_bytes(Path(_iris()).read_bytes()))


def _request_count(devnet: Devnet) -> int:
    w3 = Web3(Web3.HTTPProvider(devnet.url))
    abi = [
        {
            "name": "requestCount",
            "type": "function",
            "stateMutability": "view",
            "inputs": [],
            "outputs": [{"name": "", "type": "uint256"}],
        }
    ]
    return int(w3.eth.contract(address=Web3.to_checksum_address(devnet.ethml), abi=abi).functions.requestCount().call())


def _nonces(devnet: Devnet) -> list[int]:
    w3 = Web3(Web3.HTTPProvider(devnet.url))
    return [int(w3.eth.get_transaction_count(dev_account(i).address)) for i in range(10)]


@pytest.mark.parametrize(("case", "args", "says"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_costs_nothing(
    devnet: Devnet, request: pytest.FixtureRequest, case: str, args: list[str], says: str
) -> None:
    values = {
        "files": str(devnet.files),
        "port": str(devnet.port),
        "free": str(free_port()),
        "iris_cid": _iris_cid(devnet),
    }
    if any("{closed}" in a or "{open}" in a for a in args):
        made: Tasks = request.getfixturevalue("tasks")
        values["closed"], values["open"] = str(made.closed), str(made.open)
    argv = [a.format(**values) for a in args]
    says = says.format(**values)
    before, nonces = _request_count(devnet), _nonces(devnet)
    done = devnet.cli.run(argv, timeout=120)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode != 0, (case, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr + done.stdout, done.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert says in lines[0], lines[0]
    assert _request_count(devnet) == before, "nothing may reach the chain"
    assert _nonces(devnet) == nonces, "no transaction may be sent"


def test_the_devnet_checks_who_answers_on_its_port(devnet: Devnet) -> None:
    from ethml.devnet import listening_pids

    assert devnet.anvil_pid in listening_pids(devnet.port)


def test_inspection_commands(devnet: Devnet) -> None:
    def ethml(*argv: str) -> object:
        done = devnet.cli.run(list(argv))
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    status = ethml("status", "--json")
    assert isinstance(status, dict) and status["chain_id"] == 31337 and status["models"] == 4
    assert status["phase"] in ("idle", "committing")
    sent = ethml("request", "--model", "iris", "--data", _iris(), "--tip", "1", "--json")
    assert isinstance(sent, dict)
    shown = ethml("requests", "show", str(sent["request"]), "--json")
    assert isinstance(shown, dict) and shown["status"] == "current" and shown["data_cid"] == sent["cid"]
    listed = ethml("requests", "list", "--json")
    assert isinstance(listed, list) and listed[0]["request_id"] == sent["request"]
    balance = ethml("balance", dev_account(9).address, "--json")
    assert isinstance(balance, dict) and balance["eml"] > 0 and balance["owed_rewards_eml"] == 0
    accounts = ethml("accounts", "--json", "--count", "3")
    assert isinstance(accounts, list) and [a["address"] for a in accounts] == [dev_account(i).address for i in range(3)]
