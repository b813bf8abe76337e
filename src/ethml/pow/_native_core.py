"""The thin typed layer over the cffi core: every check happens here, never inside C."""

from __future__ import annotations

from typing import Any

from ethml.errors import PowError

try:
    from ethml import _native
    from ethml._native import ffi as _ffi
    from ethml._native import lib as _lib
except ImportError as exc:  # pragma: no cover - exercised only on a broken install
    _native = None
    _ffi = None
    _lib = None
    IMPORT_ERROR: str | None = str(exc)
else:
    IMPORT_ERROR = None

#: The C path codes, in the order of the static preference (used to list them, never to choose: the
#: autotuner measures). A hybrid path is its vector lanes plus one scalar lane per batch.
PATH_CODES = {"avx512-hybrid": 6, "avx512": 3, "avx2-hybrid": 5, "avx2": 2, "bmi2": 4, "scalar": 1}
FOUND, EXHAUSTED, STOPPED, EINVAL = 1, 0, 2, -1


def available() -> bool:
    return _lib is not None


def library_file() -> str | None:
    return getattr(_native, "__file__", None)


def supported_paths() -> list[str]:
    if _lib is None:
        return []
    return [name for name, code in PATH_CODES.items() if _lib.ethml_pow_path_supported(code)]


def best_path() -> str:
    assert _lib is not None
    code = _lib.ethml_pow_best_path()
    return next(name for name, c in PATH_CODES.items() if c == code)


def keccak256(data: bytes) -> bytes:
    assert _lib is not None and _ffi is not None
    out = _ffi.new("uint8_t[32]")
    _lib.ethml_keccak256(data, len(data), out)
    return bytes(_ffi.buffer(out, 32))


def new_stop_flag() -> Any:
    assert _ffi is not None
    return _ffi.new("int *")


def search(
    path: str,
    challenge: bytes,
    miner: bytes,
    base: bytes,
    target: bytes,
    start: int,
    count: int,
    stop: Any,
) -> tuple[int, bytes | None, int]:
    """(status, nonce bytes or None, hashes tried). Arguments are already validated."""
    assert _lib is not None and _ffi is not None
    nonce_out = _ffi.new("uint8_t[32]")
    hashes = _ffi.new("uint64_t *")
    status = _lib.ethml_pow_search(
        PATH_CODES[path],
        challenge,
        miner,
        base,
        target,
        start,
        count,
        stop if stop is not None else _ffi.NULL,
        nonce_out,
        hashes,
    )
    if status == EINVAL:
        raise PowError(f"native search rejected its arguments (path {path}, start {start}, count {count})")
    nonce = bytes(_ffi.buffer(nonce_out, 32)) if status == FOUND else None
    return status, nonce, int(hashes[0])


def top64(path: str, challenge: bytes, miner: bytes, base: bytes, start: int, count: int) -> list[int]:
    assert _lib is not None and _ffi is not None
    out = _ffi.new("uint64_t[]", max(count, 1))
    if _lib.ethml_pow_top64(PATH_CODES[path], challenge, miner, base, start, count, out) != 0:
        raise PowError(f"native top64 rejected its arguments (path {path})")
    return list(out)[:count]
