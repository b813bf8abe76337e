"""Load on `POST /api/tasks` against a bare aiohttp handler doing one Redis XADD, side by side in one run.

Both servers run pinned to CPU 0; the load generator (wrk, Debian's `wrk` package) runs on CPU 1,
with Redis and anvil beside it. Each request to `ethml serve` is the real thing, as the API takes it
now: a task on terms its requester signed (EIP-712 TaskTerms, parametersVersion included) with an
EIP-2612 permit of the reward. Per request the server looks up the API key (cached), validates the
body with the schema (spec, CIDs, addresses, amounts, periods, the test set against its commitment,
the permit's owner, value and deadline, the terms' expiry), recomputes the spec's CID from its
canonical JSON, checks the terms against the market's rules (read from TrainingTasks at most every
10 s), recovers the signer of the terms digest and then of the permit digest (two secp256k1
recoveries) and compares each with the requester, and finally takes a token of the rate limit
(limits set high enough not to refuse) and stores the task and queues it for the relayer in one
Redis script. The relayer is off (`--no-relay`) so the figure is the API's; the follower,
dispatcher and metrics loops run as usual. The bare handler reads the body and XADDs it to a
stream; both run on uvloop with the same garbage-collector settings. Rounds alternate between the
two; each line is one wrk run.

Every request to `ethml serve` is a distinct, valid body: the server does not refuse a reused terms
nonce (the chain does, when the relayer sends the task), but a benchmark posting the same terms
again would measure duplicates. So each body has its own requester (a key derived from the body's
number), signing terms nonce 0 and a permit with token nonce 0: every body would also be acceptable
on chain in any order, whichever of them wrk gets to post. Each ethml round gets a fresh pool of
`--seconds x --max-rate` bodies, signed before the round starts; a round that would post more
requests than its pool fails the run (raise `--max-rate`). The bare handler cycles one pool of 2,000.

The run FAILS (exit status 1, with the reason) when fewer than 99 % of ethml serve's responses in
any round (the warm-up included) are 201s: a body the API refuses measures the refusal path, not
the API. It also fails when a 201 is missing from Redis: after each ethml round the tasks in Redis
are counted, and every 201 must be there (a request in flight when wrk stops may have been stored
without wrk seeing its 201, so the count may exceed the 201s by at most the number of connections).

    python benchmarks/coordinator_load.py [--seconds 10] [--connections 32] [--rounds 2] [--max-rate 6000]
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coincurve import PrivateKey
from web3 import AsyncHTTPProvider, AsyncWeb3

from ethml.chain import DEV_MNEMONIC, EML, Parameters, deploy_system, dev_account
from ethml.coordinator.permit import PermitDomain, checksum_address
from ethml.coordinator.redis_server import redis_executable
from ethml.coordinator.schemas import commitment_hex
from ethml.devnet import AnvilNotFound, find_anvil
from ethml.pow import keccak256
from ethml.pow.tune import cpu_model
from ethml.training import parse_spec
from ethml.training.flow import spec_cid
from ethml.training.rules import MarketRules, read_rules
from ethml.training.terms import Terms, TermsDomain, min_score_units

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
repeated = 0
function setup(thread) threads[#threads + 1] = thread end
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("ETHML_BENCH_KEY")
function init(args)
  for line in io.lines(os.getenv("ETHML_BENCH_BODIES")) do bodies[#bodies + 1] = line end
end
function request()
  i = i + 1
  if i > #bodies then repeated = repeated + 1 end
  return wrk.format(nil, nil, nil, bodies[(i - 1) % #bodies + 1])
end
function response(status, headers, body)
  if status == 201 then created = created + 1 end
end
function done(summary, latency, requests)
  local total, again = 0, 0
  for _, t in ipairs(threads) do
    total = total + t:get("created")
    again = again + t:get("repeated")
  end
  io.write(string.format("created %d\nrepeated %d\n", total, again))
end
"""


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


TEST_CID = "bafkreibm6jg3ux5qumhcn2b3flc3tyu6dmlb4xa7u5bf44yegnrjhc4yeq"


