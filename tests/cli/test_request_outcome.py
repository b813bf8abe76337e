"""`ethml request --wait` on a request that closes without a prediction: exit status 3 and the status
in words, never the int256 sentinel."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer

from ethml.chain import INVALID_INPUT
from ethml.cli.request import EXIT_NO_PREDICTION, _wait
from tests.node.conftest import System, make_system, wait_until


async def test_invalid_input_exits_3_and_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    system = await make_system(tmp_path)
    cid = str(system.ipfs.add_bytes(b"[1.0, 2.0]\n"))  # iris takes 4 features
    rid = await system.request(3, cid)
    async with system.running(range(5)):
        await wait_until(lambda: _answered(system, rid), what="the invalid-input answer")
    capsys.readouterr()  # the nodes' own log lines
    summary: dict[str, object] = {}
    with pytest.raises(typer.Exit) as exited:
        await _wait(system.w3, system.deployment, rid, 30.0, False, summary)
    assert exited.value.exit_code == EXIT_NO_PREDICTION == 3
    out = capsys.readouterr()
    assert f"request {rid}: invalid input, no prediction (5 of 5 miners agreed)" in out.err
    assert str(INVALID_INPUT) not in out.out + out.err
    with pytest.raises(typer.Exit):
        await _wait(system.w3, system.deployment, rid, 30.0, True, summary)
    as_json = capsys.readouterr().out
    assert '"status": "invalid input"' in as_json and '"prediction": null' in as_json


async def _answered(system: System, rid: int) -> bool:
    return (await system.answer(rid))[2]
