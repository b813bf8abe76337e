"""Admin calls through the timelock and the checks `ethml deploy` makes before it sends anything, on the
embedded chain (py-evm: its clock moves only when told, so the delay is exact)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from web3 import AsyncWeb3

from ethml.chain import ModelKind, ModelSpec, Parameters, deploy_system, dev_account, embedded_chain
from ethml.chain.admin import admin_call
from ethml.chain.deploy import Deployment, model_id_from, register_call, registry_contract, timelock_contract
from ethml.chain.embedded import time_travel
from ethml.chain.journal import Journal, Outcome
from ethml.chain.rpc import http_web3
from ethml.chain.timelock import OpState, operation_for
from ethml.errors import ChainError, DeploymentError, TransactionReverted
from ethml.rollout import InsufficientFunds, Rollout, RolloutSettings

IRIS = ModelSpec(
    "iris", "QmaMCuLekT2QpoeynU6sqwo8pcwRPkv5meFtrBmbEVbk7Z", "0x" + "11" * 32, ModelKind.CLASSIFICATION, 0, 4
)
WINE = replace(IRIS, name="wine", feature_count=13)


@pytest.fixture
async def w3() -> AsyncWeb3[Any]:
    return await embedded_chain(4)


async def test_register_through_the_timelock_waits_out_its_delay(w3: AsyncWeb3[Any]) -> None:
    deployer = dev_account(0)
    dep = await deploy_system(w3, deployer, models=[IRIS], timelock_delay=3600)
    registry = registry_contract(w3, dep.registry)
    call = register_call(registry, WINE)
    op = operation_for(call)
    assert (
        op.id
        == await timelock_contract(w3, str(dep.timelock))
        .functions.hashOperation(op.target, 0, op.data, bytes(32), bytes(32))
        .call()
    )

    scheduled = await admin_call(w3, dep, deployer, registry, "MODEL_ADMIN_ROLE", call, "registering wine")
    assert scheduled.action == "scheduled" and scheduled.status is not None
    assert scheduled.status.state == OpState.WAITING and scheduled.status.ready_at is not None
    assert 3590 <= scheduled.status.ready_at - scheduled.status.now <= 3600
    again = await admin_call(w3, dep, deployer, registry, "MODEL_ADMIN_ROLE", call, "registering wine")
    assert again.action == "waiting" and again.receipt is None

    with pytest.raises(
        TransactionReverted,
        match=r"the timelock's delay has not passed: operation 0x[0-9a-f]{64} "
        r"can be executed from .*\(in (1 h|59 min \d+ s)\) \(TimelockUnexpectedOperationState\); not sent",
    ) as early:
        await admin_call(w3, dep, deployer, registry, "MODEL_ADMIN_ROLE", call, "registering wine", mode="execute")
    assert early.value.preflight
    time_travel(w3, 3601)
    executed = await admin_call(w3, dep, deployer, registry, "MODEL_ADMIN_ROLE", call, "w", mode="execute")
    assert executed.action == "executed" and executed.receipt is not None
    assert model_id_from(registry, executed.receipt) == 2
    done = await admin_call(w3, dep, deployer, registry, "MODEL_ADMIN_ROLE", call, "registering wine")
    assert done.action == "done"


async def test_a_scheduled_operation_can_be_cancelled(w3: AsyncWeb3[Any]) -> None:
    deployer = dev_account(0)
    dep = await deploy_system(w3, deployer, models=[IRIS], timelock_delay=60)
    registry = registry_contract(w3, dep.registry)
    call = registry.functions.deactivateModel(1)
    await admin_call(w3, dep, deployer, registry, "MODEL_ADMIN_ROLE", call, "deactivating model 1")
    cancelled = await admin_call(w3, dep, deployer, registry, "MODEL_ADMIN_ROLE", call, "d", mode="cancel")
    assert cancelled.action == "cancelled" and cancelled.status is not None
    assert cancelled.status.state == OpState.UNSET
    time_travel(w3, 61)
    with pytest.raises(TransactionReverted, match=r"operation 0x[0-9a-f]{64} is not scheduled: schedule it first"):
        await admin_call(w3, dep, deployer, registry, "MODEL_ADMIN_ROLE", call, "d", mode="execute")
    assert (await registry.functions.getModel(1).call())[4], "still active"


async def test_a_call_the_registry_would_refuse_is_refused_before_scheduling(anvil_url: str) -> None:
    """Made as the timelock will make it (an eth_call from the timelock), so not after the delay. On anvil:
    the in-process chain charges an eth_call's gas to its sender, and the timelock holds no ETH."""

    w3: AsyncWeb3[Any] = http_web3(anvil_url)
    try:
        deployer = dev_account(0)
        dep = await deploy_system(w3, deployer, timelock_delay=60)
        registry = registry_contract(w3, dep.registry)
        bad = register_call(registry, replace(IRIS, cid="Qm" * 40))
        with pytest.raises(TransactionReverted, match=r"the CID is 80 bytes, over the 64-byte limit \(CidTooLong\)"):
            await admin_call(w3, dep, deployer, registry, "MODEL_ADMIN_ROLE", bad, "registering a bad model")
        unknown = registry.functions.deactivateModel(9)
        with pytest.raises(TransactionReverted, match=r"model 9 is not registered \(UnknownModel\)"):
            await admin_call(w3, dep, deployer, registry, "MODEL_ADMIN_ROLE", unknown, "deactivating model 9")
    finally:
        await w3.provider.disconnect()