def anvil_or_exit() -> str:
    """Foundry's anvil, or the process ends with the reason it is not found."""
    try:
        return find_anvil()
    except AnvilNotFound as exc:
        sys.exit(f"error: {exc}")


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


@dataclass(frozen=True)
class Market:
    """What a body is signed for: the permit's domain (chain, EML, TrainingTasks) and the market's rules."""

    permits: PermitDomain
    rules: MarketRules

    @property
    def terms(self) -> TermsDomain:
        return TermsDomain(self.permits.chain_id, self.permits.spender)


SPEC = parse_spec(
    {
        "target": "target",
        "features": [f"f{i}" for i in range(13)],
        "estimator": {"name": "RandomForestClassifier", "params": {"n_estimators": 25}},
        "metric": "accuracy",
    }
)
DATASET_CID = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"


def bodies(market: Market, first: int, count: int, expiry: int, *, permit: bool = True) -> list[str]:
    """Task bodies number `first` to `first + count - 1` of the current API, each from its own
    requester (key: keccak of the body's number) with terms nonce 0 and permit nonce 0, a fresh
    test-set salt, signed with coincurve over the same digests the server checks (the body is the
    shape `ethml.coordinator.client.task_body` builds; libsecp256k1 signs in ~50 us where the
    typed-data signer takes milliseconds). With permit=False the bodies carry no permit (a requester
    that approved EML beforehand): one signature to check instead of two."""
    spec_json, spec_cid_ = SPEC.model_dump(mode="json"), spec_cid(SPEC)
    validations, min_score, seconds = 3, 0.8, max(market.rules.min_period, min(3600, market.rules.max_period))
    reward = max(10 * EML, market.rules.min_reward(validations))
    out = []
    for n in range(first, first + count):
        key = PrivateKey(keccak256(b"ethml load benchmark requester" + n.to_bytes(8, "big")))
        requester = checksum_address("0x" + keccak256(key.public_key.format(compressed=False)[1:])[12:].hex())
        salt = "0x" + os.urandom(32).hex()
        commitment = commitment_hex(TEST_CID, salt)
        terms = Terms.for_spec(
            SPEC,
            dataset_cid=DATASET_CID,
            spec_cid=spec_cid_,
            test_set_commitment=bytes.fromhex(commitment[2:]),
            reward=reward,
            submit_period=seconds,
            score_period=seconds,
            validations=validations,
            min_score=min_score_units(min_score),
            parameters_version=market.rules.version,
        )
        signature = key.sign_recoverable(market.terms.digest(terms, requester, 0, expiry), hasher=None)
        signed_permit = key.sign_recoverable(market.permits.digest(requester, reward, 0, expiry), hasher=None)
        body = {
            "spec": spec_json,
            "spec_cid": spec_cid_,
            "dataset_cid": DATASET_CID,
            "test_set_commitment": commitment,
            "test_set": {"cid": TEST_CID, "salt": salt},
            "reward": str(reward),
            "validations": validations,
            "min_score": min_score,
            "submit_seconds": seconds,
            "score_seconds": seconds,
            "trainers": 2,
            "requester": requester,
            "nonce": 0,
            "parameters_version": market.rules.version,
            "expiry": expiry,
            "signature": "0x" + signature[:64].hex() + bytes([signature[64] + 27]).hex(),
        }
        if permit:
            body["permit"] = {
                "owner": requester,
                "value": str(reward),
                "nonce": 0,
                "deadline": expiry,
                "v": signed_permit[64] + 27,
                "r": "0x" + signed_permit[:32].hex(),
                "s": "0x" + signed_permit[32:64].hex(),
            }
        out.append(json.dumps(body, separators=(",", ":")))
    return out


