"""Client addresses: read from text, checked against the trusted reverse proxies (`--trusted-proxy`), and
bucketed as the rate limits and the connection cap count them (`auth.client_bucket`, `edge.EdgeServer`)."""

from __future__ import annotations

import ipaddress

from ethml.coordinator.config import Network


def parse_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    return ip.ipv4_mapped or ip if isinstance(ip, ipaddress.IPv6Address) else ip


def is_trusted(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, proxies: tuple[Network, ...]) -> bool:
    return any(ip in network for network in proxies)


def is_trusted_proxy(peer: str, proxies: tuple[Network, ...]) -> bool:
    """Whether the TCP peer `peer` is one of `proxies` (`--trusted-proxy`)."""
    ip = parse_address(peer) if proxies else None
    return ip is not None and is_trusted(ip, proxies)


#: IPv6 prefixes that carry a client's IPv4 address in their low 32 bits (NAT64's well-known prefix, RFC 6052):
#: such a client is counted by that IPv4 address, as if it had come over IPv4.
EMBEDS_IPV4 = (ipaddress.IPv6Network("64:ff9b::/96"),)


def address_bucket(client: str) -> str:
    """`client_bucket` for a client's address: an IPv4 address as is, an IPv6 one by its /64 network, or by the
    IPv4 address it stands for."""
    if ":" not in client:
        return client
    ip = parse_address(client)
    if ip is None or ip.version == 4:
        return str(ip or client)
    assert isinstance(ip, ipaddress.IPv6Address)
    if ip.sixtofour is not None:
        return str(ip.sixtofour)
    if ip.teredo is not None:
        return str(ip.teredo[1])
    if any(ip in prefix for prefix in EMBEDS_IPV4):
        return str(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
