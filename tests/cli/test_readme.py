"""The README's commands, run as a user would (separate processes, a real anvil devnet)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ethml.ipfs import Blockstore, IpfsClient
from ethml.ml import Manifest, ModelStore
from ethml.ml.loader import load_untrusted
from tests.conftest import ROOT, find_anvil, free_port, missing_service

README = (ROOT / "README.md").read_text()
SETUP_COMMANDS = {"make demo", "make test"}


def shell_blocks() -> list[list[str]]:
    return [
        [line for line in block.strip().splitlines() if line.strip()]
        for block in re.findall(r"```sh\n(.*?)```", README, flags=re.S)
    ]


def command(line: str) -> str:
    return line.split("#", 1)[0].strip()


def test_every_readme_command_is_covered() -> None:
    """Each command is a set-up command (CI runs `make test`; test_demo runs `ethml demo`) or part of the
    devnet walkthrough that the next test runs; long-running ones say so."""
    blocks = shell_blocks()
    assert {command(line) for line in blocks[0]} == SETUP_COMMANDS
    walkthrough = blocks[1]
    for line in walkthrough:
        assert command(line).startswith("ethml "), line
        if command(line).startswith(("ethml devnet", "ethml mine")):
            assert "long-running" in line, f"mark it as needing its own terminal: {line}"
    for line in blocks[2]:
        assert command(line).startswith("ethml ") and "long-running" not in line, line
    assert len(blocks) == 3, "a new command block needs a test"


def test_devnet_walkthrough_from_the_readme(tmp_path: Path) -> None:
    if find_anvil() is None:
        missing_service("anvil (npm ci)")
    port = free_port()
    env = {
        **os.environ,
        "ETHML_DATA_DIR": str(tmp_path),
        "ETHML_DEVNET_PORT": str(port),
        "ETHML_RPC": f"http://127.0.0.1:{port}",
        "ETHML_THREADS": "1",
        "PATH": f"{ROOT / 'node_modules' / '.bin'}:{os.environ['PATH']}",
    }
    lines = [command(line) for line in shell_blocks()[1]]
    background: list[subprocess.Popen[str]] = []

    def ethml(args: list[str], **kw: object) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "ethml", *args],
            cwd=ROOT,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            **kw,  # type: ignore[call-overload]
        )

    try:
        devnet = ethml(shlex.split(lines[0])[1:])
        background.append(devnet)
        deployment = tmp_path / "deployments" / "31337.json"
        deadline = time.monotonic() + 60
        while not deployment.exists():
            assert devnet.poll() is None, devnet.stderr.read() if devnet.stderr else ""
            assert time.monotonic() < deadline, "the devnet did not deploy in time"
            time.sleep(0.2)
        for line in lines[1:-1]:
            background.append(ethml(shlex.split(line)[1:]))
        request = subprocess.run(
            [sys.executable, "-m", "ethml", *shlex.split(lines[-1])[1:]],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert request.returncode == 0, request.stdout + request.stderr
        training = _train_and_serve(env, tmp_path)
    finally:
        for proc in reversed(background):
            proc.send_signal(signal.SIGINT)
        for proc in reversed(background):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
    manifest = Manifest.load()
    raw = (ROOT / "models" / "data" / "breast-cancer-0.json").read_bytes()
    store = ModelStore(manifest)
    expected = store.get("breast-cancer").predict_one(raw)
    store.close()
    assert re.search(rf"request 1: finalized, prediction {expected}\b", request.stdout), request.stdout
    assert request.stdout.count("0x") >= 5  # the five miners
    for miner in background[1:]:
        assert miner.returncode == 0, miner.stderr.read() if miner.stderr else ""
    assert training["status"] == "accepted" and training["model_id"] == 5, training
    assert [p["state"] for p in training["panel"]] == ["revealed"], training["panel"]
    validated = training["outputs"]["ethml validate --task 1 --account 6"][0]
    assert "scores committed and revealed" in validated, validated  # the last seat revealed at once
    accepted = training["submissions"][training["accepted_submission"]]
    store = Blockstore(tmp_path / "blocks")
    artifact = asyncio.run(IpfsClient(store).cat(accepted["model_cid"], max_size=64 * 1024 * 1024))
    model = load_untrusted(artifact, "accepted", accepted["sha256"])
    point = json.loads((ROOT / "models" / "data" / "wine-0.json").read_text())
    served = int(model.predict([point])[0])
    assert re.search(rf"request 2: finalized, prediction {served}\b", training["request"]), training["request"]


def _train_and_serve(env: dict[str, str], tmp_path: Path) -> dict[str, Any]:
    """The "Train a model and serve it" block, against the running devnet and miners, one command after
    the other as written: the commands that wait for a window do so themselves (`--wait`)."""

    def run(line: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "ethml", *shlex.split(line)[1:]],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, line + "\n" + done.stdout + done.stderr
        return done.stdout

    outputs = {}
    for line in [command(line) for line in shell_blocks()[2]]:
        outputs.setdefault(line, []).append(run(line))
    info: dict[str, Any] = json.loads(run("ethml task show 1 --json"))
    info["request"] = outputs["ethml request --model 5 --data models/data/wine-0.json --wait"][0]
    info["outputs"] = outputs
    return info
