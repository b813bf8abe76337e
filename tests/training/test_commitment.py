"""The hand-written ABI encoding of the test-set commitment matches eth_abi's for any CID length."""

from __future__ import annotations

import os

from eth_abi.abi import encode
from eth_utils.crypto import keccak

from ethml.coordinator.schemas import commitment_hex
from ethml.training.flow import commit_test_set


def test_commitment_matches_abi_encode() -> None:
    for cid in ("", "Qm" + "a" * 44, "bafkreibm6jg3ux5qumhcn2b3flc3tyu6dmlb4xa7u5bf44yegnrjhc4yeq", "x" * 32, "y" * 64):
        salt = os.urandom(32)
        expected = keccak(encode(["string", "bytes32"], [cid, salt]))
        assert commit_test_set(cid, salt) == expected
        assert commitment_hex(cid, "0x" + salt.hex()) == "0x" + expected.hex()
