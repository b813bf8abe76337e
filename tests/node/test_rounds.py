"""Nodes in one event loop against the in-process chain: requests finalize with sklearn's answers."""

from __future__ import annotations

from hexbytes import HexBytes

from ethml.chain import EML, INVALID_INPUT, Status, dev_account, send
from ethml.node import Finalized, SubmissionDropped
from tests.node.conftest import System, wait_until


async def test_five_nodes_deliver_sklearns_prediction_for_every_model(system: System) -> None:
    cases = []
    for model in ("breast-cancer", "diabetes", "iris", "wine"):
        cid, raw = system.add_point(model, 1)
        model_id = system.manifest.by_name(model).id
        cases.append((model, raw, await system.request(model_id, cid)))
    async with system.running(range(5)) as nodes:

        async def all_answered() -> bool:
            answered = all([(await system.answer(rid))[2] for _, _, rid in cases])
            return answered and all(n.stats.finalized_with_us == 4 for n in nodes)

        await wait_until(all_answered, what="four answers, seen by every node")
        for model, raw, rid in cases:
            prediction, status, _ = await system.answer(rid)
            assert (prediction, Status(status)) == (system.expected(model, raw), Status.FINALIZED), model
        stats = [n.stats for n in nodes]
    assert [(s.accepted, s.finalized_with_us) for s in stats] == [(4, 4)] * 5, stats
    # What each node counted as rewards is what the contract holds for it to claim.
    for node, s in zip(nodes, stats, strict=True):
        base, tips = await system.ethml.functions.owedRewards(node.address).call()
        assert s.rewards == base + tips
    assert all(s.hashes > 0 for s in stats)


async def test_seven_nodes_five_slots_and_no_reverted_transaction(system: System) -> None:
    cid, _ = system.add_point("iris", 0)
    start_block = await system.w3.eth.block_number
    nonces_before = [await system.w3.eth.get_transaction_count(dev_account(i).address) for i in range(7)]
    rid = await system.request(3, cid)
    async with system.running(range(7)) as nodes:
        events: list[object] = []

        async def done() -> bool:
            return (await system.answer(rid))[2] and all(n.stats.accepted + n.stats.dropped == 1 for n in nodes)

        await wait_until(done, what="finalization and every node settled")
        stats = [n.stats for n in nodes]
        del events
    logs = await system.ethml.events.Committed().get_logs(from_block=start_block)
    assert len([log for log in logs if log["args"]["requestId"] == rid]) == 5
    logs = await system.ethml.events.Revealed().get_logs(from_block=start_block)
    assert len([log for log in logs if log["args"]["requestId"] == rid]) == 5
    assert sum(s.accepted for s in stats) == 5 and sum(s.dropped for s in stats) == 2
    # Every transaction any of the seven sent succeeded: the two late nodes sent nothing, the five
    # others a commitment and a reveal each.
    latest = await system.w3.eth.block_number
    senders = {dev_account(i).address for i in range(7)}
    for number in range(start_block + 1, latest + 1):
        block = await system.w3.eth.get_block(number, full_transactions=True)
        for tx in block["transactions"]:
            if tx["from"] in senders:
                receipt = await system.w3.eth.get_transaction_receipt(HexBytes(tx["hash"]))
                assert receipt["status"] == 1
    nonces_after = [await system.w3.eth.get_transaction_count(dev_account(i).address) for i in range(7)]
    assert sum(a - b for a, b in zip(nonces_after, nonces_before, strict=True)) == 10


async def test_wrong_feature_count_finalizes_as_invalid_input(system: System) -> None:
    cid = str(system.ipfs.add_bytes(b"[1.0, 2.0, 3.0]\n"))  # iris takes 4 features
    good_cid, good_raw = system.add_point("iris", 2)
    bad = await system.request(3, cid)
    good = await system.request(3, good_cid)
    async with system.running(range(5)) as nodes:
        events = nodes[0].events()

        async def answered() -> bool:
            return (await system.answer(bad))[2] and (await system.answer(good))[2]

        await wait_until(answered, what="both answers")
        await events.aclose()
        assert all(n.stats.last_error is None for n in nodes)
    assert await system.answer(bad) == (INVALID_INPUT, int(Status.INVALID_INPUT), True)
    assert (await system.answer(good))[:2] == (system.expected("iris", good_raw), int(Status.FINALIZED))


async def test_events_iterator_yields_the_round(system: System) -> None:
    cid, _ = system.add_point("wine", 0)
    async with system.running(range(5)) as nodes:
        seen: list[str] = []
        stream = nodes[0].events()
        rid = await system.request(4, cid)
        async for event in stream:
            seen.append(type(event).__name__)
            if isinstance(event, Finalized):
                assert event.request_id == rid and event.agreed and len(event.miners) == 5
                break
            assert not isinstance(event, SubmissionDropped)
        await stream.aclose()
    for name in ("ChallengeSeen", "PredictionReady", "SolutionFound", "Submitted", "SubmissionMined", "Finalized"):
        assert name in seen, seen


async def test_nodes_claim_accrued_rewards_past_their_threshold(system: System) -> None:
    cid, _ = system.add_point("iris", 1)
    before = [await system.ethml.functions.balanceOf(dev_account(i).address).call() for i in range(5)]
    await send(system.w3, dev_account(9), system.ethml.functions.requestPrediction(3, cid, 5 * EML, 0))
    async with system.running(range(5), claim_threshold=1):

        async def claimed() -> bool:
            for i in range(5):
                base, tips = await system.ethml.functions.owedRewards(dev_account(i).address).call()
                balance = await system.ethml.functions.balanceOf(dev_account(i).address).call()
                if base + tips != 0 or balance < before[i] + EML:
                    return False
            return True

        await wait_until(claimed, what="every node claiming its share of the tip")
