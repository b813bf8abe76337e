"""The HTTP edge: one error style (`{"error": {"status", "message", "field"}}`), the middleware that
turns every failure into it and counts every request, the request body read within limits (type,
size, time) and validated against a schema type, and malformed requests (those aiohttp's HTTP parser
refuses) answered in the same style and logged in one line.

What a client gets wrong is a 4xx, never a 500 or 503: a body that is not `application/json`, or comes
compressed (a Content-Encoding), is a 415, one over the size limit a 413, one that does not arrive
within the body timeout a 408 (and the connection is closed), a client that hangs up mid-body is
counted as 499 (nginx's "client closed request") and answered with nothing. A 503 means Redis or the
chain RPC is down, or the RPC refused a request (a node limiting its log queries, say), or the server's
own disk failed to take an upload's body (a 507 when it is full), nothing else."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import IO, Any

import aiohttp
import redis.asyncio as aioredis
import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler
from pydantic import BaseModel, ValidationError
from web3.exceptions import BadResponseFormat, ProviderConnectionError, Web3RPCError

from ethml.coordinator.addresses import address_bucket, is_trusted_proxy
from ethml.coordinator.appkeys import CONFIG, METRICS
from ethml.coordinator.chain import rpc_message
from ethml.coordinator.schemas import MAX_BODY_BYTES, first_error
from ethml.coordinator.uploads import Uploads, spool

log = structlog.get_logger("ethml.coordinator")

#: The status counted for a request whose client hung up before its body arrived.
CLIENT_CLOSED = 499


#: A backend unavailable: Redis, or the chain RPC (OSError: a refused or reset connection; aiohttp.ClientError:
#: an RPC answering HTTP 429 or 5xx).
UNAVAILABLE = (aioredis.RedisError, OSError, aiohttp.ClientError, ProviderConnectionError, BadResponseFormat)
#: ...or refusing a request (Web3RPCError: the node answered with an error).
BACKEND_ERRORS = (*UNAVAILABLE, Web3RPCError)


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        field: str | None = None,
        headers: dict[str, str] | None = None,
        *,
        close: bool = False,
    ):
        super().__init__(message)
        self.status, self.message, self.field, self.headers = status, message, field, headers or {}
        self.close = close  # close the connection after the answer (the request was not read to its end)


#: The errors of a disk (or a quota on it) with no room left.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class DiskFull(ApiError):
    """A body the server's disk had no room for while it arrived (507): the server's lack, not the client's."""

    def __init__(self) -> None:
        super().__init__(
            507, "the coordinator's disk is full; the file was not stored", headers={"Retry-After": "300"}, close=True
        )


class DiskFailed(ApiError):
    """The server's disk failed to take a body (an I/O error, no file descriptors left): a 503."""

    def __init__(self) -> None:
        super().__init__(
            503,
            "the coordinator's disk failed to take the file (logged by the server); retry shortly",
            headers={"Retry-After": "5"},
            close=True,
        )


class ClientGone(Exception):
    """The client closed the connection before its request body arrived."""


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
    status: int | None = None
    answered = False
    try:
        response = await handler(request)
        answered = True
    except ApiError as exc:
        response = error_response(exc.status, exc.message, exc.field, exc.headers)
        if exc.close:
            await _answer_and_close(request, response)
    except ClientGone:
        response, status = web.Response(status=400), CLIENT_CLOSED  # written to no one
        response.force_close()
    except web.HTTPException as exc:
        if exc.status >= 400:  # every path's (a 404, a 405 on /metrics, a WebSocket handshake): one error style
            allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
            said = (exc.text or "").strip()  # aiohttp's own words where it has any ("No WebSocket UPGRADE hdr")
            message = said if said and not said.startswith(f"{exc.status}: ") else exc.reason
            response = error_response(exc.status, message, headers=allow)
        else:
            request.app[METRICS].observe(route, exc.status, time.perf_counter() - started)
            raise
    except UNAVAILABLE as exc:
        log.warning("backend_unavailable", error=str(exc) or type(exc).__name__, path=request.path)
        response = error_response(
            503, "a backend (Redis or the chain RPC) is unavailable; retry shortly", headers={"Retry-After": "1"}
        )
    except Web3RPCError as exc:  # the node answered with an error: its words logged here, not sent (they may
        # name the provider, a quota or an upstream address)
        log.warning("chain_rpc_refused", error=rpc_message(exc), path=request.path)
        response = error_response(
            503, "the chain RPC refused a request (logged by the server); retry shortly", headers={"Retry-After": "5"}
        )
    except Exception:  # a bug: logged with its traceback here, one JSON line for the client
        log.exception("request_failed", path=request.path)
        response = error_response(500, "internal error (logged by the server)")
    if not answered and request.writer.output_size > 0:
        # The handler had begun its answer (an event stream, a WebSocket) when it failed: this one would be written
        # inside that one's body. The failure is logged above; the connection is closed instead (EdgeHandler).
        request.app[METRICS].observe(route, status or response.status, time.perf_counter() - started)
        raise ConnectionResetError("the answer had begun when the request failed")
    if status is None and response.status >= 400 and not response.prepared and _body_on_the_way(request):
        await _answer_and_close(request, response)  # an answer before the body: not read on for 10 s
    request.app[METRICS].observe(route, status or response.status, time.perf_counter() - started)
    return response


