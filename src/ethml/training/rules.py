"""The market's parameters as a task's terms must meet them, read from TrainingTasks, and the terms
checked against them in words before anything is signed or sent: the contract would refuse the same
terms with `BadTerm` or `ParametersChanged`, after an approval and a transaction's fee.

The CLI (`ethml task create`), the client builder and the coordinator's `POST /api/tasks` use the same
check, so each says the same thing the same way.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from web3 import AsyncWeb3

from ethml.chain.deploy import Deployment
from ethml.chain.reverts import amount, duration
from ethml.training.onchain import read_struct, training
from ethml.training.terms import Terms

#: TrainingTasks.MAX_VALIDATIONS.
MAX_VALIDATIONS = 9


@dataclass(frozen=True)
class MarketRules:
    """The part of `TrainingTasks.parameters()` that decides whether terms are accepted, and the
    `parametersVersion` terms must carry."""

    version: int
    min_period: int
    max_period: int
    min_seat_reward: int
    validator_share_bps: int
    min_registration_reward: int
    registrations_per_period: int

    def min_reward(self, validations: int) -> int:
        """The least reward whose validators' part pays every seat min_seat_reward (rounded up, as the
        contract does)."""
        share = max(1, self.validator_share_bps)
        return (self.min_seat_reward * validations * 10_000 + share - 1) // share

    def problems(self, terms: Terms) -> list[str]:
        """What the contract would refuse in `terms`, in words (empty: nothing)."""
        out: list[str] = []
        if terms.parameters_version != self.version:
            out.append(
                f"the terms carry the market's parameters version {terms.parameters_version}, the contract is at "
                f"version {self.version}: make (and sign) them again"
            )
        v = terms.validations
        if v < 1 or v > MAX_VALIDATIONS or v % 2 == 0:
            out.append(f"validations must be odd, 1 to {MAX_VALIDATIONS}, not {v}")
        else:
            least = self.min_reward(v)
            if terms.reward < least:
                out.append(
                    f"a reward of {amount(terms.reward, 'EML')} is too small for {v} validator seats: the "
                    f"validators' part ({self.validator_share_bps / 100:g} %) must pay each seat at least "
                    f"{amount(self.min_seat_reward, 'EML')}, so the reward must be at least {amount(least, 'EML')}"
                )
        for name, seconds in (("submission", terms.submit_period), ("score", terms.score_period)):
            if not self.min_period <= seconds <= self.max_period:
                out.append(
                    f"the {name} period of {duration(seconds)} is outside the market's "
                    f"{duration(self.min_period)} to {duration(self.max_period)}"
                )
        return out


def _rules(p: dict[str, Any], version: int) -> MarketRules:
    return MarketRules(
        version=version,
        min_period=int(p["minPeriod"]),
        max_period=int(p["maxPeriod"]),
        min_seat_reward=int(p["minSeatReward"]),
        validator_share_bps=int(p["validatorShareBps"]),
        min_registration_reward=int(p["minRegistrationReward"]),
        registrations_per_period=int(p["registrationsPerPeriod"]),
    )


async def read_rules(w3: AsyncWeb3[Any], deployment: Deployment) -> MarketRules:
    tasks = training(w3, deployment)
    params = await read_struct(tasks, "parameters")
    return _rules(params, int(await tasks.functions.parametersVersion().call()))


class RulesCache:
    """The market's rules for a server that checks terms per request: read at most every `ttl`
    seconds, so a parameters change is seen within that time and requests cost no chain call. The
    requests that find the cache stale together share one read (the chain call and the contract
    object cost milliseconds; a read per waiting request was a third of the server's time under load);
    a failed read fails those requests and the next one reads again."""

    def __init__(self, w3: AsyncWeb3[Any], deployment: Deployment, ttl: float = 10.0, wait: float = 10.0) -> None:
        """`wait`: seconds a read may take before it fails (TimeoutError) the requests waiting on it: a node that
        accepts connections and never answers held them for web3's five tries of 30 s, 155 s in all."""
        self.w3, self.deployment, self.ttl, self.wait = w3, deployment, ttl, wait
        self._value: MarketRules | None = None
        self._read_at = 0.0
        self._reading: asyncio.Future[MarketRules] | None = None

    async def get(self) -> MarketRules:
        if self._value is not None and time.monotonic() - self._read_at <= self.ttl:
            return self._value
        if self._reading is None:
            self._reading = asyncio.ensure_future(self._read())
        # shield: a waiter that is cancelled (its client hung up) does not cancel the others' read.
        return await asyncio.shield(self._reading)

    async def _read(self) -> MarketRules:
        try:
            async with asyncio.timeout(self.wait):
                value = await read_rules(self.w3, self.deployment)
            self._value, self._read_at = value, time.monotonic()
            return value
        finally:
            self._reading = None
