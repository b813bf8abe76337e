"""Field types for schemas validated in pydantic's strict mode (the coordinator's API validates that
way): a JSON value of the wrong type is refused, never converted. `true` is not 1 and `"3"` is not 3;
but `3.0` is 3, as JSON Schema says ("integer" is any number without a fractional part)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator


def integral(value: Any) -> Any:
    """A float without a fractional part as an int; anything else unchanged (the int check judges it)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


JsonInt = Annotated[int, BeforeValidator(integral)]
