"""What many uploads at once cost `ethml serve` in memory: `--uploads` files of `--mib` MiB posted to
`POST /api/files` together (from admin keys, so no quota refuses them, each with at most as many
uploads as one key may have in progress), against a real server on anvil with its private Redis.
Prints the server's resident memory before, its peak during the uploads (Linux's VmHWM), the growth,
and the time until the last 201 (the files go into the durable blockstore).

A body is spooled to disk as it arrives and read back by one of the server's writer threads, so the
growth should stay near what those threads hold (each file and its blocks), whatever `--uploads` is.

    python benchmarks/upload_memory.py [--uploads 16] [--mib 16]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from coordinator_load import anvil_or_exit, deploy, free_port, wait_port

from ethml.chain import DEV_MNEMONIC
from ethml.coordinator.uploads import MAX_UPLOADS_PER_KEY
from ethml.pow.tune import cpu_model


def memory_kib(pid: int, field: str) -> int:
    """A field of /proc/<pid>/status in KiB (VmRSS: resident now, VmHWM: the peak so far)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise SystemExit(f"no {field} in /proc/{pid}/status")


async def admin_keys(url: str, admin: str, count: int) -> list[str]:
    """`count` admin keys, `admin` first: one key may have MAX_UPLOADS_PER_KEY uploads in progress."""
    keys = [admin]
    async with aiohttp.ClientSession() as session:
        while len(keys) < count:
            body = {"name": f"bench-{len(keys)}", "role": "admin"}
            headers = {"Authorization": f"Bearer {admin}"}
            async with session.post(url + "/api/keys", json=body, headers=headers) as response:
                if response.status != 201:
                    raise SystemExit(f"error: POST /api/keys answered {response.status}: {await response.text()}")
                keys.append((await response.json())["key"])
    return keys


async def post_all(url: str, keys: list[str], files: list[bytes]) -> list[int]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:

        async def post(i: int, data: bytes) -> int:
            headers = {"Authorization": f"Bearer {keys[i % len(keys)]}", "Content-Type": "application/octet-stream"}
            async with session.post(url + "/api/files", data=data, headers=headers) as response:
                await response.read()
                return response.status

        return await asyncio.gather(*(post(i, data) for i, data in enumerate(files)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--uploads", type=int, default=16, help="files posted at once (default 16)")
    ap.add_argument("--mib", type=int, default=16, help="size of each file in MiB (default 16, the limit)")
    args = ap.parse_args()
    if not 1 <= args.mib <= 16 or args.uploads < 1:
        ap.error("--mib must be 1 to 16 and --uploads at least 1")
    anvil = anvil_or_exit()
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        try:
            rpc_port, port = free_port(), free_port()
            procs.append(
                subprocess.Popen(
                    [anvil, "--port", str(rpc_port), "--mnemonic", DEV_MNEMONIC, "--silent"],
                    stdout=subprocess.DEVNULL,
                )
            )
            wait_port(rpc_port)
            rpc = f"http://127.0.0.1:{rpc_port}"
            asyncio.run(deploy(rpc, tmp / "deployment.json"))
            data_dir = tmp / "data"
            command = [sys.executable, "-m", "ethml", "serve", "--rpc-url", rpc, "--port", str(port)]
            command += ["--deployment", str(tmp / "deployment.json"), "--data-dir", str(data_dir), "--no-relay"]
            with (tmp / "serve.log").open("wb") as serve_log:
                server = subprocess.Popen(command, stdout=serve_log, stderr=subprocess.STDOUT)
            procs.append(server)
            wait_port(port)
            key_file = data_dir / "coordinator" / "admin.key"
            deadline = time.monotonic() + 60
            while not key_file.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            url = f"http://127.0.0.1:{port}"
            keys = asyncio.run(admin_keys(url, key_file.read_text().strip(), -(-args.uploads // MAX_UPLOADS_PER_KEY)))
            files = [os.urandom(args.mib * 2**20) for _ in range(args.uploads)]
            asyncio.run(post_all(url, keys, files[:1]))  # one first: the server's code paths warmed up
            before = memory_kib(server.pid, "VmRSS")
            started = time.perf_counter()
            statuses = asyncio.run(post_all(url, keys, files))
            seconds = time.perf_counter() - started
            peak = memory_kib(server.pid, "VmHWM")
        finally:
            for proc in reversed(procs):
                proc.terminate()
            for proc in procs:
                proc.wait(30)
    if statuses.count(201) != args.uploads:
        sys.exit(f"error: not every upload was stored: {statuses}")
    total = args.uploads * args.mib
    print(f"CPU: {cpu_model()}; {args.uploads} uploads of {args.mib} MiB posted at once ({total} MiB)")
    print(f"server resident before   {before / 1024:7.1f} MiB")
    print(f"server peak during       {peak / 1024:7.1f} MiB  (+{(peak - before) / 1024:.1f} MiB)")
    print(f"last 201 after           {seconds:7.2f} s   ({total / seconds:.0f} MiB/s)")


if __name__ == "__main__":
    main()