def _body_on_the_way(request: web.Request) -> bool:
    """Whether the request's body has not all arrived: refused before it was read (no key, a role or rate limit,
    no such path), it would keep the connection reading it for up to 10 s, so the answer closes it. A body that
    came whole with the headers costs nothing more to skip, and keeps the connection."""
    return request.body_exists and not request.content.is_eof()


async def _answer_and_close(request: web.Request, response: web.StreamResponse) -> None:
    """Send the answer, then close the connection at once: aiohttp would otherwise keep reading (and
    discarding) an unread body for up to 10 s before closing, which is what a slow client wants."""
    response.force_close()
    with contextlib.suppress(ConnectionError):  # the client may be gone already
        await response.prepare(request)
        await response.write_eof()
    request.protocol.force_close()


#: Set on a request whose `Expect: 100-continue` was deferred (`defer_continue`) until its body is read.
CONTINUE_DEFERRED = web.RequestKey("continue_deferred", bool)


async def defer_continue(request: web.Request) -> web.StreamResponse | None:
    """The expect handler of the routes that read a body: aiohttp's sends `100 Continue` before the handler runs,
    so a client that waits for it sent its body (up to 16 MiB) even to be refused for its key, a quota or a full
    disk. Here the 100 is sent only when the handler starts reading the body (`continue_body`), after every
    check made before it; a refusal before that is the final answer, and the body is never sent. Another
    Expect value is a 417, as aiohttp's."""
    expect = request.headers.get("Expect", "")
    if request.version != aiohttp.HttpVersion11:
        return None
    if expect.lower() != "100-continue":
        response = error_response(417, f"unknown Expect: {expect[:60]}")
        response.force_close()
        return response
    request[CONTINUE_DEFERRED] = True
    return None


async def continue_body(request: web.Request) -> None:
    """Send the `100 Continue` `defer_continue` held back, once: the handler is about to read the body."""
    if request.get(CONTINUE_DEFERRED):
        request[CONTINUE_DEFERRED] = False
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # (aiohttp's own: the response's bytes are counted from here)


async def read_body(request: web.Request, limit: int, seconds: float) -> bytes:
    """The whole body, as sent (no Content-Encoding: a compressed body's size says nothing of what it
    unpacks to; 415): at most `limit` bytes (413), within `seconds` (408, connection closed), from a
    client still there (ClientGone)."""
    refuse_encoded(request, limit)
    await continue_body(request)
    content = request.content
    with _receiving(seconds):
        if content.is_eof():  # it came with the headers (most JSON bodies): nothing to wait for
            return _within(await request.read(), limit)
        async with asyncio.timeout(seconds):
            if request.content_length is not None:
                return _within(await request.read(), limit)
            body = bytearray()  # chunked: no length to check up front
            while chunk := await content.readany():
                body += chunk
                if len(body) > limit:
                    raise ApiError(413, f"the body is over {limit} bytes", close=True)
            return bytes(body)


