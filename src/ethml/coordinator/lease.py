"""A Redis lease (SET NX PX): one instance at a time leads, or sends with the relayer key. A holder
renews it while it works; a killed holder's lease lapses within its ttl. A holder that loses it while it
works (it stalled past the ttl, or could not reach Redis for that long, and another instance took it) is
stopped: the body of its `async with` is cancelled (again and again until it leaves) and LeaseLapsed raised,
by the time its lease can have lapsed (a renewal that gets no answer is given up then), so two instances do
not lead, or sign with the relayer key, side by side for longer than the cancel takes to reach the body."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis
import structlog

from ethml.coordinator import redis_keys as k
from ethml.coordinator.background import stop_helper, stop_if_cancelled
from ethml.coordinator.store import Store

log = structlog.get_logger("ethml.coordinator")

#: Extend the lease KEYS[1] by ARGV[2] ms if ARGV[1] (this holder's token) still holds it.
RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
#: Delete the lease KEYS[1] if ARGV[1] still holds it.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class LeaseLost(Exception):
    """The lease could not be taken in time, or was lost while held (LeaseLapsed)."""


class LeaseLapsed(LeaseLost):
    """The lease was lost while held: another instance has it now; the body holding it was cut short."""


#: Seconds between the cancels sent to a holder's body once its lease is lost, until it leaves: Python 3.11's
#: asyncio.wait_for drops a cancel that lands as the operation it waits for completes, and redis-py sends
#: every command through it (see background.stop_if_cancelled), so one cancel is often not enough.
RECANCEL = 0.05


class _Hold:
    """One holding of the lease by the task running the body of an `async with`."""

    def __init__(self, lock: Lock, body: asyncio.Task[Any]) -> None:
        self.lock = lock
        self.body = body
        self.outside = body.cancelling()  # cancels asked of the task before the body began
        self.cancels = 0  # asked by the renewer once the lease was lost
        self.lapsed = False  # found lost while the body ran
        self.ending = False  # the body has left: no more cancels
        self.gone = False  # (set as the body leaves) the lease was lost, or may have been, while the body ran

    def lost(self) -> bool:
        """Found lost by the renewer, or past the time the lease surely lasts with no renewal that took (a
        process that stalled, its renewer not run: another instance may hold it now)."""
        return self.lapsed or time.monotonic() >= self.lock._until

    def cancel(self) -> None:
        if self.body.cancel():
            self.cancels += 1

    def withdraw(self) -> bool:
        """Take back the renewer's cancels; whether the task is still asked to stop by someone else."""
        for _ in range(self.cancels):
            self.body.uncancel()
        self.cancels = 0
        return self.body.cancelling() > self.outside


#: The holds of the running task (and of the tasks it starts), outermost first: a step checks them all, so a
#: send under the relayer lock is refused when the leader lease around it is lost.
_HOLDS: contextvars.ContextVar[tuple[_Hold, ...]] = contextvars.ContextVar("ethml_lease_holds", default=())


def check_held() -> None:
    """LeaseLapsed if a lease the running task holds (any of them: the relayer lock, the leader lease around it)
    was lost while held, or may have been (no renewal took within its ttl: the process stalled): a holder calls
    it before a step that must not run beside another holder's (a signature, a send), should the cancel not
    have reached it."""
    for hold in _HOLDS.get():
        if not hold.ending and hold.lost():
            raise LeaseLapsed(hold.lock._lapsed_text())


