"""For API clients in Python: sign the EIP-2612 permit and build the body of `POST /api/tasks`."""

from __future__ import annotations

import os
import time
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount

from ethml.coordinator.permit import PermitDomain
from ethml.coordinator.schemas import commitment_hex
from ethml.training.spec import TaskSpec


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
    permit_nonce: int,
    validations: int = 3,
    min_score: float = 0.8,
    submit_seconds: int = 3600,
    validation_seconds: int = 3600,
    trainers: int = 2,
    reveal_by_coordinator: bool = True,
    now: int | None = None,
) -> dict[str, Any]:
    """The JSON body of `POST /api/tasks`, with a fresh salt for the test-set commitment."""
    now = int(time.time()) if now is None else now
    salt = "0x" + os.urandom(32).hex()
    body: dict[str, Any] = {
        "spec": spec.model_dump(mode="json"),
        "dataset_cid": dataset_cid,
        "test_set_commitment": commitment_hex(test_cid, salt),
        "reward": str(reward),
        "validations_required": validations,
        "min_score": min_score,
        "submit_deadline": now + submit_seconds,
        "validation_deadline": now + submit_seconds + validation_seconds,
        "trainers": trainers,
        "permit": sign_permit(requester, domain, reward, permit_nonce, now + 3600),
    }
    if reveal_by_coordinator:
        body["test_set"] = {"cid": test_cid, "salt": salt}
    return body