async def spool_body(
    request: web.Request, directory: Path, limit: int, seconds: float, uploads: Uploads
) -> tuple[IO[bytes], int]:
    """Read the body as `read_body` does, but into a file without a name in `directory` as it arrives, instead
    of holding it in memory (an upload: up to 16 MiB, from as many clients at once as connect). Return the
    file, which the caller closes, and the body's size, which stays counted in `uploads.spooled` until the
    caller takes it out (on an error here, it is taken out here). A disk with no room for it is a DiskFull
    (507), another failure of the disk a 503 (`disk_errors`)."""
    refuse_encoded(request, limit)
    await continue_body(request)
    with disk_errors():
        file = spool(directory)
    size = 0
    try:
        with _receiving(seconds):
            async with asyncio.timeout(seconds):
                while chunk := await request.content.readany():
                    if size + len(chunk) > limit:
                        raise ApiError(413, f"the body is over {limit} bytes", close=True)
                    size += len(chunk)
                    uploads.spooled += len(chunk)
                    with disk_errors():  # into the page cache (microseconds, on the event loop), none of it
                        file.write(chunk)  # left in the file's buffer: what `spooled` counts is on the disk
                        file.flush()
    except BaseException:
        uploads.spooled -= size
        with contextlib.suppress(OSError):  # a flush that fails again (a full disk) changes nothing now
            file.close()
        raise
    return file, size


@contextlib.contextmanager
def disk_errors() -> Iterator[None]:
    """An OSError of the server's disk (wrap only calls on it: a socket's errors are OSErrors too): a DiskFull
    (507) when it has no room, else logged and a DiskFailed (503)."""
    try:
        yield
    except OSError as exc:
        if exc.errno in DISK_FULL:
            raise DiskFull from None
        log.warning("disk_failed", error=str(exc))
        raise DiskFailed from None


def refuse_encoded(request: web.Request, limit: int) -> None:
    """415 for a body sent with a Content-Encoding, 501 for one with a transfer coding besides chunked, 413 for one
    whose Content-Length is over `limit`."""
    # Every Content-Encoding header, each a list: the server does not unpack bodies (auto_decompress off),
    # and one that says it is packed is refused rather than read as it is.
    codings = [c.strip().lower() for h in request.headers.getall("Content-Encoding", ()) for c in h.split(",")]
    encoding = next((c for c in codings if c not in ("", "identity")), None)
    if encoding is not None:
        raise ApiError(
            415,
            f"request bodies are taken as sent, not with Content-Encoding {encoding[:40]}",
            headers={"Accept-Encoding": "identity"},
            close=True,
        )
    # aiohttp reads a body whose last transfer coding is chunked and ignores the codings before it: a body
    # sent `Transfer-Encoding: gzip, chunked` would be taken packed, as if it were the file.
    transfer = [c.strip().lower() for h in request.headers.getall("Transfer-Encoding", ()) for c in h.split(",")]
    other = next((c for c in transfer if c not in ("", "chunked")), None)
    if other is not None:
        raise ApiError(
            501, f"request bodies are taken chunked or whole, not with Transfer-Encoding {other[:40]}", close=True
        )
    length = request.content_length
    if length is not None and length > limit:
        raise ApiError(413, f"the body is over {limit} bytes", close=True)


@contextlib.contextmanager
def _receiving(seconds: float) -> Iterator[None]:
    """A body that does not arrive within `seconds` is a 408, one cut off a ClientGone, a malformed one a 400."""
    try:
        yield
    except TimeoutError:
        raise ApiError(408, f"the request body did not arrive within {seconds:g} s", close=True) from None
    except ConnectionError as exc:  # aiohttp's "Connection lost"
        raise ClientGone(str(exc)) from None
    except HttpProcessingError as exc:  # a malformed chunk
        reason = ((exc.message or "").strip().splitlines() or ["a bad chunk"])[0]
        raise ApiError(400, f"the request body is malformed ({reason})", close=True) from None


def _within(body: bytes, limit: int) -> bytes:
    if len(body) > limit:
        raise ApiError(413, f"the body is over {limit} bytes", close=True)
    return body


def check_json_type(request: web.Request) -> None:
    """Only `application/json` (in UTF-8, the only charset JSON has) is read as JSON."""
    if request.content_type != "application/json" or (request.charset or "utf-8").lower() != "utf-8":
        got = request.headers.get("Content-Type", "none")
        raise ApiError(415, f"the body must be application/json (UTF-8), not {got[:60]}", close=True)


