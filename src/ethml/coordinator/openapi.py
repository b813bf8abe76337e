"""The OpenAPI 3.1 document of the coordinator's REST API, built from the same pydantic types the
handlers validate with (their JSON Schemas go into components/schemas)."""

from __future__ import annotations

import functools
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from ethml import __version__
from ethml.coordinator import schemas as s

BEARER: list[dict[str, list[str]]] = [{"apiKey": []}]


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _json(model: type[BaseModel], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(model)}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "the body is not JSON",
        401: "no API key, or an unknown one",
        403: "the key's role may not do this",
        404: "not found",
        409: "already exists",
        413: "the body is too large",
        422: "a field is invalid (named in error.field)",
        429: "rate limited (see Retry-After)",
        503: "Redis or the chain RPC is unavailable",
    }
    return {str(c): _json(s.ErrorOut, text[c]) for c in codes}


@functools.cache
def openapi_document() -> dict[str, Any]:
    models: list[type[BaseModel]] = [
        s.TaskCreate, s.TaskImport, s.TaskCreated, s.TaskView, s.TaskPage, s.ApiKeyCreate, s.ApiKeyOut,
        s.WorkerList, s.Health, s.ErrorOut,
    ]  # fmt: skip
    _, top = models_json_schema(
        [(m, "validation" if m in (s.TaskCreate, s.TaskImport, s.ApiKeyCreate) else "serialization") for m in models],
        ref_template="#/components/schemas/{model}",
    )
    components = top.get("$defs", {})
    task_id = {"name": "task_id", "in": "path", "required": True, "schema": {"type": "string", "maxLength": 64}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "ethml coordinator",
            "version": __version__,
            "description": "Training tasks for the ethml oracle: post a task with an EIP-2612 permit of its reward, "
            "follow it through training and validation to a registered model.",
        },
        "components": {
            "schemas": components,
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer", "description": "an ethml API key"}},
        },
        "paths": {
            "/api/tasks": {
                "post": {
                    "summary": "Create a training task; the coordinator's relayer creates it on chain",
                    "security": BEARER,
                    "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(s.TaskCreate)}}},
                    "responses": {
                        "201": _json(s.TaskCreated, "accepted; follow Location"),
                        **_errors(400, 401, 403, 413, 422, 429, 503),
                    },
                },
                "get": {
                    "summary": "List tasks, newest first",
                    "parameters": [
                        {"name": "status", "in": "query", "schema": {"type": "string", "enum": list(s.STATUSES)}},
                        {"name": "cursor", "in": "query", "schema": {"type": "string", "maxLength": 40}},
                        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 200}},
                    ],
                    "responses": {"200": _json(s.TaskPage, "a page of tasks"), **_errors(422, 429, 503)},
                },
            },
            "/api/tasks/import": {
                "post": {
                    "summary": "Track a task created on chain by its requester",
                    "security": BEARER,
                    "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(s.TaskImport)}}},
                    "responses": {
                        "201": _json(s.TaskCreated, "tracked"),
                        **_errors(400, 401, 403, 404, 409, 413, 422, 429, 503),
                    },
                }
            },
            "/api/tasks/{task_id}": {
                "get": {
                    "summary": "A task: status, submissions, votes, transactions, registered model",
                    "parameters": [task_id],
                    "responses": {"200": _json(s.TaskView, "the task"), **_errors(404, 429, 503)},
                }
            },
            "/api/keys": {
                "post": {
                    "summary": "Create an API key (admin)",
                    "security": BEARER,
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref(s.ApiKeyCreate)}},
                    },
                    "responses": {
                        "201": _json(s.ApiKeyOut, "the new key, shown once"),
                        **_errors(400, 401, 403, 413, 422, 429, 503),
                    },
                }
            },
            "/api/workers": {
                "get": {
                    "summary": "Connected workers (admin)",
                    "security": BEARER,
                    "responses": {"200": _json(s.WorkerList, "the workers"), **_errors(401, 403, 429, 503)},
                }
            },
            "/healthz": {
                "get": {
                    "summary": "Liveness: Redis and the chain RPC answer",
                    "responses": {"200": _json(s.Health, "healthy"), "503": _json(s.Health, "a backend is down")},
                }
            },
        },
    }
