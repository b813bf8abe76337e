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

from ethml.chain import Deployment
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


def env_for(chain: Chain, data_dir: Path, key: LocalAccount | None) -> dict[str, str]:
    env = {
        **os.environ,
        "ETHML_RPC": chain.url,
        "ETHML_DATA_DIR": str(data_dir),
        "ETHML_THREADS": "1",
        "XDG_CONFIG_HOME": str(data_dir / "no-config"),
        "NO_COLOR": "1",
    }
    for name in ("ETHML_DEBUG", "ETHML_ACCOUNT", "ETHML_MNEMONIC", "ETHML_KEYSTORE", "ETHML_PRIVATE_KEY"):
        env.pop(name, None)
    if key is not None:
        env["ETHML_PRIVATE_KEY"] = "0x" + bytes(key.key).hex()
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


CAST = ROOT / "node_modules" / ".bin" / "cast"
PASSWORD = "correct horse battery staple"


def cast(*args: str) -> str:
    """Foundry's cast, which a user of a public chain has at hand (npm ci installs it beside anvil)."""
    if not CAST.exists():
        missing_service("cast (npm ci)")
    done = subprocess.run([str(CAST), *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


@dataclass
class Deployed:
    chain: Chain
    data_dir: Path
    deployer: str
    keystore: Path
    password_file: Path
    env: dict[str, str]
    deployment: Deployment
    output: str
    #: The deployer's nonce right after the deployment (it was 0 before).
    nonce_after: int


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    """`cast wallet new` makes the deployer's keystore, anvil's first account is the faucet, and the deployer
    signs everything after that (the deployment, the miners' ETH and EML) with the keystore."""
    chain = start_chain()
    try:
        data_dir = tmp_path_factory.mktemp("sepolia-data")
        keys = tmp_path_factory.mktemp("keys")
        made = cast("wallet", "new", str(keys), "--unsafe-password", PASSWORD)
        keystore = Path(re.search(r"keystore file: (\S+)", made).group(1))  # type: ignore[union-attr]
        address = re.search(r"Address:\s+(0x[0-9a-fA-F]{40})", made).group(1)  # type: ignore[union-attr]
        password_file = keys / "password"
        password_file.write_text(PASSWORD + "\n")
        faucet = chain.w3.eth.accounts[0]
        cast("send", "--rpc-url", chain.url, "--unlocked", "--from", faucet, address, "--value", "10ether")
        env = env_for(chain, data_dir, None)
        env.update(ETHML_KEYSTORE=str(keystore), ETHML_PASSWORD_FILE=str(password_file))
        done = ethml(env, "deploy", "--timelock-delay", str(DELAY), "--yes")
        assert done.returncode == 0, done.stdout + done.stderr
        deployment = Deployment.find(SEPOLIA, data_dir)
        sent = nonce(chain, address)
        yield Deployed(
            chain, data_dir, address, keystore, password_file, env, deployment, done.stdout + done.stderr, sent
        )
    finally:
        chain.stop()


def test_deploy_onto_a_public_chain_id(deployed: Deployed) -> None:
    out, dep = deployed.output, deployed.deployment
    assert f"admin:  an EthMLTimelock with a 10 min delay ({DELAY} s)" in out
    assert re.search(rf"cost:   {STEPS} transactions, [\d,]+ gas: about [\d.]+ ETH", out), out
    assert f"[{STEPS}/{STEPS}] renouncing the oracle's DEFAULT_ADMIN_ROLE" in out
    assert "FAIL" not in out and out.count("  ok   ") >= 15
    assert dep.chain_id == SEPOLIA and dep.timelock is not None and dep.training is not None
    assert dep.deployer == deployed.deployer and f"from {deployed.deployer} (keystore {deployed.keystore})" in out
    assert sorted(dep.models) == ["breast-cancer", "diabetes", "iris", "wine"]
    assert deployed.nonce_after == STEPS, "every step sent exactly once"
    record = json.loads((deployed.data_dir / "deployments" / f"{SEPOLIA}.transactions.json").read_text())
    assert len(record["steps"]) == STEPS and all(s["done"] for s in record["steps"])
    assert not (deployed.data_dir / "deployments" / f"{SEPOLIA}.journal.json").exists()
    # The plan's gas (a dry run in process) is what the chain charged, give or take 1 %.
    planned = int(re.search(r"cost:   \d+ transactions, ([\d,]+) gas", out).group(1).replace(",", ""))  # type: ignore[union-attr]
    charged = sum(int(s["done"]["gas_used"]) for s in record["steps"])
    assert abs(planned - charged) <= charged // 100, (planned, charged)


def test_a_second_deploy_is_refused_without_overwrite(deployed: Deployed) -> None:
    before = nonce(deployed.chain, deployed.deployer)
    done = ethml(deployed.env, "deploy", "--yes")
    assert done.returncode == 1 and done.stderr.count("error: ") == 1, done.stderr
    assert f"chain {SEPOLIA} already has a deployment file" in done.stderr and "--overwrite" in done.stderr
    assert nonce(deployed.chain, deployed.deployer) == before


def _fund(deployed: Deployed, to: str, eth: str, eml: str) -> None:
    """ETH for gas and EML for bonds, sent from the deployer's keystore with cast, as a user would."""
    signer = ["--rpc-url", deployed.chain.url, "--keystore", str(deployed.keystore)]
    signer += ["--password-file", str(deployed.password_file)]
    cast("send", *signer, to, "--value", eth)
    if eml != "0":
        cast("send", *signer, deployed.deployment.token, "transfer(address,uint256)", to, eml)


def test_five_miners_and_a_request_on_the_deployed_chain(deployed: Deployed) -> None:
    chain = deployed.chain
    miners = [Account.create() for _ in range(5)]
    requester = Account.create()
    for m in miners:
        _fund(deployed, m.address, "1ether", "100ether")
    _fund(deployed, requester.address, "1ether", "0")
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

    before = nonce(chain, deployed.deployer)
    early = ethml(env, *register, "--execute")
    assert early.returncode == 1 and early.stderr.count("\n") == 1, early.stderr
    assert "the timelock's delay has not passed" in early.stderr and operation.group(1) in early.stderr
    assert "(in 9 min" in early.stderr or "(in 10 min" in early.stderr
    assert "(TimelockUnexpectedOperationState); not sent, no gas spent" in early.stderr
    assert nonce(chain, deployed.deployer) == before

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


def test_on_a_terminal_it_asks_for_the_password_and_a_confirmation(tmp_path: Path) -> None:
    """On a terminal (a pseudo-terminal here) the keystore's password is asked for, hidden, and the plan
    confirmed; answering no sends nothing."""
    import pty
    import select
    import termios

    chain = start_chain()
    try:
        deployer = fund_fresh_key(chain, 10)
        keystore = tmp_path / "deployer.json"
        keystore.write_text(json.dumps(Account.encrypt(deployer.key, PASSWORD, iterations=2)))
        env = env_for(chain, tmp_path, None)
        pid, fd = pty.fork()
        if pid == 0:  # the child: the command, on the terminal
            os.chdir(ROOT)
            os.execve(sys.executable, [sys.executable, "-m", "ethml", "deploy", "--keystore", str(keystore)], env)
        seen = b""

        def read_until(token: bytes) -> None:
            nonlocal seen
            deadline = time.monotonic() + 120
            while token not in seen:
                assert time.monotonic() < deadline, seen.decode(errors="replace")
                if select.select([fd], [], [], 0.5)[0]:
                    try:
                        seen += os.read(fd, 4096)
                    except OSError:  # the child closed the terminal
                        raise AssertionError(seen.decode(errors="replace")) from None

        read_until(b"password for ")
        deadline = time.monotonic() + 30
        while termios.tcgetattr(fd)[3] & termios.ECHO:  # typed before the prompt hides it, it would be flushed
            assert time.monotonic() < deadline, "the password prompt never turned echo off"
            time.sleep(0.05)
        os.write(fd, PASSWORD.encode() + b"\n")
        read_until(b"deploy? [y/N]")
        assert PASSWORD.encode() not in seen, "the password is not echoed"
        os.write(fd, b"n\n")
        read_until(b"not confirmed; nothing sent")
        _, status = os.waitpid(pid, 0)
        os.close(fd)
        assert os.waitstatus_to_exitcode(status) == 1
        assert b"cost:   23 transactions" in seen
        assert nonce(chain, deployer.address) == 0
    finally:
        chain.stop()


def test_an_rpc_that_dies_mid_way_is_one_line_that_says_how_to_continue(tmp_path: Path) -> None:
    chain = start_chain()
    stopped = False
    try:
        deployer = fund_fresh_key(chain, 10)
        proc = spawn(env_for(chain, tmp_path, deployer), "deploy", "--timelock-delay", str(DELAY), "--yes")
        read_until(proc, r"^\[ 5/23\] .*: sent ")
        chain.stop()
        stopped = True
        _, err = proc.communicate(timeout=120)
        errors = [line for line in err.splitlines() if line.startswith("error: ")]
        assert proc.returncode == 1 and len(errors) == 1 and "Traceback" not in err, err
        assert "the RPC stopped answering" in errors[0] or "cannot reach" in errors[0], errors[0]
        # How far it got depends on how fast the chain went down (on a loaded machine a step or two more than
        # the four before step 5): the count it gives is the journal's.
        said = re.search(r"stopped with (\d+) steps done: run the same command again to continue", errors[0])
        assert said is not None, errors[0]
        journal = json.loads((tmp_path / "deployments" / f"{SEPOLIA}.journal.json").read_text())
        done = [step["key"] for step in journal["steps"] if step.get("done")]
        assert 4 <= int(said.group(1)) == len(done) < STEPS, (said.group(0), sorted(done))
        assert f"{SEPOLIA}.journal.json keeps every transaction sent" in errors[0]
    finally:
        if not stopped:
            chain.stop()