async def read_json(request: web.Request, model: type[BaseModel]) -> Any:
    """The body parsed and validated in one pass by pydantic-core, in strict mode: a JSON value of the
    wrong type (true for an integer, "1" for a number) is refused, not converted."""
    check_json_type(request)
    raw = await read_body(request, MAX_BODY_BYTES, request.app[CONFIG].body_timeout)
    try:
        return model.model_validate_json(raw, strict=True)
    except ValidationError as exc:
        kind = exc.errors(include_url=False)[0].get("type")
        if kind == "json_invalid":
            said = str((exc.errors(include_url=False)[0].get("ctx") or {}).get("error") or "not JSON")[:200]
            raise ApiError(
                400,
                f"the body is not JSON that can be read ({said}); it is read 200 levels deep, numbers to 4300 digits",
            ) from None
        if kind == "model_type":
            raise ApiError(422, "the body must be a JSON object") from None
        where, message = first_error(exc)
        raise ApiError(422, message, where) from None


class OneLineProtocolErrors(logging.Filter):
    """aiohttp logs a malformed request (a bad request line, header or chunk) with a traceback; this
    turns it into one line (`bad_request` with the client and the parser's reason). Other records of
    aiohttp's server logger pass unchanged."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError | ConnectionError):
            return True
        reason = str(getattr(exc, "message", "") or exc).strip().splitlines()
        client = record.args[0] if isinstance(record.args, tuple) and record.args else None
        log.info("bad_request", client=client, reason=reason[0] if reason else type(exc).__name__)
        return False


#: The route label in /metrics of a request aiohttp's parser refused (it never reached a route).
MALFORMED = "malformed"

#: The most characters of the parser's reason a refused request's answer quotes.
REASON_CHARS = 300


def parser_reason(exc: BaseException | None, said: str | None) -> str:
    """aiohttp's parser's reason for refusing a request, in one line: its lines joined, without the caret
    line under the bytes it quotes ("Invalid header token: b'Ho st: x'"), at most REASON_CHARS."""
    text = str(said or getattr(exc, "message", "") or exc or "").strip()
    lines = [line.strip() for line in text.splitlines() if line.strip().strip("^")]
    reason = " ".join(lines) or (type(exc).__name__ if exc is not None else "malformed request")
    return reason if len(reason) <= REASON_CHARS else reason[: REASON_CHARS - 3] + "..."


class EdgeHandler(RequestHandler):
    """aiohttp's connection handler, answering what it answers itself (a request its parser refuses: a bad
    request line, header, length or chunk, TLS on the plain port; the 500 of an error no middleware saw) in
    the API's error style instead of plain text, counted in /metrics under the route `malformed`. It still
    logs through aiohttp's server logger (one line, `OneLineProtocolErrors`) and closes the connection.

    A connection `EdgeServer` refused reads nothing (uvloop may hand it bytes that came with the connection
    before the abort runs: a request that would have been served on a connection no cap counts). An error
    after a handler began its answer (an event stream, a WebSocket) closes the connection: a second answer
    would be written inside the first one's body."""

    #: Set by EdgeServer: refused (closed as it was made), and the client it is counted under.
    edge_refused = False
    edge_client: str | None = None

    def data_received(self, data: bytes) -> None:
        if not self.edge_refused:
            super().data_received(data)

    def handle_error(
        self, request: Any, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:  # (errors_and_metrics logged why; aiohttp closes it on this error)
            raise ConnectionResetError("the answer had begun when the request failed: closed, not answered twice")
        started = time.perf_counter()
        super().handle_error(request, status, exc, message)  # its log line
        if status == 500:
            said = "internal error (logged by the server)"
        elif status == 504:
            said = "the request took too long"
        else:
            said = f"malformed HTTP request: {parser_reason(exc, message)}"
        response = error_response(status, said)
        response.force_close()
        if isinstance(self._manager, EdgeServer):
            self._manager.metrics.observe(MALFORMED, status, time.perf_counter() - started)
        return response


#: Seconds between two `client_connections_capped` log lines of one client.
CAPPED_LOG_EVERY = 10.0


class EdgeServer(web.Server):
    """aiohttp's server whose connections are `EdgeHandler`s, counting each client's open connections (by
    address, an IPv6 client by its /64, as the rate limits count it): a connection past `cap` of one client
    (0: no cap) is closed as it is made, before it costs a request's worth of memory or a file descriptor for
    longer than that; counted in /metrics and logged (`client_connections_capped`, once per client per 10 s).
    Connections from a trusted proxy are not counted (every client behind it shares its address); a proxy
    caps its own clients. Made by `install_edge_server`: aiohttp's server with this class and these
    attributes."""

    metrics: Any
    cap: int
    proxies: tuple[Any, ...]
    open_by_client: dict[str, int]
    capped_logged: dict[str, float]

    def __call__(self) -> RequestHandler:
        return EdgeHandler(self, loop=self._loop, **self._kwargs)

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        peer = transport.get_extra_info("peername")
        if not self.cap or not isinstance(peer, tuple) or not peer or is_trusted_proxy(str(peer[0]), self.proxies):
            return
        client = address_bucket(str(peer[0]))
        count = self.open_by_client.get(client, 0)
        if count >= self.cap:
            self.metrics.connections_refused.inc()
            now = time.monotonic()
            if now - self.capped_logged.get(client, -CAPPED_LOG_EVERY) >= CAPPED_LOG_EVERY:
                self.capped_logged[client] = now
                log.warning("client_connections_capped", client=client, open=count, cap=self.cap)
            if isinstance(handler, EdgeHandler):
                handler.edge_refused = True  # it reads nothing meanwhile
            # (Not before aiohttp has set the connection up: connection_lost would run before its handler's task.)
            asyncio.get_running_loop().call_soon(transport.abort)
            return
        self.open_by_client[client] = count + 1
        if isinstance(handler, EdgeHandler):
            handler.edge_client = client

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        super().connection_lost(handler, exc)
        if not isinstance(handler, EdgeHandler) or handler.edge_client is None:
            return
        client, handler.edge_client = handler.edge_client, None
        left = self.open_by_client.get(client, 1) - 1
        if left > 0:
            self.open_by_client[client] = left
        else:
            self.open_by_client.pop(client, None)
            self.capped_logged.pop(client, None)


def _expectations(
    handle: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]], metrics: Any
) -> Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]:
    """`handle` (the application's), after a check of `Expect` on every path: aiohttp answers an `Expect` other
    than `100-continue` itself, before any middleware, in plain text (`Unknown Expect: ...`) and uncounted, on
    every route but those with their own expect handler (`defer_continue`); here it is a JSON 417, counted
    under `malformed`, and the connection is closed."""

    async def checked(request: web.BaseRequest) -> web.StreamResponse:
        expect = request.headers.get("Expect")
        if expect is None or request.version != aiohttp.HttpVersion11 or expect.lower() == "100-continue":
            return await handle(request)
        response = error_response(417, f"unknown Expect: {expect[:60]}")
        response.force_close()
        metrics.observe(MALFORMED, 417, 0.0)
        return response

    return checked


