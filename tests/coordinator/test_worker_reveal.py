"""A trainer's job whose submission window has closed by the time the commitment is made (a commitment
mined near the deadline, or a training job delivered again after this trainer committed) is revealed by
the job itself: the worker must upload the model artifact first then too, or validators cannot fetch
the model and the trainer's bond is lost."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ethml.coordinator.worker import Worker
from ethml.errors import EthmlError
from ethml.training import clock, flow, trainer
from ethml.training.onchain import NoSubmission, TaskError, read_secret, secret_file, write_secret
from ethml.training.trainer import Opening, submission_commitment
from tests.conftest import captured_logs


class _Call:
    def __init__(self, value: Any) -> None:
        self.value = value

    async def call(self, *_args: Any, **_kwargs: Any) -> Any:
        return self.value


async def test_a_training_job_revealed_at_once_uploads_its_artifact_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The chain's clock is one second past the submission deadline and this trainer has committed: the job
    reveals through the worker's upload (the artifact published, then revealSubmission)."""
    order: list[str] = []

    async def read_task(*_args: Any, **_kwargs: Any) -> Any:
        return SimpleNamespace(submit_deadline=1_000, reveal_deadline=2_000, min_score=0)

    async def chain_now(_w3: Any) -> int:
        return 1_001

    async def reveal(*_args: Any, on_reveal: Any = None, **_kwargs: Any) -> bool:
        assert on_reveal is not None, "revealed without uploading the artifact"
        await on_reveal(Opening(7, "bafkreiartifact", "00" * 32, 900_000, "11" * 32))
        order.append("revealSubmission")
        return True

    async def upload(opening: Opening) -> None:
        order.append(f"upload {opening.model_cid} of task {opening.task}")

    monkeypatch.setattr(trainer, "read_task", read_task)
    monkeypatch.setattr(trainer, "require_open", lambda _task: None)
    submitted = SimpleNamespace(functions=SimpleNamespace(submissionOf=lambda *_args: _Call(1)))
    monkeypatch.setattr(trainer, "training", lambda *_args: submitted)
    secret = {"model_cid": "bafkreiartifact", "sha256": "00" * 32, "claim": 900_000}
    monkeypatch.setattr(trainer, "read_secret", lambda _path: secret)
    monkeypatch.setattr(trainer.clock, "chain_now", chain_now)
    monkeypatch.setattr(trainer, "reveal_submission", reveal)
    owed: list[Any] = []
    worker = SimpleNamespace(
        w3=None,
        deployment=SimpleNamespace(chain_id=31337, training="0x" + "22" * 20),
        account=SimpleNamespace(address="0x" + "11" * 20),
        ipfs=None,
        config=SimpleNamespace(data_dir=tmp_path, compute=None),
        _owe_reveal=lambda *args: owed.append(args),
        _upload=upload,
    )
    out, error = await Worker._execute(worker, {"kind": "train", "chain_task": 7, "job": "7:train:0"})  # type: ignore[arg-type]
    assert error is None and out["revealed"] is True and not owed, (out, owed)
    assert order == ["upload bafkreiartifact of task 7", "revealSubmission"], order


@pytest.mark.parametrize("committed", [True, False])
async def test_a_training_job_that_fails_after_its_commitment_still_owes_the_reveal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, committed: bool
) -> None:
    """A job that reveals at once and fails on the way (the coordinator refused the artifact's upload, a
    node's error) is reported failed, and the reveal is owed in the background, where it is retried until
    the window closes; with no secret written (nothing committed) nothing is owed."""
    deployment = SimpleNamespace(chain_id=31337, training="0x" + "22" * 20)
    account = SimpleNamespace(address="0x" + "11" * 20)
    if committed:
        path = secret_file(tmp_path, deployment, "submission", 7, account.address)  # type: ignore[arg-type]
        write_secret(path, {"task": 7, "model_cid": "bafkreiartifact", "sha256": "00" * 32, "claim": 1, "salt": ""})

    async def refused(*_args: Any, **_kwargs: Any) -> Any:
        raise EthmlError("uploading the model artifact failed: HTTP 507 the coordinator's disk is nearly full")

    monkeypatch.setattr(flow, "train_and_submit", refused)
    owed: list[Any] = []
    worker = SimpleNamespace(
        w3=None,
        deployment=deployment,
        account=account,
        ipfs=None,
        config=SimpleNamespace(data_dir=tmp_path, compute=None),
        _owe_reveal=lambda *args: owed.append(args),
        _upload=None,
    )
    with pytest.raises(EthmlError, match="HTTP 507"):
        await Worker._execute(worker, {"kind": "train", "chain_task": 7, "job": "7:train:0"})  # type: ignore[arg-type]
    assert owed == ([("train", 7)] if committed else []), owed


