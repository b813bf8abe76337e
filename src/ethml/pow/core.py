"""The proof-of-work API: hashing, verification and nonce search over the native core.

A search walks a 64-bit window of the nonce (bytes 20..27, big-endian), which is exactly Keccak
state lane 9, so the C core precomputes everything else once per search. Candidate `counter` of a
search with `base` is `window_nonce(base, counter)`; the other 192 bits come from `base`
(`random_base()` gives every search its own).

Path selection: `ETHML_POW_PATH=<path>|python` forces one (`available_paths()` lists them); otherwise
the fastest on this CPU as measured by `ethml.pow.tune` (once per CPU model and core build, cached;
the tuner times the native core directly, so the dependency runs one way: core -> tune -> _native_core).
Without the compiled core, everything raises `NativeUnavailable` unless `ETHML_PUREPYTHON=1`
explicitly selects the (about 100x slower) pure-Python reference.
"""

from __future__ import annotations

import os
import secrets
import threading
from dataclasses import dataclass
from typing import Any

from Crypto.Hash import keccak as _keccak
from eth_utils.address import is_hex_address
from eth_utils.conversions import to_bytes

from ethml.errors import InvalidPowArgument, NativeUnavailable, UnknownPowPath
from ethml.pow import _native_core as _core
from ethml.pow import _reference
from ethml.pow.tune import autotune

MAX_UINT256 = 2**256 - 1
WINDOW_SHIFT = 32
WINDOW_MASK = (2**64 - 1) << WINDOW_SHIFT
MAX_COUNTER = 2**64

PURE_PYTHON = os.environ.get("ETHML_PUREPYTHON", "") not in ("", "0")
#: True when the compiled core is importable and not disabled by ETHML_PUREPYTHON=1.
HAS_NATIVE = _core.available() and not PURE_PYTHON


def available_paths() -> list[str]:
    """Search paths usable here, widest vectors first; "python" (the reference) is always last."""
    native = _core.supported_paths() if HAS_NATIVE else []
    return [*native, "python"]


def resolve_path(path: str | None = None) -> str:
    """The path a search will use: `path`, else ETHML_POW_PATH, else the autotuned fastest (`auto`)."""
    wanted = (path or os.environ.get("ETHML_POW_PATH") or "auto").lower()
    paths = available_paths()
    if wanted == "auto":
        if HAS_NATIVE:
            return autotune().path
        if PURE_PYTHON:
            return "python"
        raise NativeUnavailable(_core.IMPORT_ERROR or "ethml._native is not built")
    if wanted not in paths:
        if wanted in _core.PATH_CODES and not HAS_NATIVE and not PURE_PYTHON:
            raise NativeUnavailable(_core.IMPORT_ERROR or "ethml._native is not built")
        raise UnknownPowPath(wanted, paths)
    return wanted


# ------------------------------------------------------------------------ validation


def _as_bytes(name: str, value: bytes | str, length: int) -> bytes:
    if isinstance(value, str):
        text = value
        if length == 20 and not is_hex_address(text):
            raise InvalidPowArgument(name, f"{text!r} is not a 20-byte hex address")
        try:
            value = to_bytes(hexstr=text)
        except ValueError:
            raise InvalidPowArgument(name, f"{text!r} is not hex") from None
    if not isinstance(value, bytes | bytearray | memoryview):
        raise InvalidPowArgument(name, f"expected bytes or a hex string, got {type(value).__name__}")
    value = bytes(value)
    if len(value) != length:
        raise InvalidPowArgument(name, f"must be {length} bytes, got {len(value)}")
    return value


