"""Nodes in one event loop against the in-process chain: requests finalize with sklearn's answers."""

from __future__ import annotations

import pytest
from hexbytes import HexBytes

from ethml.chain import EML, INVALID_INPUT, Status, dev_account, send
from ethml.node import ChallengeSeen, Finalized, PredictionReady, SubmissionDropped
from tests.node.conftest import System, round_of, wait_until


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
    # The first request opened a round alone; the other three waited and were answered in one round.
    assert [await round_of(system, rid) for _, _, rid in cases] == [1, 2, 2, 2]
    assert [(s.accepted, s.finalized_with_us) for s in stats] == [(2, 4)] * 5, stats
    # What each node counted as rewards is what the oracle holds for it, besides its bond (returned whole:
    # every answer agreed).
    bond = int((await system.ethml.functions.parameters().call())[11])
    for node, s in zip(nodes, stats, strict=True):
        held = await system.ethml.functions.minerBalance(node.address).call()
        assert s.rewards == held - bond and s.bonds_lost == 0
    assert all(s.hashes > 0 for s in stats)


async def test_seven_nodes_five_slots_and_no_reverted_transaction(system: System) -> None:
    cid, _ = system.add_point("iris", 0)
    start_block = await system.w3.eth.block_number
    nonces_before = [await system.w3.eth.get_transaction_count(dev_account(i).address) for i in range(7)]
    rid = await system.request(3, cid)
    async with system.running(range(7)) as nodes:

        async def done() -> bool:
            return (await system.answer(rid))[2] and all(n.stats.accepted + n.stats.dropped == 1 for n in nodes)

        try:
            await wait_until(done, what="finalization and every node settled")
        except pytest.fail.Exception as exc:  # say where each node stood
            state = [
                (s.submissions, s.accepted, s.dropped, s.current_round, s.last_error) for s in (n.stats for n in nodes)
            ]
            pytest.fail(f"{exc}; answer {await system.answer(rid)}; (sent, mined, dropped, round, error) {state}")
        stats = [n.stats for n in nodes]
    round_id = await round_of(system, rid)
    logs = await system.ethml.events.Committed().get_logs(from_block=start_block)
    assert len([log for log in logs if log["args"]["roundId"] == round_id]) == 5
    logs = await system.ethml.events.Revealed().get_logs(from_block=start_block)
    assert len([log for log in logs if log["args"]["roundId"] == round_id]) == 5
    assert sum(s.accepted for s in stats) == 5 and sum(s.dropped for s in stats) == 2
    # Every transaction any of the seven sent succeeded: the two late nodes sent nothing, the five
    # others a commitment and a reveal each (the fifth reveal closing the round), and at most one
    # closeRound when two reveals raced to be the fifth.
    latest = await system.w3.eth.block_number
    senders = {dev_account(i).address for i in range(7)}
    for number in range(start_block + 1, latest + 1):
        block = await system.w3.eth.get_block(number, full_transactions=True)
        for tx in block["transactions"]:
            if tx["from"] in senders:
                receipt = await system.w3.eth.get_transaction_receipt(HexBytes(tx["hash"]))
                assert receipt["status"] == 1
    nonces_after = [await system.w3.eth.get_transaction_count(dev_account(i).address) for i in range(7)]
    assert sum(a - b for a, b in zip(nonces_after, nonces_before, strict=True)) in (10, 11)


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


async def test_one_invalid_data_point_invalidates_only_its_own_answer_in_a_round(system: System) -> None:
    first_cid, _ = system.add_point("iris", 0)
    await system.request(3, first_cid)  # opens round 1 alone; the next three wait for round 2
    bad_cid = str(system.ipfs.add_bytes(b"[1.0, 2.0, 3.0]\n"))  # iris takes 4 features
    models = ("wine", "diabetes")
    good = [system.add_point(model, 1) for model in models]
    bad = await system.request(3, bad_cid)
    rids = [await system.request(system.manifest.by_name(m).id, good[i][0]) for i, m in enumerate(models)]
    async with system.running(range(5)) as nodes:
        stream = nodes[0].events()

        async def answered() -> bool:
            return all([(await system.answer(r))[2] for r in (bad, *rids)])

        await wait_until(answered, what="the three answers")
        seen = stream.drain()
        await stream.aclose()
    assert {await round_of(system, r) for r in (bad, *rids)} == {2}, "one round"
    assert await system.answer(bad) == (INVALID_INPUT, int(Status.INVALID_INPUT), True)
    for i, rid in enumerate(rids):
        assert (await system.answer(rid))[:2] == (system.expected(models[i], good[i][1]), int(Status.FINALIZED))
    rounds = [e for e in seen if isinstance(e, ChallengeSeen) and e.round_id == 2]
    assert rounds and rounds[0].request_ids == (bad, *rids)
    ready = {e.request_id: e for e in seen if isinstance(e, PredictionReady)}
    assert ready[bad].invalid_input and not ready[rids[0]].invalid_input and not ready[rids[1]].invalid_input


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


async def test_nodes_claim_their_balance_past_their_threshold(system: System) -> None:
    cid, _ = system.add_point("iris", 1)
    before = [await system.token.functions.balanceOf(dev_account(i).address).call() for i in range(5)]
    # The oracle takes the tip from the requester's EML, no approval.
    await send(system.w3, dev_account(9), system.ethml.functions.requestPrediction(3, cid, 5 * EML, 0))
    async with system.running(range(5), claim_threshold=1, bonds_kept=0):

        async def claimed() -> bool:
            for i in range(5):
                held = await system.ethml.functions.minerBalance(dev_account(i).address).call()
                balance = await system.token.functions.balanceOf(dev_account(i).address).call()
                if held != 0 or balance < before[i] + EML:
                    return False
            return True

        await wait_until(claimed, what="every node claiming its bond back and its share of the tip")


async def test_nodes_keep_bonds_for_the_next_rounds_when_they_claim(system: System) -> None:
    cid, _ = system.add_point("iris", 1)
    await send(system.w3, dev_account(9), system.ethml.functions.requestPrediction(3, cid, 20 * EML, 0))
    bond = int((await system.ethml.functions.parameters().call())[11])
    async with system.running(range(5), claim_threshold=1, bonds_kept=2):

        async def claimed() -> bool:
            held = [await system.ethml.functions.minerBalance(dev_account(i).address).call() for i in range(5)]
            return all(h == 2 * bond for h in held)

        await wait_until(claimed, what="every node claiming all but two bonds")