async def test_direct_admin_and_who_may_not(w3: AsyncWeb3[Any]) -> None:
    dep = await deploy_system(w3, dev_account(0))
    registry = registry_contract(w3, dep.registry)
    sent = await admin_call(w3, dep, dev_account(0), registry, "MODEL_ADMIN_ROLE", register_call(registry, IRIS), "r")
    assert sent.action == "sent" and sent.status is None
    with pytest.raises(ChainError, match="holds the MODEL_ADMIN_ROLE itself"):
        await admin_call(
            w3, dep, dev_account(0), registry, "MODEL_ADMIN_ROLE", register_call(registry, IRIS), "r", mode="execute"
        )
    with pytest.raises(DeploymentError, match="lacks the MODEL_ADMIN_ROLE and this deployment has no timelock"):
        await admin_call(w3, dep, dev_account(1), registry, "MODEL_ADMIN_ROLE", register_call(registry, IRIS), "r")


async def test_a_timelocked_deployment_leaves_the_deployer_no_admin_role(w3: AsyncWeb3[Any]) -> None:
    from ethml.chain.verify import verify_deployment

    deployer = dev_account(0)
    dep = await deploy_system(w3, deployer, models=[IRIS], timelock_delay=60)
    checks = await verify_deployment(w3, dep)
    assert all(c.ok for c in checks), [c for c in checks if not c.ok]
    assert any("the deployer holds none of them" in c.what for c in checks)
    with pytest.raises(ChainError, match="lacks the timelock's PROPOSER_ROLE"):
        await admin_call(w3, dep, dev_account(1), registry_contract(w3, dep.registry), "MODEL_ADMIN_ROLE",
                         register_call(registry_contract(w3, dep.registry), WINE), "r")  # fmt: skip


# ------------------------------------------------------------------ before `ethml deploy` sends anything


def abandoned_journals(data_dir: Path) -> list[Path]:
    return list(data_dir.glob("deployments/*.journal.abandoned-*.json"))


def settings(**changes: Any) -> RolloutSettings:
    return replace(
        RolloutSettings(holders={dev_account(0).address: 10**24}, models=[IRIS], timelock_delay=60), **changes
    )


