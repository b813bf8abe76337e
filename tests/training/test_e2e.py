"""Training tasks end to end on the embedded chain: a requester posts a task for scikit-learn's wine
data with a hidden test set; an honest trainer and one that claims a score it did not reach submit;
three validators vote; the honest model is accepted, paid and registered; five miner nodes serve it."""

from __future__ import annotations

import pickle
from pathlib import Path

from ethml.chain import EML, ModelKind, Status, dev_account, send, training_contract
from ethml.chain.deploy import TrainingParameters
from ethml.chain.embedded import time_travel
from ethml.ml.loader import load_untrusted
from ethml.training import parse_spec, sklearn_dataset_csv, split_csv
from ethml.training.flow import create_task, finalize_task, reveal_test_set, stake, train_and_submit, validate_task
from tests.node.conftest import System, make_system, wait_until

REQUESTER, HONEST, INFLATED = 9, 5, 6
VALIDATORS = (7, 8, 0)  # account 0 validates and, later, mines


def _spec(public: bytes) -> object:
    features = public.decode().splitlines()[0].split(",")[:-1]
    return parse_spec(
        {
            "target": "target",
            "features": features,
            "estimator": {"name": "RandomForestClassifier", "params": {"n_estimators": 25, "max_depth": 8}},
            "metric": "accuracy",
        }
    )


async def _post_wine_task(system: System, tmp_path: Path) -> tuple[int, bytes, bytes]:
    public, hidden = split_csv(sklearn_dataset_csv("wine"), 0.3, seed=2024)
    created = await create_task(
        system.w3,
        system.deployment,
        dev_account(REQUESTER),
        system.ipfs,
        tmp_path,
        spec=_spec(public),  # type: ignore[arg-type]
        dataset=public,
        test_set=hidden,
        reward=50 * EML,
        validations=3,
        min_score=800_000,
        submit_seconds=3600,
        validation_seconds=3600,
    )
    return created.task_id, public, hidden


async def _stake_everyone(system: System) -> None:
    for who in (HONEST, INFLATED):
        await stake(system.w3, system.deployment, dev_account(who), "trainer", 100 * EML)
    for who in VALIDATORS:
        await stake(system.w3, system.deployment, dev_account(who), "validator", 100 * EML)


async def test_wine_task_is_trained_validated_accepted_and_served(tmp_path: Path) -> None:
    system = await make_system(tmp_path)
    await _stake_everyone(system)
    task_id, _public, _hidden = await _post_wine_task(system, tmp_path)
    honest = await train_and_submit(system.w3, system.deployment, dev_account(HONEST), system.ipfs, task_id)
    await train_and_submit(system.w3, system.deployment, dev_account(INFLATED), system.ipfs, task_id, claim=999_999)
    time_travel(system.w3, 3601)
    await reveal_test_set(system.w3, system.deployment, dev_account(REQUESTER), task_id, tmp_path)
    before = {a: await system.token.functions.balanceOf(dev_account(a).address).call() for a in (HONEST, *VALIDATORS)}
    for who in VALIDATORS:
        votes = await validate_task(system.w3, system.deployment, dev_account(who), system.ipfs, task_id)
        assert [v["score"] > 800_000 for v in votes] == [True, False], votes  # the inflated claim scores 0
    info = await finalize_task(system.w3, system.deployment, dev_account(REQUESTER), task_id)
    assert info["status"] == "accepted" and info["accepted_submission"] == 0, info
    model_id = info["model_id"]
    assert model_id == 5  # after the four bundled models
    paid = await system.token.functions.balanceOf(dev_account(HONEST).address).call() - before[HONEST]
    assert paid == 40 * EML  # 80 % of the reward; the validators share the other 20 %
    for who in VALIDATORS:
        assert await system.token.functions.balanceOf(dev_account(who).address).call() - before[who] > 3 * EML
    sha, kind, _decimals, features, active, cid = await system.registry.functions.getModel(model_id).call()
    assert (cid, bytes(sha).hex(), kind, features, active) == (
        honest["model_cid"],
        honest["sha256"],
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
    import json

    expected = int(model.predict([json.loads(raw)])[0])
    assert (await system.answer(rid))[:2] == (expected, int(Status.FINALIZED))


class _Exploit:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os

        return (os.system, ("touch /tmp/ethml-training-exploit",))


async def test_a_malicious_pickle_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = Path("/tmp/ethml-training-exploit")
    marker.unlink(missing_ok=True)  # noqa: ASYNC240 - a test set-up step
    system = await make_system(tmp_path)
    await _stake_everyone(system)
    task_id, _public, _hidden = await _post_wine_task(system, tmp_path)
    blob = pickle.dumps(_Exploit())
    cid = str(system.ipfs.add_bytes(blob, 1))
    import hashlib

    tasks = training_contract(system.w3, system.deployment.training or "")
    await send(
        system.w3,
        dev_account(INFLATED),
        tasks.functions.submitModel(task_id, cid, hashlib.sha256(blob).digest(), 990_000),
    )
    time_travel(system.w3, 3601)
    await reveal_test_set(system.w3, system.deployment, dev_account(REQUESTER), task_id, tmp_path)
    for who in VALIDATORS:
        votes = await validate_task(system.w3, system.deployment, dev_account(who), system.ipfs, task_id)
        assert votes[0]["score"] == 0 and "not a skops archive" in votes[0]["reason"], votes
    assert not marker.exists(), "nothing in the artifact ran"  # noqa: ASYNC240
    info = await finalize_task(system.w3, system.deployment, dev_account(REQUESTER), task_id)
    assert info["status"] == "failed"


async def _answered(system: System, rid: int) -> bool:
    return (await system.answer(rid))[2]


def test_training_parameters_default_to_sane_stakes() -> None:
    assert TrainingParameters().min_trainer_stake == 100 * EML
