"""Requesting a prediction and waiting for it: what `ethml request` does."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from eth_account.signers.local import LocalAccount
from web3 import AsyncWeb3
from web3.logs import DISCARD

from ethml.chain.deploy import (
    EML,
    Deployment,
    ModelKind,
    consumer_contract,
    ethml_contract,
    registry_contract,
    token_contract,
)
from ethml.chain.rounds import MINERS_PER_ROUND, Status
from ethml.chain.tx import send
from ethml.errors import ChainError, EthmlError, InvalidInput
from ethml.ipfs.client import DATA_POINT_LIMIT
from ethml.ml import Manifest, ModelStore
from ethml.ml.datapoint import parse_data_point
from ethml.oracle import round_miners


class RequestError(EthmlError, ValueError):
    pass


@dataclass
class RequestResult:
    request_id: int
    status: Status
    prediction: int
    value: float | int | None
    miners: list[str]
    closed_block: int
    #: Revealed votes that agreed with the result (a result needs the quorum, 3 by default).
    agreeing: int = 0
    #: The round that answered it (0 for a request that expired in the queue).
    round_id: int = 0


def resolve_model(deployment: Deployment, model: str) -> int:
    if model.isdigit():
        return int(model)
    if model in deployment.models:
        return deployment.models[model]
    known = ", ".join(f"{n} ({i})" for n, i in deployment.models.items()) or "none registered"
    raise RequestError(f"unknown model {model!r}; known models: {known}")


def parse_tip(tip: str) -> int:
    """EML as a decimal string (at most 18 decimal places) to wei."""
    try:
        amount = Decimal(tip.strip())
    except ArithmeticError:
        raise RequestError(f"--tip {tip!r} is not a number of EML") from None
    if not amount.is_finite():
        raise RequestError(f"--tip {tip!r} is not a finite number of EML")
    if amount < 0:
        raise RequestError("--tip must not be negative")
    wei = amount * EML
    if wei != wei.to_integral_value():
        raise RequestError(f"--tip {tip} has more than 18 decimal places (1 wei = 0.000000000000000001 EML)")
    if wei >= 2**96:
        raise RequestError(f"--tip {tip} is above the largest tip the contract takes (79,228,162,514 EML)")
    return int(wei)


def check_data_point(raw: bytes, feature_count: int, manifest: Manifest, artifact_sha256: str) -> None:
    """Refuse, before anything is sent, a data point the miners would answer as invalid input: over
    the size limit, not a JSON array of `feature_count` finite numbers, or (for a bundled model) one
    the model itself cannot turn into a prediction."""
    if not raw.strip():
        raise RequestError("the data point is empty")
    if len(raw) > DATA_POINT_LIMIT:
        raise RequestError(
            f"the data point is {len(raw):,} bytes; miners refuse data points over {DATA_POINT_LIMIT:,} bytes"
        )
    try:
        parse_data_point(raw, feature_count)
        entry = manifest.by_sha256(artifact_sha256)
        if entry is not None:
            store = ModelStore(manifest)
            try:
                store.get(entry.name, artifact_sha256).predict_one(raw)
            finally:
                store.close()
    except InvalidInput as exc:
        raise RequestError(
            f"{exc.problem}: the miners would answer this data point as invalid input (--force sends it anyway)"
        ) from None


async def consumer_deposit(w3: AsyncWeb3[Any], deployment: Deployment) -> int:
    """The ETH deposit sent with a request through the example consumer: its callback is paid from it.
    The minimum already covers a doubling of the base fee; twice that leaves room for a long wait in the
    queue. What the closing miner is not reimbursed comes back with the consumer's `reclaim`."""
    callback_gas = await consumer_contract(w3, deployment.consumer).functions.CALLBACK_GAS().call()
    return 2 * int(await ethml_contract(w3, deployment.ethml).functions.minimumDeposit(callback_gas).call())


