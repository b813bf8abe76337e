"""Who a request is counted against (`auth.client_address`): the TCP peer, or behind a reverse proxy the
operator trusts (`--trusted-proxy`) the client its `X-Forwarded-For` names; a client cannot choose its own
address (and so its rate-limit buckets) by sending the header."""

from __future__ import annotations

import types
from unittest import mock

import pytest
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from ethml.coordinator.appkeys import CONFIG
from ethml.coordinator.auth import buckets, client_address, client_bucket
from ethml.coordinator.config import trusted_network

PROXIES = (trusted_network("127.0.0.1"), trusted_network("10.0.0.0/8"), trusted_network("fd00::/8"))


def _request(peer: str, *forwarded: str) -> object:
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: (peer, 41000) if name == "peername" else default
    headers = CIMultiDict(("X-Forwarded-For", value) for value in forwarded)
    return make_mocked_request("GET", "/api/tasks", headers=headers, transport=transport)


@pytest.mark.parametrize(
    ("peer", "forwarded", "client"),
    [
        # No proxy in front: the header is the client's own say, and ignored.
        ("203.0.113.9", ["198.51.100.1"], "203.0.113.9"),
        # One trusted proxy: the address it appended.
        ("127.0.0.1", ["198.51.100.1"], "198.51.100.1"),
        # A client that sends the header itself through the proxy cannot pick its address: the proxy appended
        # the real one on the right, and the walk stops there.
        ("127.0.0.1", ["6.6.6.6, 198.51.100.1"], "198.51.100.1"),
        ("127.0.0.1", ["10.1.1.1, 198.51.100.1"], "198.51.100.1"),
        # A chain of trusted proxies: the first address right to left that is not one of them.
        ("127.0.0.1", ["6.6.6.6, 198.51.100.1, 10.0.0.2, 10.0.0.3"], "198.51.100.1"),
        # The header sent as several lines reads as one list.
        ("127.0.0.1", ["6.6.6.6, 198.51.100.1", "10.0.0.2"], "198.51.100.1"),
        # No header, or only trusted proxies in it: the request came from a proxy's own host.
        ("127.0.0.1", [], "127.0.0.1"),
        ("127.0.0.1", ["10.0.0.7, 10.0.0.2"], "10.0.0.7"),
        # An entry that is no address ends the walk at the proxy that forwarded it.
        ("127.0.0.1", ["198.51.100.1, junk, 10.0.0.2"], "10.0.0.2"),
        ("127.0.0.1", ["198.51.100.1:5555"], "127.0.0.1"),
        ("127.0.0.1", [" , ,198.51.100.1 ,"], "198.51.100.1"),
        # IPv6, and an IPv4 peer seen on a dual-stack socket.
        ("fd00::1", ["2001:db8::5"], "2001:db8::5"),
        ("::ffff:127.0.0.1", ["198.51.100.1"], "198.51.100.1"),
        ("::ffff:203.0.113.9", ["198.51.100.1"], "::ffff:203.0.113.9"),
    ],
)
def test_the_client_is_the_peer_or_what_a_trusted_proxy_forwarded(peer: str, forwarded: list[str], client: str) -> None:
    assert client_address(_request(peer, *forwarded), PROXIES) == client  # type: ignore[arg-type]


def test_without_trusted_proxies_the_header_is_never_read() -> None:
    assert client_address(_request("127.0.0.1", "198.51.100.1"), ()) == "127.0.0.1"  # type: ignore[arg-type]


def test_clients_behind_a_trusted_proxy_take_from_their_own_buckets() -> None:
    """Behind a reverse proxy every client was counted as the proxy: one client could use up the requests and
    logins of all. A request's address bucket is now its client's."""
    config = types.SimpleNamespace(ip_rate=50.0, ip_burst=100, key_rate=20.0, key_burst=40, trusted_proxies=PROXIES)
    seen = []
    for forwarded in ("198.51.100.1", "198.51.100.2"):
        request = _request("127.0.0.1", forwarded)
        request.app[CONFIG] = config  # type: ignore[attr-defined]
        seen.append(buckets(request, None)[0][0])  # type: ignore[arg-type]
    assert seen == ["ip:198.51.100.1", "ip:198.51.100.2"]


@pytest.mark.parametrize(
    ("peer", "bucket"),
    [
        ("203.0.113.9", "203.0.113.9"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        ("::ffff:203.0.113.9", "203.0.113.9"),
        # Addresses that stand for an IPv4 client are counted by it: 6to4 gave one IPv4 host 65,536 buckets (its
        # /48), and all Teredo clients of one server, or all clients of one NAT64 /96, shared one.
        ("2002:cb00:7109::1", "203.0.113.9"),
        ("2002:cb00:7109:ffff::1", "203.0.113.9"),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "192.0.2.45"),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd3", "192.0.2.44"),
        ("64:ff9b::c633:6401", "198.51.100.1"),
        ("64:ff9b::cb00:714d", "203.0.113.77"),
    ],
)
def test_an_ipv6_client_is_counted_by_its_slash_64(peer: str, bucket: str) -> None:
    """A host given an IPv6 /64 (the common grant) could pick a new address, and so a new bucket, for every
    request: its addresses share one bucket. An IPv4 address seen on a dual-stack socket is its IPv4 one."""
    assert client_bucket(_request(peer), ()) == bucket  # type: ignore[arg-type]
    assert client_bucket(_request("127.0.0.1", peer), PROXIES) == bucket  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["10.0.0.0/33", "localhost", "", "10.0.0.1,10.0.0.2"])
def test_a_trusted_proxy_that_is_no_address_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="is not an IP address or a network in CIDR notation"):
        trusted_network(value)


def test_a_trusted_proxy_given_as_an_ipv4_mapped_address_is_that_ipv4_address() -> None:
    """A dual-stack socket (and its access log) shows an IPv4 peer as ::ffff:a.b.c.d, which an operator may copy
    into --trusted-proxy; the peer is compared as the IPv4 address it is, so that form matched nothing."""
    proxies = (trusted_network("::ffff:10.0.0.5"),)
    assert client_address(_request("::ffff:10.0.0.5", "198.51.100.1"), proxies) == "198.51.100.1"  # type: ignore[arg-type]
    assert client_address(_request("10.0.0.5", "198.51.100.1"), proxies) == "198.51.100.1"  # type: ignore[arg-type]
