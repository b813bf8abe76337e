"""`ethml mine`'s TOML config file: its schema (unknown keys and wrong types are errors) and its loader."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ethml.cli._config import MAX_POLL_INTERVAL, MIN_POLL_INTERVAL, ConfigError, default_config_path


class MinerConfig(BaseModel):
    """The keys a config file may set for `ethml mine`; anything else, or a wrong type, is an error."""

    model_config = ConfigDict(extra="forbid", strict=True)

    rpc: str | None = None
    account: int | None = Field(default=None, ge=0)
    deployment: str | None = None
    threads: int | None = Field(default=None, ge=1, le=1024)
    models_dir: str | None = None
    gateways: list[str] | None = None
    data_dir: str | None = None
    log_format: Literal["console", "json"] | None = None
    mnemonic_file: str | None = None
    private_key: str | None = None
    keystore: str | None = None
    password_file: str | None = None
    poll_interval: float | None = Field(default=None, ge=MIN_POLL_INTERVAL, le=MAX_POLL_INTERVAL)


def load_config(path: Path | None) -> dict[str, Any]:
    """The [ethml] table (or the top level) of the TOML file, validated; {} when the default file is absent."""
    target = path or default_config_path()
    if not target.exists():
        if path is not None:
            raise ConfigError(f"config file {path} does not exist")
        return {}
    try:
        data = tomllib.loads(target.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {target} is not valid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {target}: {exc}") from None
    table = data.get("ethml", data)
    if not isinstance(table, dict):
        raise ConfigError(f"config file {target}: [ethml] must be a table")
    values = {str(k).replace("-", "_"): v for k, v in table.items()}
    if isinstance(values.get("poll_interval"), int) and not isinstance(values.get("poll_interval"), bool):
        values["poll_interval"] = float(values["poll_interval"])
    try:
        checked = MinerConfig.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'file'}: {_reason(e)}" for e in exc.errors())
        raise ConfigError(f"config file {target}: {problems}") from None
    return checked.model_dump(exclude_none=True)


def _reason(error: Any) -> str:
    if error["type"] == "extra_forbidden":
        return "unknown key (known: " + ", ".join(MinerConfig.model_fields) + ")"
    return f"{error['msg'].lower()} (got {error.get('input')!r})"
