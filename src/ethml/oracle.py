"""Reading the oracle's state: what `ethml status`, `ethml requests`, `ethml balance` and
`ethml accounts` print, usable from Python too."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from web3 import AsyncWeb3

from ethml.chain.deploy import EML, Deployment, ModelKind, Status, ethml_contract
from ethml.errors import ChainError


@dataclass
class OracleStatus:
    chain_id: int
    block: int
    contract: str
    difficulty: int
    current_request: int | None
    phase: str
    commits: int
    reveals: int
    commit_deadline: int | None
    reveal_deadline: int | None
    queued: int
    requests: int
    models: int
    rewards_issued_eml: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


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
    miners: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


async def oracle_status(w3: AsyncWeb3[Any], deployment: Deployment) -> OracleStatus:
    ethml = ethml_contract(w3, deployment.ethml)
    current = await ethml.functions.getCurrentRound().call()
    request_id, _challenge, difficulty, _model, _open, commits, revealed, commit_deadline, reveal_deadline = current
    if request_id == 0:
        phase = "idle"
    elif commits < 5:
        phase = "committing"
    else:
        phase = "revealing"
    return OracleStatus(
        chain_id=int(await w3.eth.chain_id),
        block=int(await w3.eth.block_number),
        contract=deployment.ethml,
        difficulty=int(difficulty),
        current_request=int(request_id) or None,
        phase=phase,
        commits=int(commits),
        reveals=bin(int(revealed)).count("1"),
        commit_deadline=int(commit_deadline) or None,
        reveal_deadline=int(reveal_deadline) or None,
        queued=int(await ethml.functions.pendingCount().call()),
        requests=int(await ethml.functions.requestCount().call()),
        models=int(await ethml.functions.modelCount().call()),
        rewards_issued_eml=int(await ethml.functions.totalRewardsIssued().call()) / EML,
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
            _cid, _sha, kind, decimals, _f, _a = await ethml.functions.getModel(int(model_id)).call()
            scale = 1 if int(kind) == ModelKind.CLASSIFICATION else 10 ** int(decimals)
            info.prediction = int(prediction) if scale == 1 else int(prediction) / scale
        finalized = await ethml.events.PredictionFinalized().get_logs(
            argument_filters={"requestId": request_id}, from_block=int(closed), to_block=int(closed)
        )
        if finalized:
            info.miners = [str(m) for m in finalized[0]["args"]["miners"]]
    return info


async def list_requests(w3: AsyncWeb3[Any], deployment: Deployment, *, last: int = 20) -> list[RequestInfo]:
    """The most recent `last` requests, newest first."""
    count = int(await ethml_contract(w3, deployment.ethml).functions.requestCount().call())
    return [await request_info(w3, deployment, rid) for rid in range(count, max(count - last, 0), -1)]


async def balances(w3: AsyncWeb3[Any], deployment: Deployment, address: str) -> dict[str, Any]:
    ethml = ethml_contract(w3, deployment.ethml)
    checksum = w3.to_checksum_address(address)
    base, tips = await ethml.functions.owedRewards(checksum).call()
    return {
        "address": checksum,
        "eth": int(await w3.eth.get_balance(checksum)) / 10**18,
        "eml": int(await ethml.functions.balanceOf(checksum).call()) / EML,
        "owed_rewards_eml": (int(base) + int(tips)) / EML,
    }
