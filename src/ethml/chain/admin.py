"""Admin calls on a deployment (registering or deactivating a model): sent directly by an account that
holds the role, or else through the deployment's timelock (ethml.chain.timelock): scheduled, then
executed once the delay has passed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from eth_account.signers.local import LocalAccount
from web3 import AsyncWeb3
from web3.contract import AsyncContract
from web3.types import TxReceipt

from ethml.chain import timelock as tl
from ethml.chain.deploy import Deployment, role, timelock_contract
from ethml.chain.reverts import decode_revert, is_revert, revert_data
from ethml.chain.tx import abi_of, moment_of, revert_reason, send
from ethml.errors import ChainError, DeploymentError, TransactionReverted

Mode = Literal["auto", "schedule", "execute", "cancel"]
Action = Literal["sent", "scheduled", "executed", "cancelled", "waiting", "ready", "done"]


@dataclass(frozen=True)
class AdminResult:
    """What happened: `sent` (directly), `scheduled`, `executed`, `cancelled` (a transaction each), or,
    with nothing sent, `waiting` (scheduled, delay not over), `ready` (execute it) or `done` already."""

    action: Action
    receipt: TxReceipt | None = None
    status: tl.OperationStatus | None = None
    timelock: str | None = None

    @property
    def operation(self) -> str | None:
        return self.status.operation.hex_id if self.status is not None else None


async def admin_call(
    w3: AsyncWeb3[Any],
    deployment: Deployment,
    signer: LocalAccount,
    contract: AsyncContract,
    role_name: str,
    call: Any,
    what: str,
    *,
    mode: Mode = "auto",
    salt: bytes = tl.ZERO,
) -> AdminResult:
    """Make `call` on `contract`, which needs `role_name`: directly if `signer` holds it, else through
    the timelock. `mode` "auto" sends directly, or schedules, or says where a scheduled call stands;
    "schedule", "execute" and "cancel" do that one thing through the timelock."""
    if await contract.functions.hasRole(role(role_name), signer.address).call():
        if mode != "auto":
            raise ChainError(
                f"{signer.address} holds the {role_name} itself: it acts directly, without the timelock "
                "(drop --schedule/--execute/--cancel)"
            )
        return AdminResult("sent", await send(w3, signer, call, what=what))
    if deployment.timelock is None:
        raise DeploymentError(
            f"{signer.address} lacks the {role_name} and this deployment has no timelock: sign with the key that "
            f"holds it (the deployer, {deployment.deployer})"
        )
    timelock = timelock_contract(w3, deployment.timelock)
    if not await contract.functions.hasRole(role(role_name), timelock.address).call():
        raise DeploymentError(f"neither {signer.address} nor the timelock {timelock.address} holds the {role_name}")
    op = tl.operation_for(call, salt)
    if mode == "auto":
        now = await tl.status(w3, timelock, op)
        if now.state != tl.OpState.UNSET:
            action: Action = {tl.OpState.WAITING: "waiting", tl.OpState.READY: "ready"}.get(now.state, "done")  # type: ignore[assignment]
            return AdminResult(action, status=now, timelock=timelock.address)
        mode = "schedule"
    await _check_proposer_role(timelock, signer, mode)
    if mode == "schedule":
        # The call itself, as the timelock will make it: refused now rather than after the delay.
        await _check_as(w3, call, timelock.address, what)
        receipt = await tl.schedule(w3, signer, timelock, op, what)
    elif mode == "execute":
        receipt = await tl.execute(w3, signer, timelock, op, what)
    else:
        receipt = await tl.cancel(w3, signer, timelock, op, what)
    done: Action = {"schedule": "scheduled", "execute": "executed", "cancel": "cancelled"}[mode]  # type: ignore[assignment]
    return AdminResult(done, receipt, await tl.status(w3, timelock, op), timelock.address)


async def _check_proposer_role(timelock: AsyncContract, signer: LocalAccount, mode: Mode) -> None:
    needed = {"schedule": "PROPOSER_ROLE", "execute": "EXECUTOR_ROLE", "cancel": "CANCELLER_ROLE"}[mode]
    holders = [signer.address] + (["0x" + "00" * 20] if needed == "EXECUTOR_ROLE" else [])  # open executor role
    for holder in holders:
        if await timelock.functions.hasRole(role(needed), holder).call():
            return
    raise ChainError(
        f"{signer.address} lacks the timelock's {needed} (and the registry's admin role): sign with a proposer's "
        "key (the deployer's, unless the timelock granted it to others)"
    )


async def _check_as(w3: AsyncWeb3[Any], call: Any, sender: str, what: str) -> None:
    """TransactionReverted (nothing sent) if `call` made by `sender` would revert now."""
    try:
        await call.call({"from": sender})
    except Exception as exc:
        if type(exc).__name__ == "ValidationError" and "cannot afford" in str(exc):
            return  # the in-process chain (py-evm) charges eth_call gas to the sender; nodes do not
        if not is_revert(exc):
            raise
        data = revert_data(exc)
        error = decode_revert(data, abi_of(call)) if data is not None else None
        reason = revert_reason(exc, abi_of(call), await moment_of(w3, "latest"))
        raise TransactionReverted(what, reason, error=error, preflight=True) from None
