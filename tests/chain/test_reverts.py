"""Revert reasons: every custom error of every shipped contract decodes by one function, the errors users
meet read in words, and a transaction mined anyway is explained by replaying it."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from eth_abi.abi import encode as abi_encode
from eth_abi.grammar import BasicType, TupleType, parse
from eth_utils.abi import function_abi_to_4byte_selector, get_abi_input_types
from eth_utils.address import to_checksum_address
from web3 import AsyncWeb3
from web3.exceptions import ContractCustomError, Web3RPCError

from ethml.chain import deploy_system, dev_account, ethml_contract
from ethml.chain._artifacts import ARTIFACT_NAMES, load_artifact
from ethml.chain.reverts import (
    MESSAGES,
    PANIC_CODES,
    Moment,
    Revert,
    access_roles,
    amount,
    decode_revert,
    duration,
    error_table,
    explain,
    local_time,
    revert_data,
)
from ethml.chain.rpc import http_web3
from ethml.chain.tx import why_reverted

ERRORS = [
    (contract, item)
    for contract in ARTIFACT_NAMES
    for item in load_artifact(contract).abi
    if item.get("type") == "error"
]


def _sample(abi_type: str, seed: int) -> Any:
    """A value of any ABI type, different for each seed (so arguments cannot be mixed up unnoticed)."""
    t = parse(abi_type)
    if t.arrlist:
        inner = t.item_type.to_type_str()
        dims = t.arrlist[-1]
        return [_sample(inner, seed + i) for i in range(dims[0] if dims else 2)]
    if isinstance(t, TupleType):
        return tuple(_sample(c.to_type_str(), seed + i) for i, c in enumerate(t.components))
    assert isinstance(t, BasicType)
    if t.base == "uint":
        return (seed * 7919 + 3) % (2 ** min(int(t.sub or 256), 64))
    if t.base == "int":
        return -(seed * 31 + 5)
    if t.base == "address":
        return to_checksum_address(f"{seed:040x}"[-40:].replace("0", "a"))
    if t.base == "bool":
        return seed % 2 == 0
    if t.base == "bytes":
        size = int(t.sub) if t.sub else 3
        return bytes((seed + i) % 256 for i in range(size))
    if t.base == "string":
        return f"reason {seed}"
    raise AssertionError(f"no sample for {abi_type}")


def _encoded(item: dict[str, Any]) -> tuple[bytes, dict[str, Any]]:
    types = get_abi_input_types(item)
    values = [_sample(t, i + 1) for i, t in enumerate(types)]
    names = [i["name"] or f"arg{n}" for n, i in enumerate(item["inputs"])]
    data = bytes(function_abi_to_4byte_selector(item)) + abi_encode(types, values)
    return data, dict(zip(names, values, strict=True))


@pytest.mark.parametrize(("contract", "item"), ERRORS, ids=[f"{c}.{i['name']}({len(i['inputs'])})" for c, i in ERRORS])
def test_every_error_of_every_shipped_contract_decodes(contract: str, item: dict[str, Any]) -> None:
    data, args = _encoded(item)
    # With the contract's own ABI (how senders call it), the names are that contract's.
    own = decode_revert(data, load_artifact(contract).abi)
    assert (own.name, own.args, own.data) == (item["name"], args, data)
    assert contract in own.contracts
    # Without it, the one selector table still knows the error (and its values).
    anywhere = decode_revert("0x" + data.hex())
    assert anywhere.name == item["name"] and list(anywhere.args.values()) == list(args.values())
    assert explain(own, Moment(int(time.time()), 100))  # every error reads as something


def test_every_error_is_in_the_selector_table() -> None:
    table = error_table()
    for contract, item in ERRORS:
        selector = bytes(function_abi_to_4byte_selector(item))
        assert any(d.name == item["name"] and contract in d.contracts for d in table[selector])


def test_messages_name_real_errors_and_render_for_each_of_their_declarations() -> None:
    """A template names an error some shipped contract declares (or Error/Panic) and renders with the
    arguments of every declaration of that name; a renamed error or argument fails here."""
    by_name: dict[str, list[dict[str, Any]]] = {}
    for _contract, item in ERRORS:
        by_name.setdefault(item["name"], []).append(item)
    stale = [name for name in MESSAGES if name not in by_name and name not in ("Error", "Panic")]
    assert not stale, f"templates for errors no shipped contract declares: {stale}"
    for name in MESSAGES:
        for item in by_name.get(name, []):
            data, _ = _encoded(item)
            said = explain(decode_revert(data, [item]), Moment(1_700_000_000, 50))
            assert said.endswith(f"({name})") and not said.startswith(f"{name}("), (name, said)


def test_require_messages_and_panics_in_words() -> None:
    error = decode_revert(bytes.fromhex("08c379a0") + abi_encode(["string"], ["amount too small"]))
    assert (error.name, explain(error)) == ("Error", "amount too small")
    for code, words in PANIC_CODES.items():
        panic = decode_revert(bytes.fromhex("4e487b71") + abi_encode(["uint256"], [code]))
        assert explain(panic) == f"the contract panicked: {words} (code 0x{code:02x})"
    odd = decode_revert(bytes.fromhex("4e487b71") + abi_encode(["uint256"], [0x99]))
    assert explain(odd) == "the contract panicked: an unknown panic (code 0x99)"


def test_unknown_empty_and_malformed_data() -> None:
    assert explain(decode_revert(None)) == "no reason given"
    assert explain(decode_revert("0x")) == "no reason given"
    assert explain(decode_revert(b"\x01\x02")) == "unknown error 0x0102"
    assert explain(decode_revert(bytes.fromhex("deadbeef") + bytes(32))) == "unknown error 0xdeadbeef" + "00" * 32
    unknown_model = bytes(function_abi_to_4byte_selector(_item("ModelRegistry", "UnknownModel")))
    truncated = decode_revert(unknown_model + b"\x01")  # a uint256 needs 32 bytes
    assert not truncated.known and explain(truncated).startswith("unknown error 0x")


def _item(contract: str, name: str) -> dict[str, Any]:
    return next(i for i in load_artifact(contract).abi if i.get("type") == "error" and i["name"] == name)


def _error(contract: str, name: str, *values: Any) -> Revert:
    item = _item(contract, name)
    data = bytes(function_abi_to_4byte_selector(item)) + abi_encode(get_abi_input_types(item), list(values))
    return decode_revert(data, load_artifact(contract).abi)


def test_deadlines_as_local_wall_clock_with_the_gap_to_the_transaction() -> None:
    today = time.localtime()
    deadline = int(time.mktime((today.tm_year, today.tm_mon, today.tm_mday, 12, 3, 41, 0, 0, -1)))  # noon: same day
    closed = _error("TrainingTasks", "TooLate", 1, 0, deadline)  # Step.CommitSubmission
    at = "12:03:41"
    assert explain(closed, Moment(deadline + 4, 32)) == (
        f"the submission window of task 1 closed at {at}, 4 s before this transaction (TooLate)"
    )
    early = _error("TrainingTasks", "TooEarly", 3, 2, deadline)  # Step.RevealTestSet
    assert explain(early, Moment(deadline - 200, 32)) == (
        f"the test-set window of task 3 opens at {at}, 3 min 20 s after this transaction (TooEarly)"
    )
    assert explain(closed) == f"the submission window of task 1 closed at {at} (TooLate)"
    steps = [explain(_error("TrainingTasks", "TooLate", 2, step, deadline)) for step in range(7)]
    assert len(set(steps)) == 7 and not any("step " in s for s in steps)  # every step has its own words
    blocks = _error("EthML", "CommitWindowClosed", 4, 120)
    assert explain(blocks, Moment(None, 123)) == (
        "round 4's commit window closed at block 120, 3 blocks before this transaction's (CommitWindowClosed)"
    )


def test_values_that_matter_in_words() -> None:
    validator = dev_account(6).address
    assert explain(_error("TrainingTasks", "NotStaked", validator, 1)) == (
        f"account {validator} is not staked as a validator; stake with `ethml stake --role validator` (NotStaked)"
    )
    assert explain(_error("TrainingTasks", "AlreadyCommitted", 1, validator)) == (
        f"validator {validator} already committed its scores for task 1 (AlreadyCommitted)"
    )
    assert explain(_error("TrainingTasks", "TaskClosed", 4, 5)) == "task 4 is closed: abandoned (TaskClosed)"
    assert explain(_error("TrainingTasks", "BadTerm", 5, 4, 1, 9)) == (
        "invalid task terms: the number of validators (odd) is 4, allowed 1 to 9 (BadTerm)"
    )
    assert explain(_error("TrainingTasks", "ClaimBelowMinimum", 2, 750_000, 800_000)) == (
        "a claimed score of 0.750000 is below task 2's minimum of 0.800000 (ClaimBelowMinimum)"
    )
    assert explain(_error("ModelRegistry", "UnknownModel", 9)) == "model 9 is not registered (UnknownModel)"
    # One name, two contracts, other arguments: each reads with its own.
    assert explain(_error("EthML", "NotRequester", 5, validator)).startswith("only the requester of request 5 ")
    assert explain(_error("TrainingTasks", "AlreadyRevealed", 5, validator)).startswith("already revealed on task 5 ")
    assert explain(_error("EthML", "AlreadyRevealed", 5, validator)).startswith(f"miner {validator} already ")
    short = _error("EMLToken", "ERC20InsufficientBalance", validator, 25 * 10**17, 10**19)
    assert explain(short) == f"{validator} holds 2.5 EML, 10 EML needed (ERC20InsufficientBalance)"
    pauser = next(h for h, n in access_roles().items() if n == "PAUSER_ROLE")
    denied = _error("TrainingTasks", "AccessControlUnauthorizedAccount", validator, pauser)
    assert explain(denied) == f"account {validator} lacks PAUSER_ROLE (AccessControlUnauthorizedAccount)"
    # No template: the generic form names every argument.
    assert "LengthMismatch" not in MESSAGES
    assert explain(_error("EMLToken", "LengthMismatch", 2, 3)) == "LengthMismatch(holders=2, amounts=3)"


def test_formatting_helpers() -> None:
    assert [duration(s) for s in (0, 4, 59, 60, 200, 3600, 7500, 86400, 90000)] == [
        "0 s",
        "4 s",
        "59 s",
        "1 min",
        "3 min 20 s",
        "1 h",
        "2 h 5 min",
        "1 d",
        "1 d 1 h",
    ]
    assert [amount(w, "EML") for w in (0, 10**18, 25 * 10**16, 1)] == [
        "0 EML",
        "1 EML",
        "0.25 EML",
        "0.000000000000000001 EML",
    ]
    day = 86400
    assert len(local_time(1_700_000_000, 1_700_000_000)) == 8
    assert local_time(1_700_000_000, 1_700_000_000 + 3 * day).startswith(
        time.strftime("%Y-%m-%d", time.localtime(1_700_000_000))
    )


def test_revert_data_from_every_layer() -> None:
    data = bytes(function_abi_to_4byte_selector(_item("ModelRegistry", "UnknownModel"))) + abi_encode(["uint256"], [7])
    assert revert_data(ContractCustomError("0x" + data.hex(), data="0x" + data.hex())) == data
    rpc = Web3RPCError("execution reverted", rpc_response={"error": {"code": 3, "data": "0x" + data.hex()}})
    assert revert_data(rpc) == data
    tester = type("TransactionFailed", (Exception,), {})(f"execution reverted: {data!r}")
    assert revert_data(tester) == data
    try:
        try:
            raise tester
        except Exception as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as outer:
        assert revert_data(outer) == data
    assert revert_data(ConnectionRefusedError("refused")) is None


@pytest.fixture
async def anvil(anvil_url: str) -> AsyncIterator[AsyncWeb3]:
    w3 = http_web3(anvil_url)
    yield w3
    await w3.provider.disconnect()


async def _send_unchecked(w3: AsyncWeb3, call: Any, gas: int) -> Any:
    """Sign and send without the pre-flight (as a transaction raced by another would land), wait."""
    account = dev_account(3)
    tx = await call.build_transaction(
        {
            "from": account.address,
            "nonce": await w3.eth.get_transaction_count(account.address),
            "gas": gas,
            "maxFeePerGas": 10**10,
            "maxPriorityFeePerGas": 10**9,
            "chainId": await w3.eth.chain_id,
        }
    )
    tx_hash = await w3.eth.send_raw_transaction(account.sign_transaction(tx).raw_transaction)
    return await w3.eth.wait_for_transaction_receipt(tx_hash)


async def test_a_mined_revert_is_explained_by_replaying_it(anvil: AsyncWeb3) -> None:
    deployment = await deploy_system(anvil, dev_account(0))
    ethml = ethml_contract(anvil, deployment.ethml)
    receipt = await _send_unchecked(anvil, ethml.functions.expireRound(1, []), gas=200_000)
    assert receipt["status"] == 0
    reason, error = await why_reverted(anvil, receipt, ethml.abi)
    assert reason == "no round is open: there is no request being mined (NoOpenRound)"
    assert error is not None and error.name == "NoOpenRound"
    starved = await _send_unchecked(anvil, ethml.functions.expireRound(1, []), gas=23_000)
    assert starved["status"] == 0
    assert await why_reverted(anvil, starved, ethml.abi) == ("it ran out of gas (all 23,000 gas used)", None)


def test_revert_text_that_blows_up_literal_eval_is_no_revert_data() -> None:
    """An RPC's error text is read with `ast.literal_eval` when it quotes the revert as a bytes literal: a text
    such as `b'' + 1**1**1...` raised MemoryError (not caught) out of the code reading a reverted transaction."""
    from ethml.chain.reverts import revert_data

    for text in ("1" + "**1" * 3000, "-" * 100_000 + "1"):
        assert revert_data(ValueError(f"execution reverted: b{text}")) is None
