"""The relayer under faults: an instance killed with -9 in the middle of relaying leaves entries it had
read; the live instances take them over, and every accepted task reaches the chain exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import re
import signal
import time
import types
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from eth_typing import HexStr
from multidict import CIMultiDict, CIMultiDictProxy
from web3 import AsyncWeb3
from web3.exceptions import TransactionNotFound, Web3RPCError
from web3.providers.eth_tester import AsyncEthereumTesterProvider
from yarl import URL

from ethml.chain import EML, dev_account, token_contract, training_contract
from ethml.chain.rpc import http_web3
from ethml.chain.tx import fee_fields
from ethml.coordinator import chain as chain_module
from ethml.coordinator import follower as follower_module
from ethml.coordinator import keeper as keeper_module
from ethml.coordinator import redis_keys as k
from ethml.coordinator import relayer as relayer_module
from ethml.coordinator.appkeys import CHAIN, IPFS, STORE
from ethml.coordinator.chain import Chain
from ethml.coordinator.client import sign_permit, task_body
from ethml.coordinator.follower import follow
from ethml.coordinator.keeper import keep_deadlines
from ethml.coordinator.relayer import RelayAgain, _nonce_used, _permit, _terms, relay_one
from ethml.coordinator.store import Store
from ethml.errors import ChainError
from ethml.ipfs.client import IpfsClient
from ethml.training import clock
from tests.conftest import free_port, lag_receipts
from tests.coordinator.conftest import REQUESTER, TRAINERS, Coordinator, coordinator_on, start_redis
from tests.coordinator.test_api import CID, _import, _valid, wine_spec
from tests.coordinator.test_flow import chain_now
from tests.node.conftest import wait_until


async def test_a_relaying_instance_killed_mid_relay_leaves_every_task_to_the_others_once(
    anvil_url: str, tmp_path: Path
) -> None:
    socket = tmp_path / "redis" / "redis.sock"
    redis = start_redis(socket)
    try:
        async with coordinator_on(anvil_url, tmp_path) as c:
            await wait_until(lambda: asyncio.to_thread(socket.exists), timeout=30, what="Redis")
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            doomed = c.spawn_serve(tmp_path / "doomed", port, "--redis", f"unix://{socket}")
            await c.wait_healthy(url, doomed)
            c.url = url
            c.admin_key = (tmp_path / "doomed" / "coordinator" / "admin.key").read_text().strip()
            key = await c.requester_key()
            # Blocks stop being mined: the doomed instance sends the first creation and waits for its receipt
            # with the other entries read and pending under its consumer.
            await c.w3.provider.make_request("evm_setAutomine", [False])  # type: ignore[arg-type]
            now = await chain_now(c)
            posted = []
            for nonce in range(5):
                body = _valid(c, now, nonce)
                status, created, _ = await c.api("POST", "/api/tasks", key=key, body=body)
                assert status == 201, created
                posted.append(created["id"])

            async def first_sent() -> bool:
                _status, doc, _ = await c.api("GET", f"/api/tasks/{posted[0]}")
                return "create" in doc["transactions"]

            await wait_until(first_sent, timeout=60, what="the first creation to be sent")
            redis_client = aioredis.Redis(unix_socket_path=str(socket))
            summary = await redis_client.xpending("ethml:relay", "relayers")
            await redis_client.aclose()
            held = {c["name"].decode(): int(c["pending"]) for c in summary["consumers"]}
            assert len(held) == 1 and next(iter(held.values())) >= 1, held  # read by the doomed instance
            doomed.send_signal(signal.SIGKILL)
            await asyncio.to_thread(doomed.wait, 10)
            runner, survivor = await c.start_server(redis_url=f"unix://{socket}", relay_timeout=2.0)
            await c.w3.provider.make_request("evm_setAutomine", [True])  # type: ignore[arg-type]
            await c.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]

            async def all_open() -> bool:
                for task_id in posted:
                    _status, doc, _ = await c.api("GET", f"/api/tasks/{task_id}", url=survivor)
                    assert doc["status"] in ("pending_chain", "open"), doc
                    if doc["status"] != "open":
                        return False
                return True

            await wait_until(all_open, timeout=120, what="every posted task on chain")
            tasks = training_contract(c.w3, c.deployment.training or "")
            created = await tasks.events.TaskCreated().get_logs(from_block=c.deployment.block)
            assert sorted(int(e["args"]["taskId"]) for e in created) == [1, 2, 3, 4, 5]  # each once
            ids = []
            for task_id in posted:
                _status, doc, _ = await c.api("GET", f"/api/tasks/{task_id}", url=survivor)
                ids.append(doc["chain_task_id"])
            assert sorted(ids) == [1, 2, 3, 4, 5]
            pending = await c.store(runner).redis.xpending("ethml:relay", "relayers")
            assert pending["pending"] == 0
    finally:
        redis.terminate()
        redis.wait(timeout=10)


async def test_a_second_permit_of_one_owner_is_relayed_while_the_first_creation_is_pending(
    anvil_url: str, tmp_path: Path
) -> None:
    """Two instances relay two permits of one requester (nonces 0 and 1) in the same block: the second
    is checked against the pending state, where nonce 0 is spent, and is created, not failed."""
    async with coordinator_on(anvil_url, tmp_path) as c:
        chain, store, ipfs, key, now = await _without_relayer(c)
        posted = []
        for nonce in range(2):
            body = _valid(c, now, nonce)
            status, created, _ = await c.api("POST", "/api/tasks", key=key, body=body)
            assert status == 201, created
            posted.append(created["id"])
        got = await store.redis.xreadgroup("relayers", "test", {"ethml:relay": ">"}, count=10)
        entries = got[0][1]
        assert len(entries) == 2
        await c.w3.provider.make_request("evm_setAutomine", [False])  # type: ignore[arg-type]
        first = asyncio.create_task(relay_one(chain, store, ipfs, *entries[0]))

        async def sent(task_id: str) -> bool:
            doc = await store.task(task_id)
            return doc is not None and "create" in doc["transactions"]

        await wait_until(lambda: sent(posted[0]), timeout=60, what="the first creation to be sent")
        second = asyncio.create_task(relay_one(chain, store, ipfs, *entries[1]))  # nonce 0 spent only in pending
        await wait_until(lambda: sent(posted[1]), timeout=60, what="the second creation to be sent")
        await c.w3.provider.make_request("evm_setAutomine", [True])  # type: ignore[arg-type]
        await c.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
        await asyncio.wait_for(asyncio.gather(first, second), 120)
        docs = [await store.task(task_id) for task_id in posted]
        assert [(d["status"], d["chain_task_id"]) for d in docs if d] == [("open", 1), ("open", 2)], docs


async def test_the_relayer_cannot_change_a_term(anvil_url: str, tmp_path: Path) -> None:
    """Whoever holds a posted task (the relayer, its Redis) changes a term before relaying it: the
    contract refuses the signature, nothing is created and nothing is charged; the terms as signed are
    created. The same signed terms posted again are refused (409, naming the task); other terms signed with
    the same nonce are accepted, and fail at relay naming the task that used the nonce."""
    async with coordinator_on(anvil_url, tmp_path) as c:
        chain, store, ipfs, key, now = await _without_relayer(c)
        signed = _valid(c, now, 0)
        [(first_id, first_entry)] = await _post(c, store, key, [signed])
        status, refused, _ = await c.api("POST", "/api/tasks", key=key, body=signed)
        assert status == 409, refused
        assert refused["error"] == {
            "status": 409,
            "message": f"these signed terms are posted already, as task {first_id}",
            "field": "signature",
        }, refused
        [(other_id, other_entry)] = await _post(c, store, key, [_valid(c, now, 0)])
        assert await store.redis.zcard("ethml:tasks") == 2
        tasks = training_contract(c.w3, c.deployment.training or "")
        token = token_contract(c.w3, c.deployment.token)
        requester = dev_account(REQUESTER).address
        balance = await token.functions.balanceOf(requester).call()
        for change in ({"submit_seconds": 10}, {"min_score": 0.1}, {"validations": 1}, {"reward": str(4 * EML)}):
            await store.update_task(first_id, lambda d, change=change: d.update(change))  # type: ignore[misc]
            await relay_one(chain, store, ipfs, *first_entry)
            doc = await store.task(first_id)
            assert doc is not None and doc["status"] == "failed", doc
            assert "are not signed by the requester" in doc["error"] and "(InvalidSignature)" in doc["error"], doc
            assert await tasks.functions.taskCount().call() == 0
            assert await token.functions.balanceOf(requester).call() == balance  # nothing charged
            await store.update_task(first_id, _as_posted(signed))
        await relay_one(chain, store, ipfs, *first_entry)
        first = await store.task(first_id)
        assert first is not None and (first["status"], first["chain_task_id"]) == ("open", 1), first
        tracking = await store.task_by_chain_id(1)
        assert tracking is not None and tracking["id"] == first_id
        await relay_one(chain, store, ipfs, *other_entry)
        other = await store.task(other_id)
        assert other is not None and other["status"] == "failed", other
        assert other["error"] == (
            "the signed terms carry nonce 0, but the requester's next is 1 (another task used it, or the requester "
            f"voided it); the requester's task 1 (transaction {first['transactions']['create']}) was created from "
            "other terms with this nonce"
        ), other
        assert await tasks.functions.taskCount().call() == 1


async def test_terms_posted_first_without_their_test_set_take_it_from_the_requesters_own_post(
    anvil_url: str, tmp_path: Path
) -> None:
    """Someone who has a requester's signed terms (sent to another relayer first) posts them here before the
    requester, without the test set. The requester's own post of the same terms, with the test set, is not
    refused as a repost: the test set (it matches the signed commitment) is added to the task that holds the
    terms (200, naming it), so the coordinator can reveal it. Nothing else is stored or queued, the secret is
    not shown, and a post of the terms once the task has its test set is refused as before."""
    async with coordinator_on(anvil_url, tmp_path) as c:
        chain, store, ipfs, key, now = await _without_relayer(c)
        status, made, _ = await c.api(
            "POST", "/api/keys", key=c.admin_key, body={"name": "copier", "role": "requester"}
        )
        assert status == 201, made
        signed = _valid(c, now, 0, trainers=3)
        copy = {name: value for name, value in signed.items() if name not in ("test_set", "permit")} | {"trainers": 1}
        [(held_id, entry)] = await _post(c, store, made["key"], [copy])
        first = await store.task(held_id)
        assert first is not None and (first["test_set"], first["permit"], first["trainers"]) == (None, None, 1)

        status, refused, _ = await c.api("POST", "/api/tasks", key=key, body=copy)
        assert (status, refused["error"]["message"]) == (
            409,
            f"these signed terms are posted already, as task {held_id}",
        )
        status, answer, headers = await c.api("POST", "/api/tasks", key=key, body=signed)
        assert (status, answer, headers["Location"]) == (
            200,
            {"id": held_id, "status": "pending_chain", "location": f"/api/tasks/{held_id}"},
            f"/api/tasks/{held_id}",
        ), answer
        doc = await store.task(held_id)
        assert doc is not None and doc["test_set"] == signed["test_set"], doc
        # Its creation not signed yet, the task takes the requester's permit and number of jobs too.
        assert (doc["permit"]["v"], doc["trainers"]) == (signed["permit"]["v"], 3), doc
        status, shown, _ = await c.api("GET", f"/api/tasks/{held_id}")
        assert status == 200 and "test_set" not in shown and signed["test_set"]["salt"] not in str(shown)

        status, refused, _ = await c.api("POST", "/api/tasks", key=key, body=signed)
        assert (status, refused["error"]["message"]) == (
            409,
            f"these signed terms are posted already, as task {held_id}",
        )
        assert await store.redis.zcard("ethml:tasks") == 1 and await store.redis.xlen("ethml:relay") == 1
        await asyncio.wait_for(relay_one(chain, store, ipfs, *entry), 120)  # paid by the permit: no approval
        doc = await store.task(held_id)
        assert doc is not None and (doc["status"], doc["chain_task_id"]) == ("open", 1), doc
        assert await store.redis.exists(*(k.job_queued(f"1:train:{n}") for n in range(3))) == 3


async def test_a_terms_signature_with_v_0_or_1_is_relayed_as_27_or_28_and_created(
    anvil_url: str, tmp_path: Path
) -> None:
    """Some wallets write v as 0/1; OpenZeppelin's ECDSA recovers nothing from that. The API takes it
    and stores (and relays) v as 27/28: both tasks are created on chain, none fails."""
    async with coordinator_on(anvil_url, tmp_path) as c:
        chain, store, ipfs, key, now = await _without_relayer(c)
        posted, stored_v = [], []
        for nonce in range(2):
            body = _valid(c, now, nonce)
            signature = body["signature"]
            body["signature"] = signature[:130] + f"{int(signature[130:], 16) - 27:02x}"  # 00 or 01
            status, created, _ = await c.api("POST", "/api/tasks", key=key, body=body)
            assert status == 201, created
            posted.append(created["id"])
            doc = await store.task(created["id"])
            assert doc is not None and doc["signature"] == signature, (doc, signature)
            stored_v.append(signature[130:])
        got = await store.redis.xreadgroup("relayers", "test", {"ethml:relay": ">"}, count=10)
        for entry in got[0][1]:
            await relay_one(chain, store, ipfs, *entry)
        docs = [await store.task(task_id) for task_id in posted]
        assert [(d["status"], d["chain_task_id"]) for d in docs if d] == [("open", 1), ("open", 2)], docs
        assert set(stored_v) <= {"1b", "1c"}


async def test_a_creation_whose_receipt_lags_behind_its_nonce_is_waited_for_not_replaced(
    anvil_url: str, tmp_path: Path
) -> None:
    """The instance that sent a creation dies before it records the outcome; the one that takes the entry
    over finds the relayer's nonce used while the node does not serve the receipt yet (anvil under load, a
    load-balanced provider a block behind). It waits for the receipt: the task is open and created once,
    not refused as a second use of its signed nonce."""
    async with coordinator_on(anvil_url, tmp_path) as c:
        chain, store, ipfs, key, now = await _without_relayer(c)
        task_id, entry, journaled = await _creation_sent_then_died(c, chain, store, ipfs, key, now)
        await chain.w3.provider.make_request("evm_setAutomine", [True])  # type: ignore[arg-type]
        await chain.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
        receipt = await chain.w3.eth.get_transaction_receipt(journaled["hash"])
        assert receipt["status"] == 1, "the dying instance's creation reached the chain"
        assert await chain.w3.eth.get_transaction_count(chain.relayer.address) == journaled["nonce"] + 1

        refused = lag_receipts(chain.w3, 3)
        try:
            await asyncio.wait_for(relay_one(chain, store, ipfs, *entry), 120)
        finally:
            del chain.w3.eth.get_transaction_receipt
        assert refused == [3], "the receipt was missing on the reads after the nonce showed as used"
        doc = await store.task(task_id)
        assert doc is not None and (doc["status"], doc["chain_task_id"]) == ("open", 1), doc
        assert doc["transactions"]["create"] == journaled["hash"]
        assert await training_contract(c.w3, c.deployment.training or "").functions.taskCount().call() == 1


async def test_a_creation_is_linked_once_confirmed_and_a_reorg_before_then_cannot_move_it(
    anvil_url: str, tmp_path: Path
) -> None:
    """With `--confirmations 2` the relayer links a document to its creation only once 2 blocks confirm it.
    A reorg before then drops the creation, and the requester's own task of the same terms (`createTask`)
    takes its id: the document is not left on that task. Relayed again, the journaled transaction is sent
    again as is, creates the next task, and the document is linked to that one once it is confirmed."""
    async with coordinator_on(anvil_url, tmp_path) as c:
        chain, store, ipfs, key, now = await _without_relayer(c, confirmations=2)
        assert chain.confirmations == 2
        tasks = training_contract(c.w3, c.deployment.training or "")
        [(task_id, entry)] = await _post(c, store, key, [_valid(c, now, 0)])
        before = (await chain.w3.provider.make_request("evm_snapshot", []))["result"]  # type: ignore[arg-type]
        with pytest.raises(RelayAgain, match=r"created as chain task 1 in block .*: linked once 2 blocks confirm it"):
            await asyncio.wait_for(relay_one(chain, store, ipfs, *entry), 120)
        doc = await store.task(task_id)
        assert doc is not None and (doc["status"], doc["chain_task_id"]) == ("pending_chain", None), doc
        assert await store.task_by_chain_id(1) is None
        assert await store.redis.xlen(k.jobs("trainer")) == 0, "no job before the creation is confirmed"
        sent = doc["transactions"]["create"]

        # A reorg drops the block; the requester's own task of the same terms is created first in the new one.
        reverted = await chain.w3.provider.make_request("evm_revert", [before])  # type: ignore[arg-type]
        assert reverted.get("result") is True, reverted
        assert await tasks.functions.taskCount().call() == 0
        requester = dev_account(REQUESTER)
        approve = (
            await token_contract(c.w3, c.deployment.token)
            .functions.approve(chain.tasks.address, int(doc["reward"]))
            .build_transaction({"from": requester.address, "gas": 100_000})
        )
        assert (await _send(chain, requester, approve))["status"] == 1
        direct = await chain.tasks.functions.createTask(_terms(doc).as_tuple()).build_transaction(
            {"from": requester.address, "gas": 2_000_000}
        )
        assert (await _send(chain, requester, direct))["status"] == 1
        assert await tasks.functions.taskCount().call() == 1

        with pytest.raises(RelayAgain, match="created as chain task 2 in block"):
            await asyncio.wait_for(relay_one(chain, store, ipfs, *entry), 120)
        assert await store.task_by_chain_id(1) is None and await store.task_by_chain_id(2) is None
        await chain.w3.provider.make_request("anvil_mine", [2])  # type: ignore[arg-type]
        await asyncio.wait_for(relay_one(chain, store, ipfs, *entry), 120)
        doc = await store.task(task_id)
        assert doc is not None, task_id
        assert (doc["status"], doc["chain_task_id"], doc["transactions"]["create"]) == ("open", 2, sent), doc
        assert "replay_from" not in doc, doc
        assert await store.task_by_chain_id(1) is None, "the requester's own task is not taken for the document"
        jobs = await store.redis.xrange(k.jobs("trainer"))
        assert {fields[b"chain_task"] for _id, fields in jobs} == {b"2"}, jobs
        assert await tasks.functions.taskCount().call() == 2
        assert await _relay_idle(store), "the entry is finished once linked"


async def test_terms_created_elsewhere_are_tracked_once_confirmed_with_only_confirmed_history(
    anvil_url: str, tmp_path: Path
) -> None:
    """With `--confirmations 2`, terms created through another contract one block ago are not tracked yet
    (a reorg could still drop that creation): the entry is relayed again. Once the creation is confirmed the
    document tracks it, and its replay stops where the follower reads to: a trainer's commitment one block
    later reaches the document through the follower, once confirmed in turn."""
    async with coordinator_on(anvil_url, tmp_path) as c:
        chain, store, ipfs, key, now = await _without_relayer(c, confirmations=2)
        assert chain.confirmations == 2
        [(task_id, entry)] = await _post(c, store, key, [_valid(c, now, 0)])
        forwarded = await _forward(chain, await store.task(task_id))
        waits = r"the terms' TaskCreated in block \d+ \(transaction 0x[0-9a-f]+\): tracked once 2 blocks confirm it"
        with pytest.raises(RelayAgain, match=waits):
            await asyncio.wait_for(relay_one(chain, store, ipfs, *entry), 120)
        assert await store.task_by_chain_id(1) is None
        trainer = dev_account(TRAINERS[0])
        commit = await chain.tasks.functions.commitSubmission(1, b"\x11" * 32).build_transaction(
            {"from": trainer.address, "gas": 300_000}
        )
        committed = await _send(chain, trainer, commit)
        assert committed["blockNumber"] == forwarded["blockNumber"] + 1
        await chain.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]  # the creation 2 deep

        await asyncio.wait_for(relay_one(chain, store, ipfs, *entry), 120)
        doc = await store.task(task_id)
        assert doc is not None and (doc["status"], doc["chain_task_id"], doc["submissions"]) == ("open", 1, []), doc
        assert doc["transactions"]["create"] == forwarded["transactionHash"].to_0x_hex()
        assert "replay_from" not in doc and await _relay_idle(store), doc
        await chain.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]  # the commitment 2 deep
        await follow(chain, store, 2)
        doc = await store.task(task_id)
        assert doc is not None and doc["status"] == "training", doc
        assert [s["trainer"] for s in doc["submissions"]] == [trainer.address]


async def test_a_replay_short_of_the_followers_checkpoint_is_finished_later(
    anvil_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The relayer's node is behind the follower's (a load-balanced provider): the task's replay reads to a
    block short of the follower's checkpoint, past which the follower skipped the task's events. The replay
    is not taken as finished: the entry is relayed again and replays once the node has caught up."""
    async with coordinator_on(anvil_url, tmp_path) as c:
        chain, store, ipfs, key, now = await _without_relayer(c)
        [(task_id, entry)] = await _post(c, store, key, [_valid(c, now, 0)])
        forwarded = await _forward(chain, await store.task(task_id))
        created = int(forwarded["blockNumber"])

        async def ahead() -> int:  # the follower's checkpoint, read from a node 3 blocks ahead of this one
            return created + 3

        monkeypatch.setattr(store, "checkpoint", ahead)
        with pytest.raises(RelayAgain, match=f"short of the follower's checkpoint {created + 3}"):
            await asyncio.wait_for(relay_one(chain, store, ipfs, *entry), 120)
        doc = await store.task(task_id)
        assert doc is not None and (doc["status"], doc["chain_task_id"], doc["replay_from"]) == ("open", 1, created)
        await chain.w3.provider.make_request("anvil_mine", [3])  # type: ignore[arg-type]
        await asyncio.wait_for(relay_one(chain, store, ipfs, *entry), 120)
        doc = await store.task(task_id)
        assert doc is not None and "replay_from" not in doc and await _relay_idle(store), doc