def _as_uint(name: str, value: int, bits: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidPowArgument(name, f"expected an integer, got {type(value).__name__}")
    if value < 0:
        raise InvalidPowArgument(name, f"must not be negative, got {value}")
    if value >= 2**bits:
        raise InvalidPowArgument(name, f"must fit in {bits} bits (below 2^{bits}), got {value}")
    return value


def target_for(difficulty: int) -> int:
    """The contract's target: type(uint256).max / difficulty."""
    if isinstance(difficulty, bool) or not isinstance(difficulty, int) or difficulty < 1:
        raise InvalidPowArgument("difficulty", f"must be an integer >= 1, got {difficulty!r}")
    return MAX_UINT256 // difficulty


def window_nonce(base: int, counter: int) -> int:
    """The nonce of search candidate `counter` (bytes 20..27 of `base` replaced by the counter)."""
    return (base & ~WINDOW_MASK & MAX_UINT256) | (counter << WINDOW_SHIFT)


def window_counter(nonce: int) -> int:
    return (nonce & WINDOW_MASK) >> WINDOW_SHIFT


def random_base() -> int:
    """A fresh random nonce base, so concurrent searches never repeat each other's candidates."""
    return secrets.randbits(256) & ~WINDOW_MASK


# ------------------------------------------------------------------------ hashing


def keccak256(data: bytes) -> bytes:
    if HAS_NATIVE:
        return _core.keccak256(bytes(data))
    return _reference.keccak256(bytes(data))


def hash_message(challenge: bytes | str, miner: bytes | str, nonce: int) -> bytes:
    """keccak256(abi.encodePacked(challenge, miner, nonce))."""
    c = _as_bytes("challenge", challenge, 32)
    m = _as_bytes("miner", miner, 20)
    n = _as_uint("nonce", nonce, 256)
    return keccak256(_reference.pow_message(c, m, n))


def verify(challenge: bytes | str, miner: bytes | str, nonce: int, difficulty: int) -> bool:
    """Whether the contract accepts `nonce` from `miner` for `challenge` at `difficulty`."""
    return int.from_bytes(hash_message(challenge, miner, nonce), "big") < target_for(difficulty)


# ------------------------------------------------------------------------ search


class StopFlag:
    """A flag another thread sets to end searches within milliseconds (the C loop polls it)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._cflag: Any = _core.new_stop_flag() if HAS_NATIVE else None

    def set(self) -> None:
        if self._cflag is not None:
            self._cflag[0] = 1
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    @property
    def cflag(self) -> Any:
        return self._cflag


@dataclass(frozen=True)
class SearchResult:
    nonce: int | None
    hashes: int
    stopped: bool = False

    @property
    def found(self) -> bool:
        return self.nonce is not None


def find_nonce(
    challenge: bytes | str,
    miner: bytes | str,
    target: int,
    *,
    count: int,
    start: int = 0,
    base: int = 0,
    path: str | None = None,
    stop: StopFlag | None = None,
) -> SearchResult:
    """Search counters [start, start + count) in order and return the first valid nonce.

    Valid means int(hash) < target. `count` = 0 searches nothing; target = 0 never succeeds.
    Releases the GIL in the native paths, so threads searching disjoint ranges run in parallel.
    """
    c = _as_bytes("challenge", challenge, 32)
    m = _as_bytes("miner", miner, 20)
    t = _as_uint("target", target, 256)
    base = _as_uint("base", base, 256)
    start = _as_uint("start", start, 64)
    count = _as_uint("count", count, 65)
    if start + count > MAX_COUNTER:
        raise InvalidPowArgument("count", f"start + count must not exceed 2^64 (the nonce window), got {start + count}")
    chosen = resolve_path(path)
    if count == 0 or (stop is not None and stop.is_set()):
        return SearchResult(None, 0, stopped=count > 0)
    if chosen == "python":
        return _python_search(c, m, t, base, start, count, stop)
    status, nonce, hashes = _core.search(
        chosen,
        c,
        m,
        base.to_bytes(32, "big"),
        t.to_bytes(32, "big"),
        start,
        count,
        stop.cflag if stop is not None else None,
    )
    found = int.from_bytes(nonce, "big") if nonce is not None else None
    return SearchResult(found, hashes, stopped=status == _core.STOPPED)


def _python_search(
    challenge: bytes, miner: bytes, target: int, base: int, start: int, count: int, stop: StopFlag | None
) -> SearchResult:
    prefix = challenge + miner
    base &= ~WINDOW_MASK
    k = _keccak.new
    for i in range(count):
        if stop is not None and i % 4096 == 0 and stop.is_set():
            return SearchResult(None, i, stopped=True)
        nonce = base | ((start + i) << WINDOW_SHIFT)
        h = k(digest_bits=256, data=prefix + nonce.to_bytes(32, "big")).digest()
        if int.from_bytes(h, "big") < target:
            return SearchResult(nonce, i + 1)
    return SearchResult(None, count)


def top64(
    challenge: bytes, miner: bytes, *, base: int = 0, start: int = 0, count: int, path: str | None = None
) -> list[int]:
    """The top 64 bits of each candidate's hash as `path` computes them (for parity tests)."""
    chosen = resolve_path(path)
    c, m = _as_bytes("challenge", challenge, 32), _as_bytes("miner", miner, 20)
    if chosen == "python":
        return [
            int.from_bytes(_reference.pow_hash(c, m, window_nonce(base, start + i))[:8], "big") for i in range(count)
        ]
    return _core.top64(chosen, c, m, base.to_bytes(32, "big"), start, count)
