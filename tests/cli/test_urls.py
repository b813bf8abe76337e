"""URLs in errors and banners: a password or a token in one is never printed, however malformed the URL."""

from __future__ import annotations

import pytest

from ethml.coordinator.redis_client import check_redis_url
from ethml.urls import check_url, mask_url

SECRET = "s3cr"


@pytest.mark.parametrize(
    "url",
    [
        f"redis://app:{SECRET}/et@redis.internal:6379/0",  # an unencoded '/' in the password (base64 has them)
        f"redis://:{SECRET}?x@redis.internal:6379/0",
        f"redis://:{SECRET}#x@redis.internal:6379/0",
        f"redis://u:{SECRET}@redis.internal:notaport/0",
        f"redis://u:{SECRET}@[::1/0",
        f"unix:///run/redis.sock?pass%77ord={SECRET}&db=x",  # the name percent-encoded, as redis-py reads it
        f"rediss://u:{SECRET}@redis.internal:6379/0?ssl_cert_reqs=bogus",
    ],
)
def test_a_redis_password_is_never_printed(url: str) -> None:
    assert SECRET not in mask_url(url)
    try:
        check_redis_url(url)
    except ValueError as exc:
        assert SECRET not in str(exc), exc


@pytest.mark.parametrize(
    "url",
    [
        f"https://user:{SECRET}@rpc.example:99999",
        f"https://user:{SECRET}@[rpc.example",
        f"ftp://user:{SECRET}@rpc.example",
        f"https://rpc.example:99999/v3?apikey={SECRET}",
    ],
)
def test_credentials_in_a_bad_url_are_never_printed(url: str) -> None:
    with pytest.raises(ValueError) as refused:
        check_url("--rpc-url", url, ("http", "https"), "http://127.0.0.1:8545")
    assert SECRET not in str(refused.value), refused.value
    assert "--rpc-url '" in str(refused.value)
