"""Read a deployment back from the chain and check its wiring: every contract has code, the token is
bound to the oracle, the training market may register models, the models are the ones named, and
where there is a timelock, it holds every admin role and the deployer none."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from web3 import AsyncWeb3

from ethml.chain.deploy import (
    HANDED_OVER,
    Deployment,
    ethml_contract,
    registry_contract,
    role,
    timelock_contract,
    token_contract,
    training_contract,
)


@dataclass(frozen=True)
class Check:
    what: str
    ok: bool
    detail: str = ""


async def verify_deployment(w3: AsyncWeb3[Any], dep: Deployment) -> list[Check]:
    checks: list[Check] = []
    named = {"EthML": dep.ethml, "EMLToken": dep.token, "ModelRegistry": dep.registry, "ExampleConsumer": dep.consumer}
    if dep.training:
        named["TrainingTasks"] = dep.training
    if dep.timelock:
        named["EthMLTimelock"] = dep.timelock
    for name, address in named.items():
        code = await w3.eth.get_code(w3.to_checksum_address(address))
        checks.append(Check(f"{name} at {address} has code", len(code) > 0))
    if not all(c.ok for c in checks):
        return checks  # the rest would only fail on the missing code
    bound = await token_contract(w3, dep.token).functions.oracle().call()
    checks.append(Check("EML is bound to the oracle", bound == w3.to_checksum_address(dep.ethml), f"bound to {bound}"))
    registry = registry_contract(w3, dep.registry)
    if dep.training:
        ok = await registry.functions.hasRole(role("REGISTRAR_ROLE"), dep.training).call()
        checks.append(Check("TrainingTasks may register accepted models", bool(ok)))
    for name, model_id in dep.models.items():
        try:
            model = await registry.functions.getModel(model_id).call()
            checks.append(
                Check(f"model {name} is registered as {model_id}", True, "active" if model[4] else "inactive")
            )
        except Exception:  # noqa: BLE001 - UnknownModel: the file names a model the registry lacks
            checks.append(Check(f"model {name} is registered as {model_id}", False, "not in the registry"))
    if dep.timelock:
        checks.extend(await _timelock_checks(w3, dep))
    return checks


async def _timelock_checks(w3: AsyncWeb3[Any], dep: Deployment) -> list[Check]:
    assert dep.timelock is not None
    contracts: dict[str, Any] = {
        "registry": registry_contract(w3, dep.registry),
        "oracle": ethml_contract(w3, dep.ethml),
    }
    held = list(HANDED_OVER)
    if dep.training:
        contracts["training"] = training_contract(w3, dep.training)
        held += [("training", "DEFAULT_ADMIN_ROLE"), ("training", "PAUSER_ROLE")]
    timelock_ok, deployer_free = True, True
    for where, name in held:
        c = contracts[where]
        timelock_ok &= bool(await c.functions.hasRole(role(name), dep.timelock).call())
        deployer_free &= not await c.functions.hasRole(role(name), dep.deployer).call()
    timelock = timelock_contract(w3, dep.timelock)
    delay = int(await timelock.functions.getMinDelay().call())
    self_admin = await timelock.functions.hasRole(role("DEFAULT_ADMIN_ROLE"), dep.timelock).call()
    deployer_admin = await timelock.functions.hasRole(role("DEFAULT_ADMIN_ROLE"), dep.deployer).call()
    return [
        Check("the timelock holds every admin role (registry, oracle, training market)", timelock_ok),
        Check("the deployer holds none of them", deployer_free),
        Check(
            f"the timelock administers itself (its delay, {delay:,} s, changes only through itself)",
            bool(self_admin) and not deployer_admin,
        ),
    ]