async def request_prediction(
    w3: AsyncWeb3[Any],
    deployment: Deployment,
    account: LocalAccount,
    model_id: int,
    cid: str,
    tip: int,
    *,
    direct: bool = False,
) -> int:
    """Send the request (through the example consumer, or `direct` from the account); return its id."""
    ethml = ethml_contract(w3, deployment.ethml)
    token = token_contract(w3, deployment.token)
    try:
        _sha, _kind, _decimals, _features, active, _cid = (
            await registry_contract(w3, deployment.registry).functions.getModel(model_id).call()
        )
    except Exception as exc:
        raise RequestError(f"model {model_id} is not registered on this deployment") from exc
    if not active:
        raise RequestError(f"model {model_id} is deactivated")
    balance = await token.functions.balanceOf(account.address).call()
    if balance < tip:
        raise RequestError(
            f"insufficient EML for the tip: {account.address} holds {balance / EML:g}, tip is {tip / EML:g}"
        )
    if direct:
        # The oracle takes the tip from its caller's EML without an approval (see EMLToken).
        receipt = await send(w3, account, ethml.functions.requestPrediction(model_id, cid, tip, 0))
    else:
        consumer = consumer_contract(w3, deployment.consumer)
        if tip:
            await send(w3, account, token.functions.approve(deployment.consumer, tip))
        deposit = await consumer_deposit(w3, deployment)
        receipt = await send(w3, account, consumer.functions.request(model_id, cid, tip), value=deposit)
    events = ethml.events.PredictionRequested().process_receipt(receipt, errors=DISCARD)
    if not events:
        raise ChainError("the request transaction emitted no PredictionRequested event")
    return int(events[0]["args"]["requestId"])


async def wait_for_result(
    w3: AsyncWeb3[Any],
    deployment: Deployment,
    request_id: int,
    *,
    timeout: float = 300.0,  # noqa: ASYNC109 - also bounds the reported progress, not just a cancel
    progress: Callable[[str], None] | None = None,
) -> RequestResult:
    ethml = ethml_contract(w3, deployment.ethml)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last = ""
    while True:
        status = Status(await ethml.functions.requestStatus(request_id).call())
        if status.closed:
            break
        if status == Status.CURRENT:
            current = await ethml.functions.getCurrentRound().call()
            commits, revealed = int(current[4]), bin(int(current[5])).count("1")
            size = len(current[9])
            where = f"round {current[0]}" + (f" with {size - 1} other request{'s' * (size > 2)}" if size > 1 else "")
            if commits < MINERS_PER_ROUND:
                line = f"request {request_id}: being mined in {where}, {commits}/5 commitments"
            else:
                line = f"request {request_id}: revealing in {where}, {revealed}/5 reveals"
        else:
            pending = await ethml.functions.pendingCount().call()
            line = f"request {request_id}: {status.name.lower()}, waiting in the queue ({pending} pending)"
        if progress and line != last:
            progress(line)
            last = line
        if loop.time() > deadline:
            raise ChainError(f"request {request_id} was not closed within {timeout:g} s (last: {line})")
        await asyncio.sleep(0.5)
    prediction, status_code, agreeing, closed = await ethml.functions.getResult(request_id).call()
    _req, model_id, _gas, _st = await ethml.functions.getRequest(request_id).call()
    _sha, kind, decimals, _f, _a, _cid = (
        await registry_contract(w3, deployment.registry).functions.getModel(model_id).call()
    )
    value: float | int | None = None
    if Status(status_code) == Status.FINALIZED:
        value = prediction if int(kind) == ModelKind.CLASSIFICATION else prediction / 10 ** int(decimals)
    round_id, _mask = await ethml.functions.closingRound(request_id).call()
    miners: list[str] = []
    if Status(status_code) in (Status.FINALIZED, Status.INVALID_INPUT, Status.NO_CONSENSUS):
        miners = await round_miners(w3, deployment, int(round_id), int(closed))
    return RequestResult(
        request_id, Status(status_code), int(prediction), value, miners, int(closed), int(agreeing), int(round_id)
    )
