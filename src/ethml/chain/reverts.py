"""Why a transaction reverts, in words.

`decode_revert` turns revert data into the error's name and arguments: every custom error of every
contract shipped in `ethml/chain/artifacts` (the selector table is built from their ABIs, so a new
contract or error is picked up by itself), plus Solidity's `Error(string)` and `Panic(uint256)`.
`explain` says it in words with the values that matter, from MESSAGES, a table of templates keyed by
error name; an error without a template reads `ErrorName(arg=value, ...)`.

A template is a `str.format` string over the error's arguments by name, with these format specs:
`:time` (a unix time as local wall-clock, with the gap to the transaction's block), `:block` (a block
number, with the gap to the transaction's block), `:eml` and `:eth` (wei as an amount), `:stake_role`,
`:step`, `:term`, `:task_status` and `:registration` (TrainingTasks' enums in words), `:score` (millionths
as a fraction), `:access_role` (an AccessControl role hash by its name) and `:op_states` (a timelock's
bitmap of operation states). A name may map to several templates, for errors that two contracts declare
with other arguments; the first one whose fields the decoded error has is used.
"""

from __future__ import annotations

import ast
import string
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cache
from typing import Any

from eth_abi.abi import decode as abi_decode
from eth_utils.abi import function_abi_to_4byte_selector, get_abi_input_types
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from ethml.chain._artifacts import ARTIFACT_NAMES, load_artifact

#: Error(string): `require(condition, "message")` and `revert("message")`.
ERROR_SELECTOR = bytes.fromhex("08c379a0")
#: Panic(uint256): a failed assert, an overflow, a division by zero, ...
PANIC_SELECTOR = bytes.fromhex("4e487b71")

#: Solidity's panic codes (docs.soliditylang.org, "Panic via assert and Error via require").
PANIC_CODES = {
    0x00: "a generic compiler panic",
    0x01: "an assertion failed",
    0x11: "an arithmetic operation overflowed or underflowed",
    0x12: "a division or modulo by zero",
    0x21: "a value too large or negative converted to an enum",
    0x22: "an incorrectly encoded storage byte array was read",
    0x31: "pop() on an empty array",
    0x32: "an array index out of bounds",
    0x41: "too much memory allocated",
    0x51: "a call to a zero-initialised internal function",
}

#: TrainingTasks.Role.
STAKE_ROLES = {0: "trainer", 1: "validator"}
#: TrainingTasks.Step: the window each step belongs to, named in TooEarly and TooLate.
STEPS = {
    0: "submission window",
    1: "submission reveal window",
    2: "test-set window",
    3: "score commit window",
    4: "window to replace no-shows",
    5: "score reveal window",
    6: "finalization window",
}
#: TrainingTasks.Term, named in BadTerm (a CID's value is its length).
TERMS = {
    0: "the dataset CID's length",
    1: "the test-set commitment",
    2: "the reward (wei)",
    3: "the submission period (seconds)",
    4: "the score period (seconds)",
    5: "the number of validators (odd)",
    6: "the minimum score (millionths)",
}
#: TrainingTasks.Status and TrainingTasks.Registration.
TASK_STATUSES = ("none", "open", "accepted", "rejected", "unusable", "abandoned", "empty", "undecided")
REGISTRATIONS = ("none", "registered", "below the minimum reward", "deferred", "failed", "closed")

#: TimelockController.OperationState, as the bits of its `expectedStates` bitmap say them.
OPERATION_STATES = {0: "unscheduled", 1: "waiting out its delay", 2: "ready to execute", 3: "executed"}