def refusals(row: dict[str, Any], url: str, env: dict[str, str]) -> list[str]:
    """Why an ethml round does not measure the API: under 99 % of its responses accepted (201; the
    server's answer to one body of the round's pool, posted again, says why), or bodies posted twice
    (the round outran its pool)."""
    out = []
    where = f"round {row['round']}"
    share = row["created_201"] / max(row["requests"], 1)
    if share < 0.99:
        with open(env["ETHML_BENCH_BODIES"]) as f:
            body = f.readline().strip()
        answer = subprocess.run(
            ["curl", "-s", "-w", " (HTTP %{http_code})", "-X", "POST", "-H", "Content-Type: application/json",
             "-H", f"Authorization: Bearer {env['ETHML_BENCH_KEY']}", "--data-binary", body, url],
            capture_output=True, text=True, check=False,
        ).stdout  # fmt: skip
        out.append(
            f"{where}: ethml serve accepted only {row['created_201']:,} of {row['requests']:,} responses "
            f"({share:.1%}; {row['non_2xx']:,} non-2xx), so the figures are not the API's; the server's "
            f"answer to the round's first body: {answer[:600]}"
        )
    if row["repeated_bodies"]:
        out.append(f"{where}: {row['repeated_bodies']:,} requests reused a body: raise --max-rate")
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
    repeated = int(re.search(r"repeated (\d+)", out).group(1))  # type: ignore[union-attr]
    return {
        "requests_per_second": rps,
        "requests": total,
        "created_201": created,
        "repeated_bodies": repeated,
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": errors.group(1) if errors else "",
        "p50_ms": ms("50"),
        "p90_ms": ms("90"),
        "p99_ms": ms("99"),
    }


async def deploy(rpc: str, path: Path) -> Market:
    w3 = AsyncWeb3(AsyncHTTPProvider(rpc))
    dep = await deploy_system(w3, dev_account(0), parameters=Parameters())
    dep.save(path)
    rules = await read_rules(w3, dep)
    await w3.provider.disconnect()  # type: ignore[attr-defined]
    assert dep.training is not None
    return Market(PermitDomain(dep.chain_id, dep.token, dep.training), rules)


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
    ap.add_argument(
        "--max-rate",
        type=int,
        default=6000,
        help="requests/s an ethml round may reach: each round gets seconds x this many distinct bodies",
    )
    ap.add_argument(
        "--also-without-permit",
        action="store_true",
        help="a third target in each round: ethml serve taking bodies without a permit (one signature to "
        "check, for a requester that approved EML beforehand)",
    )
    ap.add_argument("--json", action="store_true")
    ap.add_argument(
        "--profile",
        metavar="FILE",
        help="run ethml serve under cProfile and write its profile here (for `python -m pstats`); "
        "profiling slows the server, so such a run's figures are not the benchmark's",
    )
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("error: the load generator is wrk (apt-get install wrk)")
    anvil = anvil_or_exit()
    procs: list[subprocess.Popen[bytes]] = []
    failures: list[str] = []
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
            market = asyncio.run(deploy(rpc, tmp / "deployment.json"))
            expiry = int(time.time()) + 3600 + 4 * args.rounds * args.seconds
            signed = 0  # bodies made so far: the next one's number

            def pool(name: str, count: int, permit: bool = True) -> dict[str, str]:
                nonlocal signed
                path = tmp / f"{name}.txt"
                path.write_text("\n".join(bodies(market, signed, count, expiry, permit=permit)) + "\n")
                signed += count
                return {"ETHML_BENCH_BODIES": str(path)}

            bare_bodies = pool("bare", 2000)
            lua = tmp / "post.lua"
            lua.write_text(WRK_SCRIPT)
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
                        *(["-m", "cProfile", "-o", str(Path(args.profile).resolve())] if args.profile else []),
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
            auth = {"ETHML_BENCH_KEY": key}
            # Warm up both (connection pools, caches), then alternate.
            run_wrk(f"http://127.0.0.1:{bare_port}/api/tasks", 2, args.connections, lua, {**auth, **bare_bodies})
            serve_url = f"http://127.0.0.1:{serve_port}/api/tasks"
            env = {**auth, **pool("warm", 2 * args.max_rate)}
            warm = run_wrk(serve_url, 2, args.connections, lua, env)
            warm.update(round="warm-up")
            failures += refusals(warm, serve_url, env)
            rows = []
            # (name, port, process, bodies: None for the bare handler's pool, else with a permit or not)
            targets = [("bare XADD handler", bare_port, bare_proc, None), ("ethml serve", serve_port, procs[-1], True)]
            if args.also_without_permit:
                targets.append(("  without permit", serve_port, procs[-1], False))
            for r in range(args.rounds):
                for name, port, proc, permit in targets:
                    is_serve = permit is not None
                    # A fresh pool of distinct bodies for each ethml round, signed before it starts.
                    slug = f"round{r + 1}-{'permit' if permit else 'no-permit'}"
                    fresh = pool(slug, args.seconds * args.max_rate, permit) if permit is not None else bare_bodies
                    env = {**auth, **fresh}
                    before = int(redis_cli(sock, "ZCARD", "ethml:tasks"))
                    cpu0, wall0 = cpu_seconds(proc.pid), time.monotonic()
                    row = run_wrk(f"http://127.0.0.1:{port}/api/tasks", args.seconds, args.connections, lua, env)
                    row["server_cpu"] = (cpu_seconds(proc.pid) - cpu0) / (time.monotonic() - wall0)
                    # Requests per second of the server's own CPU time: steadier than requests/s on a
                    # machine where other processes take part of the server's core.
                    row["per_cpu_second"] = row["requests_per_second"] / max(row["server_cpu"], 1e-9)
                    row.update(server=name, round=r + 1)
                    if is_serve:
                        time.sleep(0.5)
                        stored = int(redis_cli(sock, "ZCARD", "ethml:tasks")) - before
                        row["stored_in_redis"] = stored
                        row["lost"] = max(0, row["created_201"] - stored)
                        failures += refusals(row, serve_url, env)
                        if row["lost"]:
                            failures.append(f"round {r + 1}: {row['lost']} tasks answered 201 are not in Redis")
                    rows.append(row)
                    if is_serve:
                        Path(env["ETHML_BENCH_BODIES"]).unlink()
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
    single = [r for r in rows if r["server"] == "  without permit"]

    def mean(rs: list[dict[str, Any]], k: str) -> float:
        return float(sum(r[k] for r in rs) / len(rs))

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
        "lost": sum(r["lost"] for r in ours + single),
        "without_permit": None
        if not single
        else {
            "rps": mean(single, "requests_per_second"),
            "ratio": mean(single, "requests_per_second") / mean(bare, "requests_per_second"),
            "per_cpu_second": mean(single, "per_cpu_second"),
            "ratio_per_cpu_second": mean(single, "per_cpu_second") / mean(bare, "per_cpu_second"),
            "p99_ms": mean(single, "p99_ms"),
        },
        "failures": failures,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        report(summary)
    if failures:
        print("FAILED: ethml serve's figures are not those of accepted tasks:", file=sys.stderr)
        for line in failures:
            print(f"  {line}", file=sys.stderr)
        sys.exit(1)


