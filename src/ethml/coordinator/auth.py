"""Who is asking and how often: API keys (`Authorization: Bearer <key>`, or `X-API-Key: <key>`; cached for
5 s), the client's
address (the TCP peer's, or behind a trusted reverse proxy the one it forwarded), and the token buckets every
request takes from (its client address's and its key's, in Redis)."""

from __future__ import annotations

import time

from aiohttp import web

from ethml.coordinator.addresses import address_bucket, is_trusted, parse_address
from ethml.coordinator.appkeys import CONFIG, STORE
from ethml.coordinator.config import Network
from ethml.coordinator.edge import ApiError
from ethml.coordinator.store import hash_key

Principal = dict[str, str]


class KeyCache:
    """API key -> (expiry, its record or None), so a busy client costs no Redis lookup per request."""

    def __init__(self, ttl: float = 5.0, size: int = 10_000) -> None:
        self.ttl, self.size = ttl, size
        self.entries: dict[str, tuple[float, Principal | None]] = {}

    def forget(self, key_id: str) -> None:
        """Drop the cached record of the key whose hash is `key_id` (revoked: refused here from now on)."""
        for key, (_expiry, cached) in list(self.entries.items()):
            if cached is not None and cached.get("key") == key_id:
                del self.entries[key]


API_KEYS = web.AppKey("api_keys", KeyCache)


async def principal(request: web.Request, *, required: tuple[str, ...] | None) -> Principal | None:
    """The API key's record (role, name, and `key`: its hash); raises 401/403 when `required` is not met."""
    scheme, _, value = request.headers.get("Authorization", "").strip().partition(" ")
    key = value.strip() if scheme.lower() == "bearer" else request.headers.get("X-API-Key")  # (schemes: any case)
    who = None
    if key:
        cache = request.app[API_KEYS]
        now = time.monotonic()
        cached = cache.entries.get(key)
        if cached and cached[0] > now:
            who = cached[1]
        else:
            record = await request.app[STORE].api_key(key)
            who = {**record, "key": hash_key(key)} if record is not None else None  # (an ASCII key)
            if len(cache.entries) > cache.size:
                cache.entries.clear()
            cache.entries[key] = (now + cache.ttl, who)
        if who is None:
            await rate_limit(request, None)  # guessing keys costs tokens
            raise ApiError(401, "unknown API key")
    if required is not None:
        if who is None:
            await rate_limit(request, None)
            raise ApiError(401, "an API key is required (Authorization: Bearer <key>)")
        if who["role"] not in required:
            await rate_limit(request, who["key"])
            raise ApiError(403, f"this needs the {' or '.join(required)} role; the key has {who['role']}")
    return who


async def required(request: web.Request, *roles: str) -> Principal:
    """The caller's key record; 401 without a key, 403 when its role is not one of `roles`."""
    who = await principal(request, required=roles)
    assert who is not None
    return who


def client_address(request: web.BaseRequest, proxies: tuple[Network, ...]) -> str:
    """Who sent the request: the TCP peer's address, unless the peer is one of `proxies` (reverse proxies the
    operator trusts, `--trusted-proxy`). Then `X-Forwarded-For` is read from its right end (each proxy appends
    the address it was connected from): the first address that is not a trusted proxy's is the client's. Left
    of it the header is the client's own say, never read: a client cannot pick its address (and its buckets)
    by sending the header. An entry that is no address ends the walk at the proxy that forwarded it; a header
    naming only trusted proxies (or none at all) gives the leftmost of them (the request came from a proxy's
    own host)."""
    peer = request.remote or "unknown"
    if not proxies:
        return peer
    ip = parse_address(peer)
    if ip is None or not is_trusted(ip, proxies):
        return peer
    client = str(ip)
    for hop in reversed(",".join(request.headers.getall("X-Forwarded-For", ())).split(",")):
        if not hop.strip():
            continue
        ip = parse_address(hop)
        if ip is None:
            break
        client = str(ip)
        if not is_trusted(ip, proxies):
            break
    return client


def client_bucket(request: web.BaseRequest, proxies: tuple[Network, ...]) -> str:
    """The client's address as its buckets count it. An IPv4 address as is. An IPv6 address by its /64 network
    (a host is commonly given a whole /64, and would otherwise have a bucket per address it picks from it),
    except one that stands for an IPv4 client, counted by that address: 6to4 (one IPv4 host owns a /48 of
    2002::/16), Teredo (the client's public address, obfuscated in the low bits) and NAT64 (many clients behind
    one translator's /96, each by its own address)."""
    return address_bucket(client_address(request, proxies))


def buckets(request: web.Request, key: str | None) -> list[tuple[str, float, int]]:
    """The token buckets a request takes from: its client address's, and its API key's if it has one
    (one script call takes from both, or from neither)."""
    cfg = request.app[CONFIG]
    found = [(f"ip:{client_bucket(request, cfg.trusted_proxies)}", cfg.ip_rate, cfg.ip_burst)]
    if key is not None:
        found.append((f"key:{key}", cfg.key_rate, cfg.key_burst))
    return found


def too_many(wait: float) -> ApiError:
    return ApiError(429, "rate limit exceeded", headers={"Retry-After": str(max(1, int(wait + 0.999)))})


async def rate_limit(request: web.Request, key: str | None) -> None:
    wait = await request.app[STORE].take_token(buckets(request, key))
    if wait > 0:
        raise too_many(wait)
