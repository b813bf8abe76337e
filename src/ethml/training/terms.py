"""A training task's terms as its requester signs them (EIP-712 `TaskTerms`), so that anyone may relay
the task (`TrainingTasks.createTaskFor`) and nobody can change a term.

The digest is computed here exactly as `TrainingTasks.termsDigest` does (domain "EthML TrainingTasks",
version "1"), with the native keccak, so the coordinator checks a posted signature in microseconds; a
test compares it with the contract's. `typed_data` is the same message for a wallet's
`eth_signTypedData_v4` (or eth_account's `sign_typed_data(full_message=...)`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from ethml.pow import keccak256
from ethml.training.spec import TaskSpec

SCORE_SCALE = 1_000_000
DOMAIN_TYPEHASH = keccak256(b"EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)")
TERMS_TYPE = (
    "TaskTerms(address requester,string datasetCid,string specCid,bytes32 testSetCommitment,uint96 reward,"
    "uint32 submitPeriod,uint32 scorePeriod,uint8 validations,uint32 minScore,uint8 kind,uint8 decimals,"
    "uint16 featureCount,uint32 parametersVersion,uint256 nonce,uint256 expiry)"
)
TERMS_TYPEHASH = keccak256(TERMS_TYPE.encode())
#: What a task's requester signs to have a coordinator track a task it created on chain itself
#: (`POST /api/tasks/import`): the chain task and the number of training jobs to hand out. No contract
#: function takes this type, so the signature authorises nothing on chain.
IMPORT_TYPE = "TaskImport(uint256 taskId,uint8 trainers)"
IMPORT_TYPEHASH = keccak256(IMPORT_TYPE.encode())
NAME = "EthML TrainingTasks"
VERSION = "1"
#: The EIP-712 fields of TaskTerms, in order, with their types (for typed-data signers).
TERMS_FIELDS = [
    (part.rsplit(" ", 1)[1], part.rsplit(" ", 1)[0]) for part in TERMS_TYPE[TERMS_TYPE.index("(") + 1 : -1].split(",")
]


_DOMAIN_FIELDS = [
    {"name": "name", "type": "string"},
    {"name": "version", "type": "string"},
    {"name": "chainId", "type": "uint256"},
    {"name": "verifyingContract", "type": "address"},
]


def _word(value: int | bytes) -> bytes:
    if isinstance(value, bytes):
        return value.rjust(32, b"\0")
    return value.to_bytes(32, "big")


def _address(value: str) -> bytes:
    return _word(bytes.fromhex(value.removeprefix("0x")))


def model_kind(spec: TaskSpec) -> int:
    """ModelRegistry.ModelKind of a spec: 0 classification, 1 regression."""
    return 0 if spec.kind == "classification" else 1


def min_score_units(min_score: float) -> int:
    """A minimum score in 0..1 as the millionths the terms carry (what is signed)."""
    return round(min_score * SCORE_SCALE)


@dataclass(frozen=True)
class Terms:
    """`TrainingTasks.Terms`: periods are seconds from the block that creates the task."""

    dataset_cid: str
    spec_cid: str
    test_set_commitment: bytes
    reward: int
    submit_period: int
    score_period: int
    validations: int
    min_score: int  # millionths
    kind: int
    decimals: int
    feature_count: int
    #: TrainingTasks.parametersVersion() when the terms were made: the contract refuses terms made
    #: under other parameters (ParametersChanged), so a signature cannot be held until the rules change.
    parameters_version: int

    @classmethod
    def for_spec(
        cls,
        spec: TaskSpec,
        *,
        dataset_cid: str,
        spec_cid: str,
        test_set_commitment: bytes,
        reward: int,
        submit_period: int,
        score_period: int,
        validations: int,
        min_score: int,
        parameters_version: int,
    ) -> Terms:
        """Terms whose model shape (kind, decimals, feature count) is the spec's."""
        return cls(
            dataset_cid,
            spec_cid,
            test_set_commitment,
            reward,
            submit_period,
            score_period,
            validations,
            min_score,
            model_kind(spec),
            spec.decimals,
            len(spec.features),
            parameters_version,
        )

    def as_tuple(self) -> tuple[Any, ...]:
        """The Terms struct as web3 encodes it."""
        return (
            self.dataset_cid,
            self.spec_cid,
            self.test_set_commitment,
            self.reward,
            self.submit_period,
            self.score_period,
            self.validations,
            self.min_score,
            self.kind,
            self.decimals,
            self.feature_count,
            self.parameters_version,
        )

    def struct_hash(self, requester: str, nonce: int, expiry: int) -> bytes:
        return keccak256(
            TERMS_TYPEHASH
            + _address(requester)
            + keccak256(self.dataset_cid.encode())
            + keccak256(self.spec_cid.encode())
            + _word(self.test_set_commitment)
            + _word(self.reward)
            + _word(self.submit_period)
            + _word(self.score_period)
            + _word(self.validations)
            + _word(self.min_score)
            + _word(self.kind)
            + _word(self.decimals)
            + _word(self.feature_count)
            + _word(self.parameters_version)
            + _word(nonce)
            + _word(expiry)
        )


