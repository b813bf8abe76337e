from __future__ import annotations

import asyncio
import inspect
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

ROOT = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_configure(config: pytest.Config) -> None:
    """Tests stop `ethml worker` and other children with SIGINT, as Ctrl-C would. A test run started in
    the background by a non-interactive shell (`make test &` in a script) inherits SIGINT ignored, and
    an ignored signal stays ignored in every child: each worker would sit out its 10 s stop wait and be
    killed. Take SIGINT back here, so that children start with it at its default, as from a terminal."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@contextmanager
def captured_logs() -> Iterator[list[dict[str, Any]]]:
    """The structlog entries logged inside, every level, whatever an earlier test in this process configured
    (`configure_logging` with a level filters in the bound logger, before capture_logs sees an entry); the
    configuration is restored after."""
    saved = structlog.get_config()
    structlog.reset_defaults()
    try:
        with capture_logs() as entries:
            yield entries
    finally:
        structlog.configure(**saved)


def missing_service(what: str) -> None:
    """Under CI a missing service is a failure; on a developer machine the test is skipped."""
    if IN_CI:
        pytest.fail(f"{what} is required under CI but is missing")
    pytest.skip(f"{what} is not available")


def find_anvil() -> str | None:
    from ethml.devnet import AnvilNotFound
    from ethml.devnet import find_anvil as locate

    try:
        return locate()
    except AnvilNotFound:
        return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def anvil_url() -> Iterator[str]:
    from ethml.chain import DEV_MNEMONIC

    binary = find_anvil()
    if binary is None:
        missing_service("anvil (npm install)")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--mnemonic", DEV_MNEMONIC, "--silent"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode() if proc.stderr else ""
                proc.kill()
                pytest.fail(f"anvil did not start: {err}")
            time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def lag_receipts(w3: Any, misses: int) -> list[int]:
    """The node behind `w3` answers its next `misses` receipt reads (eth_getTransactionReceipt) with
    nothing, as a node does that counts a nonce used before it serves the receipt; the list holds how many
    it refused so far. web3's own wait_for_transaction_receipt is not affected."""
    from web3.exceptions import TransactionNotFound

    read_receipt = w3.eth.get_transaction_receipt
    refused = [0]

    async def lagging(tx_hash: Any) -> Any:
        if refused[0] < misses:
            refused[0] += 1
            raise TransactionNotFound(f"no receipt for {tx_hash!r} yet")
        return await read_receipt(tx_hash)

    w3.eth.get_transaction_receipt = lagging
    return refused


def find_ipfs_only_hash() -> str | None:
    path = ROOT / "node_modules" / "ipfs-only-hash"
    return str(path) if path.exists() else None


def find_ipfs_cid() -> str | None:
    return shutil.which("ipfs_cid")


@pytest.fixture
def blockstore(tmp_path: Path):  # type: ignore[no-untyped-def]
    from ethml.ipfs import Blockstore

    return Blockstore(tmp_path / "blocks")


# `make test` runs pytest on two workers (pytest-xdist, one test file per worker at a time). Much of the
# time of these files is waiting on real deadlines (the README walkthrough waits 3.4 minutes of training
# windows), so they start first: the other worker runs the rest meanwhile and both finish together.
# Measured with `--durations`; a file not listed runs after these, in collection order.
SLOW_FILES_FIRST = (
    "tests/cli/test_readme.py",
    "tests/cli/test_training_cli.py",
    "tests/training/test_e2e.py",
    "tests/coordinator/test_dask.py",
    "tests/training/test_cluster.py",
    "tests/coordinator/test_workers.py",
    "tests/coordinator/test_flow.py",
    "tests/coordinator/test_restart.py",
    "tests/coordinator/test_api.py",
    "tests/cli/test_deploy.py",
    "tests/training/test_e2e_refit.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {path: i for i, path in enumerate(SLOW_FILES_FIRST)}
    position = {id(item): i for i, item in enumerate(items)}
    items.sort(key=lambda item: (rank.get(item.nodeid.split("::")[0], len(rank)), position[id(item)]))
    for item in items:
        if isinstance(item, pytest.Function) and inspect.iscoroutinefunction(item.obj):
            item.fixturenames.insert(0, "hang_guard")  # set up first, torn down last: it covers the fixtures too


#: Seconds after which an async test (its fixtures included) is taken for hung: a test that waits for
#: something that never comes would otherwise hold up the whole run until CI's limit (90 minutes). The
#: longest tests take about five minutes on a loaded 2-core machine.
HUNG_AFTER = float(os.environ.get("ETHML_TEST_HUNG_AFTER", "900"))


@pytest.fixture
async def hang_guard(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """Past HUNG_AFTER, print the stack of every asyncio task of the test's loop (where each one waits: a
    hang found in a full run can be read from its report) and cancel them, so the test fails."""
    loop = asyncio.get_running_loop()

    def hung() -> None:
        from ethml.coordinator.background import await_chain

        tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
        print(f"\n{request.node.nodeid}: still running after {HUNG_AFTER:g} s; its tasks:", file=sys.stderr)
        for task in tasks:
            print(f"--- {task.get_name()}, waiting in:", file=sys.stderr)
            for where in await_chain(task, files=True):
                print(f"    {where}", file=sys.stderr)
        for task in tasks:
            task.cancel()

    guard = loop.call_later(HUNG_AFTER, hung)
    try:
        yield
    finally:
        guard.cancel()
