"""docs/commands.md is generated from the commands' --help: it must say what the commands say."""

from __future__ import annotations

import importlib.util

from tests.conftest import ROOT


def test_the_command_reference_is_current() -> None:
    spec = importlib.util.spec_from_file_location("gen_command_docs", ROOT / "tools" / "gen_command_docs.py")
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    page = (ROOT / "docs" / "commands.md").read_text()
    assert gen.MARKER in page, "the hand-written part of docs/commands.md lost its marker line"
    assert page == gen.page(page), "docs/commands.md is stale: run python tools/gen_command_docs.py"
