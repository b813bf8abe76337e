"""A local development chain: anvil with the dev mnemonic, the system deployed, the models registered."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import socket
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ethml.chain.accounts import DEV_MNEMONIC, dev_account
from ethml.errors import ChainError, DeploymentError

if TYPE_CHECKING:
    from web3 import AsyncWeb3

    from ethml.chain.deploy import Deployment

DEFAULT_DIFFICULTY = 1 << 16


class AnvilNotFound(ChainError, FileNotFoundError):
    def __init__(self) -> None:
        super().__init__(
            "anvil not found: run `npm ci` in the ethml checkout (it installs @foundry-rs/anvil-linux-amd64) "
            "or put Foundry's anvil on PATH"
        )


def find_anvil() -> str:
    candidates = [
        Path.cwd() / "node_modules" / ".bin" / "anvil",
        Path(__file__).resolve().parents[2] / "node_modules" / ".bin" / "anvil",
    ]
    for c in candidates:
        if c.exists():
            return str(c)
    found = shutil.which("anvil")
    if found is None:
        raise AnvilNotFound()
    return found


@dataclass
class Devnet:
    process: subprocess.Popen[bytes]
    url: str
    deployment: Deployment
    deployment_file: Path
    reused: bool

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()  # anvil dumps --state on a clean exit
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def child_stderr(proc: subprocess.Popen[bytes]) -> str:
    """What a dead child wrote to stderr (its own words, e.g. "Address already in use")."""
    if proc.stderr is None:
        return ""
    with contextlib.suppress(OSError, ValueError):
        return proc.stderr.read().decode(errors="replace").strip()[-800:]
    return ""


def check_port_free(host: str, port: int, what: str = "the devnet", noun: str = "devnet") -> None:
    """Fail at once, before anything starts (anvil, a Redis), when something already listens on host:port.

    The probe binds with SO_REUSEADDR, as the servers themselves do, so the connections a killed process
    left in TIME_WAIT do not count: a restart right after a crash (`kill -9`) starts at once.
    """
    if not 1 <= port <= 65535:
        raise ChainError(f"--port {port} is not a TCP port (1..65535)")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                hint = f"another {noun} or program is using it; choose another with --port"
            elif exc.errno == errno.EACCES:
                hint = "ports below 1024 need privileges; choose another with --port"
            else:  # not a name or address of this machine (a typo, an address another host has)
                hint = "not an address of this machine; choose another with --host, or 0.0.0.0 for all of them"
            raise ChainError(f"cannot start {what} on {host}:{port}: {exc.strerror or exc} ({hint})") from None


def listening_pids(port: int) -> set[int]:
    """The processes with a TCP socket listening on `port` (Linux /proc; empty elsewhere, or when
    the listening socket is not visible, which callers treat as "cannot tell")."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(fields[9])
    pids: set[int] = set()
    for proc_dir in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            for fd in (proc_dir / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    pids.add(int(proc_dir.name))
                    break
    return pids


async def _wait_rpc(w3: AsyncWeb3[Any], proc: subprocess.Popen[bytes], port: int, seconds: float = 30.0) -> int:
    """The chain id, once the anvil this call started answers on `port` (not some other process)."""
    import asyncio  # here, not at the top: `ethml --help` imports this module for its defaults

    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        if proc.poll() is not None:
            raise ChainError(f"anvil exited with code {proc.returncode}: {child_stderr(proc) or 'no message'}")
        with contextlib.suppress(Exception):
            chain_id = int(await w3.eth.chain_id)
            owners = await asyncio.to_thread(listening_pids, port) or {proc.pid}
            if proc.pid in owners:
                return chain_id
            if proc.poll() is not None or owners:
                raise ChainError(
                    f"another process (pid {', '.join(map(str, sorted(owners)))}) answers on port {port}, "
                    "not the anvil this devnet started; choose another --port"
                )
        if loop.time() > deadline:
            raise ChainError(f"anvil did not answer within {seconds:g} s: {child_stderr(proc) or 'no message'}")
        await asyncio.sleep(0.1)


async def start_devnet(
    *,
    port: int = 8545,
    host: str = "127.0.0.1",
    block_time: float | None = None,
    state: Path | None = None,
    difficulty: int = DEFAULT_DIFFICULTY,
    max_difficulty: int | None = None,
    data_dir: Path | None = None,
    models_dir: Path | None = None,
    anvil: str | None = None,
    requests_per_round: int | None = None,
) -> Devnet:
    """Start anvil, deploy (or find the deployment in `state`), register the models, seed the blockstore."""
    from ethml.chain.deploy import Deployment, Parameters, deploy_system, deployment_path
    from ethml.chain.rpc import http_web3
    from ethml.ipfs import Blockstore, IpfsClient
    from ethml.ml import Manifest

    check_port_free(host, port)
    args = [anvil or find_anvil(), "--host", host, "--port", str(port), "--mnemonic", DEV_MNEMONIC, "--silent"]
    if block_time:
        args += ["--block-time", str(block_time)]
    if state is not None:
        args += ["--state", str(state)]
    # A long-lived child that outlives this coroutine: started synchronously on purpose (it returns at once).
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ})  # noqa: ASYNC220
    url = f"http://{host}:{port}"
    w3: AsyncWeb3[Any] = http_web3(url)
    try:
        chain_id = await _wait_rpc(w3, proc, port)
        manifest = Manifest.load(models_dir)
        path = deployment_path(chain_id, data_dir)
        deployment: Deployment | None = None
        if state is not None and path.exists():
            try:
                candidate: Deployment | None = Deployment.load(path)
            except DeploymentError:
                candidate = None  # written by an older ethml: deploy afresh
            if candidate is not None:
                codes = [await w3.eth.get_code(w3.to_checksum_address(a)) for a in (candidate.ethml, candidate.token)]
                if all(len(code) > 0 for code in codes):
                    deployment = candidate
        reused = deployment is not None
        if deployment is None:
            params = Parameters(min_difficulty=difficulty, max_difficulty=max_difficulty or difficulty)
            if requests_per_round is not None:
                params = replace(params, requests_per_round=requests_per_round)
            deployment = await deploy_system(w3, dev_account(0), parameters=params, models=manifest.registry_specs())
            deployment.save(path)
        ipfs = IpfsClient(Blockstore((data_dir / "blocks") if data_dir else None))
        for entry in manifest.models:
            for point in entry.data_points:
                ipfs.add_bytes(manifest.data_point_path(point).read_bytes())
    except BaseException:
        proc.terminate()
        proc.wait(timeout=10)
        raise
    finally:
        with contextlib.suppress(Exception):
            await w3.provider.disconnect()  # type: ignore[attr-defined]
    return Devnet(proc, url, deployment, path, reused)
