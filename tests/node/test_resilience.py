"""Crashes, restarts, bad input and hostile consumers: the node keeps going and never submits twice."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from eth_account import Account
from hexbytes import HexBytes
from web3.eth import AsyncEth
from web3.exceptions import TransactionNotFound
from web3.logs import DISCARD

from ethml.chain import INVALID_INPUT, ModelKind, ModelSpec, Status, dev_account
from ethml.chain.deploy import register_model
from ethml.ipfs import build_file
from ethml.node import Node
from ethml.node.sender import TxSender
from tests.node.conftest import System, make_system, wait_until


async def _kill(node: Node) -> None:
    """Stop a node the hard way: cancel everything, no draining (like a killed process)."""
    runner = node._runner
    assert runner is not None
    runner.cancel()
    await asyncio.gather(runner, return_exceptions=True)
    assert node._ctx is not None
    node._ctx.journal.close()
    await node._ctx.ipfs.close()
    node._stopped = True


async def _submissions_by(system: System, address: str, round_id: int) -> int:
    logs = await system.ethml.events.Committed().get_logs(from_block=0)
    return len([log for log in logs if log["args"]["miner"] == address and log["args"]["roundId"] == round_id])


async def test_killed_after_journal_write_before_send_resends_the_same_transaction(
    system: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    cid, raw = system.add_point("breast-cancer", 0)
    rid = await system.request(1, cid)
    victim = dev_account(0)
    nonce_before = await system.w3.eth.get_transaction_count(victim.address)
    original = TxSender._send_raw
    journaled: list[str] = []

    async def dies_before_sending(self: TxSender, raw_tx: str) -> None:
        if self.ctx.address == victim.address and not journaled:
            entry = self.ctx.journal.all()[-1]
            journaled.append(entry.tx_hashes[0])
            raise asyncio.CancelledError  # the process dies here: signed and journaled, never sent
        await original(self, raw_tx)

    monkeypatch.setattr(TxSender, "_send_raw", dies_before_sending)
    first = system.node(0)
    await first.start()
    await wait_until(lambda: _true(bool(journaled)), what="the journal write")
    await _kill(first)
    assert await system.w3.eth.get_transaction_count(victim.address) == nonce_before

    async with system.running([0, 1, 2, 3, 4]):
        await wait_until(lambda: _answered(system, rid), what="the answer")
    assert (await system.answer(rid))[:2] == (system.expected("breast-cancer", raw), int(Status.FINALIZED))
    # The identical signed transaction went out, exactly once.
    receipt = await system.w3.eth.get_transaction_receipt(journaled[0])  # type: ignore[arg-type]
    assert receipt["status"] == 1
    # One commitment and one reveal (and a closeRound if its reveal raced another to be the fifth): the
    # commitment was not made twice.
    assert await system.w3.eth.get_transaction_count(victim.address) - nonce_before in (2, 3)
    assert await _submissions_by(system, victim.address, 1) == 1


async def test_a_commitment_mined_while_killed_is_revealed_though_its_receipt_lags(
    system: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed right after its commitment was sent (and mined). On restart the node counts the nonce used but
    serves neither the receipt nor the transaction yet (anvil under load, a provider a block behind), and
    a pre-flight of the same commitment reverts: the node waits for the receipt and reveals, instead of
    taking the commitment as dropped and leaving it unrevealed."""
    cid, raw = system.add_point("breast-cancer", 1)
    rid = await system.request(1, cid)
    victim = dev_account(0)
    original = TxSender._send_raw
    sent: list[str] = []

    async def dies_after_sending(self: TxSender, raw_tx: str) -> None:
        await original(self, raw_tx)
        if self.ctx.address == victim.address and not sent:
            sent.append(self.ctx.journal.all()[-1].tx_hashes[0])
            raise asyncio.CancelledError  # the process dies here: sent, its receipt never read

    monkeypatch.setattr(TxSender, "_send_raw", dies_after_sending)
    first = system.node(0)
    await first.start()
    await wait_until(lambda: _true(bool(sent)), what="the commitment to be sent")
    await _kill(first)
    assert (await system.w3.eth.get_transaction_receipt(sent[0]))["status"] == 1  # type: ignore[arg-type]

    # The restarted node's first reads of that transaction find nothing.
    refused = [0]
    lagging_reads = 6
    for name in ("get_transaction_receipt", "get_transaction"):
        read = getattr(AsyncEth, name)

        async def lagging(eth: AsyncEth, tx_hash: Any, read: Any = read) -> Any:
            if HexBytes(tx_hash) == HexBytes(sent[0]) and refused[0] < lagging_reads:
                refused[0] += 1
                raise TransactionNotFound(f"no {tx_hash!r} yet")
            return await read(eth, tx_hash)

        monkeypatch.setattr(AsyncEth, name, lagging)
    async with system.running([0, 1, 2, 3, 4]):
        await wait_until(lambda: _answered(system, rid), what="the answer")
    assert refused[0] == lagging_reads
    assert (await system.answer(rid))[:2] == (system.expected("breast-cancer", raw), int(Status.FINALIZED))
    assert await _submissions_by(system, victim.address, 1) == 1
    revealed = await system.ethml.events.Revealed().get_logs(from_block=0)
    assert [r["args"]["roundId"] for r in revealed if r["args"]["miner"] == victim.address] == [1]


