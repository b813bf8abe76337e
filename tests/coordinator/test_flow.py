"""The whole training flow through the coordinator's HTTP API: a task posted on signed terms with a
permit, two trainer and three validator `ethml worker` processes (trainers commit, then reveal when the
window opens; the validators the draw seats score, commit, then reveal), the model accepted,
registered and served by the oracle."""

from __future__ import annotations

import json
from typing import Any

from web3.logs import DISCARD

from ethml.chain import (
    EML,
    Status,
    consumer_contract,
    dev_account,
    ethml_contract,
    registry_contract,
    send,
    token_contract,
)
from ethml.coordinator.appkeys import CHAIN
from ethml.coordinator.client import task_body
from ethml.coordinator.follower import _round_at
from ethml.ipfs import Blockstore, IpfsClient, IpfsConfig
from ethml.ml import Manifest
from ethml.ml.loader import load_untrusted
from ethml.node import Node, NodeConfig
from ethml.requester import consumer_deposit
from ethml.training import sklearn_dataset_csv, split_csv
from tests.coordinator.conftest import REQUESTER, TRAINERS, VALIDATORS, Coordinator
from tests.node.conftest import wait_until
from tests.training.test_e2e import _spec as wine_spec


async def chain_now(c: Coordinator) -> int:
    return int((await c.w3.eth.get_block("latest"))["timestamp"])


async def travel(c: Coordinator, seconds: int) -> None:
    await c.w3.provider.make_request("evm_increaseTime", [seconds])  # type: ignore[arg-type]
    await c.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]


async def post_wine_task(c: Coordinator, key: str, *, trainers: int = 2, nonce: int = 0) -> tuple[str, dict[str, Any]]:
    """The requester's `nonce`-th task (its terms and permit nonces), wine data, one hour per window."""
    public, hidden = split_csv(sklearn_dataset_csv("wine"), 0.3, seed=2024)
    status, dataset, _ = await c.api("POST", "/api/files", key=key, raw=public, content_type="text/csv")
    assert status == 201, dataset
    status, test_set, _ = await c.api("POST", "/api/files", key=key, raw=hidden, content_type="text/csv")
    assert status == 201, test_set
    body = task_body(
        dev_account(REQUESTER),
        c.domain,
        spec=wine_spec(public),
        dataset_cid=dataset["cid"],
        test_cid=test_set["cid"],
        reward=50 * EML,
        terms_nonce=nonce,
        permit_nonce=nonce,
        parameters_version=1,  # a fresh deployment's first parameters
        trainers=trainers,
        now=await chain_now(c),
    )
    status, created, headers = await c.api("POST", "/api/tasks", key=key, body=body)
    assert status == 201, created
    assert created["status"] == "pending_chain" and headers["Location"] == created["location"]
    return created["id"], body


async def task(c: Coordinator, task_id: str) -> dict[str, Any]:
    status, doc, _ = await c.api("GET", f"/api/tasks/{task_id}")
    assert status == 200, doc
    return dict(doc)


async def wait_status(c: Coordinator, task_id: str, wanted: str, timeout: float = 240.0) -> dict[str, Any]:
    async def reached() -> bool:
        return (await task(c, task_id))["status"] == wanted

    await wait_until(reached, timeout=timeout, what=f"task {task_id} {wanted}")
    return await task(c, task_id)


