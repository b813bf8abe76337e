"""The third review's finding 4, end to end: a model fit on more than the task's data (here the
dataset plus the test set, which a requester's ally has) outranks an honest earlier submission on the
test set, and neither its claim nor claimSlack stops it on chain. Every honest validator re-fits the
spec and votes 0 for an artifact that does not predict as the re-fit does; the majority agrees, the
cheat loses its bond and the honest model is accepted. A claim off its holdout score by less than
claimSlack is scored as the contract allows it, not voted 0."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from sklearn.ensemble import RandomForestClassifier

from ethml.chain import EML, dev_account, send, training_contract
from ethml.chain.embedded import time_travel
from ethml.ml.loader import sha256_hex
from ethml.training import sklearn_dataset_csv, split_csv
from ethml.training.artifact import canonical_dumps
from ethml.training.flow import finalize_task, reveal_submission, reveal_test_set, stake_info, train_and_submit
from ethml.training.jobs import assess, fit_and_claim, read_csv
from ethml.training.onchain import TaskError, secret_file
from ethml.training.trainer import refuse_revealed_elsewhere, submission_commitment
from tests.node.conftest import make_system
from tests.training.test_e2e import (
    FIRST,
    INFLATED,
    PERIOD,
    REQUESTER,
    REVEAL,
    SECOND,
    _panel_votes,
    _post_wine_task,
    _spec,
    _stake_everyone,
)

#: A small forest: the honest model is good, not perfect, on the test set (above the 0.8 minimum).
SMALL = {"n_estimators": 2, "max_depth": 2}


async def test_a_model_fit_on_the_test_set_gets_0_from_honest_validators_and_loses_its_bond(tmp_path: Path) -> None:
    system = await make_system(tmp_path)
    w3, dep = system.w3, system.deployment
    await _stake_everyone(system)
    task_id = await _post_wine_task(system, tmp_path, params=SMALL)
    public, hidden = split_csv(sklearn_dataset_csv("wine"), 0.3, seed=2024)
    spec = _spec(public, SMALL)

    honest = await train_and_submit(w3, dep, dev_account(FIRST), system.ipfs, task_id, data_dir=tmp_path)
    # The same honest model, its claim off its holdout score by less than claimSlack (0.1).
    near = honest["claimed"] + 50_000
    await train_and_submit(w3, dep, dev_account(SECOND), system.ipfs, task_id, data_dir=tmp_path, claim=near)

    # The cheat: the promised estimator, fit on the dataset and the test set, committed after the honest one.
    x_pub, y_pub = read_csv(public, spec)
    x_test, y_test = read_csv(hidden, spec)
    model = RandomForestClassifier(n_estimators=50, random_state=0).fit(
        np.vstack([x_pub, x_test]), np.concatenate([y_pub, y_test])
    )
    artifact = canonical_dumps(model)
    sha = sha256_hex(artifact)
    mine = assess(spec, artifact, sha, 0, public, hidden, task_id)
    fair = assess(spec, fit_and_claim(spec, public, task_id).artifact, honest["sha256"], 0, public, hidden, task_id)
    # The attack's premise: on chain the cheat would win (a higher test-set score, its claim its own
    # holdout score, so claim + claimSlack caps nothing).
    assert mine.test_score > fair.test_score and mine.holdout_score >= fair.holdout_score, (mine, fair)
    cheat = dev_account(INFLATED)
    cid = str(system.ipfs.add_bytes(artifact, 1))
    salt = os.urandom(32)
    tasks = training_contract(w3, dep.training or "")
    claim = mine.holdout_score
    commitment = submission_commitment(task_id, cheat.address, cid, bytes.fromhex(sha), claim, salt)
    await send(w3, cheat, tasks.functions.commitSubmission(task_id, commitment))

    time_travel(w3, PERIOD + 1)
    for who in (FIRST, SECOND):
        assert await reveal_submission(w3, dep, dev_account(who), task_id, tmp_path)
    await send(w3, cheat, tasks.functions.revealSubmission(task_id, cid, bytes.fromhex(sha), claim, salt))
    # Revealed here first: a commitment of the same artifact to any other task would never be paid,
    # so a trainer refuses it in words instead of committing (firstRevealOf).
    with pytest.raises(
        TaskError, match=f"was revealed in task {task_id} at .*: a commitment to task {task_id + 1} now"
    ):
        await refuse_revealed_elsewhere(w3, dep, task_id + 1, honest["sha256"])
    await refuse_revealed_elsewhere(w3, dep, task_id, honest["sha256"])  # its own task: no objection
    await refuse_revealed_elsewhere(w3, dep, task_id + 1, "ab" * 32)  # never revealed anywhere
    time_travel(w3, REVEAL + 1)
    await reveal_test_set(w3, dep, dev_account(REQUESTER), task_id, tmp_path)

    votes = await _panel_votes(system, tmp_path, task_id)
    for v in votes.values():
        assert v["scores"][:2] == [fair.test_score, fair.test_score] and v["scores"][2] == 0, v
        assert v["reasons"][:2] == ["", ""] and "differ from the spec's re-fit" in v["reasons"][2], v
    # Re-fitted once per task, kept in the data dir: the spec's honest artifact.
    refit = secret_file(tmp_path, dep, "refit", task_id).with_suffix(".skops")
    assert sha256_hex(refit.read_bytes()) == honest["sha256"]

    before = await system.token.functions.balanceOf(dev_account(FIRST).address).call()
    info = await finalize_task(w3, dep, dev_account(REQUESTER), task_id)
    assert info["status"] == "accepted" and info["accepted_submission"] == 0, info
    assert [s["bond"] for s in info["submissions"]] == ["released", "released", "forfeited"], info["submissions"]
    assert await system.token.functions.balanceOf(dev_account(FIRST).address).call() - before == 40 * EML
    assert (await stake_info(w3, dep, cheat.address, "trainer"))["amount"] == 95 * EML  # its 5 EML bond
