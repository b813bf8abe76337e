"""The OpenAPI 3.1 document of the coordinator's REST API, built from the same pydantic types the
handlers validate with (their JSON Schemas go into components/schemas) and the same limits the
handlers enforce (`schemas`): a request the document calls valid is refused only for what a schema
cannot say (named in the operation's description), one it calls invalid always gets a 4xx."""

from __future__ import annotations

import functools
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from ethml import __version__
from ethml.coordinator import schemas as s

BEARER: list[dict[str, list[str]]] = [{"apiKey": []}, {"apiKeyHeader": []}]
FILE = s.MAX_FILE_BYTES

ERRORS = {
    400: "the body is not JSON",
    401: "no API key, or an unknown one",
    403: "the key's role may not do this",
    404: "not found",
    408: "the body did not arrive in time (the connection is closed)",
    409: "already exists",
    413: "the body is too large",
    415: "the body is not application/json, or comes compressed (a Content-Encoding other than identity)",
    422: "a field is invalid (named in error.field)",
    429: "rate limited (see Retry-After)",
    501: "the body comes with a transfer coding other than chunked",
    503: "Redis or the chain RPC is unavailable, or the RPC refused a request (see Retry-After)",
    507: "the coordinator's disk is nearly full: nothing was stored (see Retry-After)",
}
#: What every route may answer besides its own statuses: a rate limit, or a backend outage.
ALWAYS = (429, 503)
#: What a route that reads a JSON body may answer about the body itself.
JSON_BODY = (400, 408, 413, 415, 422, 501)


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _json(model: type[BaseModel], description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": _ref(model)}}}
    if headers:
        out["headers"] = headers
    return out


def _errors(*codes: int) -> dict[str, Any]:
    out = {}
    for c in sorted({*codes, *ALWAYS}):
        retry = {"Retry-After": {"schema": {"type": "string"}}} if c in (429, 503, 507) else None
        out[str(c)] = _json(s.ErrorOut, ERRORS[c], retry)
    return out


def _body(model: type[BaseModel]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": _ref(model)}}}


LOCATION = {"Location": {"schema": {"type": "string"}, "description": "the task's URL"}}

POST_TASK = """Create a training task on terms its requester signed; the coordinator's relayer creates
it on chain (TrainingTasks.createTaskFor) with exactly those terms and the signature: the contract
checks the signature of every term, so the relayer cannot change one.

The signature is the requester's EIP-712 signature of TaskTerms (domain "EthML TrainingTasks",
version "1", this chain, the TrainingTasks contract; docs/training.md lists the fields) over
spec_cid, dataset_cid, test_set_commitment, reward, submit_seconds, score_seconds, validations,
round(min_score x 1,000,000), the model shape the spec gives (kind, decimals, feature count),
parameters_version (TrainingTasks.parametersVersion()), nonce and expiry. Beyond this schema the
server checks, and answers 422 naming the field: spec_cid is the CID of the spec's canonical JSON;
the terms meet the market's current parameters (parameters_version is the contract's; the reward
pays each validator seat minSeatReward from the validators' part; both periods within minPeriod and
maxPeriod); the signature recovers requester; validations is odd; expiry has not passed; the permit
(optional: without it the requester must have approved the reward) is signed by permit.owner for
this chain, EML token and TrainingTasks, its owner is the requester, its value the reward and its
deadline has not passed; test_set matches test_set_commitment; the spec's target is not among its
features. Signed terms posted already are refused (409, naming that task) until that task fails,
unless that task has no test set, is not validating yet, and this body carries one (it matches the
commitment): the test set is then added to that task, which is answered (200), so the coordinator reveals
it in time; while that task's creation is not signed yet, this body's permit and trainers replace its own.
The nonce is checked against the chain when the relayer sends the task: if anyone else created the
task from these signed terms after they were posted here, the task tracks that creation; otherwise a
used nonce fails the task with the reason."""


@functools.cache
def openapi_document() -> dict[str, Any]:
    models: list[type[BaseModel]] = [
        s.TaskCreate, s.TaskImport, s.TaskCreated, s.TaskView, s.TaskPage, s.ApiKeyCreate, s.ApiKeyOut,
        s.ApiKeyList, s.ApiKeyRevoked, s.WorkerList, s.Disconnected, s.FileAdded, s.Health, s.ErrorOut,
    ]  # fmt: skip
    inputs = (s.TaskCreate, s.TaskImport, s.ApiKeyCreate)
    _, top = models_json_schema(
        [(m, "validation" if m in inputs else "serialization") for m in models],
        ref_template="#/components/schemas/{model}",
    )
    task_id = {
        "name": "task_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": s.TASK_ID, "maxLength": 64},
    }
    worker_id = {
        "name": "worker_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": s.WORKER_ID, "maxLength": 64},
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "ethml coordinator",
            "version": __version__,
            "description": "Training tasks for the ethml oracle: post a task on terms its requester signed (the "
            "relayer cannot change a term), paid by an EIP-2612 permit or an approval, and follow it through "
            "training and validation to a registered model. Request bodies are JSON "
            f"(application/json, UTF-8, at most {s.MAX_BODY_BYTES} bytes) validated strictly: a value of the wrong "
            "JSON type is refused, not converted.",
        },
        "components": {
            "schemas": top.get("$defs", {}),
            "securitySchemes": {
                "apiKey": {"type": "http", "scheme": "bearer", "description": "an ethml API key"},
                "apiKeyHeader": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-API-Key",
                    "description": "an ethml API key, sent in this header instead of Authorization",
                },
                "workerToken": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-Worker-Token",
                    "description": "a logged-in worker's upload token (from its welcome message); it uploads only "
                    "its submissions' model artifacts, with the X-Task and X-Artifact-* headers (POST /api/files)",
                },
            },
        },
        "paths": {
            "/api/tasks": {
                "post": {
                    "summary": "Create a training task",
                    "description": POST_TASK,
                    "security": BEARER,
                    "requestBody": _body(s.TaskCreate),
                    "responses": {
                        "201": _json(s.TaskCreated, "accepted; follow Location", LOCATION),
                        "200": _json(
                            s.TaskCreated,
                            "these signed terms were posted already without their test set: this body's is added "
                            "to that task (named; follow Location)",
                            LOCATION,
                        ),
                        **_errors(401, 403, *JSON_BODY),
                        "409": _json(s.ErrorOut, "these signed terms are posted already (the task is named)"),
                    },
                },
                "get": {
                    "summary": "List tasks, newest first",
                    "parameters": [
                        {"name": "status", "in": "query", "schema": {"type": "string", "enum": list(s.STATUSES)}},
                        {
                            "name": "cursor",
                            "in": "query",
                            "description": "the next_cursor of the previous page",
                            "schema": {"type": "string", "pattern": s.CURSOR, "maxLength": s.MAX_CURSOR},
                        },
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": s.MAX_LIMIT, "default": 50},
                        },
                    ],
                    "responses": {"200": _json(s.TaskPage, "a page of tasks"), **_errors(422)},
                },
            },
            "/api/tasks/import": {
                "post": {
                    "summary": "Track a task created on chain by its requester",
                    "security": BEARER,
                    "requestBody": _body(s.TaskImport),
                    "responses": {
                        "201": _json(s.TaskCreated, "tracked", LOCATION),
                        **_errors(401, 403, 404, 409, *JSON_BODY),
                    },
                }
            },
            "/api/tasks/{task_id}": {
                "get": {
                    "summary": "A task: status, submissions, votes, transactions, registered model",
                    "parameters": [task_id],
                    "responses": {"200": _json(s.TaskView, "the task"), **_errors(404, 422)},
                }
            },
            "/api/files": {
                "post": {
                    "summary": "Add a file (dataset, test set, model artifact) to the coordinator's blockstore",
                    "description": "Any content type; fetch the file back by its CID from /ipfs/{cid} (raw blocks). "
                    "A requester's API key may add --upload-quota MiB per hour (429 past it). A worker (its upload "
                    "token) uploads only the model artifact of its account's submission to a task this coordinator "
                    "tracks, with the opening of the submission's commitment in five headers, X-Task (the on-chain "
                    "task id), X-Artifact-Cid, X-Artifact-Sha256 (64 hex digits), X-Artifact-Claim (millionths) and "
                    "X-Artifact-Salt (64 hex digits), each once (422 otherwise; read only with a worker's token): "
                    "they must open the "
                    "commitment TrainingTasks holds (403 otherwise) and the body must be that artifact (422 "
                    "otherwise; after five bodies in an hour not stored, 403 for the rest of it), until the task's "
                    "reveal window closes (403 after); one upload of a "
                    "submission at a time (409); an artifact this server stored for that submission, every block "
                    "still there, is answered 200 without its body being read. An artifact is served at once, and "
                    "kept once the window has closed only if it was revealed. An upload "
                    "that would leave the disk under --min-free-disk MiB free (half of it for an artifact) gets 507.",
                    "security": [*BEARER, {"workerToken": []}],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/octet-stream": {
                                "schema": {
                                    "type": "string",
                                    "format": "binary",
                                    "minLength": 1,
                                    "maxLength": s.MAX_FILE_BYTES,
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": _json(s.FileAdded, "a worker's artifact, stored already: the body was not read"),
                        "201": _json(s.FileAdded, "stored"),
                        **_errors(401, 403, 408, 409, 413, 415, 422, 501, 507),
                    },
                }
            },
            "/api/keys": {
                "post": {
                    "summary": "Create an API key (admin)",
                    "security": BEARER,
                    "requestBody": _body(s.ApiKeyCreate),
                    "responses": {
                        "201": _json(s.ApiKeyOut, "the new key, shown once"),
                        **_errors(401, 403, *JSON_BODY),
                    },
                },
                "get": {
                    "summary": "The API keys, oldest first: id (the key's SHA-256), name, role, created (admin)",
                    "security": BEARER,
                    "responses": {
                        "200": _json(s.ApiKeyList, "the keys (never the keys themselves)"),
                        **_errors(401, 403),
                    },
                },
            },
            "/api/keys/{key_id}": {
                "delete": {
                    "summary": "Revoke an API key (admin): refused at once by this instance, by the others within 5 s",
                    "security": BEARER,
                    "parameters": [
                        {
                            "name": "key_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "pattern": s.KEY_ID},
                        }
                    ],
                    "responses": {
                        "200": _json(s.ApiKeyRevoked, "revoked"),
                        **_errors(401, 403, 422),
                        "404": _json(s.ErrorOut, "no such key"),
                        "409": _json(s.ErrorOut, "the last admin key (create another admin key first)"),
                    },
                }
            },
            "/api/workers": {
                "get": {
                    "summary": "Connected workers (admin)",
                    "security": BEARER,
                    "responses": {"200": _json(s.WorkerList, "the workers"), **_errors(401, 403)},
                }
            },
            "/api/workers/{worker_id}": {
                "delete": {
                    "summary": "Disconnect a worker (admin)",
                    "security": BEARER,
                    "parameters": [
                        worker_id,
                        {
                            "name": "address",
                            "in": "query",
                            "required": False,
                            "description": "that account's worker of the id (ids are the workers' own choice; "
                            "needed when more than one account uses the id)",
                            "schema": {"type": "string", "pattern": s.ADDRESS},
                        },
                    ],
                    "responses": {
                        "202": _json(s.Disconnected, "disconnected now, or at its next report to its instance"),
                        **_errors(401, 403, 404, 422),
                        "409": _json(s.ErrorOut, "the id is used by more than one account: add ?address="),
                    },
                }
            },
            "/healthz": {
                "get": {
                    "summary": "Liveness: Redis and the chain RPC answer",
                    "responses": {"200": _json(s.Health, "healthy"), "503": _json(s.Health, "a backend is down")},
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics of this instance",
                    "responses": {
                        "200": {
                            "description": "the Prometheus text format",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/ipfs/{cid}": {
                "get": {
                    "summary": "A raw block of the coordinator's blockstore by its CID (a trustless gateway: the "
                    "client checks the block against the CID). It answers only ?format=raw or Accept: "
                    "application/vnd.ipld.raw; its errors are plain text, as a gateway's are. Beyond this schema "
                    "the CID must decode: CIDv0 or CIDv1, raw or dag-pb, sha2-256 (else 400)",
                    "parameters": [
                        {"name": "cid", "in": "path", "required": True, "schema": {"type": "string", "maxLength": 200}},
                        {"name": "format", "in": "query", "required": False, "schema": {"enum": ["raw"]}},
                    ],
                    "responses": {
                        "200": {
                            "description": "the block",
                            "content": {"application/vnd.ipld.raw": {"schema": {"type": "string", "format": "binary"}}},
                        },
                        **{
                            str(code): {"description": why, "content": {"text/plain": {"schema": {"type": "string"}}}}
                            for code, why in (
                                (400, "not a CID this gateway reads"),
                                (404, "no such block here"),
                                (406, "not asked for a raw block"),
                            )
                        },
                    },
                }
            },
            "/api/dashboard": {
                "get": {
                    "summary": "The dashboard's data: a snapshot of the tasks, workers, queues and the oracle, taken "
                    "at most once a second (its live updates are server-sent events at /api/dashboard/events)",
                    "responses": {
                        "200": {
                            "description": "the snapshot",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        },
                        **_errors(),
                    },
                }
            },
        },
    }
