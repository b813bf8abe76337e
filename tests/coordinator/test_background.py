"""Background loops stop when told: stopping a helper task never swallows the caller's own cancellation
(a relayer that swallowed it kept relaying after its server shut down)."""

from __future__ import annotations

import asyncio

import pytest

from ethml.coordinator.background import Loops, stop_helper


async def test_a_caller_cancelled_while_stopping_its_helper_is_still_cancelled() -> None:
    helper_stopping = asyncio.Event()

    async def helper() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            helper_stopping.set()
            await asyncio.sleep(0.2)  # a helper that takes a moment to wind down
            raise

    async def caller() -> str:
        task = asyncio.create_task(helper())
        await asyncio.sleep(0)
        await stop_helper(task)
        return "carried on"  # what a swallowed cancellation would lead to

    running = asyncio.create_task(caller())
    await asyncio.wait_for(helper_stopping.wait(), 10)
    running.cancel()  # while the caller waits for its helper
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(running, 10)


async def test_a_helper_that_failed_is_stopped_quietly_and_loops_stop_together() -> None:
    async def broken() -> None:
        raise RuntimeError("the helper's own trouble")

    task = asyncio.create_task(broken())
    await asyncio.sleep(0)
    await stop_helper(task)  # does not raise
    loops = Loops()
    loops.start("a", asyncio.Event().wait())  # type: ignore[arg-type]
    loops.start("b", asyncio.sleep(3600))  # type: ignore[arg-type]
    await asyncio.wait_for(loops.stop(grace=5), 10)
    assert loops.tasks == []