async def test_a_follower_that_moves_on_during_the_replay_does_not_hold_it_up(
    anvil_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the relayer replays a task it just linked, a block comes and the follower's checkpoint passes
    the block the replay read to. The follower applied that block itself (the task was linked by then), so
    the replay is done: the entry is finished, not relayed again in a loop."""
    async with coordinator_on(anvil_url, tmp_path) as c:
        chain, store, ipfs, key, now = await _without_relayer(c)
        [(task_id, entry)] = await _post(c, store, key, [_valid(c, now, 0)])
        await _forward(chain, await store.task(task_id))
        replay = relayer_module.replay_task

        async def follower_moves_on(*args: Any, **kwargs: Any) -> int:
            head = await replay(*args, **kwargs)
            await chain.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
            await store.set_checkpoint(head + 1)
            return head

        monkeypatch.setattr(relayer_module, "replay_task", follower_moves_on)
        await asyncio.wait_for(relay_one(chain, store, ipfs, *entry), 120)
        doc = await store.task(task_id)
        assert doc is not None and (doc["status"], doc["chain_task_id"]) == ("open", 1), doc
        assert "replay_from" not in doc and await _relay_idle(store), doc


async def test_a_relayer_waiting_more_confirmations_than_the_follower_replays_to_its_checkpoint(
    anvil_url: str, tmp_path: Path
) -> None:
    """Instances disagree on `--confirmations` for a while (a rolling restart that raises it): the leader's
    follower reads to the head, this relayer waits 2 blocks. Its replay at the link reads to the follower's
    checkpoint, which the follower reached at its own depth, so a trainer's commitment in a block the
    follower skipped reaches the document and the entry is finished, instead of being relayed again, short
    of the checkpoint, for as long as the two differ."""
    async with coordinator_on(anvil_url, tmp_path) as c:
        chain, store, ipfs, key, now = await _without_relayer(c, confirmations=2)
        [(task_id, entry)] = await _post(c, store, key, [_valid(c, now, 0)])
        with pytest.raises(RelayAgain, match="linked once 2 blocks confirm it"):
            await asyncio.wait_for(relay_one(chain, store, ipfs, *entry), 120)
        trainer = dev_account(TRAINERS[0])
        commit = await chain.tasks.functions.commitSubmission(1, b"\x11" * 32).build_transaction(
            {"from": trainer.address, "gas": 300_000}
        )
        assert (await _send(chain, trainer, commit))["status"] == 1
        await chain.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]  # the creation 2 deep
        latest = int(await chain.w3.eth.block_number)
        await store.set_checkpoint(latest)  # a follower with --confirmations 0 passed both blocks, unlinked

        await asyncio.wait_for(relay_one(chain, store, ipfs, *entry), 120)
        doc = await store.task(task_id)
        assert doc is not None and (doc["status"], doc["chain_task_id"]) == ("training", 1), doc
        assert [s["trainer"] for s in doc["submissions"]] == [trainer.address]
        assert "replay_from" not in doc and await _relay_idle(store), doc


async def test_a_creation_that_reverted_less_than_confirmations_ago_is_judged_once_confirmed(
    anvil_url: str, tmp_path: Path
) -> None:
    """With `--confirmations 2`, the relayer's creation reverts (the requester moved its EML away in the same
    block, ahead of it). A reorg could still mine it again where it does not revert, so the task is not
    failed yet, and its signed terms stay held: the entry is relayed again. Once the revert is confirmed, the
    task fails with the reason."""
    async with coordinator_on(anvil_url, tmp_path) as c:
        chain, store, ipfs, key, now = await _without_relayer(c, confirmations=2)
        task_id, entry, journaled = await _creation_sent_then_died(c, chain, store, ipfs, key, now)
        requester, token = dev_account(REQUESTER), token_contract(c.w3, c.deployment.token)
        balance = int(await token.functions.balanceOf(requester.address).call())
        fees = await fee_fields(chain.w3)
        away = await token.functions.transfer(dev_account(2).address, balance).build_transaction(
            {
                "from": requester.address,
                "gas": 100_000,
                "nonce": await chain.w3.eth.get_transaction_count(requester.address),
                "maxFeePerGas": 2 * int(fees["maxFeePerGas"]) + 10**10,
                "maxPriorityFeePerGas": int(fees["maxPriorityFeePerGas"]) + 10**10,
            }
        )
        await chain.w3.eth.send_raw_transaction(requester.sign_transaction(away).raw_transaction)
        await chain.w3.provider.make_request("evm_setAutomine", [True])  # type: ignore[arg-type]
        await chain.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
        receipt = await chain.w3.eth.get_transaction_receipt(journaled["hash"])
        assert receipt["status"] == 0, "the creation reverted behind the transfer"

        with pytest.raises(RelayAgain, match=f"the creation reverted in block {receipt['blockNumber']} "):
            await asyncio.wait_for(relay_one(chain, store, ipfs, *entry), 120)
        doc = await store.task(task_id)
        assert doc is not None and (doc["status"], doc["error"]) == ("pending_chain", None), doc
        assert await store.redis.get(k.signed_terms(doc["signature"])) == task_id.encode()
        await chain.w3.provider.make_request("anvil_mine", [2])  # type: ignore[arg-type]
        await asyncio.wait_for(relay_one(chain, store, ipfs, *entry), 120)
        doc = await store.task(task_id)
        assert doc is not None and doc["status"] == "failed" and "createTaskFor" in doc["error"], doc
        assert doc["transactions"]["create"] == journaled["hash"] and await _relay_idle(store), doc


async def test_an_import_of_a_creation_not_yet_confirmed_is_refused_until_it_is(anvil_url: str, tmp_path: Path) -> None:
    """With `--confirmations 2`, importing a task created one block ago answers 503 with Retry-After and
    stores nothing (a reorg could still drop the creation, or give its id to another task); once 2 blocks
    confirm it, the import is taken."""
    async with coordinator_on(anvil_url, tmp_path) as c:
        chain, store, _ipfs, key, now = await _without_relayer(c, confirmations=2)
        forwarded = await _forward(chain, _valid(c, now, 0))
        status, refused, headers = await c.api("POST", "/api/tasks/import", key=key, body=_import(c))
        assert status == 503 and headers.get("Retry-After") == "12", refused
        assert refused["error"]["message"] == (
            f"task 1 was created in block {forwarded['blockNumber']}, not yet 2 blocks deep (this server's "
            "--confirmations); retry once it is"
        ), refused
        assert await store.task_by_chain_id(1) is None and await store.redis.exists(k.importing(1)) == 0
        await chain.w3.provider.make_request("anvil_mine", [2])  # type: ignore[arg-type]
        status, imported, _ = await c.api("POST", "/api/tasks/import", key=key, body=_import(c))
        assert status == 201 and imported["id"] == "chain-1", imported
        doc = await store.task("chain-1")
        assert doc is not None and (doc["status"], doc["chain_task_id"]) == ("open", 1), doc
        assert "replay_from" not in doc, doc


async def test_only_its_requester_or_an_admin_imports_a_chain_task(anvil_url: str, tmp_path: Path) -> None:
    """Whoever imports a chain task first must not decide how it is served (how many training jobs), nor
    shut its requester out (a second import is a 409): an import needs the requester's signature of the
    chain task and the number of jobs. Another key's import, unsigned, signed by another account, or
    with the requester's signature of another number of jobs or another task, is refused and stores
    nothing; the requester's own import then takes, with its number of jobs. An admin key imports
    without a signature."""
    async with coordinator_on(anvil_url, tmp_path) as c:
        chain, store, _ipfs, key, now = await _without_relayer(c)
        await _forward(chain, _valid(c, now, 0))
        await _forward(chain, _valid(c, now, 1))
        stranger = await c.requester_key()
        requester = dev_account(REQUESTER).address
        refusals = [
            ({"chain_task_id": 1}, f"an import needs the signature of task 1's requester {requester}"),
            (_import(c, 1, 8, signer=3), f"the signature does not recover task 1's requester {requester}"),
            ({**_import(c, 1, 2), "trainers": 8}, "does not recover task 1's requester"),
            ({**_import(c, 2, 8), "chain_task_id": 1}, "does not recover task 1's requester"),
        ]
        for body, words in refusals:
            status, refused, _ = await c.api("POST", "/api/tasks/import", key=stranger, body=body)
            assert status == 422 and refused["error"]["field"] == "signature", (body, refused)
            assert words in refused["error"]["message"], refused
        assert await store.task_by_chain_id(1) is None and await store.redis.exists(k.importing(1)) == 0
        status, imported, _ = await c.api("POST", "/api/tasks/import", key=key, body=_import(c, 1, 3))
        assert status == 201 and imported["id"] == "chain-1", imported
        doc = await store.task("chain-1")
        assert doc is not None and (doc["trainers"], doc["requester"]) == (3, requester), doc
        status, imported, _ = await c.api("POST", "/api/tasks/import", key=c.admin_key, body={"chain_task_id": 2})
        assert status == 201 and imported["id"] == "chain-2", imported


async def test_a_journaled_creation_whose_nonce_another_transaction_took_is_signed_again(
    anvil_url: str, tmp_path: Path
) -> None:
    """The journaled creation never reached the chain (the node dropped it) and another transaction of the
    relayer key used its nonce: after the receipt grace it is given up, signed afresh and created once."""
    async with coordinator_on(anvil_url, tmp_path) as c:
        chain, store, ipfs, key, now = await _without_relayer(c)
        chain.receipt_grace = 0.5
        task_id, entry, journaled = await _creation_sent_then_died(c, chain, store, ipfs, key, now)
        assert (await chain.w3.provider.make_request("anvil_dropAllTransactions", [])).get("error") is None  # type: ignore[arg-type]
        await chain.w3.provider.make_request("evm_setAutomine", [True])  # type: ignore[arg-type]
        other = chain.relayer.sign_transaction(
            {
                "to": chain.relayer.address,
                "value": 1,
                "nonce": journaled["nonce"],
                "gas": 21_000,
                "chainId": chain.chain_id,
                **(await fee_fields(chain.w3)),
            }
        )
        await chain.w3.eth.wait_for_transaction_receipt(await chain.w3.eth.send_raw_transaction(other.raw_transaction))

        await asyncio.wait_for(relay_one(chain, store, ipfs, *entry), 120)
        doc = await store.task(task_id)
        assert doc is not None and (doc["status"], doc["chain_task_id"]) == ("open", 1), doc
        assert doc["transactions"]["create"] != journaled["hash"]
        assert await training_contract(c.w3, c.deployment.training or "").functions.taskCount().call() == 1


async def test_a_creation_that_a_copy_of_its_call_front_runs_is_tracked_not_failed(
    anvil_url: str, tmp_path: Path
) -> None:
    """Someone copies the relayer's createTaskFor from the mempool (changing a padding byte) and sends it
    with a higher tip: the copy creates the task (the signed terms are the same) and the relayer's own
    transaction reverts in the same block. The relayer finds the creation of these terms and tracks it: the
    task is open with the copy's transaction and its training jobs are queued, not failed while it is open
    on chain."""
    async with coordinator_on(anvil_url, tmp_path) as c:
        chain, store, ipfs, key, now = await _without_relayer(c)
        status, created, _ = await c.api("POST", "/api/tasks", key=key, body=_valid(c, now, 0))
        assert status == 201, created
        task_id = created["id"]
        got = await store.redis.xreadgroup("relayers", "test", {"ethml:relay": ">"}, count=10)
        await chain.w3.provider.make_request("evm_setAutomine", [False])  # type: ignore[arg-type]
        relaying = asyncio.create_task(relay_one(chain, store, ipfs, *got[0][1][0]))
        ours: dict[str, Any] = {}

        async def in_mempool() -> bool:
            doc = await store.task(task_id)
            if doc is None or "create" not in doc["transactions"]:
                return False
            try:
                ours.update(await chain.w3.eth.get_transaction(doc["transactions"]["create"]))
            except TransactionNotFound:
                return False
            return True

        await wait_until(in_mempool, timeout=60, what="the relayer's creation in the mempool")
        # The copy need not be byte for byte: one padding byte after the signature is set, which the
        # contract's ABI decoder ignores and a strict decoder of the call data refuses.
        data = bytearray(ours["input"])
        signature = bytes.fromhex((await store.task(task_id) or {})["signature"][2:])
        at = bytes(data).index(signature) + len(signature)
        assert data[at : at + 31] == bytes(31)
        data[at] = 0xFF
        copier = dev_account(2)
        copy = copier.sign_transaction(
            {
                "to": ours["to"],
                "data": bytes(data),
                "gas": ours["gas"],
                "nonce": await chain.w3.eth.get_transaction_count(copier.address),
                "chainId": chain.chain_id,
                "maxFeePerGas": 2 * int(ours["maxFeePerGas"]) + 10**10,
                "maxPriorityFeePerGas": int(ours["maxPriorityFeePerGas"]) + 10**10,
            }
        )
        copy_hash = HexStr((await chain.w3.eth.send_raw_transaction(copy.raw_transaction)).to_0x_hex())
        await chain.w3.provider.make_request("evm_setAutomine", [True])  # type: ignore[arg-type]
        await chain.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
        await asyncio.wait_for(relaying, 120)

        mine, theirs = [await chain.w3.eth.get_transaction_receipt(h) for h in (ours["hash"], copy_hash)]
        assert (theirs["status"], mine["status"]) == (1, 0), "the copy created the task; the relayer's reverted"
        assert theirs["blockNumber"] == mine["blockNumber"] and theirs["transactionIndex"] < mine["transactionIndex"]
        doc = await store.task(task_id)
        assert doc is not None and (doc["status"], doc["chain_task_id"], doc["error"]) == ("open", 1, None), doc
        assert doc["transactions"]["create"] == copy_hash
        assert doc["submit_deadline"] > now
        assert await store.redis.exists(k.job_queued("1:train:0"), k.job_queued("1:train:1")) == 2
        assert await training_contract(c.w3, c.deployment.training or "").functions.taskCount().call() == 1


async def test_terms_created_through_another_contract_are_tracked_with_their_history(
    anvil_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The signed terms reach the chain through another contract (a forwarder: the event does not show the
    call data) before the relayer gets to them, and a trainer commits to the task while no document tracks
    it (the follower skips its events). The relayer, refused by the used nonce, finds the requester's
    creation of these terms and tracks it with the history so far, not as failed; a replay cut short by an
    RPC failure (or read from a node behind the creation) leaves the task open with its jobs queued, and a
    later relay of the entry finishes it."""
    async with coordinator_on(anvil_url, tmp_path) as c:
        chain, store, ipfs, key, now = await _without_relayer(c)
        [(task_id, entry)] = await _post(c, store, key, [_valid(c, now, 0)])
        forwarded = await _forward(chain, await store.task(task_id))
        trainer = dev_account(TRAINERS[0])
        commit = await chain.tasks.functions.commitSubmission(1, b"\x11" * 32).build_transaction(
            {"from": trainer.address, "gas": 300_000}
        )
        assert (await _send(chain, trainer, commit))["status"] == 1
        await follow(chain, store, 0)  # past both events, which no document tracked
        assert (await store.task(task_id) or {})["status"] == "pending_chain"

        replay, failures = relayer_module.replay_task, []

        async def flaky(*args: Any, **kwargs: Any) -> int:
            failures.append(args)
            if len(failures) == 1:
                raise Web3RPCError("the node went away")
            if len(failures) == 2:
                return int(args[3]) - 1  # a node behind the creation's block: nothing read
            return await replay(*args, **kwargs)

        monkeypatch.setattr(relayer_module, "replay_task", flaky)
        with pytest.raises(RelayAgain, match="the node went away"):  # parked: the other entries go on
            await relay_one(chain, store, ipfs, *entry)
        cut = await store.task(task_id) or {}
        assert failures and (cut["status"], cut["replay_from"]) == ("open", forwarded["blockNumber"]), cut
        assert await store.redis.exists(k.job_queued("1:train:0")) == 1  # the creation in hand opened it
        with pytest.raises(RelayAgain, match="behind the creation's block"):
            await relay_one(chain, store, ipfs, *entry)  # the entry again, as the relayer retries
        assert (await store.task(task_id) or {})["replay_from"] == forwarded["blockNumber"]
        await asyncio.wait_for(relay_one(chain, store, ipfs, *entry), 120)
        assert len(failures) == 3
        doc = await store.task(task_id)
        assert doc is not None and (doc["status"], doc["chain_task_id"], doc["error"]) == ("training", 1, None), doc
        assert "replay_from" not in doc
        assert doc["transactions"]["create"] == forwarded["transactionHash"].to_0x_hex()
        assert [s["trainer"] for s in doc["submissions"]] == [trainer.address]
        assert doc["submit_deadline"] > now
        assert await store.redis.exists(k.job_queued("1:train:0")) == 1
        assert await training_contract(c.w3, c.deployment.training or "").functions.taskCount().call() == 1


