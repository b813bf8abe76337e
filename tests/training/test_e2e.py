"""Training tasks end to end on the embedded chain: a requester posts a task for scikit-learn's wine
data with a hidden test set; two honest trainers of the same spec and one whose claim lies further
from its holdout score than claimSlack commit, then reveal; three validators drawn by lot score,
commit, then reveal; the honest model committed first is accepted, paid and registered, the second
honest trainer gets its bond back, the false claim loses its bond; five miner nodes serve the accepted
model. A model fit on more than the task's data is voted 0 by every honest validator's re-fit rule."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path
from typing import Any

import pytest

from ethml.chain import EML, ModelKind, Status, dev_account, send, training_contract
from ethml.chain.deploy import TrainingParameters
from ethml.chain.embedded import time_travel
from ethml.ml.loader import load_untrusted
from ethml.training import parse_spec, sklearn_dataset_csv, split_csv
from ethml.training.flow import (
    create_task,
    finalize_task,
    reveal_scores,
    reveal_submission,
    reveal_test_set,
    stake,
    stake_info,
    task_info,
    train_and_submit,
    validate_task,
)
from ethml.training.onchain import NotDrawn, TaskError, write_secret
from ethml.training.trainer import submission_commitment
from tests.node.conftest import System, make_system, wait_until

REQUESTER, FIRST, SECOND, INFLATED = 9, 5, 6, 4
VALIDATORS = (7, 8, 0)  # account 0 validates and, later, mines
PERIOD = 3600
REVEAL = TrainingParameters().reveal_period


FOREST = {"n_estimators": 25, "max_depth": 8}


def _spec(public: bytes, params: dict[str, int] | None = None) -> Any:
    features = public.decode().splitlines()[0].split(",")[:-1]
    return parse_spec(
        {
            "target": "target",
            "features": features,
            "estimator": {"name": "RandomForestClassifier", "params": params or FOREST},
            "metric": "accuracy",
        }
    )


async def _post_wine_task(
    system: System, data_dir: Path, test_set: bytes | None = None, params: dict[str, int] | None = None
) -> int:
    public, hidden = split_csv(sklearn_dataset_csv("wine"), 0.3, seed=2024)
    created = await create_task(
        system.w3,
        system.deployment,
        dev_account(REQUESTER),
        system.ipfs,
        data_dir,
        spec=_spec(public, params),
        dataset=public,
        test_set=hidden if test_set is None else test_set,
        reward=50 * EML,
        validations=3,
        min_score=800_000,
        submit_seconds=PERIOD,
        score_seconds=PERIOD,
    )
    return created.task_id


async def _stake_everyone(system: System) -> None:
    for who in (FIRST, SECOND, INFLATED):
        await stake(system.w3, system.deployment, dev_account(who), "trainer", 100 * EML)
    for who in VALIDATORS:
        await stake(system.w3, system.deployment, dev_account(who), "validator", 100 * EML)


async def _panel_votes(system: System, data_dir: Path, task_id: int) -> dict[int, dict[str, Any]]:
    """Every drawn validator scores and commits (drawn with replacement, one may hold two seats and
    another none); then those whose reveal did not open yet reveal. The votes by validator."""
    votes: dict[int, dict[str, Any]] = {}
    for who in VALIDATORS:
        try:
            votes[who] = await validate_task(
                system.w3, system.deployment, dev_account(who), system.ipfs, task_id, data_dir=data_dir
            )
        except NotDrawn:
            continue
    revealed = [v["revealed"] for v in votes.values()]
    assert revealed == [False] * (len(votes) - 1) + [True], votes  # the last commitment opens the reveals
    for who, vote in votes.items():
        if not vote["revealed"]:
            assert await reveal_scores(system.w3, system.deployment, dev_account(who), task_id, data_dir)
    task = training_contract(system.w3, system.deployment.training or "")
    seats = [await task.functions.memberOf(task_id, dev_account(w).address).call() for w in VALIDATORS]
    assert sum(int(m[1]) for m in seats) == 3 and all(
        (int(m[1]) > 0) == (w in votes) for w, m in zip(VALIDATORS, seats, strict=True)
    )
    return votes


async def test_wine_task_is_trained_validated_accepted_and_served(tmp_path: Path) -> None:
    system = await make_system(tmp_path)
    w3, dep = system.w3, system.deployment
    await _stake_everyone(system)
    task_id = await _post_wine_task(system, tmp_path)
    # An artifact that could not be published (over what the trainer may upload) is not committed to.
    with pytest.raises(TaskError, match="over the 1,000 that can be published"):
        await train_and_submit(w3, dep, dev_account(FIRST), system.ipfs, task_id, data_dir=tmp_path, max_artifact=1000)
    assert (await task_info(w3, dep, task_id))["submissions"] == []
    first = await train_and_submit(w3, dep, dev_account(FIRST), system.ipfs, task_id, data_dir=tmp_path)
    second = await train_and_submit(w3, dep, dev_account(SECOND), system.ipfs, task_id, data_dir=tmp_path)
    # The same model claiming 0.85 where its holdout gives 1.0: further apart than claimSlack (0.1).
    inflated = await train_and_submit(
        w3, dep, dev_account(INFLATED), system.ipfs, task_id, data_dir=tmp_path, claim=850_000
    )
    # Two honest trainings of one spec: the same artifact bytes and claim. Nothing is revealed before the
    # submission window closes.
    assert (first["sha256"], first["claimed"]) == (second["sha256"], second["claimed"])
    assert [r["revealed"] for r in (first, second, inflated)] == [False, False, False]
    assert (await task_info(w3, dep, task_id))["submissions"][0]["model_cid"] is None

    time_travel(w3, PERIOD + 1)
    for who in (FIRST, SECOND, INFLATED):
        assert await reveal_submission(w3, dep, dev_account(who), task_id, tmp_path)
    time_travel(w3, REVEAL + 1)
    await reveal_test_set(w3, dep, dev_account(REQUESTER), task_id, tmp_path)
    watched = (FIRST, SECOND, *VALIDATORS)
    before = {a: await system.token.functions.balanceOf(dev_account(a).address).call() for a in watched}
    votes = await _panel_votes(system, tmp_path, task_id)
    for v in votes.values():  # both honest models score above the minimum; the false claim is not reproduced: 0
        assert not v["unusable"] and [s > 800_000 for s in v["scores"]] == [True, True, False], v
    info = await finalize_task(w3, dep, dev_account(REQUESTER), task_id)
    assert info["status"] == "accepted" and info["accepted_submission"] == 0, info  # the earliest commitment
    model_id = info["model_id"]
    assert model_id == 5  # after the four bundled models
    paid = {a: await system.token.functions.balanceOf(dev_account(a).address).call() - before[a] for a in watched}
    assert paid[FIRST] == 40 * EML  # 80 % of the reward; the validators share the other 20 %
    assert paid[SECOND] == 0
    # 10 EML shared per seat: a validator drawn twice holds two seats and is paid twice.
    assert sum(paid[v] for v in VALIDATORS) == 10 * EML and all((paid[v] > 3 * EML) == (v in votes) for v in VALIDATORS)
    bonds = [s["bond"] for s in info["submissions"]]
    assert bonds == ["released", "released", "forfeited"], info["submissions"]
    stakes = [await stake_info(w3, dep, dev_account(a).address, "trainer") for a in (FIRST, SECOND, INFLATED)]
    assert [s["amount"] for s in stakes] == [100 * EML, 100 * EML, 95 * EML]  # a 5 EML bond (10 % of 50)
    assert all(s["locked"] == 0 and s["open_work"] == 0 for s in stakes)
    sha, kind, _decimals, features, active, cid = await system.registry.functions.getModel(model_id).call()
    assert (cid, bytes(sha).hex(), kind, features, active) == (
        first["model_cid"],
        first["sha256"],
        int(ModelKind.CLASSIFICATION),
        13,
        True,
    )

    # Five miners serve a prediction from the accepted artifact, fetched by CID and loaded through skops.
    artifact = await system.ipfs.cat(cid, max_size=64 * 1024 * 1024)
    model = load_untrusted(artifact, "accepted", bytes(sha).hex())
    raw = system.manifest.data_point_path(system.manifest.by_name("wine").data_points[0]).read_bytes()
    point_cid = str(system.ipfs.add_bytes(raw))
    rid = await system.request(model_id, point_cid)
    async with system.running(range(5)):
        await wait_until(lambda: _answered(system, rid), what="the trained model's answer")
    expected = int(model.predict([json.loads(raw)])[0])
    assert (await system.answer(rid))[:2] == (expected, int(Status.FINALIZED))


class _Exploit:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("touch /tmp/ethml-training-exploit",))


async def test_training_stops_when_the_task_s_submission_window_closes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job taken with less of the submission window left than the spec's max_train_seconds trained for the
    whole max_train_seconds, and its commitment then failed: the worker's time (and a coordinator's job) was
    held for nothing. The fit is stopped at the window's end now, and the trainer says why."""
    from ethml.training import trainer as trainer_module
    from ethml.training.jobs import TrainingTimeout

    system = await make_system(tmp_path)
    await stake(system.w3, system.deployment, dev_account(FIRST), "trainer", 100 * EML)
    task_id = await _post_wine_task(system, tmp_path)
    time_travel(system.w3, PERIOD - 40)  # about 40 s of the window left; the spec allows 120
    stopped_after: list[float] = []

    async def fit(fn: Any, *args: Any, timeout: float) -> Any:
        stopped_after.append(timeout)
        raise TrainingTimeout(f"{fn.__name__} did not finish within {timeout:g} s and was stopped")

    monkeypatch.setattr(trainer_module, "run_limited", fit)
    with pytest.raises(TaskError, match="submissions closed while its model was training"):
        await train_and_submit(
            system.w3, system.deployment, dev_account(FIRST), system.ipfs, task_id, data_dir=tmp_path
        )
    assert len(stopped_after) == 1 and 0 < stopped_after[0] <= 40, stopped_after
    assert (await task_info(system.w3, system.deployment, task_id))["submissions"] == []


