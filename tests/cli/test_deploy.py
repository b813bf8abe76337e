"""`ethml deploy` onto a chain that is not a devnet, as a user would do it against Sepolia: a plain anvil
started with Sepolia's chain id, a fresh key funded once from an anvil account (and nothing signed by the
development mnemonic afterwards), every command a separate `python -m ethml` process.

- the whole system deployed behind a timelock, then five `ethml mine` and an `ethml request --wait`;
- a model registered through the timelock: scheduled, refused before the delay with the reason, executed
  after it;
- a deployment killed with SIGKILL mid-way and run again: it continues, and the deployer's nonce shows
  that every step was sent exactly once;
- a transaction dropped from the mempool (automine off) while the deploy waits, the process killed, and
  the rerun sending the same signed bytes again.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.utils.address import get_create_address

from ethml.chain import EML, Deployment, load_artifact
from ethml.ml import Manifest, ModelStore
from tests.conftest import ROOT, find_anvil, free_port, missing_service

SEPOLIA = 11155111
DELAY = 600
#: The steps of a timelocked deployment of the four bundled models (the plan says so too).
STEPS = 23


@dataclass
class Chain:
    proc: subprocess.Popen[bytes]
    url: str
    w3: Web3

    def rpc(self, method: str, *params: Any) -> Any:
        return self.w3.provider.make_request(method, list(params))  # type: ignore[arg-type]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=20)


def start_chain() -> Chain:
    binary = find_anvil()
    if binary is None:
        missing_service("anvil (npm ci)")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--chain-id", str(SEPOLIA), "--silent"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, "anvil did not start"
            time.sleep(0.05)
    url = f"http://127.0.0.1:{port}"
    return Chain(proc, url, Web3(Web3.HTTPProvider(url)))


def fund_fresh_key(chain: Chain, eth: int) -> LocalAccount:
    """A random key, funded by one transfer from anvil's first account (the faucet of this test)."""
    account: LocalAccount = Account.create()
    faucet = chain.w3.eth.accounts[0]
    tx = chain.w3.eth.send_transaction({"from": faucet, "to": account.address, "value": eth * 10**18})
    chain.w3.eth.wait_for_transaction_receipt(tx)
    return account


def env_for(chain: Chain, data_dir: Path, key: LocalAccount) -> dict[str, str]:
    env = {
        **os.environ,
        "ETHML_RPC": chain.url,
        "ETHML_DATA_DIR": str(data_dir),
        "ETHML_PRIVATE_KEY": "0x" + bytes(key.key).hex(),
        "ETHML_THREADS": "1",
        "XDG_CONFIG_HOME": str(data_dir / "no-config"),
        "NO_COLOR": "1",
    }
    for name in ("ETHML_DEBUG", "ETHML_ACCOUNT", "ETHML_MNEMONIC", "ETHML_KEYSTORE"):
        env.pop(name, None)
    return env


def ethml(env: dict[str, str], *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ethml", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def spawn(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "ethml", *args],
        cwd=ROOT,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )


def read_until(proc: subprocess.Popen[str], pattern: str, limit: float = 120) -> list[str]:
    """stderr lines of `proc` up to and including the first that matches `pattern`."""
    assert proc.stderr is not None
    lines: list[str] = []
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            raise AssertionError(f"the process ended before {pattern!r}:\n" + "".join(lines))
        lines.append(line)
        if re.search(pattern, line):
            return lines
    raise AssertionError(f"no {pattern!r} in time:\n" + "".join(lines))


def nonce(chain: Chain, address: str) -> int:
    return int(chain.w3.eth.get_transaction_count(address))  # type: ignore[arg-type]


# ------------------------------------------------------------------ a deployed chain, shared


@dataclass
class Deployed:
    chain: Chain
    data_dir: Path
    deployer: LocalAccount
    env: dict[str, str]
    deployment: Deployment
    output: str


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    chain = start_chain()
    try:
        data_dir = tmp_path_factory.mktemp("sepolia-data")
        deployer = fund_fresh_key(chain, 10)
        env = env_for(chain, data_dir, deployer)
        done = ethml(env, "deploy", "--timelock-delay", str(DELAY), "--yes")
        assert done.returncode == 0, done.stdout + done.stderr
        deployment = Deployment.find(SEPOLIA, data_dir)
        yield Deployed(chain, data_dir, deployer, env, deployment, done.stdout + done.stderr)
    finally:
        chain.stop()


