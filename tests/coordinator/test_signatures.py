"""The coordinator's own signature checks (libsecp256k1 called directly, EIP-55 by integer arithmetic)
against eth_account and eth_utils, and what they must refuse."""

from __future__ import annotations

import os

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils import to_checksum_address

from ethml.coordinator.permit import SECP256K1_N, address_of, checksum_address, recover_public_key
from ethml.pow import keccak256
from ethml.training.terms import TermsDomain, sign_import


def test_checksum_address_is_eip55_for_any_case_of_any_address() -> None:
    for _ in range(2000):
        address = "0x" + os.urandom(20).hex()
        expected = to_checksum_address(address)
        assert checksum_address(address) == expected
        assert checksum_address("0x" + address[2:].upper()) == expected
    assert checksum_address("0x" + "0" * 40) == "0x" + "0" * 40
    assert checksum_address("0x" + "f" * 40) == to_checksum_address("0x" + "f" * 40)


@pytest.mark.parametrize(
    "text", ["0x1234", "0x" + "a" * 39, "0x" + "a" * 41, "0x" + "g" * 40, "1x" + "a" * 40, "0x" + "\u00e9" * 40, ""]
)
def test_checksum_address_refuses_what_is_not_a_20_byte_hex_address(text: str) -> None:
    with pytest.raises(ValueError, match="20-byte hex address"):
        checksum_address(text)


def _twin(s: bytes) -> bytes:
    return (SECP256K1_N - int.from_bytes(s, "big")).to_bytes(32, "big")


def recover(digest: bytes, v: int, r: bytes, s: bytes, *, checksum: bool = True) -> str | None:
    """The signer's address as the API derives it (EIP-55, or lowercase), or None."""
    key = recover_public_key(digest, v, r, s)
    if key is None:
        return None
    return checksum_address(address_of(key)) if checksum else address_of(key)


def _signed(digest: bytes) -> tuple[str, int, bytes, bytes]:
    account = Account.create()
    signed = Account.unsafe_sign_hash(digest, account.key)
    return account.address, signed.v, signed.r.to_bytes(32, "big"), signed.s.to_bytes(32, "big")


def test_recover_agrees_with_eth_account() -> None:
    for _ in range(200):
        digest = os.urandom(32)
        address, v, r, s = _signed(digest)
        assert recover(digest, v, r, s) == address
        assert recover(digest, v, r, s, checksum=False) == address.lower()
        key = recover_public_key(digest, v, r, s)
        assert key is not None and len(key) == 64
        assert "0x" + keccak256(key)[12:].hex() == address.lower()
        # The other recovery id gives another key; another digest too.
        assert recover(digest, 55 - v, r, s) not in (None, address)
        assert recover(os.urandom(32), v, r, s) != address


@pytest.mark.parametrize(
    ("what", "change"),
    [
        ("v 0", lambda v, r, s: (0, r, s)),
        ("v 29", lambda v, r, s: (29, r, s)),
        ("r 0", lambda v, r, s: (v, bytes(32), s)),
        ("r n", lambda v, r, s: (v, SECP256K1_N.to_bytes(32, "big"), s)),
        ("s 0", lambda v, r, s: (v, r, bytes(32))),
        ("s high (the malleable twin)", lambda v, r, s: (55 - v, r, _twin(s))),
        ("r short", lambda v, r, s: (v, r[1:], s)),
        ("s long", lambda v, r, s: (v, r, s + b"\0")),
    ],
)  # fmt: skip
def test_malformed_or_malleable_signatures_recover_nothing(what: str, change: object) -> None:
    digest = os.urandom(32)
    _address, v, r, s = _signed(digest)
    v2, r2, s2 = change(v, r, s)  # type: ignore[operator]
    assert recover_public_key(digest, v2, r2, s2) is None, what
    assert recover(digest, v2, r2, s2) is None, what


def test_a_digest_of_the_wrong_length_recovers_nothing() -> None:
    digest = os.urandom(32)
    _address, v, r, s = _signed(digest)
    assert recover_public_key(digest[:31], v, r, s) is None
    assert recover_public_key(digest + b"\0", v, r, s) is None


def test_an_import_is_signed_as_a_wallet_signs_its_typed_data() -> None:
    """The digest the coordinator checks for `POST /api/tasks/import` is the EIP-712 hash of the typed data
    a wallet is shown (eth_account's encoder), and `sign_import` signs exactly it; another task, another
    number of training jobs or another chain is another digest."""
    domain = TermsDomain(31337, "0x" + os.urandom(20).hex())
    signer = Account.create()
    for task_id, trainers in [(1, 1), (7, 3), (2**64, 8)]:
        signable = encode_typed_data(full_message=domain.import_typed_data(task_id, trainers))
        digest = domain.import_digest(task_id, trainers)
        assert digest == keccak256(b"\x19" + signable.version + signable.header + signable.body)
        signature = sign_import(signer.key, domain, task_id, trainers)
        assert recover(digest, signature[64], signature[:32], signature[32:64]) == signer.address
    others = {
        domain.import_digest(1, 3),
        domain.import_digest(2, 2),
        TermsDomain(1, domain.training).import_digest(1, 2),
    }
    assert domain.import_digest(1, 2) not in others and len(others) == 3
