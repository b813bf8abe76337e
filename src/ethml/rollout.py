"""Deploy the system onto any chain (`ethml deploy`): plan, cost, a journaled run, the deployment file.

1. `Rollout.prepare()` refuses to replace a deployment file unless told, opens (or resumes) the journal
   of steps beside it and holds it for this process, dry-runs every step on an in-process chain (the
   same contracts, settings and order: the exact gas of each step, and any revert found before a wei
   is spent), prices the steps not yet mined at the chain's current fees, and checks the balance.
2. `Rollout.run()` runs `deploy_system` with a journal on disk (ethml.chain.steps): kill it, lose a
   transaction, rerun it with the same options and it continues where it stopped. At the end the
   deployment file goes where `ethml mine`, `request` and `serve` look for it (by chain id), the
   replaced one is kept as `.bak`, and the journal stays as the record of every transaction.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ethml.chain.deploy import (
    EML,
    Deployment,
    ModelSpec,
    Parameters,
    TrainingParameters,
    deploy_system,
    deployment_path,
)
from ethml.chain.journal import Journal
from ethml.chain.steps import REPLACE_AFTER, StepEvent, StepRunner
from ethml.chain.tx import GAS_MARGIN, fee_fields
from ethml.errors import ChainError, DeploymentError

if TYPE_CHECKING:
    from collections.abc import Callable

    from eth_account.signers.local import LocalAccount
    from web3 import AsyncWeb3

#: The timelock delay of a deployment onto a public chain unless told otherwise: two days, long enough
#: for miners and requesters to see a parameter change or a new model coming and react.
DEFAULT_TIMELOCK_DELAY = 2 * 24 * 3600
#: EML minted to the deployer (to hand to miners for their bonds, and to requesters for tips).
DEFAULT_SUPPLY = 1_000_000 * EML


@dataclass(frozen=True)
class RolloutSettings:
    """Everything that decides the transactions of a deployment; a resumed run must match it exactly."""

    holders: dict[str, int]
    parameters: Parameters = field(default_factory=Parameters)
    models: list[ModelSpec] = field(default_factory=list)
    timelock_delay: int | None = DEFAULT_TIMELOCK_DELAY
    training: TrainingParameters = field(default_factory=TrainingParameters)

    def as_json(self) -> dict[str, Any]:
        data = {
            "holders": self.holders,
            "parameters": asdict(self.parameters),
            "models": [asdict(m) for m in self.models],
            "timelock_delay": self.timelock_delay,
            "training": asdict(self.training),
        }
        loaded: dict[str, Any] = json.loads(json.dumps(data))  # the form a journal gives back
        return loaded


@dataclass(frozen=True)
class PlannedStep:
    key: str
    what: str
    gas: int


@dataclass
class Plan:
    """The steps of the deployment, which of them are mined already, and what the rest costs."""

    steps: list[PlannedStep]
    done: set[str]
    base_fee: int
    tip: int
    max_fee: int
    balance: int

    @property
    def remaining(self) -> list[PlannedStep]:
        return [s for s in self.steps if s.key not in self.done]

    @property
    def gas(self) -> int:
        return sum(s.gas for s in self.remaining)

    @property
    def expected_cost(self) -> int:
        """At the current base fee plus the tip."""
        return self.gas * (self.base_fee + self.tip)

    @property
    def max_cost(self) -> int:
        """If every transaction paid its fee cap (the base fee doubled)."""
        return self.gas * self.max_fee

    @property
    def required(self) -> int:
        """What the account must hold: nodes also want each transaction's gas limit (the estimate plus
        a margin) covered at the fee cap when it is sent."""
        largest = max((s.gas for s in self.remaining), default=0)
        return self.max_cost + int(largest * (GAS_MARGIN - 1)) * self.max_fee


async def plan_steps(settings: RolloutSettings) -> list[PlannedStep]:
    """Every step with its gas, from a dry run of the whole deployment on an in-process chain (py-evm):
    the same contracts, constructor arguments and calls, so the same gas give or take a few hundred,
    and a revert (a parameter out of range, a malformed model) found before anything is spent."""
    from ethml.chain.accounts import dev_account
    from ethml.chain.embedded import embedded_chain

    w3 = await embedded_chain(1)
    seen: list[PlannedStep] = []

    def record(event: StepEvent) -> None:
        if event.state == "mined":
            seen.append(PlannedStep(event.key, event.what, int(event.gas_used or 0)))

    deployer = dev_account(0)
    runner = StepRunner(w3, deployer, progress=record)
    try:
        await _deploy(w3, deployer, settings, runner)
    except ChainError as exc:
        raise DeploymentError(f"the deployment fails in a dry run, nothing was sent: {exc}") from None
    return seen


async def _deploy(
    w3: AsyncWeb3[Any], account: LocalAccount, settings: RolloutSettings, runner: StepRunner
) -> Deployment:
    return await deploy_system(
        w3,
        account,
        holders=settings.holders,
        parameters=settings.parameters,
        models=settings.models,
        timelock_delay=settings.timelock_delay,
        training=settings.training,
        runner=runner,
    )


class Rollout:
    """One deployment of the system onto the chain behind `w3`, journaled under `data_dir`."""

    def __init__(
        self,
        w3: AsyncWeb3[Any],
        account: LocalAccount,
        settings: RolloutSettings,
        *,
        chain_id: int,
        data_dir: Path | None = None,
        overwrite: bool = False,
        restart: bool = False,
        priority_gwei: float = 1.0,
        replace_after: float = REPLACE_AFTER,
    ) -> None:
        self.w3 = w3
        self.account = account
        self.settings = settings
        self.chain_id = chain_id
        self.path = deployment_path(chain_id, data_dir)
        self.journal_path = self.path.with_name(f"{chain_id}.journal.json")
        self.record_path = self.path.with_name(f"{chain_id}.transactions.json")
        self.overwrite = overwrite
        self.restart = restart
        self.priority_gwei = priority_gwei
        self.replace_after = replace_after
        self.journal: Journal | None = None
        self.resumed = False

    # ------------------------------------------------------------------ before anything is sent

    async def prepare(self) -> Plan:
        """Check, open the journal, dry-run and price the deployment. Sends nothing.

        Raises:
            DeploymentError: a deployment file exists (without `overwrite`), the journal belongs to
                other settings or another account, or the dry run reverts.
            InsufficientFunds: the account cannot pay for the steps left.
        """
        await self._refuse_existing()
        self.journal = self._open_journal()
        try:
            await self._check_journal_on_chain(self.journal)
            steps = await plan_steps(self.settings)
            fees = await fee_fields(self.w3, priority_gwei=self.priority_gwei)
            tip = fees["maxPriorityFeePerGas"]
            plan = Plan(
                steps=steps,
                done=self.journal.done_keys(),
                base_fee=(fees["maxFeePerGas"] - tip) // 2,
                tip=tip,
                max_fee=fees["maxFeePerGas"],
                balance=int(await self.w3.eth.get_balance(self.account.address)),
            )
            if plan.balance < plan.required:
                raise InsufficientFunds(self.account.address, self.chain_id, plan)
        except BaseException:
            self.close()
            raise
        return plan

    async def _refuse_existing(self) -> None:
        if not self.path.exists() or self.overwrite:
            return
        try:
            existing = Deployment.load(self.path)
        except DeploymentError:
            raise DeploymentError(
                f"{self.path} exists but is unreadable; move it away or pass --overwrite to replace it"
            ) from None
        code = await self.w3.eth.get_code(self.w3.to_checksum_address(existing.ethml))
        where = "" if len(code) else ", whose contracts are not on this chain (was it reset?)"
        raise DeploymentError(
            f"chain {self.chain_id} already has a deployment file ({self.path}: EthML at {existing.ethml}{where}); "
            "pass --overwrite to deploy anew and replace it (the old file is kept as .bak)"
        )

    def _open_journal(self) -> Journal:
        header = {"chain_id": self.chain_id, "deployer": self.account.address, "settings": self.settings.as_json()}
        if self.journal_path.exists() and self.restart:
            abandoned = self.journal_path.with_name(f"{self.chain_id}.journal.abandoned-{int(time.time())}.json")
            self.journal_path.replace(abandoned)
        if not self.journal_path.exists():
            journal = Journal(self.journal_path, header)
            journal.lock()
            return journal
        journal = Journal.load(self.journal_path)
        journal.lock()
        try:
            self._check_same(journal.header, header)
        except BaseException:
            journal.unlock()
            raise
        self.resumed = True
        return journal

    def _check_same(self, theirs: dict[str, Any], ours: dict[str, Any]) -> None:
        advice = (
            f"run the same command as before to finish it, or pass --restart to abandon it "
            f"(the contracts it deployed stay on chain, unused; its journal is kept beside {self.journal_path.name})"
        )
        if theirs.get("deployer") != ours["deployer"]:
            raise DeploymentError(
                f"an unfinished deployment to chain {self.chain_id} was started by {theirs.get('deployer')}, not "
                f"{ours['deployer']} ({self.journal_path}): use that key, or {advice}"
            )
        old, new = theirs.get("settings", {}), ours["settings"]
        changed = sorted(k for k in {*old, *new} if old.get(k) != new.get(k))
        if changed:
            raise DeploymentError(
                f"an unfinished deployment to chain {self.chain_id} ({self.journal_path}) was started with other "
                f"settings ({', '.join(changed)} differ): {advice}"
            )

    async def _check_journal_on_chain(self, journal: Journal) -> None:
        """A journal whose contracts have no code describes another chain's history (a devnet restarted
        from scratch under the same chain id): resuming it would skip steps that never happened here."""
        for record in journal.steps.values():
            if record.done is not None and record.done.address is not None:
                code = await self.w3.eth.get_code(self.w3.to_checksum_address(record.done.address))
                if not len(code):
                    raise DeploymentError(
                        f"the unfinished deployment in {self.journal_path} deployed {record.what} at "
                        f"{record.done.address}, but chain {self.chain_id} has no contract there (was it reset?): "
                        "pass --restart to start afresh"
                    )

    # ------------------------------------------------------------------ the run

    async def run(self, progress: Callable[[StepEvent], None] | None = None) -> Deployment:
        """Run (or continue) the deployment and write the deployment file. `prepare()` first."""
        if self.journal is None:
            raise DeploymentError("Rollout.run() before prepare()")
        try:
            runner = StepRunner(
                self.w3,
                self.account,
                self.journal,
                progress=progress,
                priority_gwei=self.priority_gwei,
                replace_after=self.replace_after,
            )
            deployment = await _deploy(self.w3, self.account, self.settings, runner)
            if self.path.exists():
                self.path.replace(self.path.with_name(self.path.name + ".bak"))
            deployment.save(self.path)
            self.journal_path.replace(self.record_path)
        finally:
            self.close()
        return deployment

    def close(self) -> None:
        if self.journal is not None:
            self.journal.unlock()


class InsufficientFunds(DeploymentError):
    def __init__(self, address: str, chain_id: int, plan: Plan) -> None:
        self.plan = plan
        short = plan.required - plan.balance
        super().__init__(
            f"{address} holds {eth(plan.balance)} on chain {chain_id}; the {len(plan.remaining)} transactions "
            f"left need up to {eth(plan.required)} ({plan.gas:,} gas at up to {gwei(plan.max_fee)} per gas): "
            f"send it at least {eth(short)} more"
        )


def eth(wei: int) -> str:
    """`0.0123 ETH`: four significant decimals past the leading zeros, at least."""
    if wei == 0:
        return "0 ETH"
    value = wei / 10**18
    digits = max(4, 4 - int(f"{value:e}".split("e")[1]))
    return f"{value:.{digits}f}".rstrip("0").rstrip(".") + " ETH"


def gwei(wei: int) -> str:
    return f"{wei / 10**9:.3g} gwei"