async def test_a_secret_that_does_not_open_the_chains_commitment_is_not_revealed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A secret left from another chain at the same address (a devnet reset), or from another try's salt, is
    refused before the artifact is uploaded or a reveal sent (it would fail on chain and, uploaded, be refused
    by the coordinator, over and over until the window closed); the secret of the chain's commitment is
    revealed."""
    address = "0x" + "11" * 20
    secret = {"model_cid": "bafkreiartifact", "sha256": "33" * 32, "claim": 900_000, "salt": "44" * 32}
    ours = submission_commitment(7, address, "bafkreiartifact", b"\x33" * 32, 900_000, b"\x44" * 32)
    sent: list[Any] = []

    async def read_task(*_args: Any, **_kwargs: Any) -> Any:
        return SimpleNamespace(submit_deadline=1_000, reveal_deadline=2_000, min_score=0)

    async def chain_now(_w3: Any) -> int:
        return 1_001

    async def nothing(*_args: Any, **_kwargs: Any) -> None:
        return None

    async def send(_w3: Any, _account: Any, call: Any, **_kwargs: Any) -> None:
        sent.append(call)

    async def upload(opening: Opening) -> None:
        sent.append(f"upload {opening.model_cid}")

    async def latest(_w3: Any) -> tuple[int, int]:
        return 10, 1_001

    monkeypatch.setattr(trainer, "read_task", read_task)
    monkeypatch.setattr(trainer, "require_open", lambda _task: None)
    monkeypatch.setattr(trainer, "read_secret", lambda _path: secret)
    monkeypatch.setattr(trainer.clock, "chain_now", chain_now)
    monkeypatch.setattr(trainer.clock, "catch_up", nothing)
    monkeypatch.setattr(trainer.clock, "latest", latest)
    monkeypatch.setattr(trainer, "send", send)
    deployment = SimpleNamespace(chain_id=31337, training="0x" + "22" * 20)
    for commitment in (b"\x55" * 32, ours):
        on_chain = (address, 900_000, 0, False, 0, commitment, b"\x33" * 32, "bafkreiartifact")
        functions = SimpleNamespace(
            submissionOf=lambda *_args: _Call(1),
            getSubmission=lambda *_args, on_chain=on_chain: _Call(on_chain),
            revealSubmission=lambda *args: ("revealSubmission", *args),
        )
        monkeypatch.setattr(
            trainer, "training", lambda *_args, functions=functions: SimpleNamespace(functions=functions)
        )
        account = SimpleNamespace(address=address)
        if commitment != ours:
            with pytest.raises(trainer.TaskError, match="does not open"):
                await trainer.reveal_submission(None, deployment, account, 7, tmp_path, on_reveal=upload)  # type: ignore[arg-type]
            assert sent == []
        else:
            assert await trainer.reveal_submission(None, deployment, account, 7, tmp_path, on_reveal=upload)  # type: ignore[arg-type]
            assert sent[0] == "upload bafkreiartifact" and sent[1][0] == "revealSubmission", sent


@pytest.mark.parametrize("mined_in_time", [True, False])
async def test_a_commitment_mined_after_its_receipt_timed_out_is_still_revealed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, mined_in_time: bool
) -> None:
    """The commitment's receipt was not seen in time, so the job failed and owes the reveal; the chain shows no
    submission yet. The commitment may still be mined in a block stamped up to the submission deadline: the
    reveal waits until a block is past it and tries again, and reveals if the commitment shows then; if it
    does not, none can be mined any more and the reveal is given up (without a retry loop)."""
    calls: list[str] = []

    async def reveal_submission(*_args: Any, **_kwargs: Any) -> bool:
        calls.append("reveal")
        if len(calls) == 1 or not mined_in_time:
            raise NoSubmission("trainer 0x11 has no submission to task 7", 1_000)
        return True

    async def wait_past(_w3: Any, deadline: int, *_args: Any) -> None:
        calls.append(f"wait past {deadline}")

    monkeypatch.setattr(flow, "reveal_submission", reveal_submission)
    monkeypatch.setattr(clock, "wait_past", wait_past)
    events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    worker = SimpleNamespace(
        w3=None,
        deployment=None,
        account=SimpleNamespace(address="0x" + "11" * 20),
        config=SimpleNamespace(data_dir=tmp_path),
        events=events,
        _event=events.put_nowait,
        _upload=None,
    )
    await asyncio.wait_for(Worker._reveal(worker, "train", 7), 60)  # type: ignore[arg-type]
    assert calls == ["reveal", "wait past 1000", "reveal"], calls
    revealed = [] if worker.events.empty() else [worker.events.get_nowait()]
    assert revealed == ([{"event": "revealed", "task": 7, "kind": "train"}] if mined_in_time else []), revealed


GOOD_SECRETS = {
    "submission": {"task": 7, "model_cid": "bafkreiartifact", "sha256": "33" * 32, "claim": 900_000, "salt": "44" * 32},
    "scores": {"task": 7, "unusable": False, "scores": [900_000, 0], "salt": "44" * 32, "problem": None},
    "test-set": {"task": 7, "test_cid": "bafkreitestset", "salt": "44" * 32},
}
MALFORMED = [
    ("submission", "salt", ...),
    ("submission", "salt", "44" * 31),
    ("submission", "sha256", "zz" * 32),
    ("submission", "claim", "900000"),
    ("submission", "claim", True),
    ("submission", "model_cid", ""),
    ("scores", "scores", [1, "2"]),
    ("scores", "scores", [-1]),
    ("scores", "unusable", 0),
    ("scores", "salt", None),
    ("test-set", "test_cid", 5),
    ("test-set", "salt", ...),
]


@pytest.mark.parametrize(("kind", "field", "value"), MALFORMED)
def test_a_secret_lacking_or_holding_a_malformed_field_is_refused_by_name(
    tmp_path: Path, kind: str, field: str, value: Any
) -> None:
    """A secret file edited by hand, or written by another program: reading it names the file and the field
    (a TaskError, which ends a reveal with that message), never a KeyError or a ValueError from deep in the
    reveal. A well-formed one of each kind reads as written; no file, or no JSON, is no secret."""
    deployment = SimpleNamespace(chain_id=31337, training="0x" + "22" * 20)
    path = secret_file(tmp_path, deployment, kind, 7, "0x" + "11" * 20)  # type: ignore[arg-type]
    write_secret(path, GOOD_SECRETS[kind])
    assert read_secret(path) == GOOD_SECRETS[kind]
    bad = {k: v for k, v in GOOD_SECRETS[kind].items() if k != field}
    if value is not ...:
        bad[field] = value
    path.unlink()  # (a secret there is never replaced)
    write_secret(path, bad)
    problem = "lacks" if value is ... else "holds a malformed"
    with pytest.raises(TaskError, match=f"the {kind} secret in .* {problem} '{field}': it cannot be revealed"):
        read_secret(path)
    path.write_text("{")
    assert read_secret(path) is None and read_secret(tmp_path / "none.json") is None


async def test_a_malformed_secret_ends_the_owed_reveal_with_its_reason_and_sends_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trainer's owed reveal whose secret lacks its salt: before, a KeyError ended the background task
    without a word; now the reveal is given up with the file named, nothing uploaded or sent."""
    address = "0x" + "11" * 20
    deployment = SimpleNamespace(chain_id=31337, training="0x" + "22" * 20)
    path = secret_file(tmp_path, deployment, "submission", 7, address)  # type: ignore[arg-type]
    write_secret(path, {k: v for k, v in GOOD_SECRETS["submission"].items() if k != "salt"})
    sent: list[Any] = []
    on_chain = (address, 900_000, 0, False, 0, b"\x55" * 32, b"\x33" * 32, "bafkreiartifact")
    given_up = await _owed_reveal_given_up(tmp_path, monkeypatch, address, on_chain, sent)
    assert len(given_up) == 1 and "lacks 'salt': it cannot be revealed" in given_up[0]["error"], given_up
    assert sent == []


