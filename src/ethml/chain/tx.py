"""Locally signed transactions with EIP-1559 fees and readable revert reasons."""

from __future__ import annotations

from typing import Any

from eth_abi.abi import decode as abi_decode
from eth_account.signers.local import LocalAccount
from eth_utils.abi import function_abi_to_4byte_selector
from web3 import AsyncWeb3
from web3.exceptions import ContractLogicError, Web3RPCError
from web3.types import TxReceipt

from ethml.chain._artifacts import ARTIFACT_NAMES, load_artifact
from ethml.errors import TransactionReverted

GAS_MARGIN = 1.25


def _error_table() -> dict[bytes, dict[str, Any]]:
    table: dict[bytes, dict[str, Any]] = {}
    for name in ARTIFACT_NAMES:
        for item in load_artifact(name).abi:
            if item["type"] == "error":
                table[function_abi_to_4byte_selector(item)] = item  # type: ignore[arg-type]
    return table


_ERRORS: dict[bytes, dict[str, Any]] | None = None


def decode_revert(data: bytes | str | None) -> str:
    """Turn revert data into `ErrorName(arg, ...)` using the ethml contracts' ABIs."""
    global _ERRORS
    if data is None:
        return "no reason given"
    if isinstance(data, str):
        data = bytes.fromhex(data.removeprefix("0x"))
    if len(data) < 4:
        return "no reason given"
    if _ERRORS is None:
        _ERRORS = _error_table()
    selector, body = data[:4], data[4:]
    if selector == bytes.fromhex("08c379a0"):
        return str(abi_decode(["string"], body)[0])
    if selector == bytes.fromhex("4e487b71"):
        return f"Panic(0x{abi_decode(['uint256'], body)[0]:02x})"
    item = _ERRORS.get(selector)
    if item is None:
        return f"unknown error 0x{data.hex()}"
    types = [i["type"] for i in item["inputs"]]
    try:
        values = abi_decode(types, body)
    except Exception:  # noqa: BLE001 - malformed data is reported, not raised
        return f"{item['name']}(<undecodable 0x{body.hex()}>)"
    shown = ", ".join("0x" + v.hex() if isinstance(v, bytes) else str(v) for v in values)
    return f"{item['name']}({shown})"


def revert_reason(exc: BaseException) -> str:
    """The decoded revert reason of a failed call, from whichever layer raised it."""
    if isinstance(exc, ContractLogicError):
        data = exc.data if isinstance(exc.data, str) else None
        return decode_revert(data) if data else (exc.message or str(exc))
    # The embedded chain (eth-tester) raises TransactionFailed with the raw revert bytes.
    for arg in exc.args:
        if isinstance(arg, bytes):
            return decode_revert(arg)
    cause = exc.__cause__ or exc.__context__
    if cause is not None and cause is not exc:
        return revert_reason(cause)
    return str(exc)


def is_revert(exc: BaseException) -> bool:
    return isinstance(exc, ContractLogicError) or type(exc).__name__ == "TransactionFailed"


async def fee_fields(w3: AsyncWeb3[Any], *, priority_gwei: float = 1.0) -> dict[str, int]:
    """EIP-1559 fees: max fee = 2 x base fee + tip, so a transaction survives a few full blocks."""
    block = await w3.eth.get_block("latest")
    base = int(block.get("baseFeePerGas", 0) or 0)
    tip = int(priority_gwei * 10**9)
    return {"maxFeePerGas": 2 * base + tip, "maxPriorityFeePerGas": tip}


async def send(
    w3: AsyncWeb3[Any],
    account: LocalAccount,
    call: Any,
    *,
    what: str | None = None,
    gas: int | None = None,
    nonce: int | None = None,
    value: int = 0,
) -> TxReceipt:
    """Sign `call` (a contract function call or a deploy constructor) locally, send it, wait for it.

    Raises:
        TransactionReverted: the pre-flight estimate or the mined transaction reverted.
    """
    label = what or getattr(call, "fn_name", None) or "transaction"
    tx: dict[str, Any] = {"from": account.address, "chainId": await w3.eth.chain_id, "value": value}
    tx["nonce"] = nonce if nonce is not None else await w3.eth.get_transaction_count(account.address, "pending")
    tx.update(await fee_fields(w3))
    try:
        if gas is None:
            # Nodes' estimates can sit exactly at the edge (a deployment's code deposit, refunds): keep a margin.
            gas = int(await call.estimate_gas(tx) * GAS_MARGIN)
        tx["gas"] = gas
        built = await call.build_transaction(tx)
    except (ContractLogicError, Web3RPCError) as exc:
        raise TransactionReverted(label, revert_reason(exc)) from exc
    except Exception as exc:
        if not is_revert(exc):
            raise
        raise TransactionReverted(label, revert_reason(exc)) from exc
    signed = account.sign_transaction(built)
    tx_hash = await w3.eth.send_raw_transaction(signed.raw_transaction)
    receipt = await w3.eth.wait_for_transaction_receipt(tx_hash)
    if receipt["status"] != 1:
        raise TransactionReverted(label, f"mined but reverted in block {receipt['blockNumber']}")
    return receipt
