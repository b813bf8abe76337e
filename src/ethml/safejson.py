"""JSON from outside (a data point or a spec from IPFS, a coordinator's messages, a model archive's schema), read
without putting the process at risk.

`json.loads` recurses in C once per level of nesting, guarded only by Python's recursion limit, and py_ecc (which
web3 and eth_account import) raises that limit to 100,000: a document of some 60,000 `[` (60 KB) overflows the C
stack before the limit is reached, and the process dies of a segmentation fault, not an exception. `loads`
reads JSON as `json.loads` does (integers of any size, NaN and Infinity, the last of duplicate keys) with
pydantic-core's parser, which refuses nesting deeper than MAX_DEPTH levels with a ValueError."""

from __future__ import annotations

from typing import Any

from pydantic_core import from_json

#: The deepest nesting `loads` takes (pydantic-core's own limit, which it does not let callers change).
MAX_DEPTH = 200


class TooDeep(ValueError):
    """A JSON text nested deeper than MAX_DEPTH levels."""


def loads(raw: bytes | bytearray | str) -> Any:
    """The value of a JSON text; ValueError for one that is not JSON, is not UTF-8, or nests deeper than
    MAX_DEPTH levels (TooDeep; the message says which, and where)."""
    try:
        return from_json(raw, allow_inf_nan=True)
    except ValueError as exc:
        text = str(exc)
        if text.startswith("recursion limit exceeded"):
            raise TooDeep(f"nested deeper than {MAX_DEPTH} levels ({text})") from None
        raise
