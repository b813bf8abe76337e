"""`ethml expire` (ethml.oracle.expire_request): a round past its commit window, a request stale in the
queue, and clear refusals for everything else."""

from __future__ import annotations

import pytest

from ethml.chain import (
    EML,
    ModelKind,
    ModelSpec,
    Parameters,
    Status,
    deploy_system,
    dev_account,
    embedded_chain,
    ethml_contract,
    send,
    token_contract,
)
from ethml.errors import ChainError
from ethml.oracle import expire_request, oracle_status, request_info
from ethml.pow._reference import search, target_for

IRIS = ModelSpec(
    "iris", "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG", "0x" + "ab" * 32, ModelKind.CLASSIFICATION, 0, 4
)


async def test_expire_a_round_and_a_stale_queued_request() -> None:
    w3 = await embedded_chain()
    params = Parameters(min_difficulty=1, max_difficulty=1, expiry_blocks=3, max_queue_blocks=6, requests_per_round=1)
    deployment = await deploy_system(w3, dev_account(0), parameters=params, models=[IRIS])
    ethml = ethml_contract(w3, deployment.ethml)
    token = token_contract(w3, deployment.token)
    user, expirer = dev_account(9), dev_account(8)
    await send(w3, user, ethml.functions.requestPrediction(1, "QmA", 2 * EML, 0))  # round 1
    await send(w3, user, ethml.functions.requestPrediction(1, "QmB", 0, 0))  # queued
    with pytest.raises(ChainError, match="takes commitments until block"):
        await expire_request(w3, deployment, expirer, 1)
    with pytest.raises(ChainError, match="request 2 is queued; it can be expired after block"):
        await expire_request(w3, deployment, expirer, 2)
    # One miner commits; then the window passes.
    current = await ethml.functions.getCurrentRound().call()
    miner = dev_account(0)
    nonce, _ = search(bytes(current[1]), bytes.fromhex(miner.address[2:]), target_for(1), 0, 1 << 10)
    await send(w3, miner, ethml.functions.commit(1, nonce, b"\x01" * 32))
    for _ in range(3):
        await send(w3, user, token.functions.approve(expirer.address, 0))
    before = await token.functions.balanceOf(user.address).call()
    said = await expire_request(w3, deployment, expirer, 1)
    assert said.startswith("round 1 expired in block")
    assert (await request_info(w3, deployment, 1)).status == Status.EXPIRED.label
    assert await token.functions.balanceOf(user.address).call() == before + 2 * EML
    bond = params.miner_bond + 2 * EML * params.bond_tip_bps // 10_000
    assert await ethml.functions.minerBalance(miner.address).call() == bond  # its bond back
    # Request 2 opened round 2 at that close; a third waits behind it until it is stale.
    await send(w3, user, ethml.functions.requestPrediction(1, "QmC", 0, 0))
    assert (await oracle_status(w3, deployment)).current_requests == [2]
    for _ in range(7):
        await send(w3, user, token.functions.approve(expirer.address, 0))
    said = await expire_request(w3, deployment, expirer, 3)
    assert said.startswith("request 3 expired in the queue")
    assert (await request_info(w3, deployment, 3)).status == Status.EXPIRED.label
    with pytest.raises(ChainError, match="request 3 is expired: nothing to expire"):
        await expire_request(w3, deployment, expirer, 3)
    with pytest.raises(ChainError, match="no request 9 on this deployment"):
        await expire_request(w3, deployment, expirer, 9)


async def test_an_expired_round_refunds_its_highest_tip_and_requeues_the_others() -> None:
    w3 = await embedded_chain()
    params = Parameters(min_difficulty=1, max_difficulty=1, expiry_blocks=3, requests_per_round=3)
    deployment = await deploy_system(w3, dev_account(0), parameters=params, models=[IRIS])
    ethml = ethml_contract(w3, deployment.ethml)
    token = token_contract(w3, deployment.token)
    user, expirer = dev_account(9), dev_account(8)
    await send(w3, user, ethml.functions.requestPrediction(1, "QmA", 0, 0))  # round 1, alone
    for cid, tip in (("QmB", 1), ("QmC", 3), ("QmD", 2)):
        await send(w3, user, ethml.functions.requestPrediction(1, cid, tip * EML, 0))
    for _ in range(4):
        await send(w3, user, token.functions.approve(expirer.address, 0))
    await expire_request(w3, deployment, expirer, 1)  # round 1 had one request: it expires
    assert (await oracle_status(w3, deployment)).current_requests == [3, 4, 2]  # highest tip first
    for _ in range(4):
        await send(w3, user, token.functions.approve(expirer.address, 0))
    before = await token.functions.balanceOf(user.address).call()
    said = await expire_request(w3, deployment, expirer, 2)
    assert said.startswith("round 2 expired in block")
    assert said.endswith("request 3 refunded; the other 2 back in the queue"), said
    assert (await request_info(w3, deployment, 3)).status == Status.EXPIRED.label
    assert await token.functions.balanceOf(user.address).call() == before + 3 * EML
    # The two others opened round 3 at once, their tips still escrowed.
    status = await oracle_status(w3, deployment)
    assert (status.current_round, status.current_requests) == (3, [4, 2])
    assert (await request_info(w3, deployment, 2)).status == Status.CURRENT.label
