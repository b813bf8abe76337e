"""`ethml task show`'s lines for what the third review's fixes added: a settled submission no clear
majority decided (recorded 0, its bond released) reads "undecided", not "scored 0.000000"; one whose
artifact was revealed in another task first says it is never accepted nor paid."""

from __future__ import annotations

from typing import Any

from ethml.training.flow import _undecided, describe


def _info(**submission: Any) -> dict[str, Any]:
    base = {"id": 0, "trainer": "0xabc", "revealed": True, "model_cid": "bafk", "claimed": 900_000}
    return {
        "task": 1, "status": "undecided", "reward_eml": 50.0, "bond_eml": 5.0, "validations": 3,
        "min_score": 800_000, "next": "settled: undecided", "dataset_cid": "d", "spec_cid": "s", "test_cid": "t",
        "submissions": [{**base, **submission}], "panel": [], "model_id": None, "accepted_submission": None,
    }  # fmt: skip


def test_a_released_bond_with_score_0_is_undecided_and_a_forfeited_one_is_not() -> None:
    assert _undecided({"score": 0, "bond": 1})  # Bond.Released
    assert not _undecided({"score": 0, "bond": 2})  # Bond.Forfeited: a decided 0
    assert not _undecided({"score": 910_000, "bond": 1})


def test_task_show_says_undecided_and_revealed_elsewhere() -> None:
    lines = describe(_info(score=None, undecided=True, revealed_elsewhere=False, bond="released"))
    assert "undecided (no clear majority on its score), bond released" in lines[3], lines
    lines = describe(_info(score=910_000, undecided=False, revealed_elsewhere=True, bond="released"))
    assert "scored 0.910000 (its artifact was revealed in another task first: never accepted nor paid)" in lines[3]