def test_deploy_onto_a_public_chain_id(deployed: Deployed) -> None:
    out, dep, chain = deployed.output, deployed.deployment, deployed.chain
    assert f"admin:  an EthMLTimelock with a 10 min delay ({DELAY} s)" in out
    assert re.search(rf"cost:   {STEPS} transactions, [\d,]+ gas: about [\d.]+ ETH", out), out
    assert f"[{STEPS}/{STEPS}] renouncing the oracle's DEFAULT_ADMIN_ROLE" in out
    assert "FAIL" not in out and out.count("  ok   ") >= 15
    assert dep.chain_id == SEPOLIA and dep.timelock is not None and dep.training is not None
    assert dep.deployer == deployed.deployer.address
    assert sorted(dep.models) == ["breast-cancer", "diabetes", "iris", "wine"]
    assert nonce(chain, deployed.deployer.address) == STEPS, "every step sent exactly once"
    record = json.loads((deployed.data_dir / "deployments" / f"{SEPOLIA}.transactions.json").read_text())
    assert len(record["steps"]) == STEPS and all(s["done"] for s in record["steps"])
    assert not (deployed.data_dir / "deployments" / f"{SEPOLIA}.journal.json").exists()
    # The plan's gas (a dry run in process) is what the chain charged, give or take 1 %.
    planned = int(re.search(r"cost:   \d+ transactions, ([\d,]+) gas", out).group(1).replace(",", ""))  # type: ignore[union-attr]
    charged = sum(int(s["done"]["gas_used"]) for s in record["steps"])
    assert abs(planned - charged) <= charged // 100, (planned, charged)


def test_a_second_deploy_is_refused_without_overwrite(deployed: Deployed) -> None:
    before = nonce(deployed.chain, deployed.deployer.address)
    done = ethml(deployed.env, "deploy", "--yes")
    assert done.returncode == 1 and done.stderr.count("error: ") == 1, done.stderr
    assert f"chain {SEPOLIA} already has a deployment file" in done.stderr and "--overwrite" in done.stderr
    assert nonce(deployed.chain, deployed.deployer.address) == before


def _fund(chain: Chain, sender: LocalAccount, dep: Deployment, to: str, eth: float, eml: int) -> None:
    """What a user does with `cast send`: ETH for gas, EML for bonds, from the deployer's key."""
    w3 = chain.w3
    token = w3.eth.contract(address=Web3.to_checksum_address(dep.token), abi=load_artifact("EMLToken").abi)
    calls: list[dict[str, Any]] = [{"to": to, "value": int(eth * 10**18)}]
    if eml:
        calls.append(token.functions.transfer(to, eml * EML).build_transaction({"from": sender.address, "value": 0}))
    for call in calls:
        tx = {
            "from": sender.address,
            "to": call["to"],
            "value": call.get("value", 0),
            "data": call.get("data", "0x"),
            "nonce": w3.eth.get_transaction_count(sender.address),
            "chainId": SEPOLIA,
            "gas": 100_000,
            "maxFeePerGas": 10 * 10**9,
            "maxPriorityFeePerGas": 10**9,
        }
        signed = sender.sign_transaction(tx)
        w3.eth.wait_for_transaction_receipt(w3.eth.send_raw_transaction(signed.raw_transaction))


def test_five_miners_and_a_request_on_the_deployed_chain(deployed: Deployed) -> None:
    chain, dep = deployed.chain, deployed.deployment
    miners = [Account.create() for _ in range(5)]
    requester = Account.create()
    for m in miners:
        _fund(chain, deployed.deployer, dep, m.address, 1, 100)
    _fund(chain, deployed.deployer, dep, requester.address, 1, 0)
    procs = [spawn(env_for(chain, deployed.data_dir, m), "mine", "--log-format", "json") for m in miners]
    try:
        data = str(ROOT / "models" / "data" / "iris-0.json")
        asked = ethml(
            env_for(chain, deployed.data_dir, requester),
            "request",
            "--model",
            "iris",
            "--data",
            data,
            "--wait",
            "--timeout",
            "300",
            timeout=360,
        )
    finally:
        for p in procs:
            p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
    assert asked.returncode == 0, asked.stdout + asked.stderr
    store = ModelStore(Manifest.load())
    try:
        expected = store.get("iris").predict_one(Path(data).read_bytes())
    finally:
        store.close()
    assert re.search(rf"request 1: finalized, prediction {expected}\b", asked.stdout), asked.stdout
    answered = {line for line in asked.stdout.splitlines() if line.startswith("miners: ")}
    assert answered and all(m.address in next(iter(answered)) for m in miners), asked.stdout
    for p in procs:
        assert p.returncode == 0, p.stderr.read() if p.stderr else ""