async def test_a_malicious_pickle_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = Path("/tmp/ethml-training-exploit")
    marker.unlink(missing_ok=True)  # noqa: ASYNC240 - a test set-up step
    system = await make_system(tmp_path)
    w3, dep = system.w3, system.deployment
    await _stake_everyone(system)
    task_id = await _post_wine_task(system, tmp_path)
    blob = pickle.dumps(_Exploit())
    cid = str(system.ipfs.add_bytes(blob, 1))
    sha, salt = hashlib.sha256(blob).digest(), os.urandom(32)
    trainer = dev_account(INFLATED)
    tasks = training_contract(w3, dep.training or "")
    commitment = submission_commitment(task_id, trainer.address, cid, sha, 990_000, salt)
    assert (
        commitment
        == await tasks.functions.submissionCommitment(task_id, trainer.address, cid, sha, 990_000, salt).call()
    )
    await send(w3, trainer, tasks.functions.commitSubmission(task_id, commitment))
    time_travel(w3, PERIOD + 1)
    await send(w3, trainer, tasks.functions.revealSubmission(task_id, cid, sha, 990_000, salt))
    time_travel(w3, REVEAL + 1)
    await reveal_test_set(w3, dep, dev_account(REQUESTER), task_id, tmp_path)
    votes = await _panel_votes(system, tmp_path, task_id)
    for v in votes.values():
        assert v["scores"] == [0] and "not a skops archive" in v["reasons"][0], v
    assert not marker.exists(), "nothing in the artifact ran"  # noqa: ASYNC240
    info = await finalize_task(w3, dep, dev_account(REQUESTER), task_id)
    assert info["status"] == "rejected" and info["submissions"][0]["bond"] == "forfeited", info


