"""One miner per account and chain: a second node on the same journal stops with a clear message."""

from __future__ import annotations

from pathlib import Path

import pytest

from ethml.errors import JournalLocked
from ethml.node.journal import Journal


def test_a_second_journal_on_the_same_file_is_refused(tmp_path: Path) -> None:
    first = Journal(tmp_path / "nodes" / "31337-0xabc.sqlite")
    with pytest.raises(JournalLocked, match="another miner is already running with this account"):
        Journal(tmp_path / "nodes" / "31337-0xabc.sqlite")
    first.close()
    Journal(tmp_path / "nodes" / "31337-0xabc.sqlite").close()  # free again once the first stopped
