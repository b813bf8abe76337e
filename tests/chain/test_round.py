"""Deploy through ethml.chain and run one full mining round, on py-evm in-process and on anvil."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from web3 import AsyncHTTPProvider, AsyncWeb3
from web3.logs import DISCARD

from ethml.chain import (
    EML,
    Deployment,
    ModelKind,
    ModelSpec,
    Parameters,
    Status,
    challenge_for,
    commitment_for,
    consumer_contract,
    deploy_system,
    dev_account,
    embedded_chain,
    ethml_contract,
    send,
)
from ethml.errors import TransactionReverted
from ethml.pow._reference import search, target_for

DATA_CID = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"
IRIS = ModelSpec(
    "iris", "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG", "0x" + "ab" * 32, ModelKind.CLASSIFICATION, 0, 4
)
PARAMS = Parameters(min_difficulty=64, max_difficulty=64)


@pytest.fixture(params=["embedded", "anvil"])
async def w3(request: pytest.FixtureRequest) -> AsyncIterator[AsyncWeb3]:
    if request.param == "embedded":
        yield await embedded_chain()
    else:
        url = request.getfixturevalue("anvil_url")
        w3 = AsyncWeb3(AsyncHTTPProvider(url))
        yield w3
        await w3.provider.disconnect()


async def test_deploy_registers_models_and_funds_holders(w3: AsyncWeb3) -> None:
    deployer = dev_account(0)
    deployment = await deploy_system(w3, deployer, parameters=PARAMS, models=[IRIS])
    assert deployment.chain_id == await w3.eth.chain_id
    assert deployment.models == {"iris": 1}
    ethml = ethml_contract(w3, deployment.ethml)
    model = await ethml.functions.getModel(1).call()
    assert model[0] == IRIS.cid and model[4] == 4 and model[5] is True
    assert await ethml.functions.balanceOf(dev_account(7).address).call() == 10_000 * EML
    assert await ethml.functions.symbol().call() == "EML"
    assert Deployment.from_json(deployment.to_json()) == deployment


async def test_full_round_with_python_nonces_reaches_the_consumer(w3: AsyncWeb3) -> None:
    deployment = await deploy_system(w3, dev_account(0), parameters=PARAMS, models=[IRIS])
    ethml = ethml_contract(w3, deployment.ethml)
    consumer = consumer_contract(w3, deployment.consumer)
    user = dev_account(9)
    tip = 5 * EML
    await send(w3, user, ethml.functions.approve(deployment.consumer, tip))
    deposit = 2 * await ethml.functions.minimumDeposit(100_000).call()
    receipt = await send(w3, user, consumer.functions.request(1, DATA_CID, tip), value=deposit)
    opened = ethml.events.RoundOpened().process_receipt(receipt, errors=DISCARD)[0]
    # The challenge Python derives from the opening block's hash is the contract's.
    challenge = challenge_for(bytes(opened["blockHash"]), deployment.ethml, 1)
    await send(w3, dev_account(8), ethml.functions.approve(user.address, 0))  # any transaction: a new block
    current = await ethml.functions.getCurrentRound().call()
    request_id, chain_challenge, difficulty, model_id, _open, commits, *_ = current
    assert (request_id, difficulty, model_id, commits) == (1, 64, 1, 0)
    assert bytes(chain_challenge) == challenge

    salts = [bytes([i + 1]) * 32 for i in range(5)]
    for i in range(5):
        miner = dev_account(i)
        nonce, _ = search(challenge, bytes.fromhex(miner.address[2:]), target_for(difficulty), 0, 1 << 20)
        assert nonce is not None
        commitment = commitment_for(request_id, miner.address, 2, salts[i])
        await send(w3, miner, ethml.functions.commit(request_id, nonce, commitment))
    for i in range(5):
        await send(w3, dev_account(i), ethml.functions.reveal(request_id, 2, salts[i]))

    _requester, prediction, status, agreeing, received, _r, _t = await consumer.functions.answers(request_id).call()
    assert (prediction, Status(status), agreeing, received) == (2, Status.FINALIZED, 5, True)
    for i in range(5):
        base, tips = await ethml.functions.owedRewards(dev_account(i).address).call()
        assert tips == tip // 5 and base <= PARAMS.base_reward
        before = await ethml.functions.balanceOf(dev_account(i).address).call()
        await send(w3, dev_account(i), ethml.functions.claimRewards())
        assert await ethml.functions.balanceOf(dev_account(i).address).call() == before + base + tips


async def test_timelocked_deployment_hands_admin_to_the_timelock(w3: AsyncWeb3) -> None:
    deployer = dev_account(0)
    deployment = await deploy_system(w3, deployer, parameters=PARAMS, models=[IRIS], timelock_delay=3600)
    assert deployment.timelock is not None and deployment.models == {"iris": 1}
    ethml = ethml_contract(w3, deployment.ethml)
    assert await ethml.functions.hasRole(bytes(32), deployment.timelock).call()
    assert not await ethml.functions.hasRole(bytes(32), deployer.address).call()
    with pytest.raises(TransactionReverted, match="AccessControlUnauthorizedAccount"):
        await send(w3, deployer, ethml.functions.setParameters(PARAMS.as_tuple()))


async def test_revert_reasons_are_decoded(w3: AsyncWeb3) -> None:
    """A transaction that would revert is refused before it is sent, its reason said in words."""
    deployment = await deploy_system(w3, dev_account(0), parameters=PARAMS, models=[IRIS])
    ethml = ethml_contract(w3, deployment.ethml)
    sender = dev_account(1).address
    nonce = await w3.eth.get_transaction_count(sender)
    with pytest.raises(TransactionReverted, match=r"model 7 is not registered \(UnknownModel\); not sent") as raised:
        await send(w3, dev_account(1), ethml.functions.requestPrediction(7, DATA_CID, 0, 0))
    assert raised.value.preflight and raised.value.error is not None
    assert (raised.value.error.name, raised.value.error.args) == ("UnknownModel", {"modelId": 7})
    with pytest.raises(TransactionReverted, match=r"no request is open: there is no round in progress"):
        await send(w3, dev_account(1), ethml.functions.commit(1, 0, bytes(32)))
    assert await w3.eth.get_transaction_count(sender) == nonce, "nothing was sent"
