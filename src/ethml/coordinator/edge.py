"""The HTTP edge: one error style (`{"error": {"status", "message", "field"}}`), the middleware that
turns every failure into it and counts every request, and the request body read and validated
against a schema type."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
import structlog
from aiohttp import web
from pydantic import BaseModel, ValidationError

from ethml.coordinator.appkeys import METRICS
from ethml.coordinator.schemas import MAX_BODY_BYTES, first_error

log = structlog.get_logger("ethml.coordinator")


class ApiError(Exception):
    def __init__(self, status: int, message: str, field: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.field, self.headers = status, message, field, headers or {}


def error_response(
    status: int, message: str, field: str | None = None, headers: dict[str, str] | None = None
) -> web.Response:
    body = {"error": {"status": status, "message": message, "field": field}}
    return web.json_response(body, status=status, headers=headers)


@web.middleware
async def errors_and_metrics(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    started = time.perf_counter()
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
    try:
        response = await handler(request)
    except ApiError as exc:
        response = error_response(exc.status, exc.message, exc.field, exc.headers)
    except web.HTTPException as exc:
        if exc.status >= 400 and request.path.startswith("/api"):
            response = error_response(exc.status, exc.reason)
        else:
            raise
    except (aioredis.RedisError, OSError) as exc:
        log.warning("backend_unavailable", error=str(exc), path=request.path)
        response = error_response(
            503, "a backend (Redis or the chain RPC) is unavailable; retry shortly", headers={"Retry-After": "1"}
        )
    except Exception:  # a bug: logged with its traceback here, one JSON line for the client
        log.exception("request_failed", path=request.path)
        response = error_response(500, "internal error (logged by the server)")
    request.app[METRICS].observe(route, response.status, time.perf_counter() - started)
    return response


async def read_json(request: web.Request, model: type[BaseModel]) -> Any:
    """The body parsed and validated in one pass by pydantic-core (no intermediate dict)."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise ApiError(413, f"the body is over {MAX_BODY_BYTES} bytes")
    raw = await request.read()
    if len(raw) > MAX_BODY_BYTES:
        raise ApiError(413, f"the body is over {MAX_BODY_BYTES} bytes")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        kind = exc.errors(include_url=False)[0].get("type")
        if kind == "json_invalid":
            raise ApiError(400, "the body is not JSON") from None
        if kind == "model_type":
            raise ApiError(422, "the body must be a JSON object") from None
        where, message = first_error(exc)
        raise ApiError(422, message, where) from None
