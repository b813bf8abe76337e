"""EIP-2612 permits of EML and EIP-191 worker logins, verified off chain.

The permit digest is computed exactly as `EMLPermit` does (domain "EthML Token", version "1"), with
the native keccak and libsecp256k1 (coincurve) recovery, so verifying one costs about 0.1 ms.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from coincurve import PublicKey
from eth_account import Account
from eth_account.messages import encode_defunct

from ethml.pow import keccak256

DOMAIN_TYPEHASH = keccak256(b"EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)")
PERMIT_TYPEHASH = keccak256(b"Permit(address owner,address spender,uint256 value,uint256 nonce,uint256 deadline)")
TOKEN_NAME = b"EthML Token"
#: secp256k1's group order; a valid signature's s is at most half of it (no malleable twin).
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def _word(value: int | bytes) -> bytes:
    if isinstance(value, bytes):
        return value.rjust(32, b"\0")
    return value.to_bytes(32, "big")


def domain_separator(chain_id: int, token: str) -> bytes:
    return keccak256(
        DOMAIN_TYPEHASH + keccak256(TOKEN_NAME) + keccak256(b"1") + _word(chain_id) + _word(bytes.fromhex(token[2:]))
    )


@dataclass(frozen=True)
class PermitDomain:
    chain_id: int
    token: str  # EML (the EthML contract)
    spender: str  # TrainingTasks

    @functools.cached_property
    def separator(self) -> bytes:
        return domain_separator(self.chain_id, self.token)

    def digest(self, owner: str, value: int, nonce: int, deadline: int) -> bytes:
        struct = keccak256(
            PERMIT_TYPEHASH
            + _word(bytes.fromhex(owner[2:]))
            + _word(bytes.fromhex(self.spender[2:]))
            + _word(value)
            + _word(nonce)
            + _word(deadline)
        )
        return keccak256(b"\x19\x01" + self.separator + struct)

    def typed_data(self, owner: str, value: int, nonce: int, deadline: int) -> dict[str, object]:
        """The EIP-712 message a wallet signs (eth_account's `sign_typed_data(full_message=...)`)."""
        return {
            "types": {
                "EIP712Domain": [
                    {"name": "name", "type": "string"},
                    {"name": "version", "type": "string"},
                    {"name": "chainId", "type": "uint256"},
                    {"name": "verifyingContract", "type": "address"},
                ],
                "Permit": [
                    {"name": "owner", "type": "address"},
                    {"name": "spender", "type": "address"},
                    {"name": "value", "type": "uint256"},
                    {"name": "nonce", "type": "uint256"},
                    {"name": "deadline", "type": "uint256"},
                ],
            },
            "primaryType": "Permit",
            "domain": {
                "name": TOKEN_NAME.decode(),
                "version": "1",
                "chainId": self.chain_id,
                "verifyingContract": self.token,
            },
            "message": {"owner": owner, "spender": self.spender, "value": value, "nonce": nonce, "deadline": deadline},
        }


@functools.lru_cache(maxsize=4096)
def checksum_address(address: str) -> str:
    """EIP-55 mixed-case form of a 0x-prefixed 20-byte hex address (with the native keccak and a cache
    of recent addresses: requesters and workers come back)."""
    body = address[2:].lower()
    digest = keccak256(body.encode()).hex()
    return "0x" + "".join(c.upper() if d in "89abcdef" else c for c, d in zip(body, digest[:40], strict=True))


def recover(digest: bytes, v: int, r: bytes, s: bytes, *, checksum: bool = True) -> str | None:
    """The signer of a 32-byte digest (EIP-55, or lowercase with checksum=False), or None for a
    malformed or malleable signature."""
    if v not in (27, 28) or len(r) != 32 or len(s) != 32:
        return None
    if int.from_bytes(s, "big") > SECP256K1_N // 2 or not 0 < int.from_bytes(r, "big") < SECP256K1_N:
        return None
    try:
        key = PublicKey.from_signature_and_message(r + s + bytes([v - 27]), digest, hasher=None)
    except Exception:  # noqa: BLE001 - coincurve raises plain Exception for an unrecoverable signature
        return None
    address = "0x" + keccak256(key.format(compressed=False)[1:])[12:].hex()
    return checksum_address(address) if checksum else address


def login_message(server_id: str, nonce: str, role: str) -> str:
    return f"ethml worker login\nserver: {server_id}\nrole: {role}\nnonce: {nonce}"


def sign_login(private_key: bytes | str, server_id: str, nonce: str, role: str) -> str:
    signed = Account.sign_message(encode_defunct(text=login_message(server_id, nonce, role)), private_key)
    return "0x" + bytes(signed.signature).hex()


def recover_login(server_id: str, nonce: str, role: str, signature: str) -> str | None:
    try:
        return str(
            Account.recover_message(encode_defunct(text=login_message(server_id, nonce, role)), signature=signature)
        )
    except Exception:  # noqa: BLE001 - eth_account raises several types for a malformed signature
        return None
