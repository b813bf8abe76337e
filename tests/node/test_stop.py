"""`Node.stop()`: idle actors see the stop at once, and work in flight (a commitment being sent) still
finishes, once. The grace period is made long here, so a stop that ends by cancelling its actors (the
grace run out) rather than by their returning shows as a cancelled runner, never as a duration."""

from __future__ import annotations

import asyncio

import pytest

from ethml.chain import dev_account
from ethml.node import Node
from ethml.node.sender import TxSender
from tests.node.conftest import System, wait_until

GRACE = 60.0


def _ended_by_itself(node: Node) -> bool:
    runner = node._runner
    assert runner is not None and runner.done()
    return not runner.cancelled() and runner.exception() is None


async def _commitments_by(system: System, address: str) -> int:
    logs = await system.ethml.events.Committed().get_logs(from_block=0)
    return len([log for log in logs if log["args"]["miner"] == address])


async def test_an_idle_node_stops_without_waiting_out_its_grace(system: System) -> None:
    node = system.node(0, stop_grace=GRACE)
    await node.start()
    ctx = node._ctx
    assert ctx is not None

    async def polled() -> bool:  # every actor is started and waits for work
        return ctx.journal.checkpoint() is not None

    await wait_until(polled, what="the watcher's first poll")
    await asyncio.wait_for(node.stop(), GRACE * 2)
    assert _ended_by_itself(node), "the actors were cancelled after the grace period: one never saw the stop"


async def test_a_commitment_being_sent_at_the_stop_is_sent_once(
    system: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    cid, _raw = system.add_point("iris", 1)
    await system.request(3, cid)
    victim = dev_account(0)
    sending, release = asyncio.Event(), asyncio.Event()
    original = TxSender._send_raw

    async def held(self: TxSender, raw_tx: str) -> None:
        if self.ctx.address == victim.address and not sending.is_set():
            sending.set()
            await release.wait()  # the stop comes while the commitment is being sent
        await original(self, raw_tx)

    monkeypatch.setattr(TxSender, "_send_raw", held)
    nonce = await system.w3.eth.get_transaction_count(victim.address)
    node = system.node(0, stop_grace=GRACE)
    await node.start()
    await asyncio.wait_for(sending.wait(), 120)
    stopping = asyncio.create_task(node.stop())
    ctx = node._ctx
    assert ctx is not None

    async def stop_seen() -> bool:
        return ctx.stopping.is_set()

    await wait_until(stop_seen, what="the stop")
    release.set()
    await asyncio.wait_for(stopping, GRACE * 2)
    assert _ended_by_itself(node), "the stop cancelled its actors instead of letting them finish"
    assert await _commitments_by(system, victim.address) == 1
    assert await system.w3.eth.get_transaction_count(victim.address) == nonce + 1
