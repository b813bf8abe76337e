"""A web3 connection to an RPC endpoint over HTTP that reads the endpoint's answers without putting the process at
risk.

web3 reads each answer with `json.loads`, which recurses in C once per level of nesting; py_ecc, which web3
imports, raises Python's recursion limit to 100,000, so an answer of some 100,000 `[` overflows the C stack first
and the process dies of a segmentation fault. An RPC endpoint is the operator's choice, but a broken or hijacked
one (a provider's outage page, a proxy, a compromised host) must cost a clear error, not every miner, relayer or
coordinator that reads it. `RpcProvider` reads answers with `ethml.safejson` instead; an answer it cannot read
raises `UnreadableAnswer`, a `json.JSONDecodeError` as web3 raises for an answer that is not JSON; the node's
actors take it as they take a dropped connection (wait, then ask again)."""

from __future__ import annotations

import json
from typing import Any, cast

from web3 import AsyncHTTPProvider, AsyncWeb3
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


class RpcProvider(AsyncHTTPProvider):
    """web3's HTTP provider, reading answers with `ethml.safejson` (nesting at most 200 levels)."""

    @staticmethod
    def decode_rpc_response(raw_response: bytes) -> RPCResponse:
        try:
            return cast(RPCResponse, safejson.loads(raw_response))
        except ValueError as exc:
            raise UnreadableAnswer(f"the RPC endpoint's answer is not JSON ethml can read: {exc}") from None


def http_web3(url: str, **request_kwargs: Any) -> AsyncWeb3[Any]:
    """An AsyncWeb3 on the RPC endpoint at `url` (request_kwargs go to aiohttp, as AsyncHTTPProvider's do)."""
    return AsyncWeb3(RpcProvider(url, request_kwargs=request_kwargs or None))