def test_a_model_registered_through_the_timelock(deployed: Deployed) -> None:
    chain, env = deployed.chain, deployed.env
    register = ["model", "register", "--manifest-entry", "wine", "--name", "wine-v2", "--salt", "0x2"]
    scheduled = ethml(env, *register)
    assert scheduled.returncode == 0, scheduled.stderr
    assert "scheduled through the timelock" in scheduled.stdout and "then run the same command with --execute" in (
        scheduled.stdout
    )
    operation = re.search(r"operation (0x[0-9a-f]{64}), executable from", scheduled.stdout)
    assert operation is not None, scheduled.stdout

    before = nonce(chain, deployed.deployer.address)
    early = ethml(env, *register, "--execute")
    assert early.returncode == 1 and early.stderr.count("\n") == 1, early.stderr
    assert "the timelock's delay has not passed" in early.stderr and operation.group(1) in early.stderr
    assert "(in 9 min" in early.stderr or "(in 10 min" in early.stderr
    assert "(TimelockUnexpectedOperationState); not sent, no gas spent" in early.stderr
    assert nonce(chain, deployed.deployer.address) == before

    outsider = fund_fresh_key(chain, 1)
    refused = ethml(env_for(chain, deployed.data_dir, outsider), *register, "--execute")
    assert refused.returncode == 1 and "lacks the timelock's EXECUTOR_ROLE" in refused.stderr, refused.stderr

    chain.rpc("evm_increaseTime", DELAY + 1)
    chain.rpc("evm_mine")
    executed = ethml(env, *register, "--execute")
    assert executed.returncode == 0, executed.stderr
    assert "executed through the timelock" in executed.stdout and "model wine-v2 is model 5" in executed.stdout
    assert Deployment.find(SEPOLIA, deployed.data_dir).models["wine-v2"] == 5
    listed = json.loads(ethml(env, "model", "list", "--json").stdout)
    assert [m["id"] for m in listed] == [1, 2, 3, 4, 5] and listed[4]["name"] == "wine-v2" and listed[4]["active"]

    again = ethml(env, *register, "--execute")
    assert again.returncode == 1 and "was executed already" in again.stderr, again.stderr

    # Deactivation goes the same way; one command schedules, and tells when.
    ethml(env, "model", "deactivate", "5")
    chain.rpc("evm_increaseTime", DELAY + 1)
    chain.rpc("evm_mine")
    gone = ethml(env, "model", "deactivate", "5", "--execute")
    assert gone.returncode == 0, gone.stderr
    assert not json.loads(ethml(env, "model", "list", "--json").stdout)[4]["active"]


# ------------------------------------------------------------------ interrupted deployments


def test_a_killed_deploy_continues_and_deploys_nothing_twice(tmp_path: Path) -> None:
    chain = start_chain()
    try:
        deployer = fund_fresh_key(chain, 10)
        env = env_for(chain, tmp_path, deployer)
        first = spawn(env, "deploy", "--timelock-delay", str(DELAY), "--yes")
        seen = read_until(first, r"^\[ 8/23\] .*: sent ")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=20)
        assert any("[ 3/23] EthML (oracle): at 0x" in line for line in seen), "".join(seen)
        journal = json.loads((tmp_path / "deployments" / f"{SEPOLIA}.journal.json").read_text())
        assert 8 <= len(journal["steps"]) < STEPS

        other = ethml(env, "deploy", "--timelock-delay", "60", "--yes")
        assert other.returncode == 1 and "timelock_delay differ" in other.stderr, other.stderr

        second = ethml(env, "deploy", "--timelock-delay", str(DELAY), "--yes")
        assert second.returncode == 0, second.stdout + second.stderr
        assert "resuming the unfinished deployment" in second.stderr
        assert "[ 1/23] EMLToken (EML): done in an earlier run" in second.stderr
        assert nonce(chain, deployer.address) == STEPS, "every step sent exactly once across both runs"
        dep = Deployment.find(SEPOLIA, tmp_path)
        # The contracts sit at the addresses of the deployer's first nonces: deployed once each, in order.
        assert dep.token == get_create_address(deployer.address, 0)  # type: ignore[arg-type]
        assert dep.ethml == get_create_address(deployer.address, 2)  # type: ignore[arg-type]
        assert "FAIL" not in second.stdout
    finally:
        chain.stop()


def test_a_dropped_transaction_is_sent_again_by_the_rerun(tmp_path: Path) -> None:
    chain = start_chain()
    try:
        deployer = fund_fresh_key(chain, 10)
        env = env_for(chain, tmp_path, deployer)
        chain.rpc("evm_setAutomine", False)
        first = spawn(env, "deploy", "--timelock-delay", str(DELAY), "--yes")
        lines = read_until(first, r"^\[ 1/23\] .*: sent ")
        sent = re.search(r"sent (0x[0-9a-f]{64}) \(nonce 0\)", lines[-1])
        assert sent is not None, lines[-1]
        first.send_signal(signal.SIGKILL)  # first: a live deploy notices a dropped transaction and resends it
        first.wait(timeout=20)
        assert chain.w3.eth.get_transaction(sent.group(1))["blockNumber"] is None  # type: ignore[arg-type]
        assert chain.rpc("anvil_dropAllTransactions").get("error") is None
        assert nonce(chain, deployer.address) == 0, "nothing was mined"
        chain.rpc("evm_setAutomine", True)

        second = ethml(env, "deploy", "--timelock-delay", str(DELAY), "--yes")
        assert second.returncode == 0, second.stdout + second.stderr
        assert f"the node had lost {sent.group(1)}; sent it again" in second.stderr, second.stderr
        assert nonce(chain, deployer.address) == STEPS
        receipt = chain.w3.eth.get_transaction_receipt(sent.group(1))  # type: ignore[arg-type]
        assert receipt["contractAddress"] == Deployment.find(SEPOLIA, tmp_path).token
    finally:
        chain.stop()
