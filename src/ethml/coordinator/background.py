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