@dataclass(frozen=True)
class TermsDomain:
    """The EIP-712 domain of one TrainingTasks contract."""

    chain_id: int
    training: str  # the TrainingTasks address

    @functools.cached_property
    def separator(self) -> bytes:
        return keccak256(
            DOMAIN_TYPEHASH
            + keccak256(NAME.encode())
            + keccak256(VERSION.encode())
            + _word(self.chain_id)
            + _address(self.training)
        )

    def digest(self, terms: Terms, requester: str, nonce: int, expiry: int) -> bytes:
        """What the requester signs: `TrainingTasks.termsDigest(terms, requester, nonce, expiry)`."""
        return keccak256(b"\x19\x01" + self.separator + terms.struct_hash(requester, nonce, expiry))

    def import_digest(self, task_id: int, trainers: int) -> bytes:
        """What the requester of chain task `task_id` signs to have it tracked with `trainers` training
        jobs (EIP-712 `TaskImport` on this domain)."""
        return keccak256(b"\x19\x01" + self.separator + keccak256(IMPORT_TYPEHASH + _word(task_id) + _word(trainers)))

    def import_typed_data(self, task_id: int, trainers: int) -> dict[str, Any]:
        """`import_digest`'s message as EIP-712 typed data, for a wallet."""
        return {
            "types": {
                "EIP712Domain": _DOMAIN_FIELDS,
                "TaskImport": [{"name": "taskId", "type": "uint256"}, {"name": "trainers", "type": "uint8"}],
            },
            "primaryType": "TaskImport",
            "domain": {"name": NAME, "version": VERSION, "chainId": self.chain_id, "verifyingContract": self.training},
            "message": {"taskId": task_id, "trainers": trainers},
        }

    def typed_data(self, terms: Terms, requester: str, nonce: int, expiry: int) -> dict[str, Any]:
        """The same message as EIP-712 typed data, for a wallet."""
        message = {
            "requester": requester,
            "datasetCid": terms.dataset_cid,
            "specCid": terms.spec_cid,
            "testSetCommitment": terms.test_set_commitment,
            "reward": terms.reward,
            "submitPeriod": terms.submit_period,
            "scorePeriod": terms.score_period,
            "validations": terms.validations,
            "minScore": terms.min_score,
            "kind": terms.kind,
            "decimals": terms.decimals,
            "featureCount": terms.feature_count,
            "parametersVersion": terms.parameters_version,
            "nonce": nonce,
            "expiry": expiry,
        }
        return {
            "types": {
                "EIP712Domain": _DOMAIN_FIELDS,
                "TaskTerms": [{"name": name, "type": kind} for name, kind in TERMS_FIELDS],
            },
            "primaryType": "TaskTerms",
            "domain": {"name": NAME, "version": VERSION, "chainId": self.chain_id, "verifyingContract": self.training},
            "message": message,
        }


def sign_terms(private_key: bytes | str, domain: TermsDomain, terms: Terms, nonce: int, expiry: int) -> bytes:
    """The requester's 65-byte signature (r, s, v) of the terms, by the standard typed-data signer."""
    from eth_account import Account

    signer = Account.from_key(private_key)
    signed = Account.sign_typed_data(signer.key, full_message=domain.typed_data(terms, signer.address, nonce, expiry))
    return bytes(signed.signature)


def sign_import(private_key: bytes | str, domain: TermsDomain, task_id: int, trainers: int) -> bytes:
    """The requester's 65-byte signature (r, s, v) of an import of its chain task `task_id` with
    `trainers` training jobs, by the standard typed-data signer."""
    from eth_account import Account

    signed = Account.sign_typed_data(
        Account.from_key(private_key).key, full_message=domain.import_typed_data(task_id, trainers)
    )
    return bytes(signed.signature)