async def test_an_import_whose_history_the_node_refuses_is_kept_and_finished_by_the_relayer(
    anvil_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task its requester created on chain (here through a forwarder), a trainer's commitment to it, then
    250 blocks, imported on a node that refuses log queries over more than 100 blocks (the coordinator set
    to query 100 at a time, as it queries 2,000 where that is the limit). While the node
    refuses every log query, the import answers 503 (the node's words only in the log) and imports nothing.
    Then the creation is found 100 blocks at a time and the replay of the task's history fails once (the
    provider's HTTP 429): the import still answers 201 (not a 500 for a task stored anyway), the task is
    open with its jobs queued, and the relay entry queued with the import finishes the history: the
    commitment is recorded."""
    async with coordinator_on(anvil_url, tmp_path) as c:
        chain, store, ipfs, key, now = await _without_relayer(c)
        forwarded = await _forward(chain, _valid(c, now, 0))
        trainer = dev_account(TRAINERS[0])
        commit = await chain.tasks.functions.commitSubmission(1, b"\x11" * 32).build_transaction(
            {"from": trainer.address, "gas": 300_000}
        )
        assert (await _send(chain, trainer, commit))["status"] == 1
        await chain.w3.provider.make_request("anvil_mine", [250])  # type: ignore[arg-type]
        await follow(chain, store, 0)  # past both events, which no document tracked
        monkeypatch.setattr(follower_module, "LOG_CHUNK", 100)  # this node's limit, as 2,000 is others'

        get_logs, queries, mode = chain.w3.eth.get_logs, [], ["down"]

        async def limited(params: Any) -> Any:
            head = int(await chain.w3.eth.block_number)
            end = head if params["toBlock"] == "latest" else int(params["toBlock"])
            queries.append((int(params["fromBlock"]), end))
            if mode[0] == "down":
                raise Web3RPCError("overloaded", rpc_response={"error": {"message": "overloaded, try later"}})
            if end - int(params["fromBlock"]) + 1 > 100:
                raise Web3RPCError("range", rpc_response={"error": {"message": "query exceeds max block range 100"}})
            if mode[0] == "flaky" and int(params["fromBlock"]) == forwarded["blockNumber"]:
                mode[0] = "up"  # a provider's rate limit: an HTTP error, not a JSON-RPC one
                raise aiohttp.ClientResponseError(_request_info(), (), status=429, message="Too Many Requests")
            return await get_logs(params)

        monkeypatch.setattr(chain.w3.eth, "get_logs", limited)
        entries = await store.redis.xlen(k.RELAY)
        status, refused, headers = await c.api("POST", "/api/tasks/import", key=key, body=_import(c))
        assert status == 503 and "Retry-After" in headers, refused
        assert refused["error"]["message"] == "the chain RPC refused a request (logged by the server); retry shortly"
        assert await store.task_by_chain_id(1) is None and await store.redis.xlen(k.RELAY) == entries
        assert await store.redis.exists(k.importing(1)) == 0  # the lease is given back

        mode[0], queries[:] = "flaky", []
        status, imported, _ = await c.api("POST", "/api/tasks/import", key=key, body=_import(c))
        assert status == 201 and imported["id"] == "chain-1", imported
        assert max(end - start for start, end in queries[1:]) < 100, queries  # the creation found in chunks
        doc = await store.task("chain-1") or {}
        assert (doc["status"], doc["replay_from"], doc["submissions"]) == ("open", forwarded["blockNumber"], []), doc
        assert await store.redis.exists(k.job_queued("1:train:0")) == 1
        async with _relayer_running(chain, store, ipfs, idle_timeout=30.0):
            await wait_until(lambda: _status_is(store, "chain-1", "training"), timeout=60, what="the history replayed")
            await wait_until(lambda: _relay_idle(store), timeout=60, what="the relay entry finished")
        doc = await store.task("chain-1") or {}
        assert "replay_from" not in doc and [s["trainer"] for s in doc["submissions"]] == [trainer.address], doc


async def test_an_import_is_one_request_at_a_time_and_says_when_the_logs_do_not_show_the_creation(
    anvil_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Imports of one chain task do not each search and replay: while one holds the task's lease, another
    is refused (409). Logs that do not show the creation (a node whose logs lag its state) answer 503 with
    Retry-After, and a node refusing long ranges whose newest blocks (here 2 queries of 100) do not hold
    the creation answers 503 saying to use another node; neither stores anything nor keeps the lease. A
    relay entry of an import that holds the lease leaves the replay to it."""
    async with coordinator_on(anvil_url, tmp_path) as c:
        chain, store, ipfs, key, now = await _without_relayer(c)
        forwarded = await _forward(chain, _valid(c, now, 0))
        await chain.w3.provider.make_request("anvil_mine", [250])  # type: ignore[arg-type]
        monkeypatch.setattr(follower_module, "LOG_CHUNK", 100)  # this node's limit, as 2,000 is others'

        async def imports() -> tuple[int, Any, Any]:
            return await c.api("POST", "/api/tasks/import", key=key, body=_import(c))

        await store.redis.set(k.importing(1), "1")
        status, refused, _ = await imports()
        assert (status, refused["error"]["message"]) == (
            409,
            "task 1 is being imported by another request; retry once it is answered",
        ), refused
        await store.redis.delete(k.importing(1))

        get_logs, mode = chain.w3.eth.get_logs, ["lagging"]

        async def node(params: Any) -> Any:
            if mode[0] == "lagging":
                return []
            if params["toBlock"] == "latest" or int(params["toBlock"]) - int(params["fromBlock"]) >= 100:
                raise Web3RPCError("range", rpc_response={"error": {"message": "query exceeds max block range"}})
            return await get_logs(params)

        monkeypatch.setattr(chain.w3.eth, "get_logs", node)
        status, refused, headers = await imports()
        assert (status, headers.get("Retry-After")) == (503, "5"), refused
        assert refused["error"]["message"] == (
            "the node's logs do not show chain task 1's creation yet (its state does); retry shortly"
        )
        mode[0] = "limited"
        monkeypatch.setattr(follower_module, "SCAN_CHUNKS", 2)
        status, refused, headers = await imports()
        assert (status, "Retry-After" in headers) == (503, False), refused
        assert refused["error"]["message"] == (
            "the node refused one log query over the whole chain, and chain task 1's creation is not in its "
            "newest 200 blocks: import it through a node that answers log queries over longer ranges"
        )
        assert await store.task_by_chain_id(1) is None and await store.redis.exists(k.importing(1)) == 0

        # The document and relay entry of an import whose replay is under way (it holds the lease).
        doc = {
            "id": "chain-1", "status": "open", "chain_task_id": 1, "created_at": 1.0, "submissions": [],
            "transactions": {}, "replay_from": forwarded["blockNumber"],
        }  # fmt: skip
        await store.redis.set(k.importing(1), "1")
        assert await store.import_task(doc)
        got = await store.redis.xreadgroup("relayers", "test", {"ethml:relay": ">"}, count=1)
        entry = got[0][1][0]
        with pytest.raises(RelayAgain, match="its import is replaying its history"):
            await relay_one(chain, store, ipfs, *entry)
        await store.redis.delete(k.importing(1))  # the import's request died
        await asyncio.wait_for(relay_one(chain, store, ipfs, *entry), 120)
        replayed = await store.task("chain-1")
        assert replayed is not None and "replay_from" not in replayed, replayed
        assert replayed["submit_deadline"] > now  # its TaskCreated applied, which names the creating transaction
        assert replayed["transactions"] == {"create": forwarded["transactionHash"].to_0x_hex()}


async def test_terms_relayed_before_the_requesters_earlier_terms_wait_for_them_for_a_while(
    anvil_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The requester's terms with nonce 1 reach a relayer before those with nonce 0 are created (relayed by
    another instance, or parked): they are relayed again later, not failed, and created once nonce 0 is
    used. Terms that wait beside too many others of the same API key, or longer than NONCE_WAIT_SECONDS, or
    until they expire, fail, saying so."""
    async with coordinator_on(anvil_url, tmp_path) as c:
        chain, store, ipfs, key, now = await _without_relayer(c)
        posted = await _post(c, store, key, [_valid(c, now, n) for n in range(3)])
        (first, first_entry), (second, second_entry), (_third, third_entry) = posted
        with pytest.raises(RelayAgain, match="carry nonce 1 and the requester's next is 0: they wait"):
            await relay_one(chain, store, ipfs, *second_entry)
        assert await _status_is(store, second, "pending_chain")
        await asyncio.wait_for(relay_one(chain, store, ipfs, *first_entry), 120)
        await asyncio.wait_for(relay_one(chain, store, ipfs, *second_entry), 120)  # taken up again
        docs = [await store.task(task_id) or {} for task_id in (first, second)]
        assert [(d["status"], d["chain_task_id"]) for d in docs] == [("open", 1), ("open", 2)], docs

        # Nonce 3 is never created. Terms with nonce 4 wait for it, those with nonce 5 beside them exceed the
        # key's number of waiting terms (here 1), then nonce 4 exceeds the wait (here 0 s): both fail. Terms
        # with nonce 6 expire while they wait.
        later = await _post(c, store, key, [_valid(c, now, n) for n in (4, 5, 6)])
        (fourth, fourth_entry), (beside, beside_entry), (fifth, fifth_entry) = later
        await asyncio.wait_for(relay_one(chain, store, ipfs, *third_entry), 120)
        monkeypatch.setattr(relayer_module, "MAX_WAITING", 1)
        with pytest.raises(RelayAgain, match="they wait for the requester's earlier terms"):
            await relay_one(chain, store, ipfs, *fourth_entry)
        await asyncio.wait_for(relay_one(chain, store, ipfs, *beside_entry), 120)
        crowded = await store.task(beside) or {}
        assert (crowded["status"], crowded["error"]) == (
            "failed",
            "the signed terms carry nonce 5, but the requester's next is 3, and 1 other terms posted with this API "
            "key wait for earlier nonces already (at most 1): the requester's earlier terms must be created first; "
            "then post these again",
        ), crowded
        monkeypatch.setattr(relayer_module, "NONCE_WAIT_SECONDS", 0)
        await asyncio.wait_for(relay_one(chain, store, ipfs, *fourth_entry), 120)
        gave_up = await store.task(fourth) or {}
        assert (gave_up["status"], gave_up["error"]) == (
            "failed",
            "the signed terms carry nonce 4, but the requester's next is 3, still after waiting 0 s: the requester's "
            "earlier terms must be created first (post them, or send them); then post these again",
        ), gave_up
        monkeypatch.setattr(relayer_module, "NONCE_WAIT_SECONDS", 300)
        with pytest.raises(RelayAgain, match="they wait for the requester's earlier terms"):
            await relay_one(chain, store, ipfs, *fifth_entry)
        expiry = int((await store.task(fifth) or {})["expiry"])
        await chain.w3.provider.make_request("evm_setNextBlockTimestamp", [expiry])  # type: ignore[arg-type]
        await chain.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
        await asyncio.wait_for(relay_one(chain, store, ipfs, *fifth_entry), 120)
        lapsed = await store.task(fifth) or {}
        assert (lapsed["status"], lapsed["chain_task_id"]) == ("failed", None), lapsed
        assert lapsed["error"] == (
            f"the signed terms carry nonce 6, but the requester's next is 3, and they expired (at {expiry}) "
            "before the requester's earlier terms used it"
        )


async def test_each_document_tracks_the_task_of_its_own_terms_not_one_with_the_same_job(
    anvil_url: str, tmp_path: Path
) -> None:
    """Two signed terms of one requester for the same job (same spec, dataset and reward; nonces 0 and 1,
    each with its own test-set salt) are both created through a forwarder before the relayer gets to them.
    Relayed in the opposite order, each document tracks the task made from its own terms."""
    async with coordinator_on(anvil_url, tmp_path) as c:
        chain, store, ipfs, key, now = await _without_relayer(c)
        posted = await _post(c, store, key, [_valid(c, now, 0), _valid(c, now, 1)])
        for task_id, _entry in posted:
            assert (await _forward(chain, await store.task(task_id)))["status"] == 1
        for _task_id, entry in reversed(posted):
            await asyncio.wait_for(relay_one(chain, store, ipfs, *entry), 120)
        docs = [await store.task(task_id) for task_id, _entry in posted]
        assert [(d["status"], d["chain_task_id"]) for d in docs if d] == [("open", 1), ("open", 2)], docs
        for n, (task_id, _entry) in enumerate(posted, 1):
            tracking = await store.task_by_chain_id(n)
            assert tracking is not None and tracking["id"] == task_id


async def test_a_task_imported_before_its_relayer_recorded_it_is_taken_over_by_the_posted_one(
    anvil_url: str, tmp_path: Path
) -> None:
    """The posted task's creation is mined and its relaying instance dies before it records the task; its
    requester imports the chain task meanwhile (POST /api/tasks/import: no signed terms, no test set). When
    the entry is relayed again, the posted task, which carries the test set, takes the chain task over: it
    is open and tracked, the import is failed naming it."""
    async with coordinator_on(anvil_url, tmp_path) as c:
        chain, store, ipfs, key, now = await _without_relayer(c)
        posted, entry, journaled = await _creation_mined_then_imported(c, chain, store, ipfs, key, now)
        tracking = await store.task_by_chain_id(1)
        assert tracking is not None and tracking["id"] == "chain-1"

        await asyncio.wait_for(relay_one(chain, store, ipfs, *entry), 120)
        doc = await store.task(posted)
        assert doc is not None and (doc["status"], doc["chain_task_id"]) == ("open", 1), doc
        assert doc["transactions"]["create"] == journaled["hash"]
        tracking = await store.task_by_chain_id(1)
        assert tracking is not None and tracking["id"] == posted
        superseded = await store.task("chain-1")
        assert superseded is not None and superseded["status"] == "failed", superseded
        assert superseded["error"] == f"task 1 is tracked as task {posted}, which was posted with its signed terms"


@pytest.mark.parametrize("importer", ["requester", "admin"])
async def test_a_post_of_the_terms_without_the_test_set_does_not_take_over_a_requesters_or_admins_import(
    anvil_url: str, tmp_path: Path, importer: str
) -> None:
    """Terms a creation used are public (its calldata), their test set is not: a post of them without the test
    set, by anyone, must not take the chain task over from an import its requester signed (choosing its
    number of training jobs) or an admin made. As above, but the post has no test set: when its entry is
    relayed again, it fails naming the import, which stays open with its number of jobs and keeps the
    link."""
    async with coordinator_on(anvil_url, tmp_path) as c:
        chain, store, ipfs, key, now = await _without_relayer(c)
        body = _valid(c, now, 0, test_set=...)
        admin = c.admin_key if importer == "admin" else None
        posted, entry, _journaled = await _creation_mined_then_imported(c, chain, store, ipfs, key, now, body, admin)

        await asyncio.wait_for(relay_one(chain, store, ipfs, *entry), 120)
        doc = await store.task(posted)
        assert doc is not None and doc["status"] == "failed" and doc["chain_task_id"] is None, doc
        assert doc["error"].endswith("which task chain-1 tracks"), doc
        tracking = await store.task_by_chain_id(1)
        assert tracking is not None and tracking["id"] == "chain-1"
        assert (tracking["status"], tracking["trainers"], tracking["imported_by"]) == (
            "open",
            3 if admin is None else 2,
            importer,
        )
        assert await _relay_idle(store)


@pytest.mark.parametrize("linked_before", [False, True], ids=["relayed-again", "linked-by-the-follower-first"])
async def test_a_takeover_of_an_import_cut_short_before_the_import_is_failed_is_finished_on_the_next_relay(
    anvil_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, linked_before: bool
) -> None:
    """As above, but the relaying instance is killed between the takeover of the link and the marking of the
    import as failed, and (`linked_before`) a trainer's commitment gives the posted task its chain id through
    the follower before the entry is relayed again. The next relay marks the import failed, naming the posted
    task: no import is left open beside the task that tracks its chain task. The relay reads the link and the
    import's status only: no note of the takeover is kept."""
    async with coordinator_on(anvil_url, tmp_path) as c:
        chain, store, ipfs, key, now = await _without_relayer(c)
        posted, entry, _journaled = await _creation_mined_then_imported(c, chain, store, ipfs, key, now)
        update = store.update_task

        async def killed_before_failing_the_import(task_id: str, change: Any) -> dict[str, Any] | None:
            if task_id == "chain-1":
                raise _Killed
            return await update(task_id, change)

        monkeypatch.setattr(store, "update_task", killed_before_failing_the_import)
        with pytest.raises(_Killed):
            await asyncio.wait_for(relay_one(chain, store, ipfs, *entry), 120)
        monkeypatch.undo()
        tracking = await store.task_by_chain_id(1)
        assert tracking is not None and tracking["id"] == posted
        assert (await store.task("chain-1") or {}).get("status") == "open"  # what the kill left
        if linked_before:
            await _outside_commitment(chain, store, posted)

        await asyncio.wait_for(relay_one(chain, store, ipfs, *entry), 120)
        doc = await store.task(posted)
        assert doc is not None and doc["chain_task_id"] == 1, doc
        assert doc["status"] == ("training" if linked_before else "open"), doc
        superseded = await store.task("chain-1")
        assert superseded is not None and superseded["status"] == "failed", superseded
        assert superseded["error"] == f"task 1 is tracked as task {posted}, which was posted with its signed terms"
        assert await store.redis.zscore(k.tasks_in("failed"), "chain-1") is not None
        assert await store.redis.zscore(k.tasks_in("open"), "chain-1") is None
        assert await _relay_idle(store)


async def test_the_follower_meeting_a_claimed_task_queues_its_jobs_under_its_chain_id(
    anvil_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The follower applies the TaskCreated of a task a relayer has just claimed (linked, the document not
    updated yet): the jobs it queues carry the chain task's id."""
    async with coordinator_on(anvil_url, tmp_path) as c:
        chain, store, ipfs, key, now = await _without_relayer(c)
        [(task_id, entry)] = await _post(c, store, key, [_valid(c, now, 0)])
        forwarded = await _forward(chain, await store.task(task_id))
        claim = store.claim_chain_id

        async def claim_then_follow(doc_id: str, chain_task_id: int) -> str:
            holder = await claim(doc_id, chain_task_id)
            await store.set_checkpoint(int(forwarded["blockNumber"]) - 1)
            await follow(chain, store, 0)
            return holder

        monkeypatch.setattr(store, "claim_chain_id", claim_then_follow)
        await asyncio.wait_for(relay_one(chain, store, ipfs, *entry), 120)
        doc = await store.task(task_id)
        assert doc is not None and (doc["status"], doc["chain_task_id"]) == ("open", 1), doc
        assert await store.redis.exists(k.job_queued("1:train:0"), k.job_queued("1:train:1")) == 2
        assert await store.redis.exists(k.job_queued("None:train:0")) == 0


async def test_a_relay_cut_short_between_the_opening_and_the_jobs_queues_them_when_relayed_again(
    anvil_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--confirmations 0`: the follower passes the creation's block before the relayer links the document
    (it polls ahead of the receipt), and the relay is cut short after the task's opening, before its
    training jobs are queued (Redis blinked, or the instance died). The next relay of the entry replays the
    task's history, so the jobs are queued: the entry is not finished with the task open and no job."""
    async with coordinator_on(anvil_url, tmp_path) as c:
        chain, store, ipfs, key, now = await _without_relayer(c)
        assert chain.confirmations == 0
        [(task_id, entry)] = await _post(c, store, key, [_valid(c, now, 0)])
        _claim_after_the_follower(monkeypatch, chain, store, then_die=False)

        async def redis_blinks(*_args: Any) -> None:
            raise ConnectionError("Connection closed by server.")

        monkeypatch.setattr(relayer_module, "task_opened", redis_blinks)
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(relay_one(chain, store, ipfs, *entry), 120)
        doc = await store.task(task_id)
        assert doc is not None and (doc["status"], doc["chain_task_id"]) == ("open", 1), doc
        assert await store.redis.xlen(k.jobs("trainer")) == 0

        monkeypatch.undo()
        await asyncio.wait_for(relay_one(chain, store, ipfs, *entry), 120)
        assert await store.redis.exists(k.job_queued("1:train:0"), k.job_queued("1:train:1")) == 2
        doc = await store.task(task_id)
        assert doc is not None and "replay_from" not in doc and await _relay_idle(store), doc


async def test_a_relayer_killed_between_the_link_and_the_opening_leaves_the_task_to_the_next_relay(
    anvil_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The relayer links the document to its creation (the claim) and is killed before it opens the task;
    the follower had passed the creation. A trainer from outside this coordinator commits to the task: the
    follower applies that to the linked document and gives it the chain id. The next relay of the entry
    opens the task from its history (deadlines, jobs, the commitment kept), instead of finding the document
    linked and leaving it `pending_chain` for good."""
    async with coordinator_on(anvil_url, tmp_path) as c:
        chain, store, ipfs, key, now = await _without_relayer(c)
        [(task_id, entry)] = await _post(c, store, key, [_valid(c, now, 0)])
        await _killed_after_the_link(monkeypatch, chain, store, ipfs, entry)
        trainer = await _outside_commitment(chain, store, task_id)
        doc = await store.task(task_id)
        assert doc is not None and (doc["status"], doc.get("submit_deadline")) == ("pending_chain", None), doc
        sent = doc["transactions"]["create"]

        await asyncio.wait_for(relay_one(chain, store, ipfs, *entry), 120)
        doc = await store.task(task_id)
        assert doc is not None and (doc["status"], doc["chain_task_id"]) == ("training", 1), doc
        assert doc["submit_deadline"] > now and doc["transactions"]["create"] == sent, doc
        assert [s["trainer"] for s in doc["submissions"]] == [trainer]
        assert await store.redis.exists(k.job_queued("1:train:0"), k.job_queued("1:train:1")) == 2
        assert "replay_from" not in doc and await _relay_idle(store), doc


async def test_a_recovery_replay_on_logs_that_lag_is_relayed_again_until_they_show_the_creation(
    anvil_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The relayer was killed between the link and the opening, and the follower gave the document its chain
    id. The next relay's node is at the head but its logs lag (they show nothing yet): the replay does not
    finish the entry with the task never opened; it is relayed again, and opens the task once they show."""
    async with coordinator_on(anvil_url, tmp_path) as c:
        chain, store, ipfs, key, now = await _without_relayer(c)
        [(task_id, entry)] = await _post(c, store, key, [_valid(c, now, 0)])
        await _killed_after_the_link(monkeypatch, chain, store, ipfs, entry)
        await _outside_commitment(chain, store, task_id)
        get_logs = chain.w3.eth.get_logs

        async def lagging(params: Any) -> Any:
            return [] if params.get("topics") else await get_logs(params)  # the task's own logs: not yet

        monkeypatch.setattr(chain.w3.eth, "get_logs", lagging)
        with pytest.raises(RelayAgain, match="do not show chain task 1's creation"):
            await asyncio.wait_for(relay_one(chain, store, ipfs, *entry), 120)
        monkeypatch.undo()
        await asyncio.wait_for(relay_one(chain, store, ipfs, *entry), 120)
        doc = await store.task(task_id)
        assert doc is not None and (doc["status"], doc["chain_task_id"]) == ("training", 1), doc
        assert "replay_from" not in doc and await _relay_idle(store), doc


async def test_a_relay_cut_between_a_jobs_mark_and_its_stream_entry_cannot_lose_the_job(
    anvil_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis fails in the middle of queueing the task's training jobs. A job is marked queued only together
    with its stream entry, so the next relay's replay queues whatever is missing: both jobs are in the
    stream (before, the second was marked queued with no entry, and never queued again)."""
    async with coordinator_on(anvil_url, tmp_path) as c:
        chain, store, ipfs, key, now = await _without_relayer(c)
        [(_task_id, entry)] = await _post(c, store, key, [_valid(c, now, 0)])
        xadd, failed = store.redis.xadd, []

        async def blinks(name: Any, *args: Any, **kwargs: Any) -> Any:
            if name == k.jobs("trainer") and not failed:
                failed.append(name)
                raise ConnectionError("Connection closed by server.")
            return await xadd(name, *args, **kwargs)

        monkeypatch.setattr(store.redis, "xadd", blinks)
        with contextlib.suppress(ConnectionError):
            await asyncio.wait_for(relay_one(chain, store, ipfs, *entry), 120)
        await asyncio.wait_for(relay_one(chain, store, ipfs, *entry), 120)
        jobs = {f[b"job"] for _id, f in await store.redis.xrange(k.jobs("trainer"))}
        assert jobs == {b"1:train:0", b"1:train:1"}, jobs


async def test_terms_created_elsewhere_whose_tracking_a_kill_cut_short_are_tracked_on_the_next_relay(
    anvil_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The terms were created through another contract; the relayer finds that creation, claims it and is
    killed before the document tracks it, and the follower gives the document the chain id with a trainer's
    commitment. The next relay replays the task's history: the document is open for training, its jobs
    queued, and `transactions.create` names the transaction that created the task."""
    async with coordinator_on(anvil_url, tmp_path) as c:
        chain, store, ipfs, key, now = await _without_relayer(c)
        [(task_id, entry)] = await _post(c, store, key, [_valid(c, now, 0)])
        forwarded = await _forward(chain, await store.task(task_id))
        await _killed_after_the_link(monkeypatch, chain, store, ipfs, entry)
        trainer = await _outside_commitment(chain, store, task_id)

        await asyncio.wait_for(relay_one(chain, store, ipfs, *entry), 120)
        doc = await store.task(task_id)
        assert doc is not None and (doc["status"], doc["chain_task_id"]) == ("training", 1), doc
        assert doc["transactions"]["create"] == forwarded["transactionHash"].to_0x_hex(), doc
        assert [s["trainer"] for s in doc["submissions"]] == [trainer]
        assert await store.redis.exists(k.job_queued("1:train:0"), k.job_queued("1:train:1")) == 2
        assert "replay_from" not in doc and await _relay_idle(store), doc


class _Killed(Exception):
    """The relaying instance dies here."""


async def _killed_after_the_link(
    monkeypatch: pytest.MonkeyPatch, chain: Chain, store: Store, ipfs: IpfsClient, entry: Any
) -> None:
    """The entry relayed up to the claim of its chain task, made once the follower passed the creation,
    and its relaying instance killed right after; the patches undone."""
    _claim_after_the_follower(monkeypatch, chain, store, then_die=True)
    with pytest.raises(_Killed):
        await asyncio.wait_for(relay_one(chain, store, ipfs, *entry), 120)
    monkeypatch.undo()


def _claim_after_the_follower(monkeypatch: pytest.MonkeyPatch, chain: Chain, store: Store, *, then_die: bool) -> None:
    """The store's claim of a chain task made only once the server's follower has passed the head (where
    the creation is), and the instance then killed (`_Killed`) if `then_die`."""
    claim = store.claim_chain_id

    async def claim_after_the_follower(doc_id: str, chain_task_id: int) -> str:
        head = int(await chain.w3.eth.block_number)

        async def passed() -> bool:
            return (await store.checkpoint() or 0) >= head

        await wait_until(passed, timeout=60, what="the follower to pass the creation")
        holder = await claim(doc_id, chain_task_id)
        if then_die:
            raise _Killed
        return holder

    monkeypatch.setattr(store, "claim_chain_id", claim_after_the_follower)


async def _outside_commitment(chain: Chain, store: Store, task_id: str) -> str:
    """A trainer commits to chain task 1 directly; once the server's follower applied it to the document
    (which gives the document its chain id), the trainer's address."""
    trainer = dev_account(TRAINERS[0])
    commit = await chain.tasks.functions.commitSubmission(1, b"\x11" * 32).build_transaction(
        {"from": trainer.address, "gas": 300_000}
    )
    assert (await _send(chain, trainer, commit))["status"] == 1

    async def applied() -> bool:
        doc = await store.task(task_id) or {}
        return doc.get("chain_task_id") == 1 and bool(doc.get("submissions"))

    await wait_until(applied, timeout=60, what="the follower to apply the commitment")
    return str(trainer.address)


async def test_terms_their_requester_voided_fail_with_the_reason(
    anvil_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The requester voids the signed terms (`useNonce`) before they are relayed, having made a task of the
    same terms itself with `createTask`: nothing created these signed terms, so the task fails with the
    reason, and the requester's own task is not taken for them. Failed, the signed terms may be posted
    again, though the instance died between failing the task and releasing them."""
    async with coordinator_on(anvil_url, tmp_path) as c:
        chain, store, ipfs, key, now = await _without_relayer(c)
        body = _valid(c, now, 0)
        status, created, _ = await c.api("POST", "/api/tasks", key=key, body=body)
        assert status == 201, created
        got = await store.redis.xreadgroup("relayers", "test", {"ethml:relay": ">"}, count=10)
        requester = dev_account(REQUESTER)
        # First the requester makes a task of the very same terms itself (`createTask`, no nonce used): not
        # these signed terms' creation, so not tracked in their place.
        doc = await store.task(created["id"])
        assert doc is not None
        token = token_contract(c.w3, c.deployment.token)
        approve = await token.functions.approve(chain.tasks.address, int(doc["reward"])).build_transaction(
            {"from": requester.address, "gas": 100_000}
        )
        assert (await _send(chain, requester, approve))["status"] == 1
        direct = await chain.tasks.functions.createTask(_terms(doc).as_tuple()).build_transaction(
            {"from": requester.address, "gas": 2_000_000}
        )
        assert (await _send(chain, requester, direct))["status"] == 1
        void = await chain.tasks.functions.useNonce().build_transaction({"from": requester.address, "gas": 100_000})
        voided = await _send(chain, requester, void)
        assert voided["status"] == 1
        release, releases = store.release_signed_terms, []

        async def crash_once(doc: dict[str, Any]) -> None:
            releases.append(doc["id"])
            if len(releases) == 1:
                raise ConnectionError("the instance died after failing the task, before releasing its terms")
            await release(doc)

        monkeypatch.setattr(store, "release_signed_terms", crash_once)
        with pytest.raises(ConnectionError):
            await relay_one(chain, store, ipfs, *got[0][1][0])
        await asyncio.wait_for(relay_one(chain, store, ipfs, *got[0][1][0]), 120)  # the entry, taken up again
        assert releases == [created["id"]] * 2
        doc = await store.task(created["id"])
        assert doc is not None and (doc["status"], doc["chain_task_id"]) == ("failed", None), doc
        assert doc["error"] == (
            "the signed terms carry nonce 0, but the requester's next is 1 (another task used it, or the requester "
            "voided it); the requester voided these terms (useNonce, transaction "
            f"{voided['transactionHash'].to_0x_hex()})"
        ), doc
        assert await store.task_by_chain_id(1) is None
        assert await training_contract(c.w3, c.deployment.training or "").functions.taskCount().call() == 1
        status, again, _ = await c.api("POST", "/api/tasks", key=key, body=body)  # failed: may be posted again
        assert status == 201, again


async def test_terms_created_before_they_were_posted_fail_at_once_naming_the_import(
    anvil_url: str, tmp_path: Path
) -> None:
    """The signed terms were created on chain (through a forwarder) before they were posted here: the nonce
    was used already at the block the task was posted at, so the task fails at once (no retries that would
    hold the relayer), saying what to do."""
    async with coordinator_on(anvil_url, tmp_path) as c:
        chain, store, ipfs, key, now = await _without_relayer(c)
        body = _valid(c, now, 0)
        assert (await _forward(chain, body))["status"] == 1
        await chain.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
        chain.head = int(await chain.w3.eth.block_number)  # the head this server saw when the task is posted
        [(task_id, entry)] = await _post(c, store, key, [body])
        await asyncio.wait_for(relay_one(chain, store, ipfs, *entry), 120)
        doc = await store.task(task_id)
        assert doc is not None and (doc["status"], doc["chain_task_id"]) == ("failed", None), doc
        assert doc["error"].endswith(
            f"; the nonce was used by block {chain.head}, before this task was posted here: if these terms created "
            "a task then, import it"
        ), doc
        assert "search_misses" not in doc
        assert await store.task_by_chain_id(1) is None


async def test_a_creation_the_logs_show_late_is_tracked_and_holds_up_no_other_relay(
    anvil_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Terms created through a forwarder after they were posted, on a node whose logs lag its state: the
    first search finds neither their creation nor their voiding. The relayer leaves that entry pending and
    relays the next one (the requester's following terms) meanwhile; when it takes the first entry up again,
    the logs show the creation and the task is tracked, not failed."""
    async with coordinator_on(anvil_url, tmp_path) as c:
        chain, store, ipfs, key, now = await _without_relayer(c)
        posted = await _post(c, store, key, [_valid(c, now, 0), _valid(c, now, 1)])
        lagging, next_opened = posted[0][0], posted[1][0]
        assert (await _forward(chain, await store.task(lagging)))["status"] == 1
        search, searches = relayer_module._created_elsewhere, []

        async def lagging_logs(chain: Chain, store: Store, doc: dict[str, Any]) -> Any:
            searches.append(doc["id"])
            if len(searches) == 1:
                opened = await store.task(next_opened)
                assert opened is not None and opened["status"] == "pending_chain"
                return None  # the logs do not show the creation yet
            return await search(chain, store, doc)

        monkeypatch.setattr(relayer_module, "_created_elsewhere", lagging_logs)
        async with _relayer_running(chain, store, ipfs, idle_timeout=1.0):
            await wait_until(lambda: _status_is(store, next_opened, "open"), timeout=60, what="the next terms relayed")
            assert await _status_is(store, lagging, "pending_chain"), "the lagging entry waits; the next one did not"
            await wait_until(
                lambda: _status_is(store, lagging, "open"), timeout=60, what="the lagging creation tracked"
            )
            # The document is open before its entry is acknowledged: wait for that too, not for a cancel.
            await wait_until(lambda: _relay_idle(store), timeout=60, what="the lagging entry finished")
        assert searches == [lagging, lagging]
        docs = [await store.task(task_id) for task_id, _entry in posted]
        assert [(d["chain_task_id"], d["error"]) for d in docs if d] == [(1, None), (2, None)], docs


async def test_an_entry_to_relay_again_is_not_retried_in_a_loop_after_another_fails(
    anvil_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One entry keeps asking to be relayed again, another fails once on an RPC error: the relayer re-reads
    its own pending entries once after the failure (the other is then relayed), not over and over."""
    async with coordinator_on(anvil_url, tmp_path) as c:
        chain, store, ipfs, key, now = await _without_relayer(c)
        posted = await _post(c, store, key, [_valid(c, now, 0), _valid(c, now, 1)])
        blip, parked = posted[0][0], posted[1][0]
        real, calls = relayer_module.relay_one, {parked: 0, blip: 0}

        async def relay(chain: Chain, store: Store, ipfs: IpfsClient, entry_id: bytes, fields: Any) -> None:
            task_id = fields[b"task"].decode()
            calls[task_id] += 1
            if task_id == parked:
                raise RelayAgain("the node is behind")
            if calls[task_id] == 1:
                raise ConnectionError("the RPC went away once")
            await real(chain, store, ipfs, entry_id, fields)

        monkeypatch.setattr(relayer_module, "relay_one", relay)
        read, new_reads = relayer_module.Relayer._read, []

        async def counted(self: Any, own: bool) -> Any:
            if not own and calls[blip] >= 2:
                new_reads.append(own)
            return await read(self, own)

        monkeypatch.setattr(relayer_module.Relayer, "_read", counted)
        async with _relayer_running(chain, store, ipfs, idle_timeout=30.0):
            await wait_until(lambda: _status_is(store, blip, "open"), timeout=60, what="the task after the RPC error")
            # The relayer goes back to reading new entries (twice) rather than its own pending ones in a loop.
            await wait_until(lambda: _true(len(new_reads) >= 2), timeout=60, what="reads of new entries")
        assert 1 <= calls[parked] <= 2, calls  # read anew once after the failure; not in a loop


async def test_entries_parked_in_front_do_not_hide_idle_entries_behind_them_from_the_reclaim(tmp_path: Path) -> None:
    """Redis's XAUTOCLAIM scans at most ten pending entries per entry it may claim. Ten entries parked in
    front of the pending list and not idle yet (terms waiting for an earlier nonce, an import's replay)
    must not keep the relayer from ever reclaiming the idle entries behind them (a killed instance's)."""
    socket = tmp_path / "redis" / "redis.sock"
    server = start_redis(socket)
    try:
        await wait_until(lambda: asyncio.to_thread(socket.exists), timeout=30, what="Redis")
        client = aioredis.Redis(unix_socket_path=str(socket))
        await wait_until(lambda: _answers(client), timeout=30, what="Redis to answer")
        store = Store(client)
        await store.setup()
        ids = [await client.xadd(k.RELAY, {"task": f"t{i}"}) for i in range(12)]
        await client.xreadgroup("relayers", "parked", {k.RELAY: ">"}, count=12)
        for i, entry in enumerate(ids):  # the first ten just parked, the last two a dead instance's
            await client.xclaim(
                k.RELAY,
                "relayers",
                "dead" if i >= 10 else "parked",
                0,
                [entry],
                idle=0 if i < 10 else 60_000,
                justid=True,
            )
        relayer = relayer_module.Relayer(None, store, None, "live", idle_timeout=30.0)  # type: ignore[arg-type]
        claimed = []
        for _ in range(4):
            claimed += [entry_id for entry_id, _fields in await relayer._reclaim()]
        assert claimed == ids[10:], claimed
        await client.aclose()
    finally:
        server.terminate()
        server.wait(10)


async def _answers(client: aioredis.Redis) -> bool:
    try:
        return bool(await client.ping())
    except (aioredis.RedisError, OSError):
        return False


async def test_an_instance_holds_only_the_entry_it_relays_and_keeps_it_fresh(
    anvil_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One entry takes the relayer longer than the idle timeout (a pending nonce waited on, a slow node,
    a long replay): it stays fresh, so no instance reclaiming idle entries takes it over, even when Redis
    fails one of its touches; and the next entry is not held behind it: a free instance reads it."""
    async with coordinator_on(anvil_url, tmp_path) as c:
        chain, store, ipfs, key, now = await _without_relayer(c)
        posted = await _post(c, store, key, [_valid(c, now, 0), _valid(c, now, 1)])
        slow, waiting = posted[0][0], posted[1][0]
        real, released = relayer_module.relay_one, asyncio.Event()

        async def relay(chain: Chain, store: Store, ipfs: IpfsClient, entry_id: bytes, fields: Any) -> None:
            if fields[b"task"].decode() == slow:
                await released.wait()
            await real(chain, store, ipfs, entry_id, fields)

        touch, touches = store.touch_entries, []

        async def blinking(*args: Any) -> Any:
            touches.append(args)
            if len(touches) == 1:
                raise ConnectionError("Redis blinked")
            return await touch(*args)

        monkeypatch.setattr(relayer_module, "relay_one", relay)
        monkeypatch.setattr(store, "touch_entries", blinking)
        idle = 2.0
        async with _relayer_running(chain, store, ipfs, idle_timeout=idle):
            await wait_until(lambda: _pending_under(store, "tester", 1), timeout=60, what="an entry read")
            got = await store.redis.xreadgroup("relayers", "free", {"ethml:relay": ">"}, count=10)
            assert [fields[b"task"].decode() for _id, fields in got[0][1]] == [waiting], got
            taken: list[Any] = []
            deadline = asyncio.get_running_loop().time() + 3 * idle
            while asyncio.get_running_loop().time() < deadline:  # what a live instance's reclaim would take
                claimed = await store.redis.xautoclaim(
                    "ethml:relay", "relayers", "other", int(idle * 1000), start_id="0-0", count=10, justid=True
                )
                taken += [entry for entry in claimed if entry == posted[0][1][0]]  # the ids (JUSTID)
                await asyncio.sleep(idle / 4)
            released.set()
            await wait_until(lambda: _status_is(store, slow, "open"), timeout=60, what="the slow entry relayed")
        assert taken == [], "the entry being relayed was taken over while its relayer held it"
        assert len(touches) >= 2, touches


async def _pending_under(store: Store, consumer: str, count: int) -> bool:
    """At least `count` relay entries pending under `consumer`."""
    pending = await store.redis.xpending_range("ethml:relay", "relayers", "-", "+", 10, consumername=consumer)
    return len(pending) >= count


@contextlib.asynccontextmanager
async def _relayer_running(chain: Chain, store: Store, ipfs: IpfsClient, *, idle_timeout: float) -> AsyncIterator[None]:
    """A relayer (consumer `tester`) running while the block runs, reading the relay stream anew."""
    await store.redis.xgroup_setid("ethml:relay", "relayers", "0")
    relayer = relayer_module.Relayer(chain, store, ipfs, "tester", idle_timeout=idle_timeout)
    running = asyncio.create_task(relayer.run())
    try:
        yield
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)


def _request_info() -> aiohttp.RequestInfo:
    url = URL("http://rpc.invalid/")
    return aiohttp.RequestInfo(url, "POST", CIMultiDictProxy(CIMultiDict()), url)


async def _relay_idle(store: Store) -> bool:
    """No relay entry pending under any consumer."""
    return int((await store.redis.xpending("ethml:relay", "relayers"))["pending"]) == 0


async def _status_is(store: Store, task_id: str, expected: str) -> bool:
    return (await store.task(task_id) or {}).get("status") == expected


async def _true(value: bool) -> bool:
    return value


async def test_a_nonce_used_only_by_a_pending_transaction_is_waited_on(anvil_url: str, tmp_path: Path) -> None:
    """The terms' nonce is used only in the pending block (another transaction of the requester waits to be
    mined): the relayer waits for it. Mined, the nonce is used; dropped, the entry is relayed again."""
    async with coordinator_on(anvil_url, tmp_path) as c:
        chain, _store, _ipfs, _key, _now = await _without_relayer(c)
        requester = dev_account(REQUESTER)
        await chain.w3.provider.make_request("evm_setAutomine", [False])  # type: ignore[arg-type]
        for outcome in ("dropped", "mined"):
            void = await chain.tasks.functions.useNonce().build_transaction(
                {
                    "from": requester.address,
                    "gas": 100_000,
                    "nonce": await chain.w3.eth.get_transaction_count(requester.address),
                }
            )
            await chain.w3.eth.send_raw_transaction(requester.sign_transaction(void).raw_transaction)
            nonces = chain.tasks.functions.nonces(requester.address)
            assert (await nonces.call(), await nonces.call(block_identifier="pending")) == (0, 1)
            if outcome == "dropped":
                assert (await chain.w3.provider.make_request("anvil_dropAllTransactions", [])).get("error") is None  # type: ignore[arg-type]
                with pytest.raises(RelayAgain, match="was dropped"):
                    await _nonce_used(chain, requester.address, 0, refused=True)
            else:
                waiting = asyncio.create_task(_nonce_used(chain, requester.address, 0, refused=True))
                await chain.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
                assert await asyncio.wait_for(waiting, 60) is True
                assert await _nonce_used(chain, requester.address, 1, refused=False) is False


async def _post(c: Coordinator, store: Store, key: str, bodies: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    """Each body posted (201), and its task id with the relay entry the test reads for it."""
    ids = []
    for body in bodies:
        status, created, _ = await c.api("POST", "/api/tasks", key=key, body=body)
        assert status == 201, created
        ids.append(created["id"])
    got = await store.redis.xreadgroup("relayers", "test", {"ethml:relay": ">"}, count=10)
    entries = got[0][1]
    assert [e[1][b"task"].decode() for e in entries] == ids
    return list(zip(ids, entries, strict=True))


async def _forward(chain: Chain, doc: dict[str, Any] | None) -> Any:
    """The document's terms created through a forwarder contract (by account 2); the receipt."""
    assert doc is not None
    forwarder = "0x" + "f0" * 20
    await chain.w3.provider.make_request("anvil_setCode", [forwarder, _forwarder_code(chain.tasks.address)])  # type: ignore[arg-type]
    data = chain.tasks.encode_abi(
        "createTaskFor",
        args=[
            _terms(doc).as_tuple(),
            doc["requester"],
            int(doc["expiry"]),
            bytes.fromhex(doc["signature"][2:]),
            _permit(doc),
        ],
    )
    return await _send(chain, dev_account(2), {"to": chain.w3.to_checksum_address(forwarder), "data": data})


async def _send(chain: Chain, account: Any, tx: dict[str, Any]) -> Any:
    """`tx` signed by `account` and sent; its receipt."""
    tx = {
        "gas": 1_000_000,
        **tx,
        "nonce": await chain.w3.eth.get_transaction_count(account.address),
        "chainId": chain.chain_id,
        **(await fee_fields(chain.w3)),
    }
    tx.pop("from", None)
    tx_hash = await chain.w3.eth.send_raw_transaction(account.sign_transaction(tx).raw_transaction)
    return await chain.w3.eth.wait_for_transaction_receipt(tx_hash)


def _forwarder_code(target: str) -> str:
    """A contract that calls `target` with its own call data and reverts if that call does (PUSH0: Shanghai)."""
    code = "365f5f37" + "5f5f365f5f73" + target[2:].lower() + "5af1" + "602657" + "5f5ffd" + "5b00"
    assert len(code) // 2 == 40 and code[76:78] == "5b"  # the JUMPDEST at 0x26
    return "0x" + code


async def _creation_sent_then_died(
    c: Coordinator, chain: Chain, store: Store, ipfs: IpfsClient, key: str, now: int, body: dict[str, Any] | None = None
) -> tuple[str, Any, dict[str, Any]]:
    """A task posted (`body`, a fresh one by default), its creation signed, journaled and sent with automine
    off, then its relaying instance gone (the relay cancelled while it waits for the receipt): the task, its
    relay entry and the journaled transaction's hash and nonce. Automine stays off."""
    [(task_id, entry)] = await _post(c, store, key, [body or _valid(c, now, 0)])
    await chain.w3.provider.make_request("evm_setAutomine", [False])  # type: ignore[arg-type]
    dying = asyncio.create_task(relay_one(chain, store, ipfs, *entry))
    journaled: dict[str, Any] = {}

    async def sent() -> bool:
        doc = await store.task(task_id)
        if doc is None or "create" not in doc["transactions"]:
            return False
        journaled.update(hash=doc["transactions"]["create"], nonce=doc["raw_nonce"]["create"])
        try:
            await chain.w3.eth.get_transaction(journaled["hash"])
        except TransactionNotFound:
            return False
        return True  # the node has it

    await wait_until(sent, timeout=60, what="the creation to be sent")
    dying.cancel()  # the instance dies waiting for the receipt
    await asyncio.gather(dying, return_exceptions=True)
    return task_id, entry, journaled


async def _creation_mined_then_imported(
    c: Coordinator,
    chain: Chain,
    store: Store,
    ipfs: IpfsClient,
    key: str,
    now: int,
    body: dict[str, Any] | None = None,
    import_key: str | None = None,
) -> tuple[str, Any, dict[str, Any]]:
    """As `_creation_sent_then_died` (posting `body`), then the creation mined (chain task 1) and imported by
    the requester (POST /api/tasks/import with its signature: `chain-1` holds the link), or with `import_key`
    and no signature (an admin's), before the entry is relayed again."""
    posted, entry, journaled = await _creation_sent_then_died(c, chain, store, ipfs, key, now, body)
    await chain.w3.provider.make_request("evm_setAutomine", [True])  # type: ignore[arg-type]
    await chain.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
    signed = _import(c, trainers=3)
    status, imported, _ = await c.api(
        "POST", "/api/tasks/import", key=import_key or key, body={"chain_task_id": 1} if import_key else signed
    )
    assert status == 201 and imported["id"] == "chain-1", imported
    return posted, entry, journaled


async def _without_relayer(c: Coordinator, **overrides: Any) -> tuple[Chain, Store, IpfsClient, str, int]:
    """A server that relays nothing by itself (the test calls relay_one), its chain, store and IPFS, a
    requester key and the chain's time; `overrides` of its configuration."""
    runner, _url = await c.start_server(relay=False, **overrides)
    app = runner.app
    assert app is not None
    return app[CHAIN], app[STORE], app[IPFS], await c.requester_key(), await chain_now(c)


def _as_posted(original: dict[str, Any]) -> Any:
    """A document change: the terms back as signed, the task pending again, no journaled transaction."""
    terms = ("reward", "validations", "min_score", "submit_seconds")

    def change(d: dict[str, Any]) -> None:
        d.update({name: original[name] for name in terms}, status="pending_chain", error=None, raw={}, raw_nonce={})

    return change


def _burner(iterations: int) -> str:
    """Code that loops `iterations` times (about 26 gas each), then returns ERC-1271's magic value: an
    `isValidSignature` that accepts any signature, at whatever cost its author chose."""
    loop = "5b60019003806004575063"  # JUMPDEST, PUSH1 1, SWAP1, SUB, DUP1, PUSH1 4, JUMPI, POP, PUSH4 ...
    return "0x62" + iterations.to_bytes(3, "big").hex() + loop + "1626ba7e" + "60e01b5f5260205ff3"


async def _delegate(chain: Chain, account: Any, code: str) -> None:
    """`account` given an EIP-7702 delegation (a type-4 transaction sent by account 2) to a contract running `code`."""
    target = "0x" + "be" * 20
    await chain.w3.provider.make_request("anvil_setCode", [target, code])  # type: ignore[arg-type]
    nonce = await chain.w3.eth.get_transaction_count(account.address)
    auth = account.sign_authorization({"chainId": chain.chain_id, "address": target, "nonce": nonce})
    receipt = await _send(chain, dev_account(2), {"type": 4, "to": dev_account(2).address, "authorizationList": [auth]})
    assert receipt["status"] == 1
    assert bytes(await chain.w3.eth.get_code(account.address))[:3] == b"\xef\x01\x00"  # delegated


async def test_a_requester_whose_signature_check_burns_gas_costs_the_relayer_nothing(
    anvil_url: str, tmp_path: Path
) -> None:
    """A requester's account with code (here an EOA with an EIP-7702 delegation) has its terms' signature checked
    on chain by that code's `isValidSignature`, which the requester wrote. Code that accepts cheaply is created as
    any other; code that burns millions of gas (and accepts) made the relayer pay for all of it. Now the relayer
    pays at most MAX_CREATE_GAS for a creation: such terms fail before anything is sent, saying why."""
    async with coordinator_on(anvil_url, tmp_path) as c:
        chain, store, ipfs, key, now = await _without_relayer(c)
        await _delegate(chain, dev_account(REQUESTER), _burner(100))
        [(cheap, cheap_entry)] = await _post(c, store, key, [_valid(c, now, 0)])
        await asyncio.wait_for(relay_one(chain, store, ipfs, *cheap_entry), 120)
        assert await _status_is(store, cheap, "open")
        target = "0x" + "be" * 20
        await chain.w3.provider.make_request("anvil_setCode", [target, _burner(300_000)])  # type: ignore[arg-type]
        [(costly, costly_entry)] = await _post(c, store, key, [_valid(c, now, 1)])
        relayer = chain.relayer.address
        balance = await chain.w3.eth.get_balance(relayer)
        sent = await chain.w3.eth.get_transaction_count(relayer)
        await asyncio.wait_for(relay_one(chain, store, ipfs, *costly_entry), 120)
        doc = await store.task(costly) or {}
        assert doc["status"] == "failed" and "create" not in doc["transactions"], doc
        assert re.fullmatch(
            r"createTaskFor would need [0-9,]+ gas, more than the 1,000,000 the relayer pays for it \(the requester's "
            r"account checks the signature with code of its own, as a contract or an EIP-7702 delegation does, and "
            r"that code takes too much gas\)",
            doc["error"],
        ), doc["error"]
        assert await chain.w3.eth.get_balance(relayer) == balance
        assert await chain.w3.eth.get_transaction_count(relayer) == sent


async def test_terms_or_a_permit_too_close_to_their_end_are_failed_before_anything_is_sent(
    anvil_url: str, tmp_path: Path
) -> None:
    """A creation sent a few seconds before the signed terms (or their permit) expire may be mined after them and
    revert at the relayer's cost, and a requester signs such terms for free. The relayer sends one only with
    EXPIRY_MARGIN (60 s) left, on wall-clock time or the chain's when it is ahead; the API takes terms and
    permits only with 120 s left."""
    async with coordinator_on(anvil_url, tmp_path) as c:
        chain, store, ipfs, key, now = await _without_relayer(c)
        relayer = chain.relayer.address
        start = max(now, int(time.time()))
        body = _expiring(c, start, 300)
        [(close, close_entry)] = await _post(c, store, key, [body])
        expiry = int(body["expiry"])
        await chain.w3.provider.make_request("evm_setNextBlockTimestamp", [expiry - 30])  # type: ignore[arg-type]
        await chain.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
        sent = await chain.w3.eth.get_transaction_count(relayer)
        await asyncio.wait_for(relay_one(chain, store, ipfs, *close_entry), 120)
        doc = await store.task(close) or {}
        assert (doc["status"], "create" in doc["transactions"]) == ("failed", False), doc
        assert doc["error"].startswith(f"the signed terms expire at {expiry}, "), doc["error"]
        assert "too soon for a creation to be mined before then" in doc["error"]

        # Terms with an hour left, their permit with less than a minute.
        later = int((await chain.w3.eth.get_block("latest"))["timestamp"])
        body = _valid(c, later, 0)
        deadline = later + 300
        body["permit"] = sign_permit(dev_account(REQUESTER), c.domain, 5 * EML, 0, deadline)
        [(permit_close, permit_entry)] = await _post(c, store, key, [body])
        await chain.w3.provider.make_request("evm_setNextBlockTimestamp", [deadline - 30])  # type: ignore[arg-type]
        await chain.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
        await asyncio.wait_for(relay_one(chain, store, ipfs, *permit_entry), 120)
        doc = await store.task(permit_close) or {}
        assert (doc["status"], "create" in doc["transactions"]) == ("failed", False), doc
        assert doc["error"].startswith(f"their permit expires at {deadline}, "), doc["error"]
        assert await chain.w3.eth.get_transaction_count(relayer) == sent  # nothing sent for either


async def test_a_relay_that_waits_too_long_for_the_relayer_lock_is_relayed_again_not_failed(
    anvil_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another instance holds the relayer lock past the wait (a slow node under its send). The creation this
    entry's killed instance journaled and sent may still be mined: the entry is relayed again later, and the
    task is not failed (which left the creation, once mined, tracked by no one)."""
    async with coordinator_on(anvil_url, tmp_path) as c:
        chain, store, ipfs, key, now = await _without_relayer(c)
        task_id, entry, journaled = await _creation_sent_then_died(c, chain, store, ipfs, key, now)
        lock = k.lock(f"relayer:{chain.relayer.address}")
        await store.redis.set(lock, "another-instance", px=600_000)
        monkeypatch.setattr(chain_module, "RELAYER_LOCK_WAIT", 1.0)
        with pytest.raises(RelayAgain, match="the relayer lock is held by another instance for over 1 s"):
            await relay_one(chain, store, ipfs, *entry)
        assert await _status_is(store, task_id, "pending_chain")
        await store.redis.delete(lock)
        await chain.w3.provider.make_request("evm_setAutomine", [True])  # type: ignore[arg-type]
        await chain.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
        await asyncio.wait_for(relay_one(chain, store, ipfs, *entry), 120)
        doc = await store.task(task_id) or {}
        assert (doc["status"], doc["chain_task_id"]) == ("open", 1), doc
        assert doc["transactions"]["create"] == journaled["hash"]


async def test_a_creation_the_node_refuses_is_relayed_again_and_signed_afresh(anvil_url: str, tmp_path: Path) -> None:
    """The node refuses the journaled creation when it is sent again (here: it lost it, and the relayer has no
    ETH left). The relayer used to wait 300 s for a receipt that could never come, then retry that entry first,
    for good, reading no other. Now the refusal is seen at once: the journal forgets the transaction, the entry
    is relayed again later while the others go on, and once the relayer is funded it is signed afresh and
    created once."""
    async with coordinator_on(anvil_url, tmp_path) as c:
        chain, store, ipfs, key, now = await _without_relayer(c)
        task_id, entry, journaled = await _creation_sent_then_died(c, chain, store, ipfs, key, now)
        await chain.w3.provider.make_request("anvil_dropTransaction", [journaled["hash"]])  # type: ignore[arg-type]
        relayer = chain.relayer.address
        funds = await chain.w3.eth.get_balance(relayer)
        await chain.w3.provider.make_request("anvil_setBalance", [relayer, "0x0"])  # type: ignore[arg-type]
        with pytest.raises(RelayAgain, match="createTaskFor: the node refused the transaction: Insufficient funds"):
            await asyncio.wait_for(relay_one(chain, store, ipfs, *entry), 60)
        doc = await store.task(task_id) or {}
        assert doc["status"] == "pending_chain" and "create" not in doc["raw"], doc
        await chain.w3.provider.make_request("anvil_setBalance", [relayer, hex(funds)])  # type: ignore[arg-type]
        await chain.w3.provider.make_request("evm_setAutomine", [True])  # type: ignore[arg-type]
        await asyncio.wait_for(relay_one(chain, store, ipfs, *entry), 120)
        doc = await store.task(task_id) or {}
        assert (doc["status"], doc["chain_task_id"]) == ("open", 1), doc
        assert int(await chain.tasks.functions.taskCount().call()) == 1


async def test_an_api_key_whose_creations_keep_reverting_is_not_relayed_for_the_hour(
    anvil_url: str, tmp_path: Path
) -> None:
    """Some reverts cannot be seen at the pre-flight: the requester voids its nonce (or moves its tokens or
    allowance away, or lets its account's code act differently) between the pre-flight and the block. Each costs
    the relayer a creation's gas, and signing terms costs the requester nothing. After MAX_REVERTS (3) of an API
    key's creations were mined and reverted within the hour, its further tasks fail before anything is sent;
    another key's are relayed as before. A revert counts from when it is seen mined, while it waits for its
    confirmations too (here 1). One that came from the terms expiring before the block is the relayer's delay,
    and does not count."""
    async with coordinator_on(anvil_url, tmp_path) as c:
        chain, store, ipfs, key, _now = await _without_relayer(c, confirmations=1)
        relayer, requester = chain.relayer.address, dev_account(REQUESTER)
        marks = k.relay_reverts(hashlib.sha256(key.encode()).hexdigest())
        late = _expiring(c, await _time(chain), 300)
        [(expired, expired_entry)] = await _post(c, store, key, [late])
        parked = [(expired, expired_entry, int(late["expiry"]) + 1)]
        for n in range(relayer_module.MAX_REVERTS):
            start = await _time(chain)
            [(task_id, entry)] = await _post(c, store, key, [_expiring(c, start, 3600, terms_nonce=n)])
            parked.append((task_id, entry, None))
        reverted = []
        for task_id, entry, mined_at in parked:  # each creation sent, then its block comes after something else
            await chain.w3.provider.make_request("evm_setAutomine", [False])  # type: ignore[arg-type]
            relay = asyncio.create_task(relay_one(chain, store, ipfs, *entry))
            await wait_until(functools.partial(_sent, chain, store, task_id), timeout=60, what="the creation sent")
            if mined_at is not None:  # the block after the terms' expiry
                await chain.w3.provider.make_request("evm_setNextBlockTimestamp", [mined_at])  # type: ignore[arg-type]
            else:  # the requester voids its nonce first, with a higher tip
                void = await chain.tasks.functions.useNonce().build_transaction(
                    {"from": requester.address, "nonce": await chain.w3.eth.get_transaction_count(requester.address),
                     "gas": 100_000, "maxFeePerGas": 10**11, "maxPriorityFeePerGas": 5 * 10**10}
                )  # fmt: skip
                await chain.w3.eth.send_raw_transaction(requester.sign_transaction(void).raw_transaction)
            await chain.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
            with pytest.raises(RelayAgain, match="the creation reverted"):  # judged once confirmed
                await asyncio.wait_for(relay, 120)
            reverted.append((task_id, entry))
        assert await store.redis.hlen(marks) == relayer_module.MAX_REVERTS  # the expired terms' revert not among them

        await chain.w3.provider.make_request("evm_setAutomine", [True])  # type: ignore[arg-type]
        start = await _time(chain)
        refused_body = _expiring(c, start, 3600, terms_nonce=relayer_module.MAX_REVERTS)
        [(refused, refused_entry)] = await _post(c, store, key, [refused_body])
        sent = await chain.w3.eth.get_transaction_count(relayer)
        await asyncio.wait_for(relay_one(chain, store, ipfs, *refused_entry), 120)
        doc = await store.task(refused) or {}
        assert (doc["status"], "create" in doc["transactions"]) == ("failed", False), doc
        assert re.fullmatch(
            r"3 creations of tasks posted with this API key were mined and reverted within the hour \(at most 3, each "
            r"at the relayer's cost\): its tasks are not relayed for another [0-9]+ s",
            doc["error"],
        ), doc["error"]
        assert await chain.w3.eth.get_transaction_count(relayer) == sent

        await chain.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
        for task_id, entry in reverted:  # judged now: failed, the expired one not counted
            await asyncio.wait_for(relay_one(chain, store, ipfs, *entry), 120)
            assert await _status_is(store, task_id, "failed")
        assert (await store.task(expired) or {})["error"].count("SignatureExpired") == 1
        assert sorted(await store.redis.hvals(marks)) == [b"counted"] * relayer_module.MAX_REVERTS
        other_key = await c.requester_key()
        other = _expiring(c, await _time(chain), 3600, terms_nonce=relayer_module.MAX_REVERTS)
        [(other_task, other_entry)] = await _post(c, store, other_key, [other])
        with pytest.raises(RelayAgain, match="linked once 1 blocks confirm it"):
            await asyncio.wait_for(relay_one(chain, store, ipfs, *other_entry), 120)
        await chain.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
        await asyncio.wait_for(relay_one(chain, store, ipfs, *other_entry), 120)
        assert await _status_is(store, other_task, "open")


async def _time(chain: Chain) -> int:
    """Wall-clock time, or the chain's when it is ahead."""
    return max(int(time.time()), int((await chain.w3.eth.get_block("latest"))["timestamp"]))


def _expiring(c: Coordinator, now: int, seconds: int, terms_nonce: int = 0) -> dict[str, Any]:
    """A valid body (the requester's terms nonce `terms_nonce`, its token nonce 0) whose terms and permit expire
    `seconds` after `now`."""
    return task_body(
        dev_account(REQUESTER),
        c.domain,
        spec=wine_spec(b"a,b,target\n1,2,0\n"),
        dataset_cid=CID,
        test_cid=CID,
        reward=5 * EML,
        terms_nonce=terms_nonce,
        permit_nonce=0,
        parameters_version=1,
        now=now,
        expiry_seconds=seconds,
    )


async def _sent(chain: Chain, store: Store, task_id: str) -> bool:
    """Whether the task's creation is signed, journaled and held by the node."""
    doc = await store.task(task_id) or {}
    if "create" not in doc.get("transactions", {}):
        return False
    try:
        await chain.w3.eth.get_transaction(doc["transactions"]["create"])
    except TransactionNotFound:
        return False
    return True


async def test_a_creation_its_fees_keep_out_of_blocks_is_replaced_with_higher_fees_and_created_once(
    anvil_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The base fee rises above what the journaled creation offers (its max fee is twice the base fee it was
    signed at, plus the tip). It used to be re-sent as it was, for good, holding up every later transaction of
    the relayer key. Now, every BUMP_AFTER seconds without a receipt, such a transaction is replaced: the same
    call and nonce, both fees raised (12.5 % at least, and to what the base fee asks now), journaled beside the
    attempt it replaces before it is sent. The replacement is mined, and the task created once."""
    async with coordinator_on(anvil_url, tmp_path) as c:
        chain, store, ipfs, key, now = await _without_relayer(c)
        monkeypatch.setattr(chain_module, "BUMP_AFTER", 0.5)
        task_id, _entry, relay, first, nonce, offered = await _creation_pending(c, chain, store, ipfs, key, now)
        await _price_out(chain, offered)
        assert int((await chain.w3.eth.get_block("latest"))["baseFeePerGas"]) == 4 * offered
        with pytest.raises(TransactionNotFound):
            await chain.w3.eth.get_transaction_receipt(first)  # priced out of the block

        async def replaced() -> bool:
            doc = await store.task(task_id) or {}
            return doc.get("raw_attempts", {}).get("create") == [first]

        await wait_until(replaced, timeout=60, what="the creation replaced")
        await chain.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
        await asyncio.wait_for(relay, 120)
        doc = await store.task(task_id) or {}
        assert (doc["status"], doc["chain_task_id"]) == ("open", 1), doc
        second = doc["transactions"]["create"]
        assert second != first
        mined = await chain.w3.eth.get_transaction(second)
        assert mined["nonce"] == nonce and doc["raw_nonce"]["create"] == nonce
        assert int(mined["maxFeePerGas"]) >= 2 * 4 * offered  # priced for the base fee now
        assert int(await chain.tasks.functions.taskCount().call()) == 1


async def test_a_creation_priced_out_that_cannot_be_replaced_is_cancelled_and_the_task_failed_saying_why(
    anvil_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The creation is priced out of blocks, and its replacement cannot be made: the requester's account (an EOA
    with an EIP-7702 delegation) now checks signatures with code that needs more than the gas cap. Kept as it
    was, the transaction would hold the relayer's nonce, and every later transaction of the relayer key, until the
    base fee fell back. Now its nonce goes to a cancel (nothing sent to the relayer itself, with the raised fees);
    once that is mined the entry is relayed again, signed afresh, and the task fails before anything more is sent,
    saying why."""
    async with coordinator_on(anvil_url, tmp_path) as c:
        chain, store, ipfs, key, now = await _without_relayer(c)
        monkeypatch.setattr(chain_module, "BUMP_AFTER", 0.5)
        await _delegate(chain, dev_account(REQUESTER), _burner(100))
        relayer = chain.relayer.address
        task_id, entry, relay, first, nonce, offered = await _creation_pending(c, chain, store, ipfs, key, now)
        target = "0x" + "be" * 20
        await chain.w3.provider.make_request("anvil_setCode", [target, _burner(300_000)])  # type: ignore[arg-type]
        await _price_out(chain, offered)

        async def cancelled() -> bool:
            doc = await store.task(task_id) or {}
            return doc.get("raw_attempts", {}).get("create") == [first]

        await wait_until(cancelled, timeout=60, what="the creation cancelled")
        cancel = await chain.w3.eth.get_transaction((await store.task(task_id) or {})["transactions"]["create"])
        assert (cancel["to"], cancel["value"], cancel["nonce"]) == (relayer, 0, nonce)
        await chain.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
        with pytest.raises(RelayAgain, match="so it was cancelled: nothing was done"):
            await asyncio.wait_for(relay, 120)
        doc = await store.task(task_id) or {}
        assert (doc["status"], doc.get("raw", {}), doc["transactions"]) == ("pending_chain", {}, {}), doc
        assert await chain.w3.eth.get_transaction_count(relayer) == nonce + 1  # the nonce is free for what follows
        await chain.w3.provider.make_request("evm_setAutomine", [True])  # type: ignore[arg-type]
        await asyncio.wait_for(relay_one(chain, store, ipfs, *entry), 120)
        doc = await store.task(task_id) or {}
        assert doc["status"] == "failed" and "more than the 1,000,000 the relayer pays for it" in doc["error"], doc
        assert await chain.w3.eth.get_transaction_count(relayer) == nonce + 1
        assert int(await chain.tasks.functions.taskCount().call()) == 0


async def test_a_replacement_the_relayer_cannot_pay_for_leaves_the_entry_to_relay_again(
    anvil_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The relayer's funds do not cover the raised fees of a replacement: the node refuses its estimate. That error
    escaped the relay (and was retried first, for good); now the attempt stands, and once the receipt wait is over
    the entry is relayed again later while the others go on."""
    async with coordinator_on(anvil_url, tmp_path) as c:
        chain, store, ipfs, key, now = await _without_relayer(c)
        monkeypatch.setattr(chain_module, "BUMP_AFTER", 0.5)
        monkeypatch.setattr(chain_module, "RECEIPT_WAIT", 3.0)
        relayer = chain.relayer.address
        task_id, _entry, relay, first, _nonce, offered = await _creation_pending(c, chain, store, ipfs, key, now)
        await _price_out(chain, offered)
        await chain.w3.provider.make_request("anvil_setBalance", [relayer, hex(10**15)])  # type: ignore[arg-type]
        with pytest.raises(RelayAgain, match="is mined after 3 s"):
            await asyncio.wait_for(relay, 120)
        doc = await store.task(task_id) or {}
        assert doc["status"] == "pending_chain" and doc["transactions"]["create"] == first, doc


async def test_a_keeper_step_that_keeps_failing_for_one_task_does_not_hold_up_the_others(
    anvil_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A step of the keeper that fails with a chain error for one task (its transaction refused, cancelled, not
    mined in time, the relayer lock busy) ended the whole pass, and the next pass began with the same task: the
    others got no reveal, draw or finalization. Now the failure is logged, the other tasks' steps go on, and the
    failing one is tried again next pass."""
    async with coordinator_on(anvil_url, tmp_path) as c:
        chain, store, ipfs, key, now = await _without_relayer(c)
        posted = await _post(c, store, key, [_valid(c, now, n) for n in range(2)])
        for _task_id, entry in posted:
            await asyncio.wait_for(relay_one(chain, store, ipfs, *entry), 120)
        # Past their submission windows (before them nothing is due, and the keeper reads no task).
        await wait_until(lambda: _opened(store, [t for t, _e in posted]), timeout=60, what="both tasks followed")
        deadline = max([int((await store.task(t) or {})["submit_deadline"]) for t, _e in posted])
        await chain.w3.provider.make_request("evm_increaseTime", [deadline - await clock.chain_now(chain.w3) + 1])  # type: ignore[arg-type]
        stepped: list[str] = []
        this_pass = asyncio.current_task()

        async def step(_chain: Chain, _store: Store, doc: dict[str, Any], *_args: Any) -> None:
            if asyncio.current_task() is not this_pass:
                return  # the server's own keeper (its leader's loop) passing meanwhile: not the pass under test
            stepped.append(doc["id"])
            if len(stepped) == 1:
                raise ChainError("revealTestSet: the node refused the transaction: insufficient funds")

        monkeypatch.setattr(keeper_module, "_step", step)
        await keep_deadlines(chain, store)
        assert sorted(stepped) == sorted(task_id for task_id, _entry in posted)


async def _opened(store: Store, task_ids: list[str]) -> bool:
    """Whether the follower has linked each task to its creation (its deadlines are in its document)."""
    return all([(await store.task(t) or {}).get("submit_deadline") for t in task_ids])


async def test_the_keeper_mines_past_a_deadline_on_a_devnet_whose_clock_was_moved_ahead(anvil_url: str) -> None:
    """A development chain mines only on demand, so the keeper mines a block once a deadline has passed on the
    clock the next block will have. It compared deadlines with the wall clock: on a devnet moved ahead
    (`evm_increaseTime`, as tests and demos do) no deadline passes on the wall clock, no block was mined, and a
    task's test-set window went by unrevealed. Nothing due on that clock still mines nothing."""
    w3 = http_web3(anvil_url, timeout=30)
    try:
        await _moved_ahead(w3)
    finally:
        await w3.provider.disconnect()  # type: ignore[attr-defined]


async def _moved_ahead(w3: AsyncWeb3[Any]) -> None:
    await w3.provider.make_request("evm_increaseTime", [3600])  # type: ignore[arg-type]
    await w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
    number, now = await clock.latest(w3)
    await w3.provider.make_request("evm_increaseTime", [100])  # the chain's clock runs on; no block yet
    chain = types.SimpleNamespace(w3=w3)

    def task(*deadlines: int) -> Any:
        submit, reveal, test = deadlines
        return types.SimpleNamespace(
            submit_deadline=submit, reveal_deadline=reveal, test_deadline=test, score_deadline=0, draw_block=0
        )

    ahead = await keeper_module._next_block_clock(chain)  # type: ignore[arg-type]
    later = task(now + 200, now + 300, now + 400)  # past on neither clock
    assert await keeper_module._chain_time(chain, [later], ahead) == now  # type: ignore[arg-type]
    assert (await clock.latest(w3))[0] == number  # nothing mined
    due = task(now - 10, now + 50, now + 500)  # the reveal deadline passed on the chain's clock, not the wall's
    assert await keeper_module._chain_time(chain, [later, due], ahead) > due.reveal_deadline  # type: ignore[arg-type]
    assert (await clock.latest(w3))[0] == number + 1


async def test_the_keeper_mines_past_a_deadline_on_an_idle_embedded_chain(monkeypatch: pytest.MonkeyPatch) -> None:
    """The embedded chain fixes its pending block's time when the block before it is mined, so on an idle chain
    that clock falls behind the wall clock: the keeper, reading it alone, never mined the block a deadline
    passed on the wall clock needs. It takes the later of the two."""
    w3 = AsyncWeb3(AsyncEthereumTesterProvider())
    number, now = await clock.latest(w3)
    monkeypatch.setattr(keeper_module, "_wall", lambda: now + 100)  # the chain idle for 100 s
    due = types.SimpleNamespace(
        submit_deadline=now + 50, reveal_deadline=now + 500, test_deadline=now + 900, score_deadline=0, draw_block=0
    )
    chain = types.SimpleNamespace(w3=w3)
    ahead = await keeper_module._next_block_clock(chain)  # type: ignore[arg-type]
    await keeper_module._chain_time(chain, [due], ahead)  # type: ignore[arg-type]
    assert (await clock.latest(w3))[0] == number + 1


async def _creation_pending(
    c: Coordinator, chain: Chain, store: Store, ipfs: IpfsClient, key: str, now: int
) -> tuple[str, Any, asyncio.Task[None], str, int, int]:
    """A task posted and its creation sent with automine off, its relay waiting for the receipt: the task, its
    relay entry, the relay, and the creation's hash, nonce and max fee."""
    [(task_id, entry)] = await _post(c, store, key, [_valid(c, now, 0)])
    await chain.w3.provider.make_request("evm_setAutomine", [False])  # type: ignore[arg-type]
    relay = asyncio.create_task(relay_one(chain, store, ipfs, *entry))
    await wait_until(functools.partial(_sent, chain, store, task_id), timeout=60, what="the creation sent")
    journaled = await store.task(task_id) or {}
    first, nonce = journaled["transactions"]["create"], journaled["raw_nonce"]["create"]
    offered = int((await chain.w3.eth.get_transaction(first))["maxFeePerGas"])
    return task_id, entry, relay, first, nonce, offered


async def _price_out(chain: Chain, offered: int) -> None:
    """A block mined now with a base fee of 4 times `offered`: a transaction offering that stays out of it."""
    await chain.w3.provider.make_request("anvil_setNextBlockBaseFeePerGas", [hex(4 * offered)])  # type: ignore[arg-type]
    await chain.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
