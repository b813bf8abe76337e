"""How an instance's background loops run: each step again and again, a failing step (Redis or the
RPC down) logged and retried with backoff, never fatal; all cancelled together at shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import structlog

log = structlog.get_logger("ethml.coordinator")


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
        await asyncio.sleep(backoff)


async def stop_helper(task: asyncio.Task[None]) -> None:
    """Cancel a helper task (a lease renewer, an entry toucher) and wait for its end, without swallowing
    a cancellation of the caller that arrives meanwhile (it is re-raised); the helper's own failure is
    only logged."""
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
    except Exception as exc:  # noqa: BLE001 - the helper's failure is not the caller's
        log.debug("helper_failed", helper=task.get_name(), error=str(exc))


class Loops:
    """Named tasks started together and stopped together (cancelled, then awaited with a timeout)."""

    def __init__(self) -> None:
        self.tasks: list[asyncio.Task[None]] = []

    def start(self, name: str, coro: Coroutine[Any, Any, None]) -> None:
        self.tasks.append(asyncio.create_task(coro, name=name))

    async def stop(self, grace: float = 10.0) -> None:
        for t in self.tasks:
            t.cancel()
        if self.tasks:
            _done, stuck = await asyncio.wait(self.tasks, timeout=grace)
            if stuck:
                log.warning("shutdown_stuck", tasks=[t.get_name() for t in stuck])
        self.tasks = []