async def test_an_unusable_test_set_is_reported_and_pays_the_trainers(tmp_path: Path) -> None:
    """The requester reveals a test set without the spec's columns: every drawn validator reports it
    unusable instead of scoring, and the escrow goes to the trainer rather than back to the requester."""
    system = await make_system(tmp_path)
    w3, dep = system.w3, system.deployment
    await _stake_everyone(system)
    task_id = await _post_wine_task(system, tmp_path, test_set=b"a,b\n1,2\n3,4\n")
    await train_and_submit(w3, dep, dev_account(FIRST), system.ipfs, task_id, data_dir=tmp_path)
    time_travel(w3, PERIOD + 1)
    await reveal_submission(w3, dep, dev_account(FIRST), task_id, tmp_path)
    time_travel(w3, REVEAL + 1)
    await reveal_test_set(w3, dep, dev_account(REQUESTER), task_id, tmp_path)
    before = await system.token.functions.balanceOf(dev_account(FIRST).address).call()
    votes = await _panel_votes(system, tmp_path, task_id)
    # Reported unusable, with each artifact's score on the dataset's holdout (its claim reproduces).
    assert all(v["unusable"] and "no column" in v["holdout"] for v in votes.values()), votes
    claimed = (await task_info(w3, dep, task_id))["submissions"][0]["claimed"]
    assert all(v["scores"] == [claimed] for v in votes.values()), votes
    info = await finalize_task(w3, dep, dev_account(REQUESTER), task_id)
    assert info["status"] == "unusable", info
    assert await system.token.functions.balanceOf(dev_account(FIRST).address).call() - before == 40 * EML


