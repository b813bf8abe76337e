"""EIP-2612 permits of EML and EIP-191 worker logins, verified off chain.

The permit digest is computed exactly as `EMLPermit` does (domain "EthML Token", version "1"), with
the native keccak and libsecp256k1 recovery (coincurve's build of it, called directly: the
libsecp256k1 call is ~30 us and coincurve's objects around it add ~3 us), so checking one costs
about 35 us.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from coincurve._libsecp256k1 import ffi as _secp_ffi
from coincurve._libsecp256k1 import lib as _secp_lib
from coincurve.context import GLOBAL_CONTEXT
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


#: hex digit of the address's keccak -> 0x20 where EIP-55 capitalises (8-f), 0 elsewhere
_CAPITALISE = bytes(0x20 if chr(c) in "89abcdef" else 0 for c in range(256))
#: character of the lowercase address -> 0xff for a letter (a-f), 0 for a digit
_LETTER = bytes(0xFF if chr(c) in "abcdef" else 0 for c in range(256))


@functools.lru_cache(maxsize=4096)
def checksum_address(address: str) -> str:
    """EIP-55 mixed-case form of a 0x-prefixed 20-byte hex address (with the native keccak and a cache
    of recent addresses: requesters and workers come back). The letters whose hash digit is 8-f are
    capitalised all at once: 0x20 less in each such byte of the lowercase text, as one integer."""
    body = address[2:].lower().encode("ascii", "replace")
    if len(body) != 40 or body.translate(None, b"0123456789abcdef") or address[:2] not in ("0x", "0X"):
        raise ValueError(f"not a 0x-prefixed 20-byte hex address: {address[:50]!r}")
    flags = int.from_bytes(keccak256(body).hex()[:40].encode("ascii").translate(_CAPITALISE), "big")
    letters = int.from_bytes(body.translate(_LETTER), "big")
    return "0x" + (int.from_bytes(body, "big") - (flags & letters)).to_bytes(40, "big").decode("ascii")


def _valid_rsv(v: int, r: bytes, s: bytes) -> bool:
    """v 27 or 28, r in 1..n-1 and s in 1..n/2 (no malleable twin): what OpenZeppelin's ECDSA accepts."""
    if v not in (27, 28) or len(r) != 32 or len(s) != 32:
        return False
    return 0 < int.from_bytes(s, "big") <= SECP256K1_N // 2 and 0 < int.from_bytes(r, "big") < SECP256K1_N


def recover_public_key(digest: bytes, v: int, r: bytes, s: bytes) -> bytes | None:
    """The 64-byte public key (x, y) that signed a 32-byte digest, or None for a malformed, malleable or
    unrecoverable signature."""
    if len(digest) != 32 or not _valid_rsv(v, r, s):
        return None
    ctx = GLOBAL_CONTEXT.ctx
    signature = _secp_ffi.new("secp256k1_ecdsa_recoverable_signature *")
    if not _secp_lib.secp256k1_ecdsa_recoverable_signature_parse_compact(ctx, signature, r + s, v - 27):
        return None
    key = _secp_ffi.new("secp256k1_pubkey *")
    if not _secp_lib.secp256k1_ecdsa_recover(ctx, key, signature, digest):
        return None
    out = _secp_ffi.new("unsigned char[65]")
    size = _secp_ffi.new("size_t *", 65)
    _secp_lib.secp256k1_ec_pubkey_serialize(ctx, out, size, key, _secp_lib.SECP256K1_EC_UNCOMPRESSED)
    return bytes(_secp_ffi.buffer(out, 65))[1:]


def address_of(public_key: bytes) -> str:
    """The lowercase 0x address of a 64-byte public key."""
    return "0x" + keccak256(public_key)[12:].hex()


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
