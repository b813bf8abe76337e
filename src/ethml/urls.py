"""URLs given on the command line or in a config: checked before anything is started with them."""

from __future__ import annotations

from urllib.parse import urlparse


def check_url(option: str, url: str, schemes: tuple[str, ...], example: str) -> None:
    """ValueError saying what is wrong with `option`'s `url`: not one of `schemes` with a host, a host that
    does not parse (an unclosed IPv6 bracket), or a port that is not 0..65535."""
    kinds = ("an " if schemes[0].startswith("h") else "a ") + " or ".join(f"{scheme}://" for scheme in schemes)
    try:
        parsed = urlparse(url)
        host = parsed.hostname
    except ValueError as exc:
        raise ValueError(f"{option} {url!r} is not a valid URL: {exc}") from None
    if parsed.scheme not in schemes or not host:
        raise ValueError(f"{option} {url!r} is not {kinds} URL (for example {example})")
    try:
        parsed.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        raise ValueError(f"{option} {url!r} has an invalid port") from None
