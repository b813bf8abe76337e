"""Deploy through ethml.chain and run one full mining round, on py-evm in-process and on anvil."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from web3 import AsyncHTTPProvider, AsyncWeb3

from ethml.chain import (
    EML,
    Deployment,
    ModelKind,
    ModelSpec,
    Parameters,
    Status,
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
    await send(w3, user, consumer.functions.request(1, DATA_CID, tip))
    challenge, request_id, difficulty, model_id, cid, submitted, _ = await ethml.functions.getCurrentVariables().call()
    assert (request_id, difficulty, model_id, cid, submitted) == (1, 64, 1, DATA_CID, 0)

    before = [await ethml.functions.balanceOf(dev_account(i).address).call() for i in range(5)]
    for i in range(5):
        miner = dev_account(i)
        nonce, _ = search(challenge, bytes.fromhex(miner.address[2:]), target_for(difficulty), 0, 1 << 20)
        assert nonce is not None
        await send(w3, miner, ethml.functions.submitMiningSolution(request_id, 2, nonce))

    requester, prediction, status, received = await consumer.functions.answers(request_id).call()
    assert (requester, prediction, Status(status), received) == (user.address, 2, Status.FINALIZED, True)
    for i in range(5):
        after = await ethml.functions.balanceOf(dev_account(i).address).call()
        assert after - before[i] == PARAMS.base_reward + tip // 5


async def test_revert_reasons_are_decoded(w3: AsyncWeb3) -> None:
    deployment = await deploy_system(w3, dev_account(0), parameters=PARAMS, models=[IRIS])
    ethml = ethml_contract(w3, deployment.ethml)
    with pytest.raises(TransactionReverted, match=r"UnknownModel\(7\)"):
        await send(w3, dev_account(1), ethml.functions.requestPrediction(7, DATA_CID, 0, 0))
    with pytest.raises(TransactionReverted, match=r"NoCurrentRequest\(\)"):
        await send(w3, dev_account(1), ethml.functions.submitMiningSolution(1, 0, 0))
