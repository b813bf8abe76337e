# ruff: noqa: E501 - the table of hostile requests reads best one case a line
"""The REST API against bad input, missing rights and floods: every rejection a 4xx JSON body that names
the field, never a 500, nothing stored; two instances on one Redis share tasks and rate limits; the
OpenAPI document is generated and schemathesis finds no 500 and no response outside it."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import positive_data_acceptance

from ethml.chain import EML, dev_account
from ethml.coordinator.client import sign_permit, task_body
from tests.conftest import free_port
from tests.coordinator.conftest import REQUESTER, Coordinator, coordinator_on
from tests.coordinator.test_flow import chain_now, wine_spec
from tests.node.conftest import wait_until

CID = "bafkreibm6jg3ux5qumhcn2b3flc3tyu6dmlb4xa7u5bf44yegnrjhc4yeq"


def _valid(c: Coordinator, now: int, **changes: Any) -> dict[str, Any]:
    public = b"a,b,target\n1,2,0\n"
    body = task_body(
        dev_account(REQUESTER),
        c.domain,
        spec=wine_spec(public),
        dataset_cid=CID,
        test_cid=CID,
        reward=5 * EML,
        permit_nonce=0,
        now=now,
    )
    for path, value in changes.items():
        target = body
        *parents, leaf = path.split(".")
        for p in parents:
            target = target[p]
        if value is ...:
            del target[leaf]
        else:
            target[leaf] = value
    return body


async def test_hostile_requests_get_a_4xx_naming_the_field_and_store_nothing(coordinator: Coordinator) -> None:
    c = coordinator
    key = await c.requester_key()
    now = await chain_now(c)
    # Signed by another key than the owner it names.
    forged_permit = {
        **sign_permit(dev_account(3), c.domain, 5 * EML, 0, now + 3600),
        "owner": dev_account(REQUESTER).address,
    }
    cases: list[tuple[str, str, str | None, Any, int, str | None, str]] = [
        # method, path, key, body, status, field, words in the message
        ("POST", "/api/tasks", None, _valid(c, now), 401, None, "API key is required"),
        ("POST", "/api/tasks", "eml_forged", _valid(c, now), 401, None, "unknown API key"),
        ("POST", "/api/keys", key, {"name": "x", "role": "admin"}, 403, None, "admin role"),
        ("GET", "/api/workers", key, None, 403, None, "admin role"),
        ("DELETE", "/api/workers/w1", key, None, 403, None, "admin role"),
        ("POST", "/api/tasks", key, b"{not json", 400, None, "not JSON"),
        ("POST", "/api/tasks", key, [1, 2], 422, None, "JSON object"),
        ("POST", "/api/tasks", key, _valid(c, now, spec=...), 422, "spec", "required"),
        ("POST", "/api/tasks", key, _valid(c, now, bogus=1), 422, "bogus", "not permitted"),
        ("POST", "/api/tasks", key, _valid(c, now, **{"spec.estimator.name": "os.system"}), 422, "spec.estimator", "not allowed"),
        ("POST", "/api/tasks", key, _valid(c, now, reward="12abc"), 422, "reward", "decimal"),
        ("POST", "/api/tasks", key, _valid(c, now, reward="0"), 422, "reward", "greater than or equal to 1"),
        ("POST", "/api/tasks", key, _valid(c, now, reward=str(2**96)), 422, "reward", "less than or equal"),
        ("POST", "/api/tasks", key, _valid(c, now, dataset_cid="bafy-not-a-cid-at-all-but-long-enough-to-pass-length"), 422, "dataset_cid", "CID"),
        ("POST", "/api/tasks", key, _valid(c, now, **{"permit.s": "0x12"}), 422, "permit.s", "pattern"),
        ("POST", "/api/tasks", key, _valid(c, now, **{"permit.owner": "0xAbCd" + "0" * 36}), 422, "permit.owner", "checksum"),
        ("POST", "/api/tasks", key, _valid(c, now, permit=forged_permit), 422, "permit", "does not recover"),
        ("POST", "/api/tasks", key, _valid(c, now, **{"permit.value": str(6 * EML)}), 422, None, "permit.value must equal reward"),
        ("POST", "/api/tasks", key, _valid(c, now, submit_deadline=now - 10), 422, None, "submit_deadline"),
        ("POST", "/api/tasks", key, _valid(c, now, validations_required=10), 422, "validations_required", "less than or equal to 9"),
        ("POST", "/api/tasks", key, _valid(c, now, **{"test_set.salt": "0x" + "00" * 32}), 422, None, "does not match"),
        ("POST", "/api/tasks", key, {"x": "a" * 70_000}, 413, None, "over 65536 bytes"),
        ("POST", "/api/tasks/import", key, {"chain_task_id": 999}, 404, "chain_task_id", "no task 999"),
        ("POST", "/api/tasks/import", key, {"chain_task_id": -1}, 422, "chain_task_id", "greater than or equal to 1"),
        ("GET", "/api/tasks?status=bogus", None, None, 422, "status", "one of"),
        ("GET", "/api/tasks?limit=0", None, None, 422, "limit", "1..200"),
        ("GET", "/api/tasks?cursor=abc", None, None, 422, "cursor", "number"),
        ("GET", "/api/tasks/nope", None, None, 404, "task_id", "no task nope"),
        ("POST", "/api/files", None, None, 401, None, "API key"),
        ("POST", "/api/keys", c.admin_key, {"name": "../../etc", "role": "requester"}, 422, "name", "pattern"),
    ]  # fmt: skip
    for method, path, who, body, status, field, words in cases:
        raw = body if isinstance(body, bytes) else (json.dumps(body).encode() if body is not None else None)
        got, reply, headers = await c.api(method, path, key=who, raw=raw)
        assert got == status, (method, path, words, reply)
        assert headers["Content-Type"].startswith("application/json"), (path, headers)
        error = reply["error"]
        assert error["status"] == status and words in error["message"], (path, error)
        assert error["field"] == field, (path, error)
    status, page, _ = await c.api("GET", "/api/tasks")
    assert status == 200 and page == {"tasks": [], "next_cursor": None}  # nothing was stored


async def test_two_instances_share_tasks_and_one_rate_limit(anvil_url: str, tmp_path: Path) -> None:
    async with coordinator_on(anvil_url, tmp_path) as c:
        _first, url_a = await c.start_server(key_rate=0.01, key_burst=6)  # a token every 100 s: no refill
        socket = c.root / "server" / "coordinator" / "redis" / "redis.sock"
        _second, url_b = await c.start_server(
            key_rate=0.01, key_burst=6, redis_url=f"unix://{socket}", data_dir=c.root / "second", relay=False
        )
        key = await c.requester_key()
        now = await chain_now(c)
        body = _valid(c, now)
        status, created, _ = await c.api("POST", "/api/tasks", key=key, body=body, url=url_b)
        assert status == 201, created
        status, seen, _ = await c.api("GET", created["location"], url=url_a)
        assert status == 200 and seen["id"] == created["id"]  # posted to b, seen by a
        # The burst of 6 is shared: one request went already; five more pass, alternating; then 429.
        statuses = []
        for i in range(8):
            url = url_a if i % 2 else url_b
            got, reply, headers = await c.api("GET", "/api/workers", key=key, url=url)  # 403, but counted
            statuses.append(got)
            if got == 429:
                assert int(headers["Retry-After"]) >= 1 and reply["error"]["message"] == "rate limit exceeded"
        assert statuses[:5] == [403] * 5 and statuses[5:] == [429] * 3, statuses
        status, page, _ = await c.api("GET", "/api/tasks", url=url_a)
        assert [t["id"] for t in page["tasks"]] == [created["id"]]
        await wait_until(lambda: _status_is(c, created["id"], "open", url_b), timeout=60, what="relayed by a")


async def _status_is(c: Coordinator, task_id: str, wanted: str, url: str) -> bool:
    _status, doc, _ = await c.api("GET", f"/api/tasks/{task_id}", url=url)
    return bool(doc["status"] == wanted)


def test_schemathesis_finds_no_server_error_and_no_response_outside_the_schema(anvil_url: str, tmp_path: Path) -> None:
    """`ethml serve` as a real process; schemathesis generates requests from /api/openapi.json."""

    async def deploy() -> Path:
        async with coordinator_on(anvil_url, tmp_path) as c:
            return c.deployment_file

    deployment = asyncio.run(deploy())
    port = free_port()
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ethml", "serve", "--rpc-url", anvil_url, "--deployment", str(deployment),
         "--data-dir", str(tmp_path / "serve"), "--port", str(port), "--key-rate", "10000", "--key-burst", "10000",
         "--ip-rate", "10000", "--ip-burst", "10000"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ},
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        admin_file = tmp_path / "serve" / "coordinator" / "admin.key"
        deadline = time.monotonic() + 90
        while not admin_file.exists() or not _answers(base):
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, "ethml serve did not start"
            time.sleep(0.2)
        request = urllib.request.Request(
            base + "/api/keys",
            data=json.dumps({"name": "fuzz", "role": "requester"}).encode(),
            headers={"Authorization": "Bearer " + admin_file.read_text().strip(), "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request) as response:
            key = json.loads(response.read())["key"]
        schema = schemathesis.openapi.from_url(base + "/api/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        assert {f"{op.method.upper()} {op.path}" for op in operations} >= {
            "POST /api/tasks", "GET /api/tasks", "GET /api/tasks/{task_id}", "POST /api/tasks/import",
            "POST /api/keys", "GET /api/workers", "GET /healthz",
        }  # fmt: skip
        for op in operations:

            @settings(
                max_examples=25,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                derandomize=True,
            )
            @given(case=op.as_strategy())
            def check(case: Any) -> None:
                # Every check but "schema-valid data is accepted": a permit's signature, deadlines relative to
                # the clock and the estimators' parameter bounds are beyond what a JSON Schema can say.
                case.call_and_validate(
                    base_url=base,
                    headers={"Authorization": f"Bearer {key}"},
                    excluded_checks=[positive_data_acceptance],
                )

            check()
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert "Traceback" not in (tmp_path / "serve.log").read_text()


def _answers(base: str) -> bool:
    try:
        with urllib.request.urlopen(base + "/healthz", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False
