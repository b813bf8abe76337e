"""An RPC endpoint's answers are read without putting the process at risk (ethml.chain.rpc): an answer nested
100,000 levels deep is a clear error, where web3's own `json.loads` killed the process with a segmentation fault
(py_ecc raises Python's recursion limit to 100,000, so the C stack overflows first); and a cancelled request does
not block every later one (web3's session lock). Each case runs in a child process, so that a crash or a lock held
for good is an exit status, not the end of the test run."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEEP = b"[" * 100_000


class Endpoint:
    """An HTTP server in a thread answering every JSON-RPC POST with `answer(request)`."""

    def __init__(self) -> None:
        self.answer = lambda request: json.dumps({"jsonrpc": "2.0", "id": request["id"], "result": "0x539"}).encode()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                body = endpoint.answer(request)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    ep = Endpoint()
    thread = threading.Thread(target=ep.server.serve_forever, daemon=True)
    thread.start()
    yield ep
    ep.server.shutdown()
    ep.server.server_close()


def child(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120, cwd=ROOT, check=False
    )


READ_BLOCK_NUMBER = """
import asyncio, json, sys
from ethml.chain.rpc import http_web3

async def main():
    w3 = http_web3(sys.argv[1])
    try:
        print("answer", await w3.eth.chain_id, await w3.eth.block_number)
    except json.JSONDecodeError as exc:
        print("refused", exc.msg)
    finally:
        await w3.provider.disconnect()

asyncio.run(main())
"""


def test_a_deeply_nested_answer_is_an_error_not_a_crash(endpoint: Endpoint) -> None:
    endpoint.answer = lambda request: DEEP
    done = child(READ_BLOCK_NUMBER, endpoint.url)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert "refused the RPC endpoint's answer is not JSON ethml can read" in done.stdout
    assert "nested deeper than 200 levels" in done.stdout


def test_answers_read_as_web3_reads_them(endpoint: Endpoint) -> None:
    """Ordinary answers, numbers beyond 64 bits included, read as before; an answer that is not JSON at all
    is the same JSONDecodeError web3 raises."""
    endpoint.answer = lambda request: json.dumps(
        {"jsonrpc": "2.0", "id": request["id"], "result": "0x539" if request["method"] == "eth_chainId" else 2**70}
    ).encode()
    done = child(READ_BLOCK_NUMBER, endpoint.url)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["answer", "1337", str(2**70)]
    endpoint.answer = lambda request: b"<html>502 Bad Gateway</html>"
    done = child(READ_BLOCK_NUMBER, endpoint.url)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "refused the RPC endpoint's answer is not JSON ethml can read" in done.stdout


def test_the_cli_says_what_the_endpoint_did(endpoint: Endpoint, tmp_path: Path) -> None:
    """A command that connects (`ethml request`) ends with one line naming the endpoint, exit status 1."""
    endpoint.answer = lambda request: DEEP
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ethml",
            "request",
            "--model",
            "iris",
            "--data",
            "models/data/iris-0.json",
            "--rpc",
            endpoint.url,
            "--data-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 1, (done.returncode, done.stderr[-2000:])
    assert f"the RPC at {endpoint.url} answered with something that is not JSON-RPC" in done.stderr
    assert "Traceback" not in done.stderr


CANCELLED_REQUESTS = """
import asyncio, random, sys
from web3._utils.http_session_manager import HTTPSessionManager
from ethml.chain.rpc import http_web3

async def main():
    providers = [http_web3(sys.argv[1]) for _ in range(3)]
    rng = random.Random(7)

    async def cut_short(w3):
        try:
            await asyncio.wait_for(w3.eth.chain_id, rng.random() * 0.003)
        except Exception:
            pass

    try:
        # Another HTTP provider of the process holds web3's shared lock (a request of a plain AsyncHTTPProvider,
        # or one whose cancellation left it held): ethml's providers do not wait for it.
        with HTTPSessionManager._lock:
            print("while held", await asyncio.wait_for(providers[0].eth.chain_id, 30))
        # Bursts of requests cancelled at random moments, each burst followed by one that must be answered.
        for burst in range(40):
            await asyncio.gather(*(cut_short(rng.choice(providers)) for _ in range(20)))
            await asyncio.wait_for(rng.choice(providers).eth.chain_id, 30)
        print("after bursts", await asyncio.wait_for(providers[0].eth.chain_id, 30))
    except TimeoutError:
        print("hung")
        sys.exit(1)
    finally:
        for w3 in providers:
            await w3.provider.disconnect()

asyncio.run(main())
"""


def test_a_cancelled_request_does_not_block_later_ones(endpoint: Endpoint) -> None:
    """web3 8.0 takes one thread lock, shared by every HTTP provider of the process, for each request, and a
    request cancelled while waiting for it (a timeout around a call, an actor stopping) could leave it held for
    good: every later RPC call of the process hung (web3.py issue 3867; one burst of twenty cut-short calls was
    enough, and a test of this suite hung on it). ethml's provider keeps its session per event loop without that
    lock: requests go on while the lock is held elsewhere and after hundreds of cancelled ones."""
    done = child(CANCELLED_REQUESTS, endpoint.url)
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr[-2000:])
    assert done.stdout.split() == ["while", "held", "1337", "after", "bursts", "1337"], done.stdout
