"""For API clients in Python: sign a task's terms (EIP-712) and the EIP-2612 permit of its reward, and
build the body of `POST /api/tasks`. The coordinator relays exactly the signed terms; it cannot change
one. `import_body` builds the body of `POST /api/tasks/import`, signed by the chain task's requester."""

from __future__ import annotations

import os
import time
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount

from ethml.coordinator.permit import PermitDomain
from ethml.coordinator.schemas import commitment_hex
from ethml.training.flow import spec_cid
from ethml.training.spec import TaskSpec
from ethml.training.terms import Terms, TermsDomain, min_score_units, sign_import, sign_terms


def sign_permit(owner: LocalAccount, domain: PermitDomain, value: int, nonce: int, deadline: int) -> dict[str, Any]:
    """A permit as the API takes it, signed with the standard EIP-712 typed-data signer."""
    signed = Account.sign_typed_data(owner.key, full_message=domain.typed_data(owner.address, value, nonce, deadline))
    return {
        "owner": owner.address,
        "value": str(value),
        "nonce": nonce,
        "deadline": deadline,
        "v": signed.v,
        "r": "0x" + signed.r.to_bytes(32, "big").hex(),
        "s": "0x" + signed.s.to_bytes(32, "big").hex(),
    }


def task_body(
    requester: LocalAccount,
    domain: PermitDomain,
    *,
    spec: TaskSpec,
    dataset_cid: str,
    test_cid: str,
    reward: int,
    terms_nonce: int,
    permit_nonce: int | None,
    parameters_version: int,
    validations: int = 3,
    min_score: float = 0.8,
    submit_seconds: int = 3600,
    score_seconds: int = 3600,
    trainers: int = 2,
    reveal_by_coordinator: bool = True,
    expiry_seconds: int = 3600,
    now: int | None = None,
) -> dict[str, Any]:
    """The JSON body of `POST /api/tasks`: the terms signed by `requester` (with its next TrainingTasks
    nonce, `terms_nonce`, and the market's `parameters_version`: TrainingTasks.parametersVersion()), a
    fresh salt for the test-set commitment, and a permit of the reward (with the token nonce
    `permit_nonce`; None for none, when the requester approved TrainingTasks itself). The terms may be
    relayed for `expiry_seconds`."""
    now = int(time.time()) if now is None else now
    salt = "0x" + os.urandom(32).hex()
    commitment = commitment_hex(test_cid, salt)
    terms = Terms.for_spec(
        spec,
        dataset_cid=dataset_cid,
        spec_cid=spec_cid(spec),
        test_set_commitment=bytes.fromhex(commitment[2:]),
        reward=reward,
        submit_period=submit_seconds,
        score_period=score_seconds,
        validations=validations,
        min_score=min_score_units(min_score),
        parameters_version=parameters_version,
    )
    expiry = now + expiry_seconds
    signature = sign_terms(requester.key, TermsDomain(domain.chain_id, domain.spender), terms, terms_nonce, expiry)
    body: dict[str, Any] = {
        "spec": spec.model_dump(mode="json"),
        "spec_cid": terms.spec_cid,
        "dataset_cid": dataset_cid,
        "test_set_commitment": commitment,
        "reward": str(reward),
        "validations": validations,
        "min_score": min_score,
        "submit_seconds": submit_seconds,
        "score_seconds": score_seconds,
        "trainers": trainers,
        "requester": requester.address,
        "nonce": terms_nonce,
        "parameters_version": parameters_version,
        "expiry": expiry,
        "signature": "0x" + signature.hex(),
    }
    if permit_nonce is not None:
        body["permit"] = sign_permit(requester, domain, reward, permit_nonce, expiry)
    if reveal_by_coordinator:
        body["test_set"] = {"cid": test_cid, "salt": salt}
    return body


def import_body(requester: LocalAccount, domain: PermitDomain, chain_task_id: int, trainers: int = 2) -> dict[str, Any]:
    """The JSON body of `POST /api/tasks/import` for a task `requester` created on chain itself: the chain
    task and the number of training jobs to hand out, signed by the requester (EIP-712 `TaskImport` on
    the domain of TrainingTasks, `domain.spender`)."""
    signature = sign_import(requester.key, TermsDomain(domain.chain_id, domain.spender), chain_task_id, trainers)
    return {"chain_task_id": chain_task_id, "trainers": trainers, "signature": "0x" + signature.hex()}