#: What users are told, by error name. Keys are error names; templates name the error's arguments.
MESSAGES: dict[str, str | tuple[str, ...]] = {
    # Solidity's own
    "Error": "{message}",
    "Panic": "the contract panicked: {code:panic} (code {code:#04x})",
    # TrainingTasks: stakes
    "NotStaked": (
        "account {account} is not staked as a {role:stake_role}; stake with `ethml stake --role {role:stake_role}`"
    ),
    "NothingStaked": "account {account} has no {role:stake_role} stake",
    "StakeLocked": (
        "account {account}'s {role:stake_role} stake can be withdrawn from {unlockAt:time}, all but what its open "
        "work locks ({openWork} submissions or panels in open tasks); nothing is free to withdraw now"
    ),
    "UnstakeNotRequested": (
        "account {account} has not asked to unstake its {role:stake_role} stake yet (`ethml unstake --role "
        "{role:stake_role}`)"
    ),
    "BadAmount": "{amount:eml} cannot be staked (more than nothing, at most 2^128-1 wei)",
    "ValidatorSetFull": "the draw has no place left for a new validator (all {capacity:,} are taken)",
    "FreeStakeBelowBond": (
        "trainer {trainer} has {free:eml} of free stake, less than the task's bond of {bond:eml}; stake more "
        "(`ethml stake --role trainer`) or wait for its open submissions to settle"
    ),
    # TrainingTasks: terms and tasks
    "BadTerm": "invalid task terms: {term:term} is {value:,}, allowed {min:,} to {max:,}",
    "ParametersChanged": (
        "the terms were made under the market's parameters version {termsVersion}, and they are now version "
        "{currentVersion}: make (and sign) the terms again"
    ),
    "SignatureExpired": "the requester's signed terms expired at {expiry:time}",
    "InvalidSignature": (
        "the terms are not signed by the requester {requester} (a term, the nonce or the expiry differs from what "
        "it signed, or its nonce was used)"
    ),
    "EscrowNotApproved": (
        "requester {requester} allows TrainingTasks {allowance:eml}, less than the reward of {reward:eml} "
        "(its permit failed or was not given)"
    ),
    "UnknownTask": "there is no task {taskId}",
    "TaskClosed": "task {taskId} is closed: {status:task_status}",
    "TooEarly": "the {step:step} of task {taskId} opens at {notBefore:time}",
    "TooLate": "the {step:step} of task {taskId} closed at {closedAt:time}",
    # TrainingTasks: submissions and the test set
    "RequesterCannotSubmit": "the requester of task {taskId} cannot submit to it",
    "AlreadySubmitted": "trainer {trainer} already committed a submission to task {taskId}",
    "TooManySubmissions": "task {taskId} has its {max} submissions and takes no more",
    "NoCommitment": "account {account} has nothing committed on task {taskId} to reveal",
    "ClaimBelowMinimum": "a claimed score of {claim:score} is below task {taskId}'s minimum of {minScore:score}",
    "ArtifactRevealedElsewhere": (
        "the artifact {artifactSha256} was revealed in task {otherTaskId} before this commitment to task {taskId} "
        "was made: it could be a copy"
    ),
    "ScoreOutOfRange": "score {score:,} is above 1.0 (1,000,000)",
    "NoSubmissions": "task {taskId} has no revealed submission, so there is nothing to test",
    "TestSetMismatch": "the test set does not match task {taskId}'s commitment",
    # TrainingTasks: the panel
    "NoDrawPending": "task {taskId} has no draw pending",
    "DrawNotReady": "task {taskId}'s validators are drawn once block {drawBlock} is mined (now {currentBlock})",
    "DrawPending": "task {taskId}'s validators are not drawn yet (after block {drawBlock}; anyone may draw them)",
    "NotOnPanel": "account {account} holds no seat on task {taskId}'s panel (validators are drawn by lot)",
    "ScoreCount": "{given} scores given, the task has {expected} submissions",
    "NothingToReplace": "task {taskId} has no drawn validator to replace",
    "NoRoundsLeft": "task {taskId} has had its {rounds} draws",
    "PanelIncomplete": (
        "task {taskId}'s panel is not complete ({committed} of {validations} seats committed): its no-shows must "
        "be replaced first (replaceNoShows, anyone may)"
    ),
    # TrainingTasks: settlement
    "NotRetryable": "task {taskId}'s model registration cannot be retried (it is {registration:registration})",
    "NotFirstInLine": (
        "task {taskId} is not first in the registration queue: task {firstTaskId} registers before it "
        "(retryRegistration serves the queue in order)"
    ),
    "RegistrationCapReached": "this period's registrations are used up; the next window opens at {nextWindowAt:time}",
    "NotEnoughGas": "the transaction needs at least {needed:,} gas left for the model registration; give it more",
    "EnforcedPause": "the contract is paused",
    "ExpectedPause": "the contract is not paused",
    # EthML: models and requests
    "UnknownModel": "model {modelId} is not registered",
    "ModelInactive": "model {modelId} is deactivated",
    "EmptyCid": "the CID is empty",
    "CidTooLong": "the CID is {length} bytes, over the {maxLength}-byte limit",
    "TipTooLarge": "a tip of {tip:eml} is over the limit of 2^96-1 wei",
    "CallbackGasLimitTooHigh": "a callback gas limit of {requested:,} is over the maximum of {maximum:,}",
    "CallbackDepositTooSmall": "a callback deposit of {sent:eth} is below the {required:eth} it needs",
    "UnexpectedDeposit": "{sent:eth} sent with a request that asks for no callback gas",
    "NotQueued": "request {requestId} is not waiting in the queue",
    "NotClosed": "request {requestId} is not closed yet",
    "NothingToWithdraw": "request {requestId} has nothing left to withdraw",
    "NotRequester": "only the requester of request {requestId} may do this, not {caller}",
    "NotYourRequest": "request {requestId} was not made by {caller}",
    "AlreadyReclaimed": "request {requestId}'s deposit was already reclaimed",
    "DepositTooLarge": "a callback deposit of {sent:eth} is over the limit of 2^96-1 wei",
    "QueuedNotStale": "request {requestId} can be expired from the queue only after {staleAfterBlock:block}",
    "StaleQueueHint": "request {requestId} is no longer at queue position {position}; ask for its position again",
    "InsufficientGasForCallback": "the transaction has {available:,} gas left, {required:,} needed for the callback",
    "TooManyRequests": "the oracle has handed out every request id",
    # EthML: rounds
    "NoOpenRound": "no round is open: there is no request being mined",
    "NotCurrentRound": "round {roundId} is not the open one (round {currentRoundId} is)",
    "ChallengeNotYetAvailable": ("round {roundId} opened in {openBlock:block}; commitments count from the next block"),
    "CommitPhaseOver": "round {roundId} already has all five commitments",
    "CommitWindowClosed": "round {roundId}'s commit window closed at {deadline:block}",
    "AlreadyCommitted": (
        "miner {miner} already committed to round {roundId}",
        "validator {validator} already committed its scores for task {taskId}",
    ),
    "InvalidNonce": "nonce {nonce} is not a valid proof of work by {miner} for round {roundId}",
    "NotRevealPhase": "round {roundId} is not in its reveal phase",
    "RevealWindowClosed": "round {roundId}'s reveal window closed at {deadline:block}",
    "RevealWindowOpen": "round {roundId}'s reveal window is open until {deadline:block}",
    "NotCommitted": "miner {miner} has no commitment in round {roundId}",
    "AlreadyRevealed": (
        "miner {miner} already revealed in round {roundId}",
        "already revealed on task {taskId} (by {account}): a submission, the test set and a vote are revealed once",
    ),
    "CommitmentMismatch": (
        "the reveal does not match miner {miner}'s commitment in round {roundId}",
        "the reveal does not match {account}'s commitment on task {taskId} (other values or another salt)",
    ),
    "AnswerCount": "{given} answers given, the round has {expected} requests",
    "RevealMismatch": "the answers given for slot {slot} of round {roundId} are not the ones revealed",
    "NotLastReveal": "this is not the last reveal of round {roundId}: close it with closeRound",
    "CommittersMismatch": "the miners named are not round {roundId}'s committers",
    "PredictionOutOfRange": "prediction {prediction} is outside the int96 range",
    "NotExpired": "round {roundId} can be expired only after {expiresAtBlock:block}",
    "ClaimTooLarge": "{requested:eml} asked for, {balance:eml} held by the oracle for this miner",
    "EthTransferFailed": "sending {amount:eth} to {to} failed",
    "DelegateCallOnly": "EthMLSettlement runs only inside EthML",
    "NothingToClaim": "miner {miner} has nothing to claim",
    "SafeCastOverflowedUintDowncast": (
        "{value:eml} does not fit in {bits} bits: a miner's balance held by the oracle stops at 2^96-1 wei"
    ),
    # Tokens, roles, the timelock
    "ERC20InsufficientBalance": "{sender} holds {balance:eml}, {needed:eml} needed",
    "ERC20InsufficientAllowance": "{spender} may spend {allowance:eml} of this account's EML, {needed:eml} needed",
    "ERC2612ExpiredSignature": "the permit expired at {deadline:time}",
    "ERC2612InvalidSigner": "the permit is signed by {signer}, not by the owner {owner}",
    "TransferToOracle": "EML sent to the oracle contract would be lost",
    "NotOracle": "only the oracle may do this, not {caller}",
    "NotDeployer": "only the token's deployer may do this, not {caller}",
    "OracleAlreadyBound": "the token is already bound to the oracle {oracle}",
    "InvalidModel": "invalid model: {reason}",
    "AccessControlUnauthorizedAccount": "account {account} lacks {neededRole:access_role}",
    "NotRegistrar": "account {caller} may not register models",
    "RegistryFull": "the model registry is full ({maxModels:,} models)",
    "TimelockInsufficientDelay": "a delay of {delay:,} s is below the timelock's minimum of {minDelay:,} s",
    "TimelockUnexpectedOperationState": ("timelock operation {operationId} is not {expectedStates:op_states}"),
    "TimelockUnauthorizedCaller": "account {caller} may not execute through the timelock",
    "InvalidParameters": "invalid parameters: {reason}",
}