async def test_prepare_refuses_a_journal_of_other_settings_or_key(w3: AsyncWeb3[Any], tmp_path: Path) -> None:
    chain_id = await w3.eth.chain_id
    journal = Rollout(w3, dev_account(0), settings(), chain_id=chain_id, data_dir=tmp_path).journal_path
    Journal(
        journal, {"chain_id": chain_id, "deployer": dev_account(0).address, "settings": settings().as_json()}
    ).save()
    other = Rollout(w3, dev_account(0), settings(timelock_delay=7), chain_id=chain_id, data_dir=tmp_path)
    with pytest.raises(DeploymentError, match=r"other settings \(timelock_delay differ\).*--restart"):
        await other.prepare()
    stranger = Rollout(w3, dev_account(1), settings(), chain_id=chain_id, data_dir=tmp_path)
    with pytest.raises(DeploymentError, match=f"was started by {dev_account(0).address}"):
        await stranger.prepare()
    same = Rollout(w3, dev_account(0), settings(), chain_id=chain_id, data_dir=tmp_path)
    plan = await same.prepare()
    assert same.resumed and plan.done == set() and len(plan.steps) == 20
    busy = Rollout(w3, dev_account(0), settings(), chain_id=chain_id, data_dir=tmp_path)
    with pytest.raises(DeploymentError, match="another deployment is using"):
        await busy.prepare()
    same.close()


async def test_prepare_refuses_a_journal_of_a_reset_chain(w3: AsyncWeb3[Any], tmp_path: Path) -> None:
    chain_id = await w3.eth.chain_id
    rollout = Rollout(w3, dev_account(0), settings(), chain_id=chain_id, data_dir=tmp_path)
    journal = Journal(
        rollout.journal_path,
        {"chain_id": chain_id, "deployer": dev_account(0).address, "settings": settings().as_json()},
    )
    journal.record_done("token", "EMLToken (EML)", Outcome("0x" + "00" * 32, 1, 1, "0x" + "12" * 20))
    with pytest.raises(DeploymentError, match=r"no contract there \(was it reset\?\): pass --restart"):
        await rollout.prepare()
    restarted = Rollout(w3, dev_account(0), settings(), chain_id=chain_id, data_dir=tmp_path, restart=True)
    await restarted.prepare()
    restarted.close()
    assert abandoned_journals(tmp_path)


async def test_prepare_checks_funds_and_dry_runs_the_settings(w3: AsyncWeb3[Any], tmp_path: Path) -> None:
    chain_id = await w3.eth.chain_id
    poor = Account.create()
    with pytest.raises(
        InsufficientFunds, match=rf"{poor.address} holds 0 ETH on chain {chain_id}; the 20 transactions"
    ):
        await Rollout(w3, poor, settings(), chain_id=chain_id, data_dir=tmp_path).prepare()
    bad = settings(parameters=Parameters(quorum=7))
    with pytest.raises(DeploymentError, match=r"fails in a dry run, nothing was sent: .*quorum"):
        await Rollout(w3, dev_account(0), bad, chain_id=chain_id, data_dir=tmp_path).prepare()
    assert await w3.eth.get_transaction_count(dev_account(0).address) == 0


async def test_a_finished_rollout_writes_the_file_and_keeps_the_old_one(w3: AsyncWeb3[Any], tmp_path: Path) -> None:
    chain_id = await w3.eth.chain_id
    first = Rollout(w3, dev_account(0), settings(), chain_id=chain_id, data_dir=tmp_path)
    await first.prepare()
    dep = await first.run()
    assert Deployment.load(first.path) == dep and first.record_path.exists() and not first.journal_path.exists()
    with pytest.raises(DeploymentError, match="already has a deployment file"):
        await Rollout(w3, dev_account(0), settings(), chain_id=chain_id, data_dir=tmp_path).prepare()
    second = Rollout(w3, dev_account(0), settings(), chain_id=chain_id, data_dir=tmp_path, overwrite=True)
    plan = await second.prepare()
    assert plan.done == set()
    new = await second.run()
    assert new.ethml != dep.ethml and Deployment.load(first.path.with_name(first.path.name + ".bak")) == dep
