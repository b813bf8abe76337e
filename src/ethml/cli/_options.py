"""Groups of options declared once and shared by several commands.

An option group is a frozen, keyword-only dataclass whose fields are typer options (`Annotated[...]` with
a default, as a command's parameters are) or other option groups. A command decorated with
`@option_groups` takes a group as one parameter; typer sees the group's fields in its place, in their
order, so `--help` and the parsing are exactly as if each option were written out in the command.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable
from typing import Any, TypeVar

R = TypeVar("R")


class OptionGroup:
    """Base of the option groups: `@dataclasses.dataclass(frozen=True, kw_only=True)` subclasses."""


def _is_group(hint: Any) -> bool:
    return isinstance(hint, type) and issubclass(hint, OptionGroup)


def _options(group: type[OptionGroup]) -> list[inspect.Parameter]:
    """The group's fields as keyword parameters (a nested group's fields in its place)."""
    hints = typing.get_type_hints(group, include_extras=True)
    params: list[inspect.Parameter] = []
    for field in dataclasses.fields(group):  # type: ignore[arg-type]
        hint = hints[field.name]
        if _is_group(hint):
            params.extend(_options(hint))
            continue
        default = inspect.Parameter.empty if field.default is dataclasses.MISSING else field.default
        params.append(inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=hint))
    return params


def _collect(group: type[OptionGroup], values: dict[str, Any]) -> OptionGroup:
    """The group built from the parsed options (each one taken out of `values`)."""
    hints = typing.get_type_hints(group, include_extras=True)
    fields = {
        f.name: _collect(hints[f.name], values) if _is_group(hints[f.name]) else values.pop(f.name)
        for f in dataclasses.fields(group)  # type: ignore[arg-type]
    }
    return group(**fields)


def option_groups(command: Callable[..., R]) -> Callable[..., R]:
    """`command` with each OptionGroup parameter spread into the group's options for typer, and the
    group built from them when it is called."""
    hints = typing.get_type_hints(command, include_extras=True)
    params: list[inspect.Parameter] = []
    groups: dict[str, type[OptionGroup]] = {}
    for param in inspect.signature(command).parameters.values():
        hint = hints[param.name]
        if _is_group(hint):
            groups[param.name] = hint
            params.extend(_options(hint))
        else:
            params.append(param.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=hint))
    names = [p.name for p in params]
    if len(set(names)) != len(names):
        raise TypeError(f"{command.__name__}: an option group repeats a parameter name ({', '.join(names)})")

    @functools.wraps(command)
    def spread(**values: Any) -> R:
        for name, group in groups.items():
            values[name] = _collect(group, values)
        return command(**values)

    spread.__signature__ = inspect.Signature(params, return_annotation=hints.get("return", None))  # type: ignore[attr-defined]
    spread.__annotations__ = {p.name: p.annotation for p in params}
    return spread
