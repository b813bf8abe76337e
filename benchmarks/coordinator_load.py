"""Load on `POST /api/tasks` against a bare aiohttp handler doing one Redis XADD, side by side in one run.

Both servers run pinned to CPU 0; the load generator (wrk, Debian's `wrk` package) runs on CPU 1,
with Redis and anvil beside it. Each request to `ethml serve` is the real thing: API-key lookup (cached),
the token-bucket script in Redis (limits set high enough not to refuse), the body validated by the
schema (spec, deadlines, permit), the EIP-2612 permit signature recovered and checked, the task
stored and queued for the relayer in one MULTI. The relayer is off (`--no-relay`) so the figure is the
API's; the follower, dispatcher and metrics loops run as usual. The bare handler reads the body and
XADDs it to a stream; both run on uvloop with the same garbage-collector settings. Rounds alternate
between the two; each line is one 10-second wrk run.

After each ethml round the tasks in Redis are counted: every 201 must be there (a request in flight
when wrk stops may have been stored without wrk seeing its 201, so the count may exceed the 201s by
at most the number of connections).

    python benchmarks/coordinator_load.py [--seconds 10] [--connections 32] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from coincurve import PrivateKey
from web3 import AsyncHTTPProvider, AsyncWeb3

from ethml.chain import DEV_MNEMONIC, EML, Parameters, deploy_system, dev_account
from ethml.coordinator.permit import PermitDomain
from ethml.coordinator.redis_server import redis_executable
from ethml.coordinator.schemas import commitment_hex
from ethml.devnet import find_anvil
from ethml.pow.tune import cpu_model
from ethml.training import parse_spec

BARE = r"""
import gc
import sys
import redis.asyncio as aioredis
from aiohttp import web

async def post(request):
    body = await request.read()
    entry = await request.app["redis"].xadd("bare:tasks", {"body": body})
    return web.json_response({"id": entry.decode()}, status=201)

async def ctx(app):
    app["redis"] = aioredis.Redis(unix_socket_path=sys.argv[2])
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)  # the same collector settings as `ethml serve`
    yield
    await app["redis"].aclose()

app = web.Application()
app.cleanup_ctx.append(ctx)
app.router.add_post("/api/tasks", post)
try:
    import uvloop  # the same event loop as `ethml serve`
    loop = uvloop.new_event_loop()
