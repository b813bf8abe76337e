"""Where ethml keeps its files: ETHML_DATA_DIR, else $XDG_DATA_HOME/ethml (~/.local/share/ethml)."""

from __future__ import annotations

import os
from pathlib import Path


def data_home() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(os.environ.get("ETHML_DATA_DIR") or Path(base) / "ethml")
