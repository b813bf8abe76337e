"""deploy_system's training steps: TrainingValidation, then TrainingTasks on the token and the
registry, holding the registrar role, no relayer role (tasks are relayed on signed terms), and its
admin and pauser roles with the timelock on a timelocked deployment."""

from __future__ import annotations

import re

import pytest

from ethml.chain import deploy_system, dev_account, embedded_chain, registry_contract, send, training_contract
from ethml.chain.deploy import MIN_SLASH_BPS, TrainingParameters
from ethml.errors import DeploymentError, TransactionReverted


async def test_training_is_deployed_on_the_token_and_registry_and_timelocked() -> None:
    w3 = await embedded_chain(2)
    deployer = dev_account(0)
    deployment = await deploy_system(w3, deployer, timelock_delay=3600)
    assert deployment.training is not None and deployment.timelock is not None
    tasks = training_contract(w3, deployment.training)
    assert await tasks.functions.token().call() == deployment.token
    assert await tasks.functions.registry().call() == deployment.registry
    # Its second half, deployed first as a step of its own, made for the same token and registry.
    validation = training_contract(w3, await tasks.functions.validation().call())
    assert len(await w3.eth.get_code(validation.address)) > 10_000
    assert await validation.functions.token().call() == deployment.token
    assert await validation.functions.registry().call() == deployment.registry
    assert await tasks.functions.parametersVersion().call() == 1
    registry = registry_contract(w3, deployment.registry)
    registrar = await registry.functions.REGISTRAR_ROLE().call()
    assert await registry.functions.hasRole(registrar, deployment.training).call()
    assert not any(item.get("name") == "RELAYER_ROLE" for item in tasks.abi)
    pauser = await tasks.functions.PAUSER_ROLE().call()
    for role in (bytes(32), pauser):
        assert await tasks.functions.hasRole(role, deployment.timelock).call()
        assert not await tasks.functions.hasRole(role, deployer.address).call()
    with pytest.raises(TransactionReverted, match="AccessControlUnauthorizedAccount"):
        await send(w3, deployer, tasks.functions.setParameters(TrainingParameters().as_tuple()))
    with pytest.raises(TransactionReverted, match="lacks PAUSER_ROLE"):
        await send(w3, deployer, tasks.functions.pause())


async def test_training_parameters_mirror_the_contract() -> None:
    """Every field of TrainingBase.Parameters, in order, by name: a field added to the contract fails here."""
    w3 = await embedded_chain(1)
    params = TrainingParameters()
    deployment = await deploy_system(w3, dev_account(0), training=params)
    tasks = training_contract(w3, deployment.training or "")
    item = next(i for i in tasks.abi if i.get("name") == "parameters")
    names = [c["name"] for c in item["outputs"][0]["components"]]
    snake = ["".join("_" + c.lower() if c.isupper() else c for c in n) for n in names]
    assert snake == list(params.__dataclass_fields__)
    assert list(await tasks.functions.parameters().call()) == list(params.as_tuple())


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"slash_bps": 99}, "below TrainingTasks' minimum 100"),
        ({"no_show_bps": 0}, "no_show_bps must be 1..slash_bps"),
        ({"min_bond": 0}, "min_bond must be above 0"),
    ],
)
def test_training_parameters_without_penalties_are_refused_before_deploying(change: dict[str, int], says: str) -> None:
    with pytest.raises(DeploymentError, match=re.escape(says)):
        TrainingParameters(**change)  # type: ignore[arg-type]


async def test_the_python_lower_bounds_are_the_contract_s() -> None:
    """TrainingTasks refuses what TrainingParameters refuses, in words: MIN_SLASH_BPS is its constant."""
    w3 = await embedded_chain(1)
    deployer = dev_account(0)
    deployment = await deploy_system(w3, deployer)
    tasks = training_contract(w3, deployment.training or "")
    assert await tasks.functions.MIN_SLASH_BPS().call() == MIN_SLASH_BPS
    fields = list(TrainingParameters.__dataclass_fields__)
    for change, says in (
        ({"slash_bps": MIN_SLASH_BPS - 1, "no_show_bps": 1}, "slashBps below 1% or noShowBps 0"),
        ({"no_show_bps": 0}, "slashBps below 1% or noShowBps 0"),
        ({"min_bond": 0}, "minBond is zero"),
    ):
        params = list(TrainingParameters().as_tuple())
        for name, value in change.items():
            params[fields.index(name)] = value
        with pytest.raises(TransactionReverted, match=re.escape(f"invalid parameters: {says}")):
            await send(w3, deployer, tasks.functions.setParameters(tuple(params)))
