"""Reading the oracle's state: what `ethml status`, `ethml requests`, `ethml balance` and
`ethml accounts` print, usable from Python too."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from eth_account.signers.local import LocalAccount
from web3 import AsyncWeb3

from ethml.chain.deploy import EML, Deployment, ModelKind, ethml_contract, registry_contract, token_contract
from ethml.chain.rounds import MINERS_PER_ROUND, Status
from ethml.chain.tx import send
from ethml.errors import ChainError


@dataclass
class OracleStatus:
    chain_id: int
    block: int
    contract: str
    difficulty: int
    #: The open round (None when idle) and its requests, in answer order.
    current_round: int | None
    current_requests: list[int]
    phase: str
    commits: int
    reveals: int
    commit_deadline: int | None
    reveal_deadline: int | None
    bond_eml: float
    queued: int
    requests: int
    models: int
    requests_per_round: int
    rewards_issued_eml: float
    #: Forfeited bonds and the tip shares no agreeing slot earned.
    burned_eml: float

    @property
    def current_request(self) -> int | None:
        """The open round's first request (the only one in a round of one)."""
        return self.current_requests[0] if self.current_requests else None

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "current_request": self.current_request}


@dataclass
class RequestInfo:
    request_id: int
    status: str
    requester: str
    model_id: int
    data_cid: str
    tip_eml: float
    callback_gas: int
    block: int
    prediction: float | int | None = None
    agreeing: int = 0
    #: The round that closed it, and that round's revealers by slot.
    round_id: int = 0
    miners: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


async def oracle_status(w3: AsyncWeb3[Any], deployment: Deployment) -> OracleStatus:
    ethml = ethml_contract(w3, deployment.ethml)
    current = await ethml.functions.getCurrentRound().call()
    round_id, _challenge, difficulty, _open, commits, revealed, commit_deadline, reveal_deadline, bond, ids = current
    if round_id == 0:
        phase = "idle"
    elif commits < MINERS_PER_ROUND:
        phase = "committing"
    else:
        phase = "revealing"
    params = await ethml.functions.parameters().call()
    return OracleStatus(
        chain_id=int(await w3.eth.chain_id),
        block=int(await w3.eth.block_number),
        contract=deployment.ethml,
        difficulty=int(difficulty),
        current_round=int(round_id) or None,
        current_requests=[int(i) for i in ids],
        phase=phase,
        commits=int(commits),
        reveals=bin(int(revealed)).count("1"),
        commit_deadline=int(commit_deadline) or None,
        reveal_deadline=int(reveal_deadline) or None,
        bond_eml=int(bond) / EML,
        queued=int(await ethml.functions.pendingCount().call()),
        requests=int(await ethml.functions.requestCount().call()),
        models=int(await registry_contract(w3, deployment.registry).functions.modelCount().call()),
        requests_per_round=int(params[10]),
        rewards_issued_eml=int(await ethml.functions.totalRewardsIssued().call()) / EML,
        burned_eml=int(await ethml.functions.totalBurned().call()) / EML,
    )


async def request_info(w3: AsyncWeb3[Any], deployment: Deployment, request_id: int) -> RequestInfo:
    """One request: its status, its data and tip (from its PredictionRequested log) and its result."""
    ethml = ethml_contract(w3, deployment.ethml)
    count = int(await ethml.functions.requestCount().call())
    if not 1 <= request_id <= count:
        raise ChainError(f"no request {request_id} on this deployment (ids run from 1 to {count})")
    requester, model_id, callback_gas, status = await ethml.functions.getRequest(request_id).call()
    logs = await ethml.events.PredictionRequested().get_logs(
        argument_filters={"requestId": request_id}, from_block=deployment.block
    )
    event = logs[0] if logs else None
    info = RequestInfo(
        request_id=request_id,
        status=Status(int(status)).label,
        requester=str(requester),
        model_id=int(model_id),
        data_cid=str(event["args"]["dataCid"]) if event else "",
        tip_eml=int(event["args"]["tip"]) / EML if event else 0.0,
        callback_gas=int(callback_gas),
        block=int(event["blockNumber"]) if event else 0,
    )
    if Status(int(status)).closed:
        prediction, _status, agreeing, closed = await ethml.functions.getResult(request_id).call()
        info.agreeing = int(agreeing)
        info.block = int(closed)
        if Status(int(status)) == Status.FINALIZED:
            _sha, kind, decimals, _f, _a, _cid = (
                await registry_contract(w3, deployment.registry).functions.getModel(int(model_id)).call()
            )
            scale = 1 if int(kind) == ModelKind.CLASSIFICATION else 10 ** int(decimals)
            info.prediction = int(prediction) if scale == 1 else int(prediction) / scale
        info.round_id, _mask = (int(v) for v in await ethml.functions.closingRound(request_id).call())
        info.miners = await round_miners(w3, deployment, info.round_id, int(closed))
    return info


