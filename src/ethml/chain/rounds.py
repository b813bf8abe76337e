"""The oracle's round arithmetic, bit for bit with the contracts: challenges, commitments to answer
vectors, the hashes reveals store, and the answer table a closing transaction carries."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import IntEnum

from eth_abi.abi import encode as abi_encode
from eth_utils.crypto import keccak

#: Commitment slots per round.
MINERS_PER_ROUND = 5
#: The value a miner reveals when the data point cannot be used (the contract's INVALID_INPUT).
INVALID_INPUT = -(2**255)
#: A revealed answer is INVALID_INPUT or fits an int96 (what the contract stores as a result).
ANSWER_MIN = -(2**95) + 1
ANSWER_MAX = 2**95 - 1


class Status(IntEnum):
    NONE = 0
    QUEUED = 1
    CURRENT = 2
    FINALIZED = 3
    INVALID_INPUT = 4
    EXPIRED = 5
    NO_CONSENSUS = 6
    CANCELLED = 7

    @property
    def closed(self) -> bool:
        return self >= Status.FINALIZED

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", " ")


def _address_bytes(address: str) -> bytes:
    raw = bytes.fromhex(address.removeprefix("0x"))
    if len(raw) != 20:
        raise ValueError(f"{address!r} is not a 20-byte address")
    return raw


def challenge_for(block_hash: bytes, contract: str, round_id: int) -> bytes:
    """A round's challenge: keccak256(abi.encodePacked(blockhash(openBlock), contract, roundId))."""
    return keccak(bytes(block_hash) + _address_bytes(contract) + round_id.to_bytes(32, "big"))


def commitment_for(round_id: int, miner: str, answers: Sequence[int], salt: bytes) -> bytes:
    """keccak256(abi.encode(roundId, miner, int256[] answers, salt)), what `commit` takes."""
    return keccak(abi_encode(["uint256", "address", "int256[]", "bytes32"], [round_id, miner, list(answers), salt]))


def revealed_hash(miner: str, answers: Sequence[int]) -> bytes:
    """keccak256(abi.encodePacked(miner, answers)): what a reveal stores and the close checks."""
    return keccak(_address_bytes(miner) + b"".join(a.to_bytes(32, "big", signed=True) for a in answers))


def check_answers(answers: Sequence[int]) -> None:
    """Raise ValueError for an answer the contract would refuse (PredictionOutOfRange)."""
    for a in answers:
        if a != INVALID_INPUT and not ANSWER_MIN <= a <= ANSWER_MAX:
            raise ValueError(f"answer {a} is outside int96 and not INVALID_INPUT")


def answer_table(
    slots: Mapping[int, str], revealed: Mapping[str, Sequence[int]], count: int
) -> tuple[list[str], list[int]]:
    """The closing transaction's arguments: the revealer of each slot (the zero address where none
    revealed) and the slot-major table of their answers (`count` per slot, zeros where none revealed).

    Args:
        slots: commitment slot -> miner, from the round's Committed events.
        revealed: miner -> its revealed vector, from the round's Revealed events.
        count: the round's number of requests.
    """
    zero = "0x" + "00" * 20
    miners = [zero] * MINERS_PER_ROUND
    table = [0] * (MINERS_PER_ROUND * count)
    by_address = {m.lower(): v for m, v in revealed.items()}
    for slot, miner in slots.items():
        answers = by_address.get(miner.lower())
        if answers is None:
            continue
        if len(answers) != count:
            raise ValueError(f"slot {slot}: {len(answers)} answers for a round of {count} requests")
        miners[slot] = miner
        table[slot * count : (slot + 1) * count] = list(answers)
    return miners, table