def report(summary: dict[str, Any]) -> None:
    rows = summary["rows"]
    print(
        f"CPU: {summary['cpu']}; servers on CPU 0, wrk + Redis + anvil on CPU 1; {summary['connections']} connections"
    )
    print(
        f"{'server':<18} {'round':>5} {'req/s':>9} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'201s':>8} "
        f"{'stored':>8} {'non-2xx':>8} {'accepted':>8} {'server CPU':>10} {'req/CPU-s':>9}"
    )
    for r in rows:
        print(
            f"{r['server']:<18} {r['round']:>5} {r['requests_per_second']:>9.0f} {r['p50_ms']:>8.2f} "
            f"{r['p90_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['created_201']:>8} {r.get('stored_in_redis', '-'):>8} "
            f"{r['non_2xx']:>8} {r['created_201'] / max(r['requests'], 1):>8.1%} {r['server_cpu'] * 100:>9.0f}% "
            f"{r['per_cpu_second']:>9.0f}"
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
    single = summary["without_permit"]
    if single:
        print(
            f"without a permit (one signature): {single['rps']:.0f} req/s = {single['ratio'] * 100:.0f} %; "
            f"per second of server CPU {single['per_cpu_second']:.0f} = {single['ratio_per_cpu_second'] * 100:.0f} %; "
            f"p99 {single['p99_ms']:.2f} ms"
        )


if __name__ == "__main__":
    main()
