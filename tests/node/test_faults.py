"""Faults found from outside: a node killed between commit and reveal, a restart on a quiet chain,
an RPC outage (or answers that cannot be read) while sending, an outage while preloading models. Each test
failed before its fix."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from ethml.chain import Status, dev_account
from ethml.chain.rpc import UnreadableAnswer
from ethml.node import Node
from ethml.node.predictor import Predictor
from ethml.node.revealer import Revealer
from ethml.node.sender import TxSender
from tests.node.conftest import System, make_system, wait_until
from tests.node.test_resilience import _kill


async def _answered(system: System, rid: int) -> bool:
    return (await system.answer(rid))[2]


async def _revealed_by(system: System, address: str, round_id: int) -> list[list[int]]:
    logs = await system.ethml.events.Revealed().get_logs(from_block=0)
    return [
        [int(a) for a in e["args"]["answers"]]
        for e in logs
        if e["args"]["miner"] == address and e["args"]["roundId"] == round_id
    ]


async def test_killed_between_commit_and_reveal_reveals_after_restart(
    system: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    cid, raw = system.add_point("iris", 2)
    rid = await system.request(3, cid)
    victim = dev_account(0)
    reached: list[int] = []
    original = Revealer.reveal

    async def dies_before_revealing(self: Revealer, round_id: int, deadline: int) -> None:
        if self.ctx.address == victim.address and not reached:
            reached.append(round_id)
            await asyncio.Event().wait()  # the process is killed here, its commitment on chain
        await original(self, round_id, deadline)

    monkeypatch.setattr(Revealer, "reveal", dies_before_revealing)
    first = system.node(0)
    await first.start()
    async with system.running([1, 2, 3, 4]):
        await wait_until(lambda: _is(bool(reached)), what="the victim in the reveal phase")
        await _kill(first)
        assert await _revealed_by(system, victim.address, 1) == []
        async with system.running([0]):
            await wait_until(lambda: _answered(system, rid), what="the answer after the restart")
    expected = system.expected("iris", raw)
    assert (await system.answer(rid))[:2] == (expected, int(Status.FINALIZED))
    # It revealed what it had committed before it was killed, once.
    assert await _revealed_by(system, victim.address, 1) == [[expected]]
    _prediction, _status, agreeing, _block = await system.ethml.functions.getResult(rid).call()
    assert agreeing == 5


async def test_restarted_last_miner_picks_up_the_round_on_a_quiet_chain(tmp_path: Path) -> None:
    system = await make_system(tmp_path, 1 << 23)  # long enough for the victim to be killed mid-search
    cid, raw = system.add_point("wine", 1)
    rid = await system.request(4, cid)
    async with system.running([1, 2, 3, 4]) as others:
        await wait_until(lambda: _all(others, lambda n: n.stats.accepted == 1), what="four commitments")
        victim = system.node(0)
        await victim.start()
        await wait_until(lambda: _is(victim._grinder is not None), what="the victim's actors")
        assert victim._grinder is not None
        await asyncio.wait_for(victim._grinder.searching.wait(), timeout=60)
        await _kill(victim)
        # No block has been made since the victim read the chain: the round waits for it alone.
        async with system.running([0]):
            await wait_until(lambda: _answered(system, rid), what="the answer")
    assert (await system.answer(rid))[:2] == (system.expected("wine", raw), int(Status.FINALIZED))


@pytest.mark.parametrize(
    "fault",
    [
        ConnectionRefusedError("RPC unreachable"),
        UnreadableAnswer("the RPC endpoint's answer is not JSON ethml can read: a proxy's page"),
    ],
    ids=["refused", "unreadable"],
)
async def test_send_during_rpc_outage_resends_the_same_transaction_when_it_returns(
    system: System, monkeypatch: pytest.MonkeyPatch, fault: Exception
) -> None:
    cid, _ = system.add_point("breast-cancer", 2)
    rid = await system.request(1, cid)
    victim = dev_account(0)
    outage: dict[str, float] = {}
    original = TxSender._send_raw

    async def unreachable_for_a_while(self: TxSender, raw_tx: str) -> None:
        if self.ctx.address == victim.address:
            ends = outage.setdefault("ends", time.monotonic() + 2.0)
            if time.monotonic() < ends:
                raise fault
        await original(self, raw_tx)

    monkeypatch.setattr(TxSender, "_send_raw", unreachable_for_a_while)
    # With a 30 s fee-bump interval, a node that waited for the bump would show a second signed version.
    async with system.running(range(5), bump_after=30.0) as nodes:
        await wait_until(lambda: _answered(system, rid), what="the answer")
        journal = nodes[0]._ctx.journal  # type: ignore[union-attr]
        commits = journal.all("commit")
        warnings, last_error = nodes[0].stats.warnings, nodes[0].stats.last_error
    assert outage, "the outage was hit"
    assert last_error is None, "a retry, not an actor that failed and was restarted"
    assert any(w.startswith("RPC unreachable while sending a commit") for w in warnings), warnings
    assert len(commits) == 1 and commits[0].status == "mined"
    assert len(commits[0].raw_txs) == 1, "re-sent as it was, not replaced after the bump interval"


async def test_rpc_outage_while_preloading_models_is_not_a_crash(
    system: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    original = Predictor.model

    async def unreachable_at_start(self: Predictor, model_id: int, *, fetch: bool = True) -> Any:
        if not fetch and not calls:
            calls.append(model_id)
            raise ConnectionRefusedError("RPC unreachable")
        return await original(self, model_id, fetch=fetch)

    monkeypatch.setattr(Predictor, "model", unreachable_at_start)
    cid, raw = system.add_point("iris", 0)
    rid = await system.request(3, cid)
    async with system.running(range(5)) as nodes:
        await wait_until(lambda: _answered(system, rid), what="the answer")
        assert calls
        assert all(n.stats.last_error is None for n in nodes), [n.stats.last_error for n in nodes]
    assert (await system.answer(rid))[:2] == (system.expected("iris", raw), int(Status.FINALIZED))


async def test_a_lost_rpc_during_the_reward_claim_is_not_a_crash(system: System) -> None:
    """The revealer reads the node's balance before claiming; an RPC that goes away right then used to
    kill the actor (the supervisor restarted it, the warning said it failed)."""
    cids = [system.add_point("iris", i)[0] for i in (1, 2)]
    failed: list[str] = []

    class Unreachable:
        def __init__(self, real: Any, who: str) -> None:
            self.real, self.who = real, who

        async def call(self, *args: Any, **kwargs: Any) -> Any:
            if self.who not in failed:
                failed.append(self.who)
                raise ConnectionRefusedError("RPC unreachable")
            return await self.real.call(*args, **kwargs)

    async with system.running(range(5), claim_threshold=1, bonds_kept=0) as nodes:
        for node in nodes:
            functions = node._ctx.contract.functions  # type: ignore[union-attr]
            original = functions.minerBalance
            functions.minerBalance = lambda a, o=original, who=node.address: Unreachable(o(a), who)
        first = await system.request(3, cids[0])
        await wait_until(lambda: _answered(system, first), what="the first answer")
        second = await system.request(3, cids[1])
        await wait_until(lambda: _answered(system, second), what="the second answer")

        async def claimed() -> bool:
            held = [await system.ethml.functions.minerBalance(n.address).call() for n in nodes]
            return all(h == 0 for h in held)

        await wait_until(claimed, what="the claims of the second round")
        assert len(failed) == 5, "every node lost its RPC at its first claim"
        assert all(n.stats.last_error is None for n in nodes), [n.stats.last_error for n in nodes]
        assert all(any("RPC unreachable" in w for w in n.stats.warnings) for n in nodes)


async def _is(value: bool) -> bool:
    return value


async def _all(nodes: list[Node], check: Any) -> bool:
    return all(check(n) for n in nodes)