def install_edge_server(app: web.Application, metrics: Any, cap: int, proxies: tuple[Any, ...]) -> None:
    """Make `app`'s server (whichever runner starts it: `web.run_app`, an `AppRunner`) an `EdgeServer` counting
    in `metrics`, with at most `cap` connections per client (0: no cap) besides `proxies`'. aiohttp takes no
    handler class, so the application's server factory is wrapped and the server it makes given the subclass
    (which adds no state but the attributes set here)."""
    make_handler = app._make_handler

    def make_edge_server(**kwargs: Any) -> web.Server:
        server = make_handler(**kwargs)
        if type(server) is not web.Server:  # another aiohttp: keep its server rather than guess at it
            log.warning("edge_server_not_installed", server=type(server).__name__, lost="JSON 400s, connection cap")
            return server
        server.__class__ = EdgeServer
        assert isinstance(server, EdgeServer)
        server.metrics, server.cap, server.proxies = metrics, cap, proxies
        server.open_by_client, server.capped_logged = {}, {}
        server.request_handler = _expectations(server.request_handler, metrics)
        return server

    app._make_handler = make_edge_server  # type: ignore[method-assign]


def one_line_protocol_errors() -> None:
    """Install `OneLineProtocolErrors` on aiohttp's server logger (once per process)."""
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, OneLineProtocolErrors) for f in server_log.filters):
        server_log.addFilter(OneLineProtocolErrors())