async def test_a_test_set_never_revealed_is_checked_on_the_holdout(tmp_path: Path) -> None:
    """The requester never reveals its test set. After the test deadline, validating fixes the draw of a
    panel (the first finalizeTask does), which checks each artifact on the dataset's holdout: the honest
    trainer's model is verified and shares the escrow, a claim the holdout does not reproduce loses its
    bond, the requester gets nothing back."""
    system = await make_system(tmp_path)
    w3, dep = system.w3, system.deployment
    await _stake_everyone(system)
    task_id = await _post_wine_task(system, tmp_path)
    await train_and_submit(w3, dep, dev_account(FIRST), system.ipfs, task_id, data_dir=tmp_path)
    # The same model with a claim its holdout does not reproduce (further from it than claimSlack).
    await train_and_submit(w3, dep, dev_account(INFLATED), system.ipfs, task_id, data_dir=tmp_path, claim=850_000)
    time_travel(w3, PERIOD + 1)
    for who in (FIRST, INFLATED):
        await reveal_submission(w3, dep, dev_account(who), task_id, tmp_path)
    time_travel(w3, 2 * REVEAL + 2)  # past the submissions' reveals and the test-set window
    before = {a: await system.token.functions.balanceOf(dev_account(a).address).call() for a in (FIRST, REQUESTER)}
    votes = await _panel_votes(system, tmp_path, task_id)
    claimed = (await task_info(w3, dep, task_id))["submissions"][0]["claimed"]
    for v in votes.values():
        assert v["unusable"] and v["holdout"] == "the test set was never revealed", v
        assert v["scores"] == [claimed, claimed], v  # holdout scores: one model, two claims
    info = await finalize_task(w3, dep, dev_account(REQUESTER), task_id)
    assert info["status"] == "abandoned", info
    assert [s["bond"] for s in info["submissions"]] == ["released", "forfeited"], info["submissions"]
    after = {a: await system.token.functions.balanceOf(dev_account(a).address).call() for a in (FIRST, REQUESTER)}
    assert after[FIRST] - before[FIRST] == 40 * EML and after[REQUESTER] == before[REQUESTER]


async def _answered(system: System, rid: int) -> bool:
    return (await system.answer(rid))[2]


def test_training_parameters_default_to_sane_stakes() -> None:
    assert TrainingParameters().min_trainer_stake == 100 * EML


def test_a_secret_is_never_replaced(tmp_path: Path) -> None:
    path = tmp_path / "submission-1.json"
    write_secret(path, {"task": 1, "model_cid": "x", "sha256": "ab" * 32, "claim": 1, "salt": "cd" * 32})
    with pytest.raises(TaskError, match="is not replaced"):
        write_secret(path, {"task": 1, "model_cid": "y", "sha256": "ab" * 32, "claim": 2, "salt": "ef" * 32})
    assert json.loads(path.read_text())["model_cid"] == "x"
