"""deploy_system's training steps: TrainingValidation, then TrainingTasks on the token and the
registry, holding the registrar role, no relayer role (tasks are relayed on signed terms), and its
admin and pauser roles with the timelock on a timelocked deployment."""

from __future__ import annotations

import pytest

from ethml.chain import deploy_system, dev_account, embedded_chain, registry_contract, send, training_contract
from ethml.chain.deploy import TrainingParameters
from ethml.errors import TransactionReverted


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