async def test_killed_mid_grind_and_restarted_completes_once(tmp_path: Any) -> None:
    # About a second of one core per node: long enough to be killed mid-search.
    system = await make_system(tmp_path, 1 << 24)
    cid, raw = system.add_point("wine", 2)
    rid = await system.request(4, cid)
    victim = system.node(0)
    await victim.start()
    async with system.running([1, 2, 3, 4]):
        await wait_until(lambda: _true(victim._grinder is not None), what="the victim's actors")
        assert victim._grinder is not None
        await asyncio.wait_for(victim._grinder.searching.wait(), timeout=30)
        await _kill(victim)  # at once: the search has just started and needs far longer than this
        assert victim.stats.submissions == 0
        async with system.running([0]):
            await wait_until(lambda: _answered(system, rid), timeout=60, what="the answer")
    assert (await system.answer(rid))[:2] == (system.expected("wine", raw), int(Status.FINALIZED))
    assert await _submissions_by(system, dev_account(0).address, 1) == 1


async def test_graceful_stop_and_restart_resumes_from_the_checkpoint(system: System) -> None:
    cid1, _ = system.add_point("iris", 1)
    async with system.running(range(5)) as nodes:
        rid1 = await system.request(3, cid1)
        await wait_until(lambda: _answered(system, rid1), what="first answer")
        await nodes[0].stop()
        await nodes[0].stop()  # idempotent
    cid2, raw2 = system.add_point("iris", 3)
    rid2 = await system.request(3, cid2)  # arrives while every node is down
    async with system.running(range(5)):
        await wait_until(lambda: _answered(system, rid2), what="second answer after restart")
    assert (await system.answer(rid2))[:2] == (system.expected("iris", raw2), int(Status.FINALIZED))
    for i in range(5):
        assert await _submissions_by(system, dev_account(i).address, 1) == 1  # round 1 answered request 1


async def test_tampered_block_and_unknown_model_finalize_as_invalid_input(system: System) -> None:
    # The data point exists only behind a gateway that tampers with it.
    data = b"[5.1, 3.5, 1.4, 0.2]\n"
    root, blocks = build_file(data, 0)

    async def tampered(request: web.Request) -> web.Response:
        return web.Response(body=blocks[0].data.replace(b"5.1", b"9.9"), content_type="application/vnd.ipld.raw")

    app = web.Application()
    app.router.add_get("/ipfs/{cid}", tampered)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    gateway = str(server.make_url("")).rstrip("/")
    try:
        tampered_rid = await system.request(3, str(root))
        # A registered model no node has, whose artifact no gateway serves honestly.
        spec = ModelSpec(
            "mystery",
            "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG",
            "0x" + "42" * 32,
            ModelKind.CLASSIFICATION,
            0,
            4,
        )
        mystery = await register_model(system.w3, dev_account(0), system.deployment, spec)
        good_cid, _ = system.add_point("iris", 0)
        unknown_rid = await system.request(mystery, good_cid)
        async with system.running(range(5), gateways=[gateway]) as nodes:
            await wait_until(lambda: _answered(system, unknown_rid), what="both answers")
            assert all(n.stats.last_error is None for n in nodes)
            assert all(n.stats.accepted == 2 for n in nodes)
    finally:
        await server.close()
    for rid in (tampered_rid, unknown_rid):
        assert await system.answer(rid) == (INVALID_INPUT, int(Status.INVALID_INPUT), True)


def _reverting_consumer_initcode(ethml: str, call: bytes) -> bytes:
    """A contract that asks for a prediction in its constructor and whose runtime code always reverts.

    Constructor: CODECOPY the encoded call to memory, CALL the EthML contract with it, REVERT if that
    failed, else RETURN the runtime `PUSH1 0 PUSH1 0 REVERT`.
    """
    runtime = bytes.fromhex("60006000fd")

    def assemble(blob_at: int, revert_at: int, runtime_at: int) -> bytes:
        n = len(call).to_bytes(2, "big")
        return (
            b"\x61"
            + n
            + b"\x61"
            + blob_at.to_bytes(2, "big")
            + b"\x60\x00\x39"  # CODECOPY(0, blob, n)
            + b"\x60\x00\x60\x00\x61"
            + n
            + b"\x60\x00\x34"  # retSize retOffset argsSize argsOffset, value = CALLVALUE (the deposit)
            + b"\x73"
            + bytes.fromhex(ethml[2:])
            + b"\x5a\xf1"  # PUSH20 ethml, GAS, CALL
            + b"\x15\x61"
            + revert_at.to_bytes(2, "big")
            + b"\x57"  # ISZERO, JUMPI revert
            + b"\x60"
            + bytes([len(runtime)])
            + b"\x61"
            + runtime_at.to_bytes(2, "big")
            + b"\x60\x00\x39"
            + b"\x60"
            + bytes([len(runtime)])
            + b"\x60\x00\xf3"  # RETURN(0, len(runtime))
            + b"\x5b\x60\x00\x60\x00\xfd"  # revert: JUMPDEST REVERT(0, 0)
        )

    body = assemble(0, 0, 0)
    revert_at = len(body) - 6
    code = assemble(len(body) + len(runtime), revert_at, len(body))
    return code + runtime + call


