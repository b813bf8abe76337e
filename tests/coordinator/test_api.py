# ruff: noqa: E501 - the table of hostile requests reads best one case a line
"""The REST API against bad input, missing rights and floods: every rejection a 4xx JSON body that names
the field, never a 500, nothing stored; two instances on one Redis share tasks and rate limits; the
OpenAPI document is generated and schemathesis finds no 500 and no response outside it."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import gzip
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import schemathesis
import structlog
from hypothesis import HealthCheck, assume, given, settings
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from ethml.chain import EML, Deployment, dev_account, send
from ethml.coordinator import edge
from ethml.coordinator.appkeys import CHAIN, CONFIG, IPFS, PENDING, STORE, UPLOADS
from ethml.coordinator.client import import_body, sign_permit, task_body
from ethml.coordinator.permit import SECP256K1_N, PermitDomain
from ethml.coordinator.redis_server import socket_path
from ethml.coordinator.routes import files as files_route
from ethml.coordinator.schemas import MAX_FILE_BYTES
from ethml.coordinator.uploads import MAX_FAILED_BODIES, MAX_UPLOADS_PER_KEY
from ethml.ipfs.cid import parse_cid
from ethml.ipfs.unixfs import build_file
from ethml.training.spec import TaskSpec
from ethml.training.terms import Terms, TermsDomain, min_score_units, sign_terms
from ethml.training.trainer import submission_commitment
from tests.conftest import free_port
from tests.coordinator.conftest import REQUESTER, TRAINERS, Coordinator, coordinator_on
from tests.coordinator.test_flow import chain_now, wine_spec
from tests.node.conftest import wait_until

CID = "bafkreibm6jg3ux5qumhcn2b3flc3tyu6dmlb4xa7u5bf44yegnrjhc4yeq"


@dataclass
class Raw:
    """A body sent as is, with this Content-Type ("" for none)."""

    body: bytes
    content_type: str


def _import(c: Coordinator, chain_task_id: int = 1, trainers: int = 2, signer: int = REQUESTER) -> dict[str, Any]:
    """A body of POST /api/tasks/import signed by dev account `signer` (the requester of `_valid`'s tasks)."""
    return import_body(dev_account(signer), c.domain, chain_task_id, trainers)


def _valid(c: Coordinator, now: int, n: int = 0, **changes: Any) -> dict[str, Any]:
    """A valid body (the requester's `n`-th task: terms and permit nonces n), then `changes` made to it
    after signing: dotted paths, `...` to delete."""
    public = b"a,b,target\n1,2,0\n"
    body = task_body(
        dev_account(REQUESTER),
        c.domain,
        spec=wine_spec(public),
        dataset_cid=CID,
        test_cid=CID,
        reward=5 * EML,
        terms_nonce=n,
        permit_nonce=n,
        parameters_version=1,  # a fresh deployment's first parameters
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


def _signed_zero_commitment(c: Coordinator, now: int) -> dict[str, Any]:
    """A valid body whose terms, signed as they are, commit to a test set with 0: the contract refuses them
    (`BadTerm(TestSetCommitment)`), and the relayer would have found so only after accepting the task."""
    body = _valid(c, now, test_set=...)
    terms = Terms.for_spec(
        TaskSpec.model_validate(body["spec"]),
        dataset_cid=body["dataset_cid"],
        spec_cid=body["spec_cid"],
        test_set_commitment=bytes(32),
        reward=int(body["reward"]),
        submit_period=body["submit_seconds"],
        score_period=body["score_seconds"],
        validations=body["validations"],
        min_score=min_score_units(body["min_score"]),
        parameters_version=body["parameters_version"],
    )
    domain = TermsDomain(c.domain.chain_id, c.domain.spender)
    signature = sign_terms(dev_account(REQUESTER).key, domain, terms, body["nonce"], body["expiry"])
    return {**body, "test_set_commitment": "0x" + "0" * 64, "signature": "0x" + signature.hex()}


async def test_hostile_requests_get_a_4xx_naming_the_field_and_store_nothing(anvil_url: str, tmp_path: Path) -> None:
    async with coordinator_on(anvil_url, tmp_path) as c:
        await c.start_server(key_burst=200)  # every case below takes a token from the key's bucket
        await _hostile_requests(c)


async def test_header_bytes_that_are_not_utf8_get_a_401_not_a_500(anvil_url: str, tmp_path: Path) -> None:
    """aiohttp reads a header's bytes that are not UTF-8 as lone surrogates, which have no encoding: an API key
    or a worker's upload token sent so was hashed or put in a Redis key, and the request failed with a 500 and
    a traceback, before any rate limit. Such a key or token is unknown (every one given out is ASCII): a 401,
    as any unknown key gets, after the rate limit."""
    async with coordinator_on(anvil_url, tmp_path) as c:
        _runner, url = await c.start_server()
        port = int(url.rsplit(":", 1)[1])

        async def raw(request: bytes) -> tuple[bytes, bytes]:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(), 60)  # (Connection: close)
            writer.close()
            head, _, body = answer.partition(b"\r\n\r\n")
            return head.split(b"\r\n")[0], body

        cases = [
            (b"GET /api/workers", b"Authorization: Bearer \xff\xfe", b"unknown API key"),
            (b"GET /api/workers", b"X-API-Key: \xff", b"unknown API key"),
            (b"POST /api/keys", b"Authorization: Bearer \xc3\x28", b"unknown API key"),
            (b"POST /api/files", b"X-Worker-Token: \xff", b"unknown worker upload token"),
            (
                b"POST /api/files",
                b"X-Worker-Token: \xff\r\nAuthorization: Bearer " + c.admin_key.encode() + b"\xff",
                b"unknown API key",
            ),
        ]
        for line, header, words in cases:
            request = (
                line + b" HTTP/1.1\r\nHost: x\r\n" + header + b"\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
            )
            status, body = await raw(request)
            assert status.startswith(b"HTTP/1.1 401"), (header, status, body)
            assert words in body and json.loads(body)["error"], (header, body)
        # The key as given out still works.
        status, _, _ = await c.api("GET", "/api/workers", key=c.admin_key)
        assert status == 200


#: Requests aiohttp's parser refuses, each with words its reason must carry.
UNPARSABLE = [
    (b"GE T /api/tasks HTTP/1.1\r\nHost: x\r\n\r\n", "Invalid method"),
    (b"GET /api/tasks HTTP/1.1\r\nHost: x\r\nHo st: x\r\n\r\n", "Invalid header token"),
    (b"GET /api/tasks HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 9000 + b"\r\n\r\n", "Got more than 8190 bytes"),
    (b"POST /api/tasks HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", "Content-Length"),
    (b"POST /api/tasks HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "chunk size"),
    (
        b"POST /api/tasks HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
        "Transfer-Encoding can't be present with Content-Length",
    ),
    (b"GET /api/tasks HTTP/9.1\r\nHost: x\r\n\r\n", "Invalid HTTP version"),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", "HTTPS traffic on an HTTP port"),
    (b"GET /api/tasks\x00 HTTP/1.1\r\nHost: x\r\n\r\n", "Invalid char in url"),
]


async def test_requests_the_parser_refuses_get_the_one_error_style(anvil_url: str, tmp_path: Path) -> None:
    """A request that aiohttp's own parser refuses (a bad method, header, length, chunk or version, TLS on the
    plain port) never reaches a route or the middleware: aiohttp answered it with its reason as plain text,
    while the docs promise one JSON error style on every path. Each is now a JSON 400 quoting the parser's
    reason on one line, the connection closed, and counted in /metrics under the route `malformed`."""
    async with coordinator_on(anvil_url, tmp_path) as c:
        _runner, url = await c.start_server()
        port = int(url.rsplit(":", 1)[1])
        for request, words in UNPARSABLE:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(), 60)  # everything, until the server closes
            writer.close()
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.0 400 ") or head.startswith(b"HTTP/1.1 400 "), (request[:40], answer)
            assert b"Content-Type: application/json" in head, (request[:40], answer)
            error = json.loads(body)["error"]
            assert error["status"] == 400 and error["field"] is None, error
            message = error["message"]
            assert message.startswith("malformed HTTP request: ") and words in message, (request[:40], message)
            assert "\n" not in message and "^" not in message and len(message) <= 330, message
        async with aiohttp.ClientSession() as session, session.get(url + "/metrics") as response:
            metrics = await response.text()
        counted = f'ethml_http_requests_total{{route="malformed",status="400"}} {float(len(UNPARSABLE))}'
        assert counted in metrics, [line for line in metrics.splitlines() if "malformed" in line]
        status, page, _ = await c.api("GET", "/api/tasks")  # the server goes on as before
        assert status == 200 and page["tasks"] == []


async def _exchange(port: int, request: bytes) -> tuple[bytes, bytes]:
    """One request on a connection of its own: the answer's head and its body (none for a HEAD's)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
        length = next(
            (int(line[15:]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), 0
        )
        body = b"" if request.startswith(b"HEAD ") else await asyncio.wait_for(reader.readexactly(length), 60)
        return head, body
    finally:
        writer.close()


async def test_expectations_heads_and_transfer_codings_are_answered_in_the_one_error_style(
    anvil_url: str, tmp_path: Path
) -> None:
    """Found by an outside review. An `Expect` other than 100-continue on a route without a body (or on no route)
    was answered by aiohttp before any middleware, in plain text and uncounted; a HEAD of the event stream was
    answered with the endless stream (a proxy's health check would read the events as its next answer); and a
    body sent `Transfer-Encoding: gzip, chunked` was stored packed, as if it were the file."""
    async with coordinator_on(anvil_url, tmp_path) as c:
        _runner, url = await c.start_server()
        key = await c.requester_key()
        port = int(url.rsplit(":", 1)[1])
        for path in (b"/api/tasks", b"/healthz", b"/nowhere", b"/api/files"):
            head, body = await _exchange(port, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nExpect: nope\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 417 ") and b"Content-Type: application/json" in head, (path, head)
            assert json.loads(body)["error"] == {"status": 417, "message": "unknown Expect: nope", "field": None}
        head, _ = await _exchange(port, b"HEAD /api/dashboard/events HTTP/1.1\r\nHost: x\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 405 ") and b"Allow: GET" in head, head
        head, _ = await _exchange(port, b"HEAD /api/dashboard HTTP/1.1\r\nHost: x\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 "), head  # a HEAD of an ordinary answer is still one
        packed = gzip.compress(b"a file" * 100)
        head, body = await _exchange(
            port,
            b"POST /api/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + key.encode()
            + b"\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
            + b"%x\r\n" % len(packed) + packed + b"\r\n0\r\n\r\n",
        )  # fmt: skip
        assert head.startswith(b"HTTP/1.1 501 "), head
        assert "not with Transfer-Encoding gzip" in json.loads(body)["error"]["message"], body
        async with aiohttp.ClientSession() as session, session.get(url + "/metrics") as response:
            metrics = await response.text()
        assert 'ethml_http_requests_total{route="malformed",status="417"} 4.0' in metrics


async def test_the_public_dashboard_and_the_log_name_no_rpc_url_whole(
    anvil_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found by an outside review: when the oracle's read failed, the public dashboard showed the error's text,
    which for an RPC provider's HTTP error is aiohttp's and names the endpoint's URL whole, its key in the path
    (every 2 s on the event stream too); and log lines carried it as well. Now the dashboard says the oracle
    could not be read, and every URL in a log line is cut to its host."""
    from ethml._logging import configure_logging
    from ethml.coordinator.routes import dashboard

    secret = "http://rpc.example:8545/v3/SECRETKEY123?apikey=OTHERSECRET"

    async def failing(*_args: Any, **_kwargs: Any) -> Any:
        sent = aiohttp.RequestInfo(URL(secret), "POST", CIMultiDictProxy(CIMultiDict()), URL(secret))
        raise aiohttp.ClientResponseError(sent, (), status=429, message="Too Many Requests")

    saved = structlog.get_config()
    monkeypatch.setattr(dashboard, "oracle_status", failing)
    try:
        configure_logging("json")
        async with coordinator_on(anvil_url, tmp_path) as c:
            await c.start_server()
            status, snapshot, _ = await c.api("GET", "/api/dashboard")
            assert status == 200 and "SECRETKEY123" not in json.dumps(snapshot), snapshot["oracle"]
            assert snapshot["oracle"] == {
                "error": "the oracle could not be read from the chain RPC (logged by the server)"
            }
            structlog.get_logger("t").warning("rpc_failed", error=f"429, url='{secret}'", url=secret)
    finally:
        structlog.configure(**saved)
    logged = capsys.readouterr().err
    assert "dashboard_oracle_unreadable" in logged and "rpc.example:8545" in logged, logged[-2000:]
    assert "SECRETKEY123" not in logged and "OTHERSECRET" not in logged, logged[-2000:]


async def _hostile_requests(c: Coordinator) -> None:
    key = await c.requester_key()
    now = await chain_now(c)
    # Signed by another key than the owner it names.
    forged_permit = {
        **sign_permit(dev_account(3), c.domain, 5 * EML, 0, now + 3600),
        "owner": dev_account(REQUESTER).address,
    }
    # The requester's own signatures, with v flipped (recovers another key) or as the malleable twin
    # (s -> n - s with v flipped: the same key to a bare ecrecover, refused by OpenZeppelin's ECDSA).
    valid = _valid(c, now)
    permit, signature = valid["permit"], valid["signature"]
    flipped_permit = {**permit, "v": 55 - permit["v"]}
    twin_permit = {**permit, "s": f"0x{SECP256K1_N - int(permit['s'], 16):064x}", "v": 55 - permit["v"]}
    other_v = {"1b": "1c", "1c": "1b"}[signature[-2:]]
    flipped_signature = signature[:-2] + other_v
    twin_signature = f"{signature[:66]}{SECP256K1_N - int(signature[66:130], 16):064x}{other_v}"
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
        ("POST", "/api/tasks", key, _signed_zero_commitment(c, now), 422, "test_set_commitment", "must not be 0"),
        ("POST", "/api/tasks", key, _valid(c, now, reward="0"), 422, "reward", "greater than or equal to 1"),
        ("POST", "/api/tasks", key, _valid(c, now, reward=str(2**96)), 422, "reward", "less than or equal"),
        ("POST", "/api/tasks", key, _valid(c, now, dataset_cid="bafy-not-a-cid-at-all-but-long-enough-to-pass-length"), 422, "dataset_cid", "CID"),
        ("POST", "/api/tasks", key, _valid(c, now, **{"permit.s": "0x12"}), 422, "permit.s", "pattern"),
        ("POST", "/api/tasks", key, _valid(c, now, **{"permit.owner": "0xAbCd" + "0" * 36}), 422, "permit.owner", "checksum"),
        ("POST", "/api/tasks", key, _valid(c, now, permit=forged_permit), 422, "permit", "does not recover"),
        ("POST", "/api/tasks", key, _valid(c, now, permit=flipped_permit), 422, "permit", "does not recover"),
        ("POST", "/api/tasks", key, _valid(c, now, permit=twin_permit), 422, "permit", "does not recover"),
        ("POST", "/api/tasks", key, _valid(c, now, signature=flipped_signature), 422, "signature", "does not recover the requester"),
        ("POST", "/api/tasks", key, _valid(c, now, signature=twin_signature), 422, "signature", "does not recover the requester"),
        ("POST", "/api/tasks", key, _valid(c, now, **{"permit.value": str(6 * EML)}), 422, None, "permit.value must equal reward"),
        ("POST", "/api/tasks", key, _valid(c, now, **{"permit.owner": dev_account(3).address}), 422, None, "permit.owner must be the requester"),
        ("POST", "/api/tasks", key, _valid(c, now, expiry=now - 10), 422, None, "expiry must be at least 120 s from now"),
        # Terms (or a permit) too close to their end: a creation sent then may be mined after it, and revert.
        ("POST", "/api/tasks", key, _valid(c, now, expiry=int(time.time()) + 30), 422, None, "expiry must be at least 120 s from now"),
        ("POST", "/api/tasks", key, _valid(c, now, **{"permit.deadline": int(time.time()) + 30}), 422, None, "permit.deadline must be at least 120 s from now"),
        ("POST", "/api/tasks", key, _valid(c, now, submit_seconds=0), 422, "submit_seconds", "greater than or equal to 1"),
        ("POST", "/api/tasks", key, _valid(c, now, validations=10), 422, "validations", "less than or equal to 9"),
        ("POST", "/api/tasks", key, _valid(c, now, validations=2), 422, None, "validations must be odd"),
        # Signed terms: a term changed after signing (as a relayer would) does not recover the requester.
        ("POST", "/api/tasks", key, _valid(c, now, submit_seconds=7200), 422, "signature", "does not recover the requester"),
        ("POST", "/api/tasks", key, _valid(c, now, min_score=0.5), 422, "signature", "does not recover the requester"),
        ("POST", "/api/tasks", key, _valid(c, now, requester=dev_account(3).address, **{"permit": ...}), 422, "signature", "does not recover the requester"),
        ("POST", "/api/tasks", key, _valid(c, now, nonce=1), 422, "signature", "does not recover the requester"),
        ("POST", "/api/tasks", key, _valid(c, now, signature="0x12"), 422, "signature", "pattern"),
        ("POST", "/api/tasks", key, _valid(c, now, spec_cid=CID), 422, "spec_cid", "not the CID of the spec"),
        ("POST", "/api/tasks", key, _valid(c, now, **{"test_set.salt": "0x" + "00" * 32}), 422, None, "does not match"),
        ("POST", "/api/tasks", key, {"x": "a" * 70_000}, 413, None, "over 65536 bytes"),
        ("POST", "/api/tasks/import", key, {"chain_task_id": 999}, 404, "chain_task_id", "no task 999"),
        ("POST", "/api/tasks/import", key, {"chain_task_id": -1}, 422, "chain_task_id", "greater than or equal to 1"),
        ("GET", "/api/tasks?status=bogus", None, None, 422, "status", "one of"),
        ("GET", "/api/tasks?limit=0", None, None, 422, "limit", "1..200"),
        ("GET", "/api/tasks?cursor=abc", None, None, 422, "cursor", "next_cursor"),
        ("GET", "/api/tasks/nope", None, None, 404, "task_id", "no task nope"),
        ("POST", "/api/files", None, None, 401, None, "API key"),
        ("POST", "/api/keys", c.admin_key, {"name": "../../etc", "role": "requester"}, 422, "name", "pattern"),
        # Query and path parameters: every limit the schema states is enforced, bad input is never a 503.
        ("GET", "/api/tasks?cursor=nan", None, None, 422, "cursor", "next_cursor"),
        ("GET", "/api/tasks?cursor=inf", None, None, 422, "cursor", "next_cursor"),
        ("GET", "/api/tasks?cursor=1e400", None, None, 422, "cursor", "next_cursor"),
        ("GET", "/api/tasks?cursor=" + "1" * 97, None, None, 422, "cursor", "at most 96 characters"),
        ("GET", "/api/tasks?cursor=1.5:" + "a" * 65, None, None, 422, "cursor", "next_cursor"),
        ("GET", "/api/tasks?cursor=1.5:a/b", None, None, 422, "cursor", "next_cursor"),
        ("GET", "/api/tasks?cursor=", None, None, 422, "cursor", "next_cursor"),
        ("GET", "/api/tasks?limit=%D9%A3", None, None, 422, "limit", "1..200"),  # an Arabic-Indic 3
        ("GET", "/api/tasks?limit=1e2", None, None, 422, "limit", "1..200"),
        ("GET", "/api/tasks?status=", None, None, 422, "status", "one of"),
        ("GET", "/api/tasks/" + "a" * 65, None, None, 422, "task_id", "1-64"),
        ("GET", "/api/tasks/a%00b", None, None, 422, "task_id", "1-64"),
        ("DELETE", "/api/workers/" + "w" * 65, c.admin_key, None, 422, "worker_id", "1-64"),
        ("DELETE", "/api/workers/w%E2%80%AEx", c.admin_key, None, 422, "worker_id", "1-64"),
        ("DELETE", "/api/workers/w1?address=0x12", c.admin_key, None, 422, "address", "0x-address"),
        ("DELETE", "/api/workers/w1?address=" + "0x" + "a" * 40, c.admin_key, None, 404, "worker_id", "no connected"),
        # Methods, content types.
        ("PUT", "/api/tasks", key, None, 405, None, "Method Not Allowed"),
        ("DELETE", "/api/keys", c.admin_key, None, 405, None, "Method Not Allowed"),
        # Outside /api too: one error style (these were text/plain bodies).
        ("DELETE", "/metrics", None, None, 405, None, "Method Not Allowed"),
        ("POST", "/healthz", None, None, 405, None, "Method Not Allowed"),
        ("PUT", "/", None, None, 405, None, "Method Not Allowed"),
        ("GET", "/nope", None, None, 404, None, "Not Found"),
        ("GET", "/ws/worker", None, None, 400, None, "WebSocket"),  # no handshake: aiohttp's reason kept
        ("POST", "/api/tasks", key, Raw(json.dumps(_valid(c, now)).encode(), "text/plain"), 415, None, "application/json"),
        ("POST", "/api/tasks", key, Raw(json.dumps(_valid(c, now)).encode(), ""), 415, None, "application/json"),
        ("POST", "/api/tasks", key, Raw(json.dumps(_valid(c, now)).encode(), "application/json; charset=latin-1"), 415, None, "UTF-8"),
        ("POST", "/api/keys", c.admin_key, Raw(b'{"name": "x"}', "application/x-www-form-urlencoded"), 415, None, "application/json"),
        ("POST", "/api/tasks", key, Raw(b'{"spec": ' + b"[" * 300 + b"]" * 300 + b"}", "application/json"), 400, None, "recursion limit exceeded"),
        # JSON the parser cannot hold: said as such (this was "not JSON (or nests deeper than 200 levels)").
        ("POST", "/api/tasks", key, Raw(b'{"reward": ' + b"9" * 5000 + b"}", "application/json"), 400, None, "number out of range at line 1"),
        # Strict types: a JSON value of the wrong type is refused, never converted.
        ("POST", "/api/tasks", key, _valid(c, now, validations=True), 422, "validations", "valid integer"),
        ("POST", "/api/tasks", key, _valid(c, now, nonce="0"), 422, "nonce", "valid integer"),
        ("POST", "/api/tasks", key, _valid(c, now, trainers=True), 422, "trainers", "valid integer"),
        ("POST", "/api/tasks", key, _valid(c, now, min_score=True), 422, "min_score", "valid number"),
        ("POST", "/api/tasks", key, _valid(c, now, min_score="0.8"), 422, "min_score", "valid number"),
        ("POST", "/api/tasks", key, _valid(c, now, **{"permit.nonce": "0"}), 422, "permit.nonce", "valid integer"),
        ("POST", "/api/tasks", key, _valid(c, now, **{"spec.version": True}), 422, "spec.version", "not a boolean"),
        ("POST", "/api/tasks", key, _valid(c, now, **{"permit.v": 27.5}), 422, "permit.v", "valid integer"),
        ("POST", "/api/tasks", key, _valid(c, now, **{"spec.estimator.params": {"n_estimators": True}}), 422, "spec.estimator.params.n_estimators", "valid number"),
        ("POST", "/api/tasks/import", key, {"chain_task_id": "1"}, 422, "chain_task_id", "valid integer"),
        ("POST", "/api/tasks/import", key, {"chain_task_id": 1, "signature": "0x12"}, 422, "signature", "pattern"),
        ("POST", "/api/tasks/import", key, {"chain_task_id": 1, "signature": 1}, 422, "signature", "valid string"),
        ("POST", "/api/keys", c.admin_key, {"name": "x", "role": 1}, 422, "role", "'requester' or 'admin'"),
        # Strings: bounded, and no NUL, control, invisible or bidirectional-override characters.
        ("POST", "/api/tasks", key, _valid(c, now, **{"spec.features": ["a", "b\x00"]}), 422, "spec.features.1", "control"),
        ("POST", "/api/tasks", key, _valid(c, now, **{"spec.features": ["a\x1b[31mred", "b"]}), 422, "spec.features.0", "control"),
        ("POST", "/api/tasks", key, _valid(c, now, **{"spec.features": ["a", "\u202egnp.exe"]}), 422, "spec.features.1", "bidirectional"),
        ("POST", "/api/tasks", key, _valid(c, now, **{"spec.features": ["a", "b\u200bc"]}), 422, "spec.features.1", "invisible"),
        ("POST", "/api/tasks", key, _valid(c, now, **{"spec.target": "\u2067target"}), 422, "spec.target", "bidirectional"),
        ("POST", "/api/tasks", key, _valid(c, now, **{"spec.features": ["a", "f" * 50_000]}), 422, "spec.features.1", "at most 64 characters"),
        ("POST", "/api/keys", c.admin_key, {"name": "x\u202ey", "role": "requester"}, 422, "name", "pattern"),
    ]  # fmt: skip
    for method, path, who, body, status, field, words in cases:
        content_type = None
        if isinstance(body, Raw):
            raw, content_type = body.body, body.content_type
        else:
            raw = body if isinstance(body, bytes) else (json.dumps(body).encode() if body is not None else None)
        got, reply, headers = await c.api(method, path, key=who, raw=raw, content_type=content_type)
        assert got == status, (method, path, words, reply)
        assert headers["Content-Type"].startswith("application/json"), (path, headers)
        error = reply["error"]
        assert error["status"] == status and words in error["message"], (path, error)
        assert error["field"] == field, (path, error)
        if status == 405:
            assert headers.get("Allow"), (path, headers)  # the methods the path does allow
    status, page, _ = await c.api("GET", "/api/tasks")
    assert status == 200 and page == {"tasks": [], "next_cursor": None}  # nothing was stored
    _, _, headers = await c.api("PUT", "/api/tasks", key=key)
    assert set(headers["Allow"].replace(" ", "").split(",")) >= {"GET", "POST"}, headers


async def test_two_instances_share_tasks_and_one_rate_limit(anvil_url: str, tmp_path: Path) -> None:
    async with coordinator_on(anvil_url, tmp_path) as c:
        _first, url_a = await c.start_server(key_rate=0.01, key_burst=6)  # a token every 100 s: no refill
        socket = socket_path(c.root / "server" / "coordinator" / "redis")
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


async def _upload(
    url: str, data: bytes, headers: Any, *, chunked: bool = False, path: str = "/api/files"
) -> tuple[int, Any, Any]:
    """POST /api/files (or `path`) with these headers (a mapping or a list of pairs, a name repeated as sent),
    as application/octet-stream unless they say otherwise; `chunked` sends the body without a Content-Length."""
    sent = CIMultiDict(headers)
    sent.setdefault("Content-Type", "application/octet-stream")

    async def chunks() -> Any:
        for i in range(0, len(data), 65536):
            yield data[i : i + 65536]

    async with (
        aiohttp.ClientSession() as session,
        session.post(
            url + path,
            data=chunks() if chunked else data,
            headers=sent,
        ) as response,
    ):
        return response.status, await response.json(content_type=None), response.headers


async def test_each_uploader_has_an_hourly_quota_and_the_disk_keeps_a_free_floor(
    anvil_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each requester's API key may add --upload-quota MiB per hour, with or without a Content-Length; past
    it, 429 with Retry-After and nothing stored. Another uploader is not held back and an admin key is not
    counted. An upload that would leave the disk less than --min-free-disk free gets 507 with Retry-After,
    nothing stored, whoever sends it. (A worker's uploads: the test below.)"""
    async with coordinator_on(anvil_url, tmp_path) as c:
        runner, url = await c.start_server(upload_quota_mib=1.0)
        app = runner.app
        assert app is not None
        blocks = app[IPFS].blockstore
        key, other = await c.requester_key(), await c.requester_key()
        part = 600 * 1024  # two of them are over the quota of 1 MiB

        async def refused(headers: dict[str, str], chunked: bool = False) -> None:
            before = len(blocks)
            status, reply, answer = await _upload(url, os.urandom(part), headers, chunked=chunked)
            assert status == 429 and int(answer["Retry-After"]) >= 1, reply
            assert "upload quota exceeded: 1 MiB per hour per uploader" in reply["error"]["message"], reply
            assert len(blocks) == before

        async def added(headers: dict[str, str], chunked: bool = False) -> None:
            status, reply, _ = await _upload(url, os.urandom(part), headers, chunked=chunked)
            assert status == 201 and reply["size"] == part and blocks.has(parse_cid(reply["cid"])), reply

        await added({"Authorization": f"Bearer {key}"})
        await refused({"Authorization": f"Bearer {key}"})
        await refused({"Authorization": f"Bearer {key}"}, chunked=True)
        # A compressed body is refused as such (415), before the quota it would exceed is looked at.
        status, reply, _ = await _upload(
            url, os.urandom(part), {"Authorization": f"Bearer {key}", "Content-Encoding": "gzip"}
        )
        assert status == 415, reply
        await added({"Authorization": f"Bearer {other}"})
        for _ in range(3):
            await added({"Authorization": f"Bearer {c.admin_key}"})
        # A body without a Content-Length is charged as the largest file (here the whole quota) until it has
        # arrived, then what it was.
        fresh = {"Authorization": f"Bearer {await c.requester_key()}"}
        await added(fresh, chunked=True)
        status, reply, _ = await _upload(url, os.urandom(300 * 1024), fresh)
        assert status == 201, reply
        status, reply, _ = await _upload(url, os.urandom(1000), fresh, chunked=True)
        assert status == 429 and "a body without a Content-Length is charged" in reply["error"]["message"], reply

        # A compressed body is refused: its size says nothing of what it unpacks to (16 MiB from 16 KiB).
        # Every Content-Encoding header is read, each a list: a second one, or a second coding, is refused too.
        packed = gzip.compress(bytes(16 * 2**20))
        before = len(blocks)
        encodings = [["gzip"], ["identity", "gzip"], ["", "deflate"], ["identity, GZip"], ["gzip", "identity"]]
        for path, kind in (("/api/files", "application/octet-stream"), ("/api/tasks", "application/json")):
            for codings in encodings:
                headers = [("Authorization", f"Bearer {key}"), ("Content-Type", kind)]
                headers += [("Content-Encoding", coding) for coding in codings]
                status, reply, answer = await _upload(url, packed, headers, path=path)
                assert status == 415 and answer["Accept-Encoding"] == "identity", (codings, reply)
                assert "not with Content-Encoding " in reply["error"]["message"], reply
        assert len(blocks) == before
        status, reply, _ = await _upload(url, packed, {"Authorization": f"Bearer {c.admin_key}"})
        assert status == 201 and reply["size"] == len(packed), reply  # bytes as sent are taken as they are

        # A full disk: 507 for everyone, and it costs no one its quota. (The disk's free space is fixed here: the
        # real one changes with whatever else runs on the machine.)
        third = await c.requester_key()
        usage = shutil.disk_usage(blocks.root)
        app[CONFIG].min_free_disk_mib = usage.free / 2**20 + 1
        before = len(blocks)
        with monkeypatch.context() as patched:
            patched.setattr(files_route, "disk_usage", lambda _path: usage)
            for headers in ({"Authorization": f"Bearer {c.admin_key}"}, {"Authorization": f"Bearer {third}"}):
                for chunked in (False, True, False):
                    status, reply, answer = await _upload(url, os.urandom(part), headers, chunked=chunked)
                    assert status == 507 and answer["Retry-After"] == "300", reply
                    assert "the coordinator's disk is nearly full" in reply["error"]["message"], reply
        assert len(blocks) == before
        app[CONFIG].min_free_disk_mib = 0
        await added({"Authorization": f"Bearer {third}"})
        await refused({"Authorization": f"Bearer {third}"})


def _spooled(directory: Path) -> list[int]:
    """The sizes of this process's open files without a name in `directory`: upload bodies being spooled."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith(f"{directory}/") and target.endswith(" (deleted)"):
                found.append(os.stat(f"/proc/self/fd/{fd}").st_size)
    return found


def _full_disk(directory: Path) -> Any:
    """A spool file on a disk that has filled up (Linux's /dev/full): a write that reaches it fails, so a large
    body fails as it arrives and a small one at the flush of what was buffered."""
    return open("/dev/full", "w+b")


def _no_room(data: bytes, cid_version: int = 0) -> Any:
    raise OSError(errno.ENOSPC, "No space left on device")


def _fail(error: int) -> Any:
    raise OSError(error, os.strerror(error))


def _post_blocking(url: str, data: bytes, key: str) -> tuple[int, Any]:
    """POST /api/files from a thread, the body sent from `data` itself (no copy in this process)."""
    request = urllib.request.Request(
        url + "/api/files",
        data=data,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/octet-stream"},
    )
    with urllib.request.urlopen(request, timeout=300) as response:
        return response.status, json.loads(response.read())


async def test_upload_bodies_wait_on_disk_not_in_memory(
    anvil_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bodies arriving at once are spooled to disk as they come, not held in memory: eight 4 MiB uploads,
    every body received and none written yet, take less than half their 32 MiB of Python memory (traced;
    only the writer threads' files are in memory). Each is then stored, and once stored they hold less than
    one file's worth. No spooled body outlives its request, one whose client hangs up mid-body included."""
    async with coordinator_on(anvil_url, tmp_path) as c:
        runner, url = await c.start_server()
        app = runner.app
        assert app is not None
        uploads, ipfs, data_dir = app[UPLOADS], app[IPFS], app[CONFIG].data_dir
        size, count = 4 * 2**20, 8
        files = [os.urandom(size) for _ in range(count)]
        release = threading.Event()
        add_bytes = ipfs.add_bytes

        def held(data: bytes, cid_version: int = 0) -> Any:
            release.wait(300)
            return add_bytes(data, cid_version)

        ipfs.add_bytes = held  # type: ignore[method-assign]

        async def received() -> bool:  # every body in its spool file (two of them held by the writer threads)
            return sorted(_spooled(data_dir)) == [size] * count

        loop = asyncio.get_running_loop()
        thresholds = gc.get_threshold()
        gc.set_threshold(20_000, 20, 20)  # as `ethml serve` runs: a full collection comes rarely
        tracemalloc.start()
        try:
            # A thread per client: the event loop's default pool has fewer threads than clients on 2 cores.
            with ThreadPoolExecutor(count) as clients:
                before = tracemalloc.get_traced_memory()[0]
                posts = [loop.run_in_executor(clients, _post_blocking, url, f, c.admin_key) for f in files]
                try:
                    await wait_until(received, timeout=240, what="every body received")
                    taken = tracemalloc.get_traced_memory()[0] - before
                finally:
                    release.set()
                results = await asyncio.gather(*posts)
            left = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
            gc.set_threshold(*thresholds)
        assert taken < count * size / 2, f"{taken / 2**20:.1f} MiB held for {count} bodies of {size / 2**20:g} MiB"
        # Stored, the files leave nothing behind: not even the garbage that holds them (`Uploads._collect`).
        assert left < size, f"{left / 2**20:.1f} MiB left after {count} files of {size / 2**20:g} MiB were stored"
        for data, (status, reply) in zip(files, results, strict=True):
            assert status == 201 and reply["cid"] == str(build_file(data, 1)[0]), reply
            assert ipfs.blockstore.has(parse_cid(reply["cid"]))

        # A disk that fills up while a body arrives (at a write, or at the last flush) or while its file is
        # written: 507, nothing stored.
        key, before_blocks = await c.requester_key(), len(ipfs.blockstore)

        async def disk_full(data: bytes, chunked: bool = False) -> None:
            status, reply, answer = await _upload(url, data, {"Authorization": f"Bearer {key}"}, chunked=chunked)
            assert status == 507 and answer["Retry-After"] == "300", reply
            assert reply["error"]["message"] == "the coordinator's disk is full; the file was not stored", reply

        with monkeypatch.context() as patched:
            patched.setattr(edge, "spool", _full_disk)
            for data in (files[0], b"a small file"):
                for chunked in (False, True):
                    await disk_full(data, chunked)
        with monkeypatch.context() as patched:
            patched.setattr(ipfs, "add_bytes", _no_room)
            await disk_full(files[0])
        assert len(ipfs.blockstore) == before_blocks

        # Bodies still arriving count against the disk's floor from before they are read (their Content-Length);
        # a client that hangs up mid-body takes its spooled part and its count with it.
        host, port = url.removeprefix("http://").split(":")

        async def arriving(bearer: str, sent: int = size // 4) -> asyncio.StreamWriter:
            _reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(
                f"POST /api/files HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {bearer}\r\n"
                f"Content-Type: application/octet-stream\r\nContent-Length: {size}\r\n\r\n".encode()
                + bytes(sent)
            )
            await writer.drain()
            return writer

        def spooling(*sizes: int) -> Callable[[], Awaitable[bool]]:
            async def check() -> bool:
                return sorted(_spooled(data_dir)) == sorted(sizes)

            return check

        async def idle() -> bool:
            return not _spooled(data_dir) and uploads.in_flight == uploads.spooled == 0 and not uploads.per_key

        writer = await arriving(c.admin_key)
        await wait_until(spooling(size // 4), timeout=60, what="the body spooled")
        assert uploads.in_flight == size
        writer.close()
        await wait_until(idle, timeout=60, what="the cut-off body's spool file closed and its count gone")

        # ... but once: the bytes already in a spool file are not counted again beside its Content-Length. On a
        # disk whose free space is what the spool files leave, with room above the floor for the arriving file
        # and one more of `size`, that one is stored and one a byte larger is refused.
        base, usage = 64 * 2**30, shutil.disk_usage(data_dir)
        with monkeypatch.context() as patched:
            patched.setattr(
                files_route, "disk_usage", lambda _path: usage._replace(free=base - sum(_spooled(data_dir)))
            )
            app[CONFIG].min_free_disk_mib = (base - 2 * size) / 2**20
            writer = await arriving(c.admin_key, size - 1)
            await wait_until(spooling(size - 1), timeout=60, what="the body all but spooled")
            status, reply, answer = await _upload(url, files[1] + b"!", {"Authorization": f"Bearer {c.admin_key}"})
            assert status == 507 and "disk is nearly full" in reply["error"]["message"], reply
            status, reply, _ = await _upload(url, files[1], {"Authorization": f"Bearer {c.admin_key}"})
            assert status == 201, reply
            writer.close()
            await wait_until(idle, timeout=60, what="the cut-off body's spool file closed and its count gone")
            app[CONFIG].min_free_disk_mib = 0

        # One API key has at most MAX_UPLOADS_PER_KEY uploads in progress: the next gets 429, another key's goes on.
        writers = [await arriving(key) for _ in range(MAX_UPLOADS_PER_KEY)]
        await wait_until(spooling(*[size // 4] * MAX_UPLOADS_PER_KEY), timeout=60, what="every body spooling")
        status, reply, answer = await _upload(url, b"one more", {"Authorization": f"Bearer {key}"})
        assert status == 429 and answer["Retry-After"] == "5", reply
        assert f"this API key has {MAX_UPLOADS_PER_KEY} uploads in progress" in reply["error"]["message"], reply
        status, reply, _ = await _upload(url, b"another key", {"Authorization": f"Bearer {c.admin_key}"})
        assert status == 201, reply
        for writer in writers:
            writer.close()
        await wait_until(idle, timeout=60, what="the cut-off bodies' spool files closed and their counts gone")
        status, reply, _ = await _upload(url, b"one more", {"Authorization": f"Bearer {key}"})
        assert status == 201, reply


async def test_a_worker_uploads_only_the_artifact_its_submission_committed_to(
    anvil_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any staked account gets an upload token by logging in as a worker, so a token alone adds nothing: the
    upload carries the opening of the account's commitment to a task this coordinator tracks (X-Task and the
    X-Artifact-* headers, as the trainer will reveal it), the opening must match the commitment TrainingTasks
    holds, and the body must be that very file. Malformed or repeated headers, or a claim the reveal would
    refuse: 422; no commitment, another task, another account's opening, a wrong salt or claim: 403; another
    body: 422, and after five bodies in an hour that were not stored no more are read that hour (403); each with
    nothing stored. The committed file again: 200 without its body being read, once every block is stored
    (not for a planted root). An artifact may use the lower half of the disk's floor, which a
    requester's upload may not."""
    async with coordinator_on(anvil_url, tmp_path) as c:
        runner, url = await c.start_server()
        app = runner.app
        assert app is not None
        store, blocks, chain, pending = app[STORE], app[IPFS].blockstore, app[CHAIN], app[PENDING].blocks
        key = await c.requester_key()
        task = await _relayed_task(c, url, key)
        trainer, other = dev_account(TRAINERS[0]), dev_account(TRAINERS[1])
        token, other_token = await store.new_upload_token(trainer.address), await store.new_upload_token(other.address)

        def artifact(size: int) -> dict[str, Any]:
            data = os.urandom(size)
            return {
                "data": data,
                "X-Artifact-Cid": str(build_file(data, 1)[0]),
                "X-Artifact-Sha256": hashlib.sha256(data).hexdigest(),
                "X-Artifact-Claim": "900000",
                "X-Artifact-Salt": os.urandom(32).hex(),
            }

        def headers_of(a: dict[str, Any], who: str, task_id: Any = task, **changes: str) -> dict[str, str]:
            sent = {name: value for name, value in a.items() if name.startswith("X-")}
            return {"X-Worker-Token": who, "X-Task": str(task_id), **sent, **changes}

        async def upload(data: bytes, headers: Any, status: int, words: str = "", **kw: Any) -> Any:
            before = len(blocks), len(pending)
            got, reply, _ = await _upload(url, data, headers, **kw)
            assert got == status, (headers, reply)
            if status not in (200, 201):
                assert words in reply["error"]["message"], reply
            if status != 201:
                assert (len(blocks), len(pending)) == before
            return reply

        mine, theirs, junk = artifact(3 * 2**20), artifact(2**20), artifact(2**20)
        third = dev_account(TRAINERS[2])
        third_token = await store.new_upload_token(third.address)
        data = mine["data"]
        # Malformed, missing or repeated: 422 before anything else.
        await upload(data, {"X-Worker-Token": token}, 422, "X-Task is missing")
        for name, bad in (
            ("X-Task", "x"), ("X-Task", "0"), ("X-Task", "1" + "0" * 20), ("X-Task", "\u0661"), ("X-Task", "-1"),
            ("X-Artifact-Cid", "not-a-cid"), ("X-Artifact-Sha256", "ab"), ("X-Artifact-Claim", "1.5"),
            ("X-Artifact-Salt", "0x" + "g" * 64),
        ):  # fmt: skip
            await upload(data, headers_of(mine, token, **{name: bad}), 422, f"{name} must be")
        twice = [*headers_of(mine, token).items(), ("X-Task", str(task))]
        await upload(data, twice, 422, "X-Task is sent more than once")
        # Before any commitment, or a task this coordinator does not track: 403.
        await upload(data, headers_of(mine, token), 403, "has committed no submission to task")
        await upload(data, headers_of(mine, token, task + 1), 403, f"task {task + 1} is not a task of this coordinator")

        for who, a in ((trainer, mine), (other, theirs), (third, junk)):
            commitment = submission_commitment(
                task, who.address, a["X-Artifact-Cid"], bytes.fromhex(a["X-Artifact-Sha256"]), 900_000,
                bytes.fromhex(a["X-Artifact-Salt"]),
            )  # fmt: skip
            await send(chain.w3, who, chain.tasks.functions.commitSubmission(task, commitment))
        # Committed: only the opening of the account's own commitment, with that very body.
        await upload(data, headers_of(mine, other_token), 403, "do not open")  # another account's opening
        await upload(data, headers_of(mine, token, **{"X-Artifact-Claim": "900001"}), 403, "do not open")
        await upload(data, headers_of(mine, token, **{"X-Artifact-Salt": "11" * 32}), 403, "do not open")
        await upload(os.urandom(len(data)), headers_of(mine, token), 422, "its SHA-256 differs")
        await upload(theirs["data"], headers_of(mine, token), 422, "its SHA-256 differs")
        # A claim the chain would refuse at the reveal (above 1,000,000, or below the task's minimum): 422.
        await upload(data, headers_of(mine, token, **{"X-Artifact-Claim": "1000001"}), 422, "could never be revealed")
        # Bodies that do not end in the artifact stored (another file, one too large): five an hour are read, then
        # no more that hour for that submission, even the right one.
        for _ in range(4):
            await upload(os.urandom(2**20), headers_of(junk, third_token), 422, "its SHA-256 differs")
        too_large = os.urandom(MAX_FILE_BYTES + 1)
        await upload(too_large, headers_of(junk, third_token), 413, "", chunked=True)
        await upload(junk["data"], headers_of(junk, third_token), 403, "no more are read this hour")
        # A block at the artifact's digest is no proof the artifact is stored: a requester's one-block file whose
        # bytes are the root node of the artifact (training is deterministic: anyone may compute it) is not taken
        # for it, and the worker's body is read and stored.
        _root, dag = build_file(data, 1)
        planted = await upload(dag[-1].data, {"Authorization": f"Bearer {key}"}, 201)
        assert parse_cid(planted["cid"]).digest == parse_cid(mine["X-Artifact-Cid"]).digest
        reply = await upload(data, headers_of(mine, token), 201)
        assert all(pending.has(block.cid) for block in dag)  # kept apart until the chain decides on its reveal
        assert reply == {"cid": mine["X-Artifact-Cid"], "size": len(data)} and pending.has(parse_cid(reply["cid"]))
        # Stored already: answered without the body (3 MiB declared, none sent: nothing is read).
        again = [*headers_of(mine, token).items(), ("Content-Length", str(len(data)))]
        assert await upload(b"", again, 200) == reply
        assert await upload(data, headers_of(mine, token), 200) == reply

        # The disk's floor: an artifact may go down to half of it; a requester may not go below it. (The disk's
        # free space is fixed from here: the real one changes with whatever else runs on the machine.)
        usage = shutil.disk_usage(blocks.root)
        free = usage.free
        monkeypatch.setattr(files_route, "disk_usage", lambda _path: usage)
        app[CONFIG].min_free_disk_mib = free * 3 / 2**20
        for chunked in [False, True] * 3:  # the server's lack of room is not counted against the worker; a body
            # without a Content-Length is counted as the largest file, and refused before it is read
            await upload(theirs["data"], headers_of(theirs, other_token), 507, "disk is nearly full", chunked=chunked)
        assert (await store.failed_artifact_bodies(task, other.address))[0] == 0
        app[CONFIG].min_free_disk_mib = 0
        with monkeypatch.context() as patched:  # nor is a disk that fills up while the body arrives
            patched.setattr(edge, "spool", _full_disk)
            for chunked in [False, True] * 3:
                await upload(theirs["data"], headers_of(theirs, other_token), 507, "disk is full", chunked=chunked)
        with monkeypatch.context() as patched:  # or while its file is written, or a disk that fails otherwise
            for error in [errno.ENOSPC, errno.EIO] * 3:
                patched.setattr(app[PENDING], "add", lambda *_args, error=error: _fail(error))
                words = "disk is full" if error == errno.ENOSPC else "disk failed to take the file"
                await upload(
                    theirs["data"], headers_of(theirs, other_token), 507 if error == errno.ENOSPC else 503, words
                )
        assert (await store.failed_artifact_bodies(task, other.address))[0] == 0
        assert (await store.failed_artifact_bodies(task, third.address))[0] == MAX_FAILED_BODIES
        app[CONFIG].min_free_disk_mib = free * 1.5 / 2**20
        await upload(os.urandom(2**20), {"Authorization": f"Bearer {key}"}, 507, "disk is nearly full")
        await upload(theirs["data"], headers_of(theirs, other_token), 201, chunked=True)
        app[CONFIG].min_free_disk_mib = 0

        # A block with the committed CID's digest but of another kind (a requester's one-block file, a raw
        # block; the commitment names the dag-pb CIDv0 of the same digest) is not taken for the artifact.
        status, second, _ = await c.api("POST", "/api/tasks", key=key, body=_valid(c, await chain_now(c), 1))
        assert status == 201, second
        await wait_until(lambda: _status_is(c, second["id"], "open", url), timeout=60, what="relayed")
        doc = await store.task(second["id"])
        assert doc is not None
        small = os.urandom(1000)
        stored = await upload(small, {"Authorization": f"Bearer {key}"}, 201)
        v0 = parse_cid(stored["cid"]).set(base="base58btc", version=0, codec="dag-pb")
        decoy = {**artifact(0), "data": small, "X-Artifact-Cid": str(v0)}
        decoy["X-Artifact-Sha256"] = hashlib.sha256(small).hexdigest()
        commitment = submission_commitment(
            doc["chain_task_id"], trainer.address, str(v0), hashlib.sha256(small).digest(), 900_000,
            bytes.fromhex(decoy["X-Artifact-Salt"]),
        )  # fmt: skip
        await send(chain.w3, trainer, chain.tasks.functions.commitSubmission(doc["chain_task_id"], commitment))
        await upload(small, headers_of(decoy, token, doc["chain_task_id"]), 422, "added as a file it is")


async def test_uploads_in_flight_together_cannot_each_take_the_same_free_space(
    anvil_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The free-space check counts the bytes accepted and not yet written: eight 4 MiB uploads at once,
    with room for two above the floor and the disk slow to write, store two and refuse six with 507 (each
    seeing the same free space, all eight would be written)."""
    async with coordinator_on(anvil_url, tmp_path) as c:
        runner, url = await c.start_server(min_free_disk_mib=100)
        app = runner.app
        assert app is not None
        blocks, ipfs = app[IPFS].blockstore, app[IPFS]
        usage, data_dir = shutil.disk_usage(tmp_path), app[CONFIG].data_dir
        room = (100 + 10) * 2**20  # the floor and 10 MiB: two files of 4 MiB fit, three do not
        # What the disk has free: `room`, less what the bodies' spool files take of it as they arrive.
        monkeypatch.setattr(
            files_route, "disk_usage", lambda _path: usage._replace(free=room - sum(_spooled(data_dir)))
        )
        slow_disk, add = threading.Event(), ipfs.add_bytes

        def slow_add(data: bytes, version: int = 0) -> Any:
            assert slow_disk.wait(120)
            return add(data, version)

        monkeypatch.setattr(ipfs, "add_bytes", slow_add)
        headers = {"Authorization": f"Bearer {c.admin_key}"}
        uploads = [asyncio.create_task(_upload(url, os.urandom(4 * 2**20), headers)) for _ in range(8)]

        async def six_answered() -> bool:
            return sum(u.done() for u in uploads) == 6

        await wait_until(six_answered, timeout=120, what="six answers")
        assert app[UPLOADS].in_flight == 8 * 2**20
        slow_disk.set()
        answers = await asyncio.gather(*uploads)
        assert sorted(status for status, _reply, _ in answers) == [201] * 2 + [507] * 6, answers
        assert app[UPLOADS].in_flight == 0 and len(blocks) >= 2 * 16  # 256 KiB chunks and a root each


async def _relayed_task(c: Coordinator, url: str, key: str, n: int = 0) -> int:
    """Post the requester's `n`-th valid task with `key`; the on-chain id once it is relayed and open."""
    status, created, _ = await c.api("POST", "/api/tasks", key=key, body=_valid(c, await chain_now(c), n))
    assert status == 201, created
    await wait_until(lambda: _status_is(c, created["id"], "open", url), timeout=60, what="relayed")
    _status, doc, _ = await c.api("GET", f"/api/tasks/{created['id']}", url=url)
    return int(doc["chain_task_id"])


async def _status_is(c: Coordinator, task_id: str, wanted: str, url: str) -> bool:
    _status, doc, _ = await c.api("GET", f"/api/tasks/{task_id}", url=url)
    return bool(doc["status"] == wanted)


SCHEMATHESIS_CONFIG = Path(__file__).with_name("schemathesis.toml")
MALFORMED = [
    b"GARBAGE\r\n\r\n",
    b"GET /api/tasks HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n",
    b"GET /api/tasks HTTP/1.1\r\nHost: a\r\nX-Probe: \x00\r\n\r\n",
    b"POST /api/tasks HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"GET /api/tasks HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
]


@dataclass
class Served:
    """`ethml serve` as a real process, rate limits out of the way."""

    base: str
    port: int
    admin: str
    deployment: Deployment
    log: Path
    proc: subprocess.Popen[bytes]


@pytest.fixture
def served(anvil_url: str, tmp_path: Path) -> Iterator[Served]:
    async def deploy() -> Path:
        async with coordinator_on(anvil_url, tmp_path) as c:
            return c.deployment_file

    deployment = asyncio.run(deploy())
    port = free_port()
    log = tmp_path / "serve.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ethml", "serve", "--rpc-url", anvil_url, "--deployment", str(deployment),
         "--data-dir", str(tmp_path / "serve"), "--port", str(port), "--key-rate", "10000", "--key-burst", "10000",
         "--ip-rate", "10000", "--ip-burst", "10000"],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, env={**os.environ},
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        admin_file = tmp_path / "serve" / "coordinator" / "admin.key"
        deadline = time.monotonic() + 90
        while not admin_file.exists() or not _answers(base):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "ethml serve did not start"
            time.sleep(0.2)
        yield Served(base, port, admin_file.read_text().strip(), Deployment.load(deployment), log, proc)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert "shutdown_stuck" not in log.read_text()  # every loop stopped when told


def test_schemathesis_finds_nothing_and_malformed_requests_are_one_log_line(served: Served) -> None:
    """`schemathesis run` against /api/openapi.json with every check, positive and negative data, every
    phase (tests/coordinator/schemathesis.toml names the one check off for one operation, and why) finds
    nothing. Then malformed HTTP and clients hanging up mid-body: each is one log line, no traceback,
    never counted as a 503 (a hang-up is a 499)."""
    run = subprocess.run(
        [str(Path(sys.executable).with_name("schemathesis")), "--config-file", str(SCHEMATHESIS_CONFIG),
         "--no-color", "run", served.base + "/api/openapi.json", "-H", f"Authorization: Bearer {served.admin}",
         "--mode", "all", "--max-examples", "30", "--workers", "1", "--generation-deterministic"],
        capture_output=True, text=True, cwd=served.log.parent, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    generated = re.search(r"(\d+) generated", run.stdout)
    assert generated and int(generated.group(1)) > 300, run.stdout[-3000:]  # it did run
    for raw in MALFORMED:
        with socket.create_connection(("127.0.0.1", served.port), timeout=10) as s:
            s.sendall(raw)
            answer = s.recv(200)
            # A JSON 400, or closed (test_requests_the_parser_refuses_get_the_one_error_style reads the bodies).
            assert answer == b"" or (answer.startswith(b"HTTP/1.0 400") and b"application/json" in answer), answer
    for _ in range(3):  # clients that hang up mid-body
        with socket.create_connection(("127.0.0.1", served.port), timeout=10) as s:
            s.sendall(
                b"POST /api/tasks HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
                b"Authorization: Bearer " + served.admin.encode() + b'\r\nContent-Length: 5000\r\n\r\n{"spec"'
            )
            time.sleep(0.2)
    deadline = time.monotonic() + 60
    metrics = ""
    while 'route="/api/tasks",status="499"} 3.0' not in metrics:
        assert time.monotonic() < deadline, metrics
        with urllib.request.urlopen(served.base + "/metrics", timeout=10) as response:
            metrics = response.read().decode()
        time.sleep(0.1)
    assert 'status="503"' not in metrics and 'status="500"' not in metrics
    served.proc.terminate()
    served.proc.wait(timeout=20)
    text = served.log.read_text()
    assert "Traceback" not in text, text[-4000:]
    assert "backend_unavailable" not in text and "request_failed" not in text, text[-4000:]
    bad = [line for line in text.splitlines() if "bad_request" in line]
    assert len(bad) >= len(MALFORMED) - 1, text[-4000:]  # a bad method on a fresh connection is debug only


def test_a_spec_generated_from_the_schema_is_accepted(served: Served) -> None:
    """The OpenAPI schema carries the estimator allow-list, each estimator's parameters and bounds, and
    the metrics of each kind: a spec generated from it, in a body with real signed terms and a real permit,
    gets a 201."""
    schema = schemathesis.openapi.from_url(served.base + "/api/openapi.json")
    operation = next(
        op.ok()
        for op in schema.get_all_operations()
        if op.ok().method.upper() == "POST" and op.ok().path == "/api/tasks"
    )
    dep = served.deployment
    assert dep.training is not None
    domain = PermitDomain(dep.chain_id, dep.token, dep.training)
    estimators: set[str] = set()

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(case=operation.as_strategy())
    def posted(case: Any) -> None:
        spec = case.body["spec"]
        assume(spec["target"] not in spec["features"])  # the one rule of a spec no JSON Schema can state
        # The requester signs the terms of this spec: its CID and its model's shape.
        valid = task_body(
            dev_account(REQUESTER), domain, spec=TaskSpec.model_validate(spec), dataset_cid=CID, test_cid=CID,
            reward=5 * EML, terms_nonce=0, permit_nonce=0, parameters_version=1,
        )  # fmt: skip
        request = urllib.request.Request(
            served.base + "/api/tasks",
            data=json.dumps(valid).encode(),
            headers={"Authorization": f"Bearer {served.admin}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                assert response.status == 201
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{exc.code} {exc.read()!r} for the schema-valid spec {spec}") from None
        estimators.add(spec["estimator"]["name"])

    posted()
    assert len(estimators) >= 4, estimators  # the generator went through the allow-list


def _answers(base: str) -> bool:
    try:
        with urllib.request.urlopen(base + "/healthz", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


async def test_slow_bodies_get_a_408_and_their_connection_closed(anvil_url: str, tmp_path: Path) -> None:
    """Clients that send headers and a little of a body, then nothing (slowloris): each gets a 408 after
    the body timeout and its connection is closed, JSON routes and file uploads alike."""
    async with coordinator_on(anvil_url, tmp_path) as c:
        _runner, url = await c.start_server(body_timeout=1.0, file_timeout=2.0)
        key, other = await c.requester_key(), await c.requester_key()
        port = int(url.rsplit(":", 1)[1])

        async def slow(path: str, content_type: str, bearer: str = key) -> tuple[bytes, float]:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            head = (
                f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {bearer}\r\n"
                f"Content-Type: {content_type}\r\nContent-Length: 1000\r\n\r\n"
            )
            writer.write(head.encode() + b'{"spec"')
            await writer.drain()
            started = time.monotonic()
            answer = await asyncio.wait_for(reader.read(), 60)  # everything, until the server closes
            writer.close()
            return answer, time.monotonic() - started

        clients = [slow("/api/tasks", "application/json") for _ in range(30)]
        # Uploads from two keys: one key may have 8 in progress at once.
        clients += [slow("/api/files", "application/octet-stream", bearer) for bearer in [key, other] * 5]
        for answer, seconds in await asyncio.gather(*clients):
            assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
            # Closed at the timeout (1 or 2 s), not after aiohttp's 10 s of reading what never comes.
            assert b"did not arrive within" in answer and seconds < 9, (answer, seconds)
        status, page, _ = await c.api("GET", "/api/tasks")
        assert status == 200 and page["tasks"] == []