except ImportError:
    import asyncio
    loop = asyncio.new_event_loop()
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None, loop=loop)
"""

WRK_SCRIPT = r"""
local bodies = {}
local i = 0
local threads = {}
created = 0
function setup(thread) threads[#threads + 1] = thread end
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("ETHML_BENCH_KEY")
function init(args)
  for line in io.lines(os.getenv("ETHML_BENCH_BODIES")) do bodies[#bodies + 1] = line end
  i = math.random(#bodies)
end
function request()
  i = i % #bodies + 1
  return wrk.format(nil, nil, nil, bodies[i])
end
function response(status, headers, body)
  if status == 201 then created = created + 1 end
end
function done(summary, latency, requests)
  local total = 0
  for _, t in ipairs(threads) do total = total + t:get("created") end
  io.write(string.format("created %d\n", total))
end
"""


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


TEST_CID = "bafkreibm6jg3ux5qumhcn2b3flc3tyu6dmlb4xa7u5bf44yegnrjhc4yeq"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit(f"nothing listens on port {port} after {timeout} s")


def pinned(cpu: int) -> list[str]:
    return ["taskset", "-c", str(cpu)] if shutil.which("taskset") and (os.cpu_count() or 1) > 1 else []


def bodies(domain: PermitDomain, count: int) -> list[str]:
    """`count` valid task bodies, each with its own signed permit (coincurve signs in ~50 us)."""
    spec = parse_spec(
        {
            "target": "target",
            "features": [f"f{i}" for i in range(13)],
            "estimator": {"name": "RandomForestClassifier", "params": {"n_estimators": 25}},
            "metric": "accuracy",
        }
    ).model_dump(mode="json")
    owner = dev_account(9)
    key = PrivateKey(bytes(owner.key))
    now = int(time.time())
    out = []
    for n in range(count):
        value = (n + 1) * EML
        salt = "0x" + os.urandom(32).hex()
        digest = domain.digest(owner.address, value, n, now + 7200)
        sig = key.sign_recoverable(digest, hasher=None)
        body = {
            "spec": spec,
            "dataset_cid": "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy",
            "test_set_commitment": commitment_hex(TEST_CID, salt),
            "test_set": {"cid": TEST_CID, "salt": salt},
            "reward": str(value),
            "validations_required": 3,
            "min_score": 0.8,
            "submit_deadline": now + 3600,
            "validation_deadline": now + 7200,
            "permit": {
                "owner": owner.address,
                "value": str(value),
                "nonce": n,
                "deadline": now + 7200,
                "v": sig[64] + 27,
                "r": "0x" + sig[:32].hex(),
                "s": "0x" + sig[32:64].hex(),
            },
        }
        out.append(json.dumps(body, separators=(",", ":")))
    return out


def run_wrk(url: str, seconds: int, connections: int, script: Path, env: dict[str, str]) -> dict[str, Any]:
    out = subprocess.run(
        [*pinned(1), "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        check=True,
    ).stdout

    def ms(label: str) -> float:
        m = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not m:
            return float("nan")
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    created = int(re.search(r"created (\d+)", out).group(1))  # type: ignore[union-attr]
    return {
        "requests_per_second": rps,
        "requests": total,
        "created_201": created,
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": errors.group(1) if errors else "",
        "p50_ms": ms("50"),
        "p90_ms": ms("90"),
        "p99_ms": ms("99"),
    }


async def deploy(rpc: str, path: Path) -> PermitDomain:
    w3 = AsyncWeb3(AsyncHTTPProvider(rpc))
    dep = await deploy_system(w3, dev_account(0), parameters=Parameters())
    dep.save(path)
    await w3.provider.disconnect()  # type: ignore[attr-defined]
    assert dep.training is not None
    return PermitDomain(dep.chain_id, dep.token, dep.training)


def redis_cli(sock: Path, *args: str) -> str:
    cli = str(Path(redis_executable()).with_name("redis-cli"))
    if not Path(cli).exists():
        cli = shutil.which("redis-cli") or "redis-cli"
    return subprocess.run([cli, "-s", str(sock), *args], capture_output=True, text=True, check=True).stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--bodies", type=int, default=2000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("error: the load generator is wrk (apt-get install wrk)")
    anvil = find_anvil()
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        try:
            sock = tmp / "redis.sock"
            procs.append(
                subprocess.Popen(
                    [
                        *pinned(1),
                        redis_executable(),
                        "--port",
                        "0",
                        "--unixsocket",
                        str(sock),
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--dir",
                        str(tmp),
                    ],
                    stdout=subprocess.DEVNULL,
                )
            )
            rpc_port = free_port()
            procs.append(
                subprocess.Popen(
                    [*pinned(1), anvil, "--port", str(rpc_port), "--mnemonic", DEV_MNEMONIC, "--silent"],
                    stdout=subprocess.DEVNULL,
                )
            )
            wait_port(rpc_port)
            rpc = f"http://127.0.0.1:{rpc_port}"
            domain = asyncio.run(deploy(rpc, tmp / "deployment.json"))
            (tmp / "bodies.txt").write_text("\n".join(bodies(domain, args.bodies)) + "\n")
            (tmp / "post.lua").write_text(WRK_SCRIPT)
            (tmp / "bare.py").write_text(BARE)
            bare_port, serve_port = free_port(), free_port()
            bare_proc = subprocess.Popen([*pinned(0), sys.executable, str(tmp / "bare.py"), str(bare_port), str(sock)])
            procs.append(bare_proc)
            serve_log = (tmp / "serve.log").open("wb")
            procs.append(
                subprocess.Popen(
                    [
                        *pinned(0),
                        sys.executable,
                        "-m",
                        "ethml",
                        "serve",
                        "--rpc-url",
                        rpc,
                        "--deployment",
                        str(tmp / "deployment.json"),
                        "--data-dir",
                        str(tmp / "data"),
                        "--redis",
                        f"unix://{sock}",
                        "--port",
                        str(serve_port),
                        "--no-relay",
                        "--key-rate",
                        "1000000",
                        "--key-burst",
                        "1000000",
                        "--ip-rate",
                        "1000000",
                        "--ip-burst",
                        "1000000",
                    ],
                    stdout=serve_log,
                    stderr=subprocess.STDOUT,
                )
            )
            wait_port(bare_port)
            wait_port(serve_port)
            admin = ""
            deadline = time.monotonic() + 30
            while not admin and time.monotonic() < deadline:
                path = tmp / "data" / "coordinator" / "admin.key"
                admin = path.read_text().strip() if path.exists() else ""
                time.sleep(0.1)
            key = json.loads(
                subprocess.run(
                    ["curl", "-s", "-X", "POST", "-H", f"Authorization: Bearer {admin}",
                     "-H", "Content-Type: application/json", "-d",
                     '{"name":"bench","role":"requester"}', f"http://127.0.0.1:{serve_port}/api/keys"],
                    capture_output=True, text=True, check=True,
                ).stdout
            )["key"]  # fmt: skip
            env = {"ETHML_BENCH_KEY": key, "ETHML_BENCH_BODIES": str(tmp / "bodies.txt")}
            # Warm up both (connection pools, caches), then alternate.
            run_wrk(f"http://127.0.0.1:{bare_port}/api/tasks", 2, args.connections, tmp / "post.lua", env)
            run_wrk(f"http://127.0.0.1:{serve_port}/api/tasks", 2, args.connections, tmp / "post.lua", env)
            rows = []
            targets = (("bare XADD handler", bare_port, bare_proc), ("ethml serve", serve_port, procs[-1]))
            for r in range(args.rounds):
                for name, port, proc in targets:
                    before = int(redis_cli(sock, "ZCARD", "ethml:tasks"))
                    cpu0, wall0 = cpu_seconds(proc.pid), time.monotonic()
                    row = run_wrk(
                        f"http://127.0.0.1:{port}/api/tasks", args.seconds, args.connections, tmp / "post.lua", env
                    )
                    row["server_cpu"] = (cpu_seconds(proc.pid) - cpu0) / (time.monotonic() - wall0)
                    # Requests per second of the server's own CPU time: steadier than requests/s on a
                    # machine where other processes take part of the server's core.
                    row["per_cpu_second"] = row["requests_per_second"] / max(row["server_cpu"], 1e-9)
                    row.update(server=name, round=r + 1)
                    if name == "ethml serve":
                        time.sleep(0.5)
                        stored = int(redis_cli(sock, "ZCARD", "ethml:tasks")) - before
                        row["stored_in_redis"] = stored
                        row["lost"] = max(0, row["created_201"] - stored)
                    rows.append(row)
        finally:
            for p in reversed(procs):
                p.terminate()
            for p in procs:
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
    bare = [r for r in rows if r["server"] == "bare XADD handler"]
    ours = [r for r in rows if r["server"] == "ethml serve"]
    mean = lambda rs, k: sum(r[k] for r in rs) / len(rs)  # noqa: E731
    summary = {
        "cpu": cpu_model(),
        "connections": args.connections,
        "seconds": args.seconds,
        "rows": rows,
        "ethml_rps": mean(ours, "requests_per_second"),
        "bare_rps": mean(bare, "requests_per_second"),
        "ratio": mean(ours, "requests_per_second") / mean(bare, "requests_per_second"),
        "ethml_per_cpu_second": mean(ours, "per_cpu_second"),
        "bare_per_cpu_second": mean(bare, "per_cpu_second"),
        "ratio_per_cpu_second": mean(ours, "per_cpu_second") / mean(bare, "per_cpu_second"),
        "ethml_p50_ms": mean(ours, "p50_ms"),
        "ethml_p99_ms": mean(ours, "p99_ms"),
        "lost": sum(r["lost"] for r in ours),
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(f"CPU: {summary['cpu']}; servers on CPU 0, wrk + Redis + anvil on CPU 1; {args.connections} connections")
    print(
        f"{'server':<18} {'round':>5} {'req/s':>9} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'201s':>8} "
        f"{'stored':>8} {'non-2xx':>8} {'server CPU':>10} {'req/CPU-s':>9}"
    )
    for r in rows:
        print(
            f"{r['server']:<18} {r['round']:>5} {r['requests_per_second']:>9.0f} {r['p50_ms']:>8.2f} "
            f"{r['p90_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['created_201']:>8} {r.get('stored_in_redis', '-'):>8} "
            f"{r['non_2xx']:>8} {r['server_cpu'] * 100:>9.0f}% {r['per_cpu_second']:>9.0f}"
        )
    print(
        f"ethml serve: {summary['ethml_rps']:.0f} req/s = {summary['ratio'] * 100:.0f} % of the bare handler's "
        f"{summary['bare_rps']:.0f}; p50 {summary['ethml_p50_ms']:.2f} ms, p99 {summary['ethml_p99_ms']:.2f} ms; "
        f"lost: {summary['lost']}"
    )
    print(
        f"per second of server CPU: {summary['ethml_per_cpu_second']:.0f} vs {summary['bare_per_cpu_second']:.0f} "
        f"= {summary['ratio_per_cpu_second'] * 100:.0f} %"
    )


if __name__ == "__main__":
    main()
