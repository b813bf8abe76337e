"""A nonce found by the native search is accepted by the deployed contract."""

from __future__ import annotations

from ethml.chain import ModelKind, ModelSpec, Parameters, deploy_system, dev_account, embedded_chain, send
from ethml.chain.deploy import ethml_contract, token_contract
from ethml.pow import available_paths, find_nonce, parallel_search, target_for

MODEL = ModelSpec(
    "m", "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG", "0x" + "00" * 32, ModelKind.CLASSIFICATION, 0, 4
)


async def test_native_nonces_are_accepted_on_chain() -> None:
    w3 = await embedded_chain()
    difficulty = 1 << 14
    deployment = await deploy_system(
        w3,
        dev_account(0),
        parameters=Parameters(min_difficulty=difficulty, max_difficulty=difficulty),
        models=[MODEL],
    )
    ethml = ethml_contract(w3, deployment.ethml)
    await send(w3, dev_account(9), ethml.functions.requestPrediction(1, "QmData", 0, 0))
    token = token_contract(w3, deployment.token)
    await send(w3, dev_account(9), token.functions.approve(dev_account(8).address, 0))  # the next block
    request_id, challenge, current, *_ = await ethml.functions.getCurrentRound().call()
    assert current == difficulty and challenge != bytes(32)
    searches = [lambda a: parallel_search(challenge, a, target_for(difficulty), threads=2)]
    for path in [p for p in available_paths() if p != "python"]:
        searches.append(lambda a, path=path: find_nonce(challenge, a, target_for(difficulty), count=1 << 22, path=path))
    # Every path's nonce passes the contract's check (a call, before any commitment: a round takes five
    # and there may be more paths); then the first five are committed for real.
    nonces = []
    for i, search in enumerate(searches):
        miner = dev_account(i)
        result = search(miner.address)
        assert result.found
        assert await ethml.functions.commit(request_id, result.nonce, bytes(32)).call({"from": miner.address}) == []
        nonces.append(result.nonce)
    for i, nonce in enumerate(nonces[:5]):
        await send(w3, dev_account(i), ethml.functions.commit(request_id, nonce, bytes(32)))
    assert await ethml.functions.hasCommitted(dev_account(min(len(nonces), 5) - 1).address).call()
