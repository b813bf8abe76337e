"""Deploy through ethml.chain and run one full mining round, on py-evm in-process and on anvil."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from web3 import AsyncWeb3
from web3.logs import DISCARD

from ethml.chain import (
    EML,
    Deployment,
    ModelKind,
    ModelSpec,
    Parameters,
    Status,
    answer_table,
    challenge_for,
    commitment_for,
    consumer_contract,
    deploy_system,
    dev_account,
    embedded_chain,
    ethml_contract,
    registry_contract,
    revealed_hash,
    send,
    token_contract,
)
from ethml.chain.rpc import http_web3
from ethml.errors import DeploymentError, TransactionReverted
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
        w3 = http_web3(url)
        yield w3
        await w3.provider.disconnect()


async def test_deploy_registers_models_and_funds_holders(w3: AsyncWeb3) -> None:
    deployer = dev_account(0)
    deployment = await deploy_system(w3, deployer, parameters=PARAMS, models=[IRIS])
    assert deployment.chain_id == await w3.eth.chain_id
    assert deployment.models == {"iris": 1}
    registry = registry_contract(w3, deployment.registry)
    _sha, _kind, _decimals, features, active, cid = await registry.functions.getModel(1).call()
    assert (cid, features, active) == (IRIS.cid, 4, True)
    token = token_contract(w3, deployment.token)
    assert await token.functions.balanceOf(dev_account(7).address).call() == 10_000 * EML
    assert await token.functions.symbol().call() == "EML"
    assert await token.functions.oracle().call() == deployment.ethml
    ethml = ethml_contract(w3, deployment.ethml)
    assert await ethml.functions.token().call() == deployment.token
    assert await ethml.functions.registry().call() == deployment.registry
    assert tuple(await ethml.functions.parameters().call()) == PARAMS.as_tuple()
    # The training market registers accepted models.
    role = await registry.functions.REGISTRAR_ROLE().call()
    assert await registry.functions.hasRole(role, deployment.training).call()
    assert Deployment.from_json(deployment.to_json()) == deployment


def test_an_older_deployment_file_is_refused_with_what_to_do() -> None:
    old = '{"chain_id": 1, "ethml": "0x01", "consumer": "0x02", "deployer": "0x03", "block": 1}'
    with pytest.raises(DeploymentError, match="deploy again"):
        Deployment.from_json(old)


async def test_full_round_with_python_nonces_reaches_the_consumer(w3: AsyncWeb3) -> None:
    deployment = await deploy_system(w3, dev_account(0), parameters=PARAMS, models=[IRIS])
    ethml = ethml_contract(w3, deployment.ethml)
    token = token_contract(w3, deployment.token)
    consumer = consumer_contract(w3, deployment.consumer)
    user = dev_account(9)
    tip = 5 * EML
    await send(w3, user, token.functions.approve(deployment.consumer, tip))
    deposit = 2 * await ethml.functions.minimumDeposit(100_000).call()
    receipt = await send(w3, user, consumer.functions.request(1, DATA_CID, tip), value=deposit)
    opened = ethml.events.RoundOpened().process_receipt(receipt, errors=DISCARD)[0]
    assert list(opened["args"]["requestIds"]) == [1]
    # The challenge Python derives from the opening block's hash is the contract's.
    challenge = challenge_for(bytes(opened["blockHash"]), deployment.ethml, 1)
    await send(w3, dev_account(8), token.functions.approve(user.address, 0))  # any transaction: a new block
    current = await ethml.functions.getCurrentRound().call()
    round_id, chain_challenge, difficulty, _open, commits, _mask, _cd, _rd, bond, ids = current
    assert (round_id, difficulty, commits, list(ids)) == (1, 64, 0, [1])
    assert bond == PARAMS.miner_bond + tip * PARAMS.bond_tip_bps // 10_000
    assert bytes(chain_challenge) == challenge

    salts = [bytes([i + 1]) * 32 for i in range(5)]
    for i in range(5):
        miner = dev_account(i)
        nonce, _ = search(challenge, bytes.fromhex(miner.address[2:]), target_for(difficulty), 0, 1 << 20)
        assert nonce is not None
        commitment = commitment_for(round_id, miner.address, [2], salts[i])
        await send(w3, miner, ethml.functions.commit(round_id, nonce, commitment))
    for i in range(4):
        await send(w3, dev_account(i), ethml.functions.reveal(round_id, [2], salts[i]))
    slots = {i: dev_account(i).address for i in range(5)}
    miners, table = answer_table(slots, {dev_account(i).address: [2] for i in range(5)}, 1)
    await send(w3, dev_account(4), ethml.functions.revealAndClose(round_id, salts[4], miners, table))

    _requester, prediction, status, agreeing, received, _r, _t = await consumer.functions.answers(1).call()
    assert (prediction, Status(status), agreeing, received) == (2, Status.FINALIZED, 5, True)
    for i in range(5):
        held = await ethml.functions.minerBalance(dev_account(i).address).call()
        # The bond back, a fifth of the tip and the base reward (time-weighted: at most a full one).
        assert 0 <= held - bond - tip // 5 <= PARAMS.base_reward
        before = await token.functions.balanceOf(dev_account(i).address).call()
        await send(w3, dev_account(i), ethml.functions.claimRewards())
        assert await token.functions.balanceOf(dev_account(i).address).call() == before + held


def test_python_round_helpers_match_the_contract_encoding() -> None:
    miner = dev_account(3).address
    answers = [1, -(2**255), -5]
    expected = bytes.fromhex(miner[2:]) + b"".join(a.to_bytes(32, "big", signed=True) for a in answers)
    from eth_utils.crypto import keccak

    assert revealed_hash(miner, answers) == keccak(expected)
    slots = {0: miner, 2: dev_account(4).address}
    miners, table = answer_table(slots, {miner: [7, 8]}, 2)
    assert miners[0] == miner and int(miners[2], 16) == 0  # slot 2 committed but did not reveal
    assert table == [7, 8, 0, 0, 0, 0, 0, 0, 0, 0]
    with pytest.raises(ValueError, match="answers for a round of"):
        answer_table(slots, {miner: [7]}, 2)


async def test_timelocked_deployment_hands_admin_to_the_timelock(w3: AsyncWeb3) -> None:
    deployer = dev_account(0)
    deployment = await deploy_system(w3, deployer, parameters=PARAMS, models=[IRIS], timelock_delay=3600)
    assert deployment.timelock is not None and deployment.models == {"iris": 1}
    ethml = ethml_contract(w3, deployment.ethml)
    registry = registry_contract(w3, deployment.registry)
    for contract in (ethml, registry):
        assert await contract.functions.hasRole(bytes(32), deployment.timelock).call()
        assert not await contract.functions.hasRole(bytes(32), deployer.address).call()
    with pytest.raises(TransactionReverted, match="AccessControlUnauthorizedAccount"):
        await send(w3, deployer, ethml.functions.setParameters(PARAMS.as_tuple()))
    with pytest.raises(TransactionReverted, match="NotRegistrar"):
        await send(w3, deployer, registry.functions.registerModel("Qm", bytes(32), 0, 0, 4))


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
    with pytest.raises(TransactionReverted, match=r"no round is open: there is no request being mined \(NoOpenRound\)"):
        await send(w3, dev_account(1), ethml.functions.commit(1, 0, bytes(32)))
    assert await w3.eth.get_transaction_count(sender) == nonce, "nothing was sent"