@dataclass(frozen=True)
class ErrorAbi:
    """One error declaration: its name, its inputs as (name, ABI type), and the contracts declaring it."""

    name: str
    inputs: tuple[tuple[str, str], ...]
    contracts: tuple[str, ...]

    @property
    def signature(self) -> str:
        return f"{self.name}({','.join(t for _, t in self.inputs)})"


@dataclass(frozen=True)
class Revert:
    """Decoded revert data. `name` is "" when there is no data or no shipped ABI knows the selector."""

    name: str
    args: dict[str, Any] = field(default_factory=dict)
    data: bytes = b""
    contracts: tuple[str, ...] = ()

    @property
    def known(self) -> bool:
        return bool(self.name)

    def generic(self) -> str:
        """`ErrorName(arg=value, ...)`, or what there is to say about data no ABI knows."""
        if not self.name:
            return f"unknown error 0x{self.data.hex()}" if self.data else "no reason given"
        shown = ", ".join(f"{k}={_plain(v)}" for k, v in self.args.items())
        return f"{self.name}({shown})"


@dataclass(frozen=True)
class Moment:
    """When the reverting transaction ran (or would run): its block's timestamp and number."""

    block_time: int | None = None
    block_number: int | None = None


# ------------------------------------------------------------------ decoding


def _inputs(item: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    types = get_abi_input_types(item)  # type: ignore[arg-type]
    return tuple((i.get("name") or f"arg{n}", t) for n, (i, t) in enumerate(zip(item["inputs"], types, strict=True)))


@cache
def error_table() -> dict[bytes, tuple[ErrorAbi, ...]]:
    """Every custom error of every shipped contract, by selector. A selector that two contracts declare
    with other argument names (NotRequester: a request's or a task's) lists each declaration."""
    found: dict[bytes, dict[tuple[str, tuple[tuple[str, str], ...]], list[str]]] = {}
    for contract in ARTIFACT_NAMES:
        for item in load_artifact(contract).abi:
            if item.get("type") == "error":
                selector = bytes(function_abi_to_4byte_selector(item))  # type: ignore[arg-type]
                found.setdefault(selector, {}).setdefault((item["name"], _inputs(item)), []).append(contract)
    return {
        selector: tuple(ErrorAbi(name, inputs, tuple(contracts)) for (name, inputs), contracts in decls.items())
        for selector, decls in found.items()
    }


def _as_bytes(data: bytes | bytearray | str | None) -> bytes:
    if data is None:
        return b""
    if isinstance(data, str):
        text = data.removeprefix("0x")
        try:
            return bytes.fromhex(text)
        except ValueError:
            return b""
    return bytes(data)


def _normalise(value: Any, abi_type: str) -> Any:
    if abi_type == "address":
        return to_checksum_address(value)
    if isinstance(value, tuple | list):
        return type(value)(_normalise(v, "") for v in value)
    return value


def _decode_with(decl: ErrorAbi, body: bytes, data: bytes) -> Revert | None:
    try:
        values = abi_decode([t for _, t in decl.inputs], body)
    except Exception:  # noqa: BLE001 - data that does not fit this declaration: try the next one
        return None
    args = {name: _normalise(v, t) for (name, t), v in zip(decl.inputs, values, strict=True)}
    return Revert(decl.name, args, data, decl.contracts)


def decode_revert(data: bytes | bytearray | str | None, abi: Sequence[Mapping[str, Any]] | None = None) -> Revert:
    """The error behind revert `data` (bytes or 0x-hex). With `abi` (the called contract's), its own
    declarations win over other contracts' of the same selector."""
    raw = _as_bytes(data)
    if len(raw) < 4:
        return Revert("", {}, raw)
    selector, body = raw[:4], raw[4:]
    if selector == ERROR_SELECTOR:
        decoded = _decode_with(ErrorAbi("Error", (("message", "string"),), ()), body, raw)
        return decoded or Revert("", {}, raw)
    if selector == PANIC_SELECTOR:
        decoded = _decode_with(ErrorAbi("Panic", (("code", "uint256"),), ()), body, raw)
        return decoded or Revert("", {}, raw)
    candidates = list(error_table().get(selector, ()))
    own = [
        ErrorAbi(item["name"], _inputs(item), ())
        for item in abi or ()
        if item.get("type") == "error" and bytes(function_abi_to_4byte_selector(item)) == selector  # type: ignore[arg-type]
    ]
    for decl in [*own, *candidates]:
        decoded = _decode_with(decl, body, raw)
        if decoded is not None:
            contracts = next((c.contracts for c in candidates if c.name == decl.name and c.inputs == decl.inputs), ())
            return Revert(decoded.name, decoded.args, raw, contracts or decoded.contracts)
    return Revert("", {}, raw)


def revert_data(exc: BaseException) -> bytes | None:
    """The raw revert data carried by an exception from web3 (a node's JSON-RPC error) or from the
    embedded chain (eth-tester's TransactionFailed), looking through causes; None when there is none."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        data = getattr(current, "data", None)
        if isinstance(data, str) and data.startswith("0x") and len(data) > 2:
            return _as_bytes(data)
        if isinstance(data, bytes | bytearray) and data:
            return bytes(data)
        response = getattr(current, "rpc_response", None)
        if isinstance(response, Mapping):
            error = response.get("error")
            inner = error.get("data") if isinstance(error, Mapping) else None
            if isinstance(inner, Mapping):
                inner = inner.get("data")
            if isinstance(inner, str) and inner.startswith("0x") and len(inner) > 2:
                return _as_bytes(inner)
        for arg in current.args:
            if isinstance(arg, bytes | bytearray) and arg:
                return bytes(arg)
            if isinstance(arg, str) and "execution reverted: b" in arg:
                literal = arg.split("execution reverted: ", 1)[1]
                try:
                    parsed = ast.literal_eval(literal)
                except (ValueError, SyntaxError, MemoryError, RecursionError):  # (an RPC's text, whatever it is)
                    continue
                if isinstance(parsed, bytes) and parsed:
                    return parsed
        current = current.__cause__ or current.__context__
    return None


def is_revert(exc: BaseException) -> bool:
    """Whether `exc` says the EVM reverted (as opposed to a connection failure or a bug)."""
    from web3.exceptions import ContractLogicError

    if isinstance(exc, ContractLogicError) or type(exc).__name__ == "TransactionFailed":
        return True
    return revert_data(exc) is not None or "revert" in str(exc).lower()


# ------------------------------------------------------------------ words


def local_time(ts: int, reference: int | None = None) -> str:
    """`12:03:41` local time; with the date when it is not the reference's (or today's) date."""
    when = time.localtime(ts)
    ref = time.localtime(reference if reference is not None else time.time())
    if (when.tm_year, when.tm_yday) == (ref.tm_year, ref.tm_yday):
        return time.strftime("%H:%M:%S", when)
    return time.strftime("%Y-%m-%d %H:%M:%S", when)


def duration(seconds: int) -> str:
    """4 s, 3 min 20 s, 2 h 5 min, 3 d 4 h."""
    s = abs(int(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min" + (f" {s % 60} s" if s % 60 else "")
    if s < 86400:
        return f"{s // 3600} h" + (f" {s % 3600 // 60} min" if s % 3600 // 60 else "")
    return f"{s // 86400} d" + (f" {s % 86400 // 3600} h" if s % 86400 // 3600 else "")


def amount(wei: int, unit: str) -> str:
    """Wei as a decimal amount of an 18-decimal unit: `100 EML`, `0.0025 ETH`."""
    text = format(Decimal(int(wei)) / Decimal(10**18), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return f"{text} {unit}"


@cache
def access_roles() -> dict[bytes, str]:
    """AccessControl role hashes by name: every `*_ROLE` constant of the shipped ABIs, by the
    OpenZeppelin convention keccak256("NAME"); DEFAULT_ADMIN_ROLE is zero."""
    roles = {bytes(32): "DEFAULT_ADMIN_ROLE"}
    for contract in ARTIFACT_NAMES:
        for item in load_artifact(contract).abi:
            name = str(item.get("name", ""))
            if item.get("type") == "function" and name.endswith("_ROLE") and name != "DEFAULT_ADMIN_ROLE":
                roles[keccak(text=name)] = name
    return roles


class _Words(string.Formatter):
    def __init__(self, moment: Moment) -> None:
        self.moment = moment

    def format_field(self, value: Any, format_spec: str) -> str:
        m = self.moment
        if format_spec == "time":
            shown = local_time(int(value), m.block_time)
            if m.block_time is None:
                return shown
            gap = int(value) - m.block_time
            if gap == 0:
                return f"{shown}, the second of this transaction"
            return f"{shown}, {duration(gap)} {'after' if gap > 0 else 'before'} this transaction"
        if format_spec == "block":
            if m.block_number is None:
                return f"block {int(value)}"
            gap = int(value) - m.block_number
            if gap == 0:
                return f"block {int(value)}, this transaction's"
            plural = "s" if abs(gap) != 1 else ""
            return f"block {int(value)}, {abs(gap)} block{plural} {'after' if gap > 0 else 'before'} this transaction's"
        if format_spec == "eml":
            return amount(int(value), "EML")
        if format_spec == "eth":
            return amount(int(value), "ETH")
        if format_spec == "stake_role":
            return STAKE_ROLES.get(int(value), f"role {int(value)}")
        if format_spec == "step":
            return STEPS.get(int(value), f"step {int(value)}")
        if format_spec == "term":
            return TERMS.get(int(value), f"term {int(value)}")
        if format_spec == "task_status":
            return _enum(TASK_STATUSES, int(value), "status")
        if format_spec == "registration":
            return _enum(REGISTRATIONS, int(value), "registration state")
        if format_spec == "score":
            return f"{int(value) / 1_000_000:.6f}"
        if format_spec == "access_role":
            role = bytes(value)
            return access_roles().get(role, "the role 0x" + role.hex())
        if format_spec == "op_states":
            states = [OPERATION_STATES[i] for i in range(4) if int.from_bytes(bytes(value), "big") >> i & 1]
            return " or ".join(states) or "in any state"
        if format_spec == "panic":
            return PANIC_CODES.get(int(value), "an unknown panic")
        return str(super().format_field(_plain(value), format_spec))


def _enum(names: tuple[str, ...], value: int, what: str) -> str:
    return names[value] if 0 <= value < len(names) else f"{what} {value}"


def _plain(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return "0x" + bytes(value).hex()
    if isinstance(value, tuple | list):
        return "(" + ", ".join(str(_plain(v)) for v in value) + ")"
    return value


def explain(error: Revert, moment: Moment | None = None) -> str:
    """The error in words with the values that matter, followed by its name: `the submission window of
    task 1 closed at 12:03:41, 4 s before this transaction (TooLate)`."""
    if not error.known:
        return error.generic()
    templates = MESSAGES.get(error.name, ())
    words = _Words(moment or Moment())
    for template in (templates,) if isinstance(templates, str) else templates:
        try:
            text = words.vformat(template, (), error.args)
        except (KeyError, IndexError, ValueError, TypeError):
            continue  # the template names other arguments (another contract's error of that name)
        return text if error.name in ("Error", "Panic") else f"{text} ({error.name})"
    return error.generic()