async def round_miners(w3: AsyncWeb3[Any], deployment: Deployment, round_id: int, block: int) -> list[str]:
    """The revealers of a closed round by slot (zero addresses dropped), from its RoundClosed event."""
    if round_id == 0:
        return []
    logs = (
        await ethml_contract(w3, deployment.ethml)
        .events.RoundClosed()
        .get_logs(argument_filters={"roundId": round_id}, from_block=block, to_block=block)
    )
    if not logs:
        return []
    return [str(m) for m in logs[0]["args"]["miners"] if int(m, 16) != 0]


async def list_requests(w3: AsyncWeb3[Any], deployment: Deployment, *, last: int = 20) -> list[RequestInfo]:
    """The most recent `last` requests, newest first."""
    count = int(await ethml_contract(w3, deployment.ethml).functions.requestCount().call())
    return [await request_info(w3, deployment, rid) for rid in range(count, max(count - last, 0), -1)]


async def balances(w3: AsyncWeb3[Any], deployment: Deployment, address: str) -> dict[str, Any]:
    ethml = ethml_contract(w3, deployment.ethml)
    checksum = w3.to_checksum_address(address)
    held = int(await ethml.functions.minerBalance(checksum).call())
    return {
        "address": checksum,
        "eth": int(await w3.eth.get_balance(checksum)) / 10**18,
        "eml": int(await token_contract(w3, deployment.token).functions.balanceOf(checksum).call()) / EML,
        "owed_rewards_eml": held / EML,
    }


async def expire_request(w3: AsyncWeb3[Any], deployment: Deployment, signer: LocalAccount, request_id: int) -> str:
    """Expire `request_id`: its round when that round missed its commit window (`expireRound`, with the
    committers from its Committed events: the round's first request, the highest tip, expires and the
    others go back to the queue), or the request alone when it waited in the queue past maxQueueBlocks
    (`expireQueued`, with its queue position). Returns what happened, in words."""
    ethml = ethml_contract(w3, deployment.ethml)
    count = int(await ethml.functions.requestCount().call())
    if not 1 <= request_id <= count:
        raise ChainError(f"no request {request_id} on this deployment (ids run from 1 to {count}): nothing to expire")
    status = Status(int(await ethml.functions.requestStatus(request_id).call()))
    block = int(await w3.eth.block_number)
    if status == Status.CURRENT:
        current = await ethml.functions.getCurrentRound().call()
        round_id, commits, commit_deadline = int(current[0]), int(current[4]), int(current[6])
        if commits >= MINERS_PER_ROUND:
            raise ChainError(f"request {request_id} is in round {round_id}, which has its five commitments")
        if block + 1 <= commit_deadline:
            raise ChainError(
                f"round {round_id} (request {request_id}) takes commitments until block {commit_deadline}; "
                f"this is block {block}"
            )
        logs = await ethml.events.Committed().get_logs(
            argument_filters={"roundId": round_id}, from_block=int(current[3])
        )
        committers = [str(e["args"]["miner"]) for e in logs]
        first = int(current[9][0])
        receipt = await send(w3, signer, ethml.functions.expireRound(round_id, committers))
        others = len(current[9]) - 1
        back = f"; the other {others} back in the queue" if others else ""
        return f"round {round_id} expired in block {receipt['blockNumber']}: request {first} refunded{back}"
    if status == Status.QUEUED:
        params = await ethml.functions.parameters().call()
        _requester, _model, _gas, _status = await ethml.functions.getRequest(request_id).call()
        logs = await ethml.events.PredictionRequested().get_logs(
            argument_filters={"requestId": request_id}, from_block=deployment.block
        )
        requested = int(logs[0]["blockNumber"]) if logs else 0
        stale_after = requested + int(params[6])
        if block + 1 <= stale_after:
            raise ChainError(
                f"request {request_id} is queued; it can be expired after block {stale_after} (this is block {block})"
            )
        position = int(await ethml.functions.queuePosition(request_id).call())
        receipt = await send(w3, signer, ethml.functions.expireQueued(request_id, position))
        return f"request {request_id} expired in the queue in block {receipt['blockNumber']}"
    raise ChainError(f"request {request_id} is {status.label}: nothing to expire")
