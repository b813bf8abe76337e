"""URLs given on the command line or in a config: checked before anything is started with them."""

from __future__ import annotations

import re
from urllib.parse import unquote, urlparse


def mask_url(url: str) -> str:
    """`url` as it may be printed: whatever stands before the last '@' of its authority (a user name and a
    password, which may hold '/', '?' or '#' unencoded) as ***, and the value of a query parameter whose
    name (percent-decoded) speaks of a password, a secret, a token or a key as ***. No parsing that could
    fail: a URL that does not parse is masked too."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    at = rest.rfind("@")
    if at >= 0:
        rest = "***" + rest[at:]
    head, question, query = rest.partition("?")
    if question:
        pairs = []
        for pair in query.split("&"):
            name, equals, _value = pair.partition("=")
            secret = re.search(r"pass|secret|token|key|auth", unquote(name), re.IGNORECASE)
            pairs.append(f"{name}=***" if equals and secret else pair)
        rest = head + "?" + "&".join(pairs)
    return f"{scheme}{sep}{rest}"


_URL = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]{0,20}):(\\?/\\?/)([^\s'\"<>]*)")
#: Said after a URL rather than as its last character: kept in the text when the URL is cut.
_TRAILING = ".,;:!?)]}"


def redact_urls(text: str) -> str:
    """`text` with each URL in it cut to its scheme, host and port (`https://host:443/…`): what a message leaving
    this machine may say of a URL. An RPC provider's key sits in the path as often as in the query or the user
    name (`/v3/<key>`), so the path, the query and the user name go (a password may hold '/': the host is what
    follows the last '@'). JSON-escaped slashes (`https:\\/\\/`) count too; punctuation after a URL stays."""

    def cut(match: re.Match[str]) -> str:
        scheme, slashes, rest = match.groups()
        kept = len(rest) - len(rest.rstrip(_TRAILING))
        tail, rest = rest[len(rest) - kept :], rest[: len(rest) - kept]
        rest = rest.rpartition("@")[2]
        host = re.split(r"[/?#\\]", rest, maxsplit=1)[0]
        return f"{scheme}:{slashes}{host}" + ("/…" if len(host) < len(rest) else "") + tail

    return _URL.sub(cut, text)


def check_url(option: str, url: str, schemes: tuple[str, ...], example: str) -> None:
    """ValueError saying what is wrong with `option`'s `url`: not one of `schemes` with a host, a host that
    does not parse (an unclosed IPv6 bracket), or a port that is not 0..65535. The URL is shown masked
    (`mask_url`), and the parser's own words, which may repeat it, are left out."""
    kinds = ("an " if schemes[0].startswith("h") else "a ") + " or ".join(f"{scheme}://" for scheme in schemes)
    shown = mask_url(url)
    try:
        parsed = urlparse(url)
        host = parsed.hostname
    except ValueError:
        raise ValueError(f"{option} {shown!r} is not a valid URL (its host does not parse)") from None
    if parsed.scheme not in schemes or not host:
        raise ValueError(f"{option} {shown!r} is not {kinds} URL (for example {example})")
    try:
        parsed.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        raise ValueError(f"{option} {shown!r} has an invalid port") from None