async def test_a_task_posted_over_http_is_trained_validated_accepted_and_served(coordinator: Coordinator) -> None:
    c = coordinator
    key = await c.requester_key()
    requester = dev_account(REQUESTER).address
    ethml = ethml_contract(c.w3, c.deployment.ethml)
    token = token_contract(c.w3, c.deployment.token)
    balance_before = await token.functions.balanceOf(requester).call()
    task_id, _body = await post_wine_task(c, key)
    opened = await wait_status(c, task_id, "open", timeout=60)
    assert opened["chain_task_id"] == 1 and opened["requester"] == requester
    assert balance_before - await token.functions.balanceOf(requester).call() == 50 * EML  # escrow via the permit
    assert "test_set" not in opened and "permit" not in opened  # secrets stay on the server

    for who in TRAINERS[:2]:
        c.start_worker("trainer", who)
    for who in VALIDATORS:
        c.start_worker("validator", who)

    async def submissions(revealed: bool) -> bool:
        subs = (await task(c, task_id))["submissions"]
        return len(subs) == 2 and all(s["revealed"] == revealed for s in subs)

    await wait_until(lambda: submissions(False), timeout=240, what="two commitments")
    await travel(c, 3601)  # past the submission deadline: the trainers reveal (and upload their models)
    await wait_until(lambda: submissions(True), timeout=120, what="two reveals")
    await travel(c, 61)  # past the reveal window: the coordinator reveals the test set, then draws the panel
    done = await wait_status(c, task_id, "accepted", timeout=240)
    assert {s["trainer"] for s in done["submissions"]} == {dev_account(w).address for w in TRAINERS[:2]}
    assert [s["bond"] for s in done["submissions"]] == ["released", "released"]
    assert done["submissions"][0]["score"] > 800_000
    panel = done["panel"]
    # Three seats drawn by lot with replacement among the three validators: one may hold two.
    assert len(panel) == 3 and {p["validator"] for p in panel} <= {dev_account(v).address for v in VALIDATORS}
    assert all(p["state"] == "revealed" and not p["unusable"] and len(p["scores"]) == 2 for p in panel), panel
    # The seats' draw, read from the chain at their event's block (the round drawPanel counted there).
    app = c.runners[0].app
    assert app is not None
    drawn = await app[CHAIN].tasks.events.ValidatorDrawn().get_logs(from_block=0)
    assert len(drawn) == 3 and all(p["draw"] == 1 for p in panel), panel
    assert {await _round_at(app[CHAIN], 1, int(e["blockNumber"])) for e in drawn} == {1}
    assert set(done["transactions"]) >= {"create", "reveal", "finalize"}
    # The settlement's transaction registers the model too: the task reads it with its status, never accepted
    # without it (the follower applies the settlement with its registration, read at its block).
    model_id = done.get("model_id")
    assert model_id == 5 and done["registration"] == "registered"  # after the four bundled models

    # Every job has exactly one recorded result; each validation job went to the validator of its seat.
    store = c.store()
    # One validation job per drawn validator, at its first seat, however many seats it holds.
    first_seats: dict[str, int] = {}
    for p in panel:
        first_seats.setdefault(p["validator"], p["seat"])
    jobs = ["1:train:0", "1:train:1", *(f"1:validate:{seat}" for seat in first_seats.values())]
    for job in jobs:
        result = await store.result(job)
        assert result is not None and result["ok"], (job, result)
    for validator, seat in first_seats.items():
        result = await store.result(f"1:validate:{seat}")
        assert result is not None and result["worker"].startswith(validator + ":"), (seat, result)
    for seat in set(range(3)) - set(first_seats.values()):  # a second seat of one validator: no second job
        assert await store.result(f"1:validate:{seat}") is None

    # The oracle serves the accepted model: five nodes fetch it by CID from the coordinator's gateway.
    registry = registry_contract(c.w3, c.deployment.registry)
    sha, _kind, _decimals, _features, active, cid = await registry.functions.getModel(model_id).call()
    assert active
    manifest = Manifest.load()
    raw = manifest.data_point_path(manifest.by_name("wine").data_points[0]).read_bytes()
    ipfs = IpfsClient(Blockstore(c.root / "client" / "blocks"), IpfsConfig(gateways=[c.url]))
    model = load_untrusted(await ipfs.cat(cid, max_size=64 * 1024 * 1024), "accepted", bytes(sha).hex())
    point_cid = str(ipfs.add_bytes(raw))
    consumer = consumer_contract(c.w3, c.deployment.consumer)
    receipt = await send(
        c.w3,
        dev_account(REQUESTER),
        consumer.functions.request(model_id, point_cid, 0),
        value=await consumer_deposit(c.w3, c.deployment),
    )
    rid = int(ethml.events.PredictionRequested().process_receipt(receipt, errors=DISCARD)[0]["args"]["requestId"])
    nodes = [
        Node(
            w3=c.w3,
            deployment=c.deployment,
            account=dev_account(i),
            config=NodeConfig(threads=1, poll_interval=0.1, data_dir=c.root / "client", gateways=(c.url,)),
        )
        for i in range(5)
    ]
    for n in nodes:
        await n.start()
    try:

        async def answered() -> bool:
            return bool((await consumer.functions.answers(rid).call())[4])

        await wait_until(answered, timeout=180, what="the trained model's answer")
    finally:
        for n in nodes:
            await n.stop()
    answer = await consumer.functions.answers(rid).call()
    assert (int(answer[1]), int(answer[2])) == (int(model.predict([json.loads(raw)])[0]), int(Status.FINALIZED))
