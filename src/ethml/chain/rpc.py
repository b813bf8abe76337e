"""A web3 connection to an RPC endpoint over HTTP that reads the endpoint's answers without putting the process at
risk.

web3 reads each answer with `json.loads`, which recurses in C once per level of nesting; py_ecc, which web3
imports, raises Python's recursion limit to 100,000, so an answer of some 100,000 `[` overflows the C stack first
and the process dies of a segmentation fault. An RPC endpoint is the operator's choice, but a broken or hijacked
one (a provider's outage page, a proxy, a compromised host) must cost a clear error, not every miner, relayer or
coordinator that reads it. `RpcProvider` reads answers with `ethml.safejson` instead; an answer it cannot read
raises `UnreadableAnswer`, a `json.JSONDecodeError` as web3 raises for an answer that is not JSON; the node's
actors take it as they take a dropped connection (wait, then ask again).

It also keeps its own aiohttp session per event loop, without web3's session lock. web3 8.0 takes one
`threading.Lock`, shared by every HTTP provider of the process, for each request, acquiring it in a thread pool
and releasing it in a `finally` that runs whether or not the acquisition finished (web3.py issue 3867). A request
cancelled while it waits for that lock (a timeout around an RPC call, an actor stopping) releases a lock another
request holds, and its thread then takes the lock for good: every later RPC request of every provider in the
process hangs. One burst of twenty calls under `asyncio.wait_for` with millisecond timeouts is enough."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any, cast

from aiohttp import ClientSession, ClientTimeout, TCPConnector
from eth_typing import URI
from web3 import AsyncHTTPProvider, AsyncWeb3
from web3._utils.http_session_manager import HTTPSessionManager
from web3.types import RPCResponse

from ethml import safejson


class UnreadableAnswer(json.JSONDecodeError):
    """An RPC endpoint's answer that is not JSON, or nests deeper than `ethml.safejson` reads. A JSONDecodeError,
    as web3 raises for an answer that is not JSON; its text is the reason alone (no position in an empty
    document)."""

    def __init__(self, msg: str) -> None:
        super().__init__(msg, "", 0)

    def __str__(self) -> str:
        return self.msg


class _LoopSessions(HTTPSessionManager):
    """web3's session manager with one aiohttp session per event loop, looked up and replaced without awaiting
    anything (and so without a lock: a cancelled request cannot leave anything held). A session that was closed,
    or that belongs to a loop that has gone (a new loop at the same address), is replaced, as web3 does. A
    session dropped from the cache is not closed here: it belongs to another loop, and closing it from this one
    would break that loop's calls in flight. This happens only to a loop that is gone, or when more than 100
    loops use one provider (the cache's size, as web3's); an evicted loop's next call opens a new session."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()  # the synchronous path's lock, this manager's own instead of the class's

    async def async_cache_and_return_session(
        self, endpoint_uri: URI, session: ClientSession | None = None, request_timeout: ClientTimeout | None = None
    ) -> ClientSession:
        loop = asyncio.get_running_loop()
        key = f"{id(loop)}:{endpoint_uri}"
        cached: ClientSession | None = self.session_cache.get_cache_entry(key)
        if cached is not None and cached._loop is loop and not cached.closed:
            return cached
        fresh = session or ClientSession(
            raise_for_status=True, connector=TCPConnector(force_close=True, enable_cleanup_closed=True)
        )
        self.session_cache.pop(key)
        self.session_cache.cache(key, fresh)
        return fresh


class RpcProvider(AsyncHTTPProvider):
    """web3's HTTP provider, reading answers with `ethml.safejson` (nesting at most 200 levels), with a session
    per event loop that no other provider's cancelled request can block (the module's docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._request_session_manager = _LoopSessions()

    @staticmethod
    def decode_rpc_response(raw_response: bytes) -> RPCResponse:
        try:
            return cast(RPCResponse, safejson.loads(raw_response))
        except ValueError as exc:
            raise UnreadableAnswer(f"the RPC endpoint's answer is not JSON ethml can read: {exc}") from None


def http_web3(url: str, **request_kwargs: Any) -> AsyncWeb3[Any]:
    """An AsyncWeb3 on the RPC endpoint at `url` (request_kwargs go to aiohttp, as AsyncHTTPProvider's do)."""
    return AsyncWeb3(RpcProvider(url, request_kwargs=request_kwargs or None))
