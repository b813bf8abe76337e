"""Workers' model artifacts are kept apart until the chain decides on their reveal: once a block past the
task's reveal deadline is confirmed, a revealed artifact goes into the blockstore and an unrevealed one is
deleted, and deleting one never takes a block another file needs."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ethml.chain import dev_account, send
from ethml.coordinator import server
from ethml.coordinator.appkeys import CHAIN, IPFS, PENDING, STORE
from ethml.coordinator.artifacts import SETTLE_GRACE, ArtifactSettler, Manifest, PendingArtifacts, UnreadableManifest
from ethml.coordinator.metrics import Metrics
from ethml.coordinator.schemas import MAX_FILE_BYTES
from ethml.ipfs.blockstore import Blockstore
from ethml.ipfs.cid import parse_cid
from ethml.ipfs.unixfs import build_file
from ethml.training.onchain import read_struct
from ethml.training.trainer import submission_commitment
from tests.conftest import captured_logs
from tests.coordinator.conftest import TRAINERS, coordinator_on
from tests.coordinator.test_api import _relayed_task, _upload
from tests.coordinator.test_flow import chain_now, travel

CHUNK = 256 * 1024


def _blocks(data: bytes) -> tuple[str, list[tuple[Any, bytes]]]:
    root, blocks = build_file(data, 1)
    return str(root), [(block.cid, block.data) for block in blocks]


def test_settling_keeps_a_revealed_artifact_and_deletes_only_blocks_no_other_artifact_names(tmp_path: Path) -> None:
    """Two pending artifacts share a chunk. Deleting the unrevealed one keeps the shared chunk for the other;
    settling the other as revealed copies every block of it into the blockstore and leaves nothing pending.
    Settling again does nothing; blocks no manifest names (a crash mid-settle) and half-written manifests are
    deleted at the next start, and a manifest written before its blocks (a crash mid-add) is settled with what
    is there, the missing blocks logged."""
    pending, store = PendingArtifacts(tmp_path / "artifacts"), Blockstore(tmp_path / "blocks")
    shared = os.urandom(CHUNK)
    junk_cid, junk = _blocks(shared + os.urandom(CHUNK))
    kept_cid, kept = _blocks(os.urandom(CHUNK) + shared)
    pending.add(7, "0x" + "AA" * 20, junk_cid, junk)
    pending.add(7, "0x" + "bb" * 20, kept_cid, kept)
    assert len(pending.blocks) == 5  # two roots, three distinct chunks
    assert {(m.task, m.account, m.cid) for m in pending.manifests()} == {
        (7, "0x" + "aa" * 20, junk_cid),
        (7, "0x" + "bb" * 20, kept_cid),
    }

    junk_manifest, kept_manifest = sorted(pending.manifests(), key=lambda m: m.account)
    assert pending.settle([(junk_manifest, False)], store) == [junk_manifest]
    assert pending.settle([(junk_manifest, False)], store) == []  # settled already (another instance)
    assert all(pending.blocks.has(cid) for cid, _ in kept)
    assert not pending.blocks.has(junk[-1][0]) and not pending.blocks.has(junk[1][0])  # its root, its own chunk
    assert len(store) == 0

    assert pending.settle([(kept_manifest, True)], store) == [kept_manifest]
    assert all(store.get(cid) == data for cid, data in kept)
    assert len(pending.blocks) == 0 and pending.manifests() == []

    # A crash between a manifest's deletion and its blocks' leaves orphans, one between writing a manifest and
    # renaming it a .tmp- file: both deleted at the next start.
    pending.blocks.put(*junk[0])
    (tmp_path / "artifacts" / "manifests" / f".tmp-9-0x{'cc' * 20}.json").write_text("{")
    assert pending.drop_orphans() == 1 and len(pending.blocks) == 0
    assert list((tmp_path / "artifacts" / "manifests").iterdir()) == []
    # A crash between a manifest and its blocks: the manifest names blocks that are not all here.
    cid, blocks = _blocks(os.urandom(3 * CHUNK))
    pending.add(8, "0x" + "cc" * 20, cid, blocks[:2])
    (manifest,) = pending.manifests()
    assert manifest.blocks == tuple(str(c) for c, _ in blocks[:2])
    for c, _ in blocks[1:2]:
        pending.blocks.remove(c)
    with captured_logs() as logs:
        assert pending.settle([(manifest, True)], store) == [manifest]
    assert store.has(blocks[0][0]) and len(pending.blocks) == 0
    assert [e["missing"] for e in logs if e["event"] == "artifact_kept_incomplete"] == [[str(blocks[1][0])]]


def test_a_damaged_manifest_is_set_aside_and_settling_one_artifact_twice_at_once_settles_it_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A manifest whose content is not one (damaged, edited by hand, named for another submission), or a
    directory in its place, is moved aside with a warning, and while one is there no block is deleted (the
    blocks it named are not known); one that cannot be read now (EIO) stops the turn (nothing settled on a
    partial view). Four threads settling the same artifact at once settle it once."""
    pending = PendingArtifacts(tmp_path / "artifacts")
    folder = tmp_path / "artifacts" / "manifests"
    folder.mkdir(parents=True)
    cid, blocks = _blocks(os.urandom(2 * CHUNK))
    pending.add(4, "0x" + "dd" * 20, cid, blocks)
    good = json.loads((folder / f"4-0x{'dd' * 20}.json").read_text())
    damaged = {
        "1": b"{",
        "2": json.dumps({"task": 2}).encode(),
        "3": b"[]",
        "5": json.dumps({**good, "task": 5, "keys": ["../../etc/passwd"]}).encode(),
        "6": json.dumps(good).encode(),  # task 4's manifest under task 6's name
        "8": b"\xff\xfe{}",  # not UTF-8
        "9": json.dumps(good).replace('"task": 4', '"task": Infinity').encode(),
        "10": json.dumps({**good, "task": 10, "account": "0x" + "aa" * 20, "blocks": ["not a cid!"] * 3}).encode(),
        "11": json.dumps({**good, "task": 11, "account": "0x" + "aa" * 20, "blocks": good["blocks"][:1]}).encode(),
    }
    for task, raw in damaged.items():
        (folder / f"{task}-0x{'aa' * 20}.json").write_bytes(raw)
    (folder / f"12-0x{'aa' * 20}.json").mkdir()
    with captured_logs() as logs:
        (manifest,) = pending.manifests()
    assert sum(e["event"] == "artifact_manifest_unreadable" for e in logs) == len(damaged) + 1
    # While a manifest set aside is there, its blocks are not known: none is deleted as an orphan.
    pending.blocks.put(*_blocks(os.urandom(100))[1][0])
    with captured_logs() as logs:
        assert pending.drop_orphans() == 0
    assert [e["event"] for e in logs] == ["artifact_orphans_kept"] and len(pending.blocks) == 4
    assert sorted(p.name for p in (tmp_path / "artifacts" / "unreadable").iterdir()) == sorted(
        f"{task}-0x{'aa' * 20}.json" for task in [*damaged, "12"]
    )
    read_bytes = Path.read_bytes

    def failing_disk(path: Path) -> bytes:
        if path.name.startswith("4-"):
            raise OSError(5, "Input/output error")
        return read_bytes(path)

    monkeypatch.setattr(Path, "read_bytes", failing_disk)
    with pytest.raises(UnreadableManifest):
        pending.manifests()
    monkeypatch.setattr(Path, "read_bytes", read_bytes)

    results: list[list[Manifest]] = []
    barrier = threading.Barrier(4)

    def settle() -> None:
        barrier.wait()
        results.append(PendingArtifacts(tmp_path / "artifacts").settle([(manifest, False)], Blockstore(tmp_path / "b")))

    threads = [threading.Thread(target=settle) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    # Settled once; its blocks stay while the manifests set aside are there (the orphan pass deletes them later).
    assert sorted(map(len, results)) == [0, 0, 0, 1] and pending.manifests() == [] and len(pending.blocks) == 4
    shutil.rmtree(tmp_path / "artifacts" / "unreadable")  # the operator has looked
    assert pending.drop_orphans() == 4 and len(pending.blocks) == 0


def test_a_cid_the_worker_sent_in_any_base_is_kept_and_a_block_cid_that_does_not_parse_sets_the_manifest_aside(
    tmp_path: Path,
) -> None:
    """The artifact's CID is kept as the worker committed to it (the upload takes any multibase: base32 with
    padding, base64 with + and /): its manifest reads back and settles. A manifest whose block CID does not
    parse (it matches the pattern but is no CID) is set aside when it is settled, not retried every turn."""
    pending, store = PendingArtifacts(tmp_path / "artifacts"), Blockstore(tmp_path / "blocks")
    data = os.urandom(CHUNK + 1000)
    root, blocks = _blocks(data)
    for n, base in enumerate(("base32pad", "base64", "base16upper")):
        text = parse_cid(root).encode(base)
        pending.add(n + 1, "0x" + "aa" * 20, text, blocks)
        (manifest,) = pending.manifests()
        assert manifest.cid == text and pending.settle([(manifest, True)], store) == [manifest]
    assert all(store.get(cid) == block for cid, block in blocks) and len(pending.blocks) == 0

    pending.add(9, "0x" + "bb" * 20, root, blocks)
    path = tmp_path / "artifacts" / "manifests" / f"9-0x{'bb' * 20}.json"
    path.write_text(path.read_text().replace(str(blocks[0][0]), "aaaaaaaaaaaaaaaa"))
    (manifest,) = pending.manifests()
    with captured_logs() as logs:
        assert pending.settle([(manifest, True)], store) == []
    assert [e["event"] for e in logs] == ["artifact_manifest_unreadable"] and pending.manifests() == []
    assert len(pending.blocks) == len(blocks)  # kept: the operator decides


def test_an_artifact_that_fails_to_settle_stays_pending_and_the_others_are_settled(tmp_path: Path) -> None:
    """The blockstore's disk is full: copying a revealed artifact fails. It stays pending (and served) for the
    next turn, logged; the unrevealed one in the same turn is deleted all the same."""
    pending = PendingArtifacts(tmp_path / "artifacts")
    kept_cid, kept = _blocks(os.urandom(2 * CHUNK))
    junk_cid, junk = _blocks(os.urandom(2 * CHUNK))
    pending.add(3, "0x" + "aa" * 20, kept_cid, kept)
    pending.add(3, "0x" + "bb" * 20, junk_cid, junk)
    kept_manifest, junk_manifest = pending.manifests()

    class Full(Blockstore):
        def put(self, cid: Any, data: bytes) -> None:
            raise OSError(28, "No space left on device")

    with captured_logs() as logs:
        settled = pending.settle([(junk_manifest, False), (kept_manifest, True)], Full(tmp_path / "blocks"))
    assert settled == [junk_manifest] and pending.manifests() == [kept_manifest]
    assert all(pending.blocks.has(cid) for cid, _ in kept) and not any(pending.blocks.has(c) for c, _ in junk)
    assert [e["event"] for e in logs] == ["artifact_settle_failed"] and "No space left" in logs[0]["error"]


async def test_a_junk_artifact_is_deleted_when_the_reveal_window_closes_and_takes_no_block_another_file_needs(
    anvil_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The attack: a sybil trainer commits to a requester's public dataset as its artifact, uploads it, and
    never reveals, to fill the disk, or to have the coordinator delete the dataset's blocks with it. Until the
    window closes its artifact is pending (and served); once a confirmed block is past the reveal deadline it
    is deleted from the pending store only: every block of the dataset is still served. The honest trainer's
    revealed artifact goes into the blockstore. An upload after the window is refused, whoever sends it."""
    # The server's own settler runs once at its start (nothing pending then) and not again during the test:
    # the test's settler takes every step, when the test says.
    monkeypatch.setattr(server, "SETTLE_INTERVAL", 3600.0)
    async with coordinator_on(anvil_url, tmp_path) as c:
        runner, url = await c.start_server()
        app = runner.app
        assert app is not None
        store, chain, blocks, pending = app[STORE], app[CHAIN], app[IPFS].blockstore, app[PENDING]
        assert blocks.durable and pending.blocks.durable  # what a 201 stored survives a crash right after
        key = await c.requester_key()
        task = await _relayed_task(c, url, key)

        dataset = os.urandom(3 * CHUNK + 1000)
        status, stored, _ = await _upload(url, dataset, {"Authorization": f"Bearer {key}"})
        assert status == 201, stored
        dataset_cid, dataset_blocks = _blocks(dataset)
        assert stored["cid"] == dataset_cid

        honest, sybil = dev_account(TRAINERS[0]), dev_account(TRAINERS[1])
        model = os.urandom(2 * CHUNK)
        openings: dict[str, dict[str, str]] = {}
        for who, data in ((honest, model), (sybil, dataset)):
            opening = {
                "X-Task": str(task),
                "X-Artifact-Cid": str(build_file(data, 1)[0]),
                "X-Artifact-Sha256": hashlib.sha256(data).hexdigest(),
                "X-Artifact-Claim": "900000",
                "X-Artifact-Salt": os.urandom(32).hex(),
            }
            commitment = submission_commitment(
                task, who.address, opening["X-Artifact-Cid"], bytes.fromhex(opening["X-Artifact-Sha256"]), 900_000,
                bytes.fromhex(opening["X-Artifact-Salt"]),
            )  # fmt: skip
            await send(chain.w3, who, chain.tasks.functions.commitSubmission(task, commitment))
            openings[who.address] = {"X-Worker-Token": await store.new_upload_token(who.address), **opening}
        assert openings[sybil.address]["X-Artifact-Cid"] == dataset_cid

        t = await read_struct(chain.tasks, "getTask", task)
        await travel(c, int(t["submitDeadline"]) - await chain_now(c) + 1)  # the reveal window
        for who, data in ((honest, model), (sybil, dataset)):
            status, reply, _ = await _upload(url, data, openings[who.address])
            assert status == 201, reply
        assert {m.account for m in pending.manifests()} == {honest.address.lower(), sybil.address.lower()}
        _, model_blocks = _blocks(model)
        assert not any(blocks.has(cid) for cid, _ in model_blocks)  # pending: not in the blockstore yet ...
        await _served(url, model_blocks)  # ... and served all the same
        h = openings[honest.address]
        reveal = chain.tasks.functions.revealSubmission(
            task, h["X-Artifact-Cid"], bytes.fromhex(h["X-Artifact-Sha256"]), 900_000,
            bytes.fromhex(h["X-Artifact-Salt"]),
        )  # fmt: skip
        await send(chain.w3, honest, reveal)

        # A manifest for a task this chain does not know (another deployment's): never decided, never in the way.
        stray_cid, stray = _blocks(os.urandom(1000))
        pending.add(task + 1000, "0x" + "ee" * 20, stray_cid, stray)
        metrics = Metrics()
        settler = ArtifactSettler(chain, pending, blocks, metrics)
        await settler.step()  # the window is open: nothing is decided
        assert len(pending.manifests()) == 3

        # Past the deadline, but not by SETTLE_GRACE (a reorg could still drop a reveal): nothing is decided.
        await travel(c, int(t["revealDeadline"]) - await chain_now(c) + 1)
        await settler.step()
        assert len(pending.manifests()) == 3
        await travel(c, SETTLE_GRACE)
        with captured_logs() as logs:
            await settler.step()
        assert [(m.task, m.cid) for m in pending.manifests()] == [(task + 1000, stray_cid)]
        assert len(pending.blocks) == 1 and pending.blocks.has(stray[0][0])
        sample = metrics.registry.get_sample_value
        assert sample("ethml_artifacts", {"state": "pending"}) == 1  # the stray one
        assert sample("ethml_artifacts", {"state": "unreadable"}) == 0
        assert sample("ethml_artifacts_settled_total", {"outcome": "kept"}) == 1
        assert sample("ethml_artifacts_settled_total", {"outcome": "deleted"}) == 1
        # (the server's other loops log too: the keeper, say, on the test set's window)
        events = sorted((e["event"], e.get("trainer")) for e in logs if e["event"].startswith("artifact_"))
        assert events == [
            ("artifact_deleted", sybil.address.lower()),
            ("artifact_kept", honest.address.lower()),
            ("artifact_task_unknown", "0x" + "ee" * 20),
        ], logs
        assert all(blocks.get(cid) == data for cid, data in model_blocks)  # revealed: in the blockstore for good
        assert all(blocks.get(cid) == data for cid, data in dataset_blocks)  # the dataset lost nothing
        await _served(url, model_blocks + dataset_blocks)

        for who, data in ((sybil, dataset), (honest, model)):
            status, reply, _ = await _upload(url, data, openings[who.address])
            assert status == 403 and "reveal window has closed" in reply["error"]["message"], reply
        assert len(pending.manifests()) == 1 and len(pending.blocks) == 1


async def _served(url: str, blocks: list[tuple[Any, bytes]]) -> None:
    async with aiohttp.ClientSession() as session:
        for cid, data in blocks:
            async with session.get(f"{url}/ipfs/{cid}?format=raw") as response:
                assert response.status == 200 and await response.read() == data, cid
                assert parse_cid(response.headers["X-Ipfs-Roots"]) == cid


def test_the_largest_artifact_an_upload_may_carry_is_a_readable_manifest(tmp_path: Path) -> None:
    """MAX_FILE_BYTES of one repeated chunk and of random bytes: each manifest (65 blocks, or 65 entries for
    two distinct blocks) reads back, and settles into the blockstore whole."""
    pending, store = PendingArtifacts(tmp_path / "artifacts"), Blockstore(tmp_path / "blocks")
    for n, data in enumerate((bytes(MAX_FILE_BYTES), os.urandom(MAX_FILE_BYTES))):
        cid, blocks = _blocks(data)
        pending.add(n + 1, "0x" + "aa" * 20, cid, blocks)
        (manifest,) = pending.manifests()
        assert len(manifest.blocks) == 1 + MAX_FILE_BYTES // CHUNK
        assert pending.settle([(manifest, True)], store) == [manifest]
        assert all(store.has(c) for c, _ in blocks)