async def test_reverting_callback_still_finalizes_and_pays(system: System) -> None:
    cid, raw = system.add_point("diabetes", 3)
    call = bytes.fromhex(system.ethml.encode_abi("requestPrediction", args=[2, cid, 0, 50_000])[2:])
    initcode = _reverting_consumer_initcode(system.deployment.ethml, call)
    user = dev_account(9)
    deposit = 2 * await system.ethml.functions.minimumDeposit(50_000).call()
    tx = {
        "from": user.address,
        "data": initcode,
        "value": deposit,
        "gas": 500_000,
        "chainId": await system.w3.eth.chain_id,
        "nonce": await system.w3.eth.get_transaction_count(user.address),
        "maxFeePerGas": 10**10,
        "maxPriorityFeePerGas": 10**9,
    }
    receipt = await system.w3.eth.wait_for_transaction_receipt(
        await system.w3.eth.send_raw_transaction(user.sign_transaction(tx).raw_transaction)
    )
    assert receipt["status"] == 1
    consumer = receipt["contractAddress"]
    rid = int(
        system.ethml.events.PredictionRequested().process_receipt(receipt, errors=DISCARD)[0]["args"]["requestId"]
    )
    async with system.running(range(5)):

        async def finalized() -> bool:
            return int(await system.ethml.functions.requestStatus(rid).call()) == int(Status.FINALIZED)

        await wait_until(finalized, what="finalization")
    failed = await system.ethml.events.CallbackFailed().get_logs(from_block=0)
    assert [(e["args"]["requestId"], e["args"]["consumer"]) for e in failed] == [(rid, consumer)]
    prediction, _status, agreeing, _block = await system.ethml.functions.getResult(rid).call()
    assert prediction == system.expected("diabetes", raw)
    assert agreeing == 5  # every miner is rewarded although the consumer reverted


async def _true(value: bool) -> bool:
    return value


async def _answered(system: System, rid: int) -> bool:
    return (await system.answer(rid))[2]


async def test_no_eth_for_gas_warns_and_waits(system: System) -> None:
    from ethml.node import NodeWarning

    broke = Node(w3=system.w3, deployment=system.deployment, account=Account.create(), config=system.config())
    cid, _ = system.add_point("iris", 0)
    await system.request(3, cid)
    async with broke:
        events = broke.events()
        warning = None

        async def first_warning() -> str:
            async for event in events:
                if isinstance(event, NodeWarning) and "not enough for gas" in event.message:
                    return event.message
            raise AssertionError("the node stopped without warning")

        warning = await asyncio.wait_for(first_warning(), timeout=30)
        await events.aclose()
        assert broke.stats.last_error is None and broke.stats.submissions == 0
    assert warning is not None and "waiting for funds" in warning


async def test_no_eml_for_the_bond_warns_and_the_round_goes_on(system: System) -> None:
    from web3.types import Wei

    from ethml.node import NodeWarning

    poor = Account.create()  # ETH for gas, no EML to bond
    tx = await system.w3.eth.send_transaction(
        {"from": (await system.w3.eth.accounts)[0], "to": poor.address, "value": Wei(10**18)}
    )
    await system.w3.eth.wait_for_transaction_receipt(tx)
    cid, raw = system.add_point("iris", 0)
    rid = await system.request(3, cid)
    node = Node(w3=system.w3, deployment=system.deployment, account=poor, config=system.config())
    async with node:
        events = node.events()

        async def warned() -> str:
            async for event in events:
                if isinstance(event, NodeWarning) and "too little EML for the bond" in event.message:
                    return event.message
            raise AssertionError("the node stopped without warning")

        message = await asyncio.wait_for(warned(), timeout=60)
        await events.aclose()
        bond = int((await system.ethml.functions.parameters().call())[11])  # minerBond; the request has no tip
        assert f"{bond / 10**18:g} EML" in message and node.stats.last_error is None and node.stats.accepted == 0
        async with system.running(range(5)):
            await wait_until(lambda: _answered(system, rid), what="the answer from the five others")
    assert (await system.answer(rid))[:2] == (system.expected("iris", raw), int(Status.FINALIZED))