async def test_a_reveal_owed_past_its_window_is_given_up_without_uploading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker that was down for the whole reveal window resumes the reveal it owes: a block past the reveal
    deadline is mined, so no reveal can follow; it is given up at once, nothing uploaded (the coordinator
    refuses an artifact after the window: the worker would upload it again and again until the task is
    finalized) and nothing sent."""
    address = "0x" + "11" * 20
    deployment = SimpleNamespace(chain_id=31337, training="0x" + "22" * 20)
    path = secret_file(tmp_path, deployment, "submission", 7, address)  # type: ignore[arg-type]
    write_secret(path, GOOD_SECRETS["submission"])
    sent: list[Any] = []

    async def nothing(*_args: Any, **_kwargs: Any) -> None:
        return None

    async def latest(_w3: Any) -> tuple[int, int]:
        return 50, 2_001

    monkeypatch.setattr(trainer.clock, "wait_past", nothing)
    monkeypatch.setattr(trainer.clock, "catch_up", nothing)
    monkeypatch.setattr(trainer.clock, "latest", latest)
    monkeypatch.setattr(trainer, "send", lambda *args, **_kw: sent.append(args))
    ours = submission_commitment(7, address, "bafkreiartifact", b"\x33" * 32, 900_000, b"\x44" * 32)
    on_chain = (address, 900_000, 0, False, 0, ours, b"\x33" * 32, "bafkreiartifact")
    given_up = await _owed_reveal_given_up(tmp_path, monkeypatch, address, on_chain, sent)
    assert len(given_up) == 1 and "reveal window closed" in given_up[0]["error"], given_up
    assert sent == []


async def _owed_reveal_given_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, address: str, on_chain: tuple[Any, ...], sent: list[Any]
) -> list[Any]:
    """Run a worker's owed reveal of task 7 (deadlines 1,000 and 2,000; the submission `on_chain`), uploads
    going to `sent`, to its end; the `reveal_given_up` log entries."""

    async def read_task(*_args: Any, **_kwargs: Any) -> Any:
        return SimpleNamespace(submit_deadline=1_000, reveal_deadline=2_000, min_score=0)

    async def upload(opening: Opening) -> None:
        sent.append(opening)

    functions = SimpleNamespace(submissionOf=lambda *_args: _Call(1), getSubmission=lambda *_args: _Call(on_chain))
    monkeypatch.setattr(trainer, "read_task", read_task)
    monkeypatch.setattr(trainer, "require_open", lambda _task: None)
    monkeypatch.setattr(trainer, "training", lambda *_args: SimpleNamespace(functions=functions))
    events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    worker = SimpleNamespace(
        w3=None,
        deployment=SimpleNamespace(chain_id=31337, training="0x" + "22" * 20),
        account=SimpleNamespace(address=address),
        config=SimpleNamespace(data_dir=tmp_path),
        events=events,
        _event=events.put_nowait,
        _upload=upload,
    )
    with captured_logs() as logs:
        await asyncio.wait_for(Worker._reveal(worker, "train", 7), 60)  # type: ignore[arg-type]
    assert worker.events.empty()
    return [entry for entry in logs if entry["event"] == "reveal_given_up"]