class Lock:
    def __init__(self, store: Store, name: str, ttl: float) -> None:
        self.store, self.key, self.ttl = store, k.lock(name), ttl
        self.token = secrets.token_hex(8)
        self._until = 0.0  # (monotonic) the lease is surely this holder's until then: ttl past the last SET
        # or renewal that took, counted from when it was sent

    async def acquire(self, wait: float = 30.0) -> bool:
        """Take the lease, or renew it if this holder has it; False if another holds it past `wait` s."""
        deadline = time.monotonic() + wait
        ms = int(self.ttl * 1000)
        while True:
            sent = time.monotonic()
            if await self.store.redis.set(self.key, self.token, nx=True, px=ms):
                self._until = sent + self.ttl
                return True
            sent = time.monotonic()
            if await self.store.redis.eval(RENEW, 1, self.key, self.token, ms):
                self._until = sent + self.ttl
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)

    async def release(self) -> None:
        await self.store.redis.eval(RELEASE, 1, self.key, self.token)

    @contextlib.asynccontextmanager
    async def held(self, wait: float) -> AsyncIterator[None]:
        """The lease for the body of the `async with`, renewed every third of its ttl meanwhile; should it be
        lost, the body is cancelled and LeaseLapsed raised."""
        if not await self.acquire(wait):
            raise LeaseLost(f"{self.key} is held by another instance for over {wait:g} s")
        hold: _Hold | None = None
        try:
            async with self._kept() as hold:
                yield
        finally:
            if hold is None or not hold.gone:  # (lost: not this holder's to release, and Redis may not answer)
                await self.release()

    @contextlib.asynccontextmanager
    async def renewing(self) -> AsyncIterator[None]:
        """Keep a lease this holder has taken (`acquire`) renewed for the body of the `async with`, and hold it
        on after (it lapses within its ttl unless renewed again): for a holder that leads pass after pass, and
        whose pass may take longer than the ttl. Should it be lost, the body is cancelled and LeaseLapsed
        raised."""
        async with self._kept():
            yield

    @contextlib.asynccontextmanager
    async def _kept(self) -> AsyncIterator[_Hold]:
        """Renew the lease while the body runs. Once it is lost, the body is cancelled (again every RECANCEL s
        until it leaves) and LeaseLapsed raised, whatever the body ended with, unless the task was also cancelled
        from outside (a shutdown: that goes on as it was)."""
        body = asyncio.current_task()
        assert body is not None
        hold = _Hold(self, body)
        holds = _HOLDS.set((*_HOLDS.get(), hold))
        renewer = asyncio.create_task(self._renew(hold), name="lease-renewer")
        try:
            yield hold
        except BaseException as exc:
            if await self._end(hold, renewer, holds):
                raise LeaseLapsed(self._lapsed_text()) from exc
            raise
        if await self._end(hold, renewer, holds):
            raise LeaseLapsed(self._lapsed_text())

    async def _end(self, hold: _Hold, renewer: asyncio.Task[None], holds: contextvars.Token[tuple[_Hold, ...]]) -> bool:
        """The body has left: stop the renewer and take back its cancels; whether the lease was lost while the
        body ran, or may have been (no renewal took within the ttl), and the task is not asked to stop from
        outside."""
        lost = hold.gone = hold.lost()  # before the renewer is stopped: a stalled process finds its time past here
        hold.ending = True  # before any await: the renewer sends no cancel from here on
        try:
            await stop_helper(renewer)
        finally:
            outside = hold.withdraw()
            _HOLDS.reset(holds)
        return lost and not outside

    def _lapsed_text(self) -> str:
        return (
            f"lost while held: another instance has it now (this one stalled, or could not reach Redis, for over "
            f"its ttl of {self.ttl:g} s)"
        )

    async def _renew(self, hold: _Hold) -> None:
        """Every third of the ttl, extend the lease. A renewal Redis fails, or does not answer within the time
        the lease surely has left, is tried again while there is time left (as is one that fails on anything
        else); once a renewal finds it gone, or none took within the ttl (counted from when the last one that took
        was sent), it is lost: the body is cancelled until it leaves."""
        ms = int(self.ttl * 1000)
        while True:
            stop_if_cancelled()
            await asyncio.sleep(max(0.0, min(self.ttl / 3, self._until - time.monotonic())))
            stop_if_cancelled()
            left = self._until - time.monotonic()
            if left > 0:
                sent = time.monotonic()
                try:
                    held = await asyncio.wait_for(self.store.redis.eval(RENEW, 1, self.key, self.token, ms), left)
                except (aioredis.RedisError, OSError, TimeoutError) as exc:
                    log.warning("lease_renewal_failed", lease=self.key, error=str(exc) or type(exc).__name__)
                    continue
                except Exception as exc:
                    # Not expected (a reply it cannot read): tried again as a failure is, never the end of the
                    # renewer, which would leave the body unstopped past the ttl.
                    log.exception("lease_renewal_failed", lease=self.key, error=repr(exc))
                    continue
                stop_if_cancelled()  # (a stop dropped inside the call: the body has left)
                if held:
                    self._until = sent + self.ttl
                    continue
            if hold.ending:
                return
            hold.lapsed = True
            log.warning("lease_lost", lease=self.key)
            while not hold.ending:
                hold.cancel()
                await asyncio.sleep(RECANCEL)
            return
