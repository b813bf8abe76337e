"""How an instance's background loops run: each step again and again, a failing step (Redis or the
RPC down) logged and retried with backoff, never fatal; all cancelled together at shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Generic, TypeVar

import structlog

log = structlog.get_logger("ethml.coordinator")

T = TypeVar("T")


async def forever(name: str, interval: float, step: Callable[[], Awaitable[None]]) -> None:
    backoff = interval
    while True:
        try:
            await step()
            backoff = interval
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a backend outage: log, back off, carry on
            log.warning(f"{name}_failed", error=str(exc), retry_in=round(backoff, 2))
            backoff = min(max(backoff * 2, 0.5), 10.0)
        stop_if_cancelled()  # every turn passes here: a cancel dropped inside the step ends the loop now
        await asyncio.sleep(backoff)


def stop_if_cancelled() -> None:
    """End the current task if it was cancelled and carries on all the same; a loop calls it every turn.

    Python 3.11's asyncio.wait_for drops a cancellation that arrives in the loop turn where the awaited
    operation completes, and returns the operation's result instead (fixed in 3.12). redis-py 8 sends
    every command through wait_for (its default socket timeout is 5 s), so a loop cancelled while it
    sends a command to Redis would carry on as if never cancelled. The task still counts the request
    (timeouts, asyncio's and aiohttp's, withdraw theirs), which is what this checks."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


# How often a task that was cancelled but still runs is cancelled again (see stop_if_cancelled): a task
# that waits for something long after a dropped cancel (a blocking read) gets another.
CANCEL_AGAIN = 0.5


async def cancel_and_wait(
    task: asyncio.Task[Any], grace: float | None, *, unless: Callable[[], bool] | None = None
) -> bool:
    """Cancel `task` and wait for its end, up to `grace` seconds (None: however long it takes), cancelling
    it again every CANCEL_AGAIN seconds while it runs on; whether it ended. With `unless`, no cancel is
    sent once it holds (checked before each; the task then runs on, and this returns False). A
    cancellation of the caller that arrives meanwhile propagates (the task has been cancelled already)."""
    loop = asyncio.get_running_loop()
    deadline = None if grace is None else loop.time() + grace
    while not task.done():
        if unless is not None and unless():
            return False
        left = CANCEL_AGAIN if deadline is None else min(CANCEL_AGAIN, deadline - loop.time())
        if left <= 0:
            return False
        task.cancel()
        await asyncio.wait([task], timeout=left)
    return True


async def stop_helper(task: asyncio.Task[None]) -> None:
    """Cancel a helper task (a lease renewer, an entry toucher) and wait for its end, without swallowing
    a cancellation of the caller that arrives meanwhile (it is re-raised); the helper's own failure is
    only logged."""
    await cancel_and_wait(task, None)
    if not task.cancelled() and task.exception() is not None:
        log.debug("helper_failed", helper=task.get_name(), error=str(task.exception()))


def await_chain(task: asyncio.Task[Any], *, files: bool = False) -> list[str]:
    """The chain of awaits a task is suspended in, outermost first (`function:line` each, or with `files`
    `file:line in function`): what a task that did not end when cancelled, or a test that hung, waits on."""
    steps: list[str] = []
    obj: Any = task.get_coro()
    while obj is not None and len(steps) < 60:
        frame = getattr(obj, "cr_frame", None) or getattr(obj, "gi_frame", None) or getattr(obj, "ag_frame", None)
        if frame is not None:
            code, line = frame.f_code, frame.f_lineno
            steps.append(f"{code.co_filename}:{line} in {code.co_name}" if files else f"{code.co_name}:{line}")
        obj = getattr(obj, "cr_await", None) or getattr(obj, "gi_yieldfrom", None) or getattr(obj, "ag_await", None)
    return steps


class Loops:
    """Named tasks started together and stopped together (cancelled, cancelled again while they run on,
    and awaited with a timeout)."""

    def __init__(self) -> None:
        self.tasks: list[asyncio.Task[None]] = []

    def start(self, name: str, coro: Coroutine[Any, Any, None]) -> None:
        self.tasks.append(asyncio.create_task(coro, name=name))

    async def stop(self, grace: float = 10.0) -> None:
        ended = await asyncio.gather(*(cancel_and_wait(t, grace) for t in self.tasks))
        stuck = [t for t, done in zip(self.tasks, ended, strict=True) if not done]
        if stuck:
            where = [" > ".join(await_chain(t)) or "?" for t in stuck]
            log.warning("shutdown_stuck", tasks=[t.get_name() for t in stuck], where=where)
        self.tasks = []


class SharedCall(Generic[T]):
    """An async call made once for all who ask while it runs: the first caller starts it, and everyone who
    asks before it ends awaits the same result (or exception). A caller that leaves (a client hanging up)
    does not cancel it for the others. N clients asking at once cost one call, not N: each dashboard
    viewer's snapshot was 5 Redis calls and 2 RPC calls of its own, and each health check a Redis command
    (300 at once took all of the pool's connections)."""

    def __init__(self, call: Callable[[], Awaitable[T]]) -> None:
        self._call = call
        self._running: asyncio.Future[T] | None = None

    async def __call__(self) -> T:
        if self._running is None:
            running = asyncio.ensure_future(self._call())
            running.add_done_callback(self._ended)
            self._running = running
        return await asyncio.shield(self._running)

    def _ended(self, running: asyncio.Future[T]) -> None:
        if self._running is running:
            self._running = None
        if not running.cancelled():
            running.exception()  # retrieved: every caller may have left before it ended
