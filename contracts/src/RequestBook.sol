// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {OracleStorage} from "./OracleStorage.sol";
import {PredictionQueue} from "./PredictionQueue.sol";

/// @title RequestBook: requests and the queue.
/// @notice A request escrows its tip (EML, moved by the oracle from the caller without an approval: see
/// EMLToken) and, for a callback, an ETH deposit. With no round open it opens one at once, alone;
/// otherwise it waits in a heap ordered by tip, then age, and each round that closes opens the next with
/// up to K of them (RoundClosing). A request that waited more than `maxQueueBlocks` expires (tip back,
/// `Expired` callback) when it would be opened, or by anyone with `expireQueued`.
abstract contract RequestBook is OracleStorage {
    using PredictionQueue for PredictionQueue.Heap;

    // ---------------------------------------------------------------------- requests

    /// @notice Ask for a prediction of `modelId` (in the registry) on the data point at IPFS `dataCid`.
    /// @param tip EML taken from the caller's balance (the oracle needs no approval), shared by the miners
    /// that agree, refunded if the request closes without a result.
    /// @param callbackGasLimit Gas for `ethmlCallback` on the caller; 0 for no callback (pull the result).
    /// A callback needs an ETH deposit (`msg.value`) of at least `minimumDeposit(callbackGasLimit)`: the
    /// closer is reimbursed the callback's gas from it, and the rest is the requester's (`withdrawDeposit`).
    function requestPrediction(uint256 modelId, string calldata dataCid, uint256 tip, uint256 callbackGasLimit)
        external
        payable
        returns (uint256 requestId)
    {
        (,,, bool active) = registry.shapeOf(modelId);
        if (!active) revert ModelInactive(modelId);
        uint256 len = bytes(dataCid).length;
        if (len == 0) revert EmptyCid();
        if (len > MAX_CID_LENGTH) revert CidTooLong(len, MAX_CID_LENGTH);
        if (tip > type(uint96).max) revert TipTooLarge(tip);
        Counters memory counters = _counters;
        if (counters.requests == type(uint32).max) revert TooManyRequests();
        requestId = counters.requests + 1;
        if (callbackGasLimit > 0) {
            uint256 maxLimit = _params.maxCallbackGasLimit;
            if (callbackGasLimit > maxLimit) revert CallbackGasLimitTooHigh(callbackGasLimit, maxLimit);
            uint256 required = minimumDeposit(callbackGasLimit);
            if (msg.value < required) revert CallbackDepositTooSmall(msg.value, required);
            if (msg.value > type(uint96).max) revert DepositTooLarge(msg.value);
        } else if (msg.value > 0) {
            revert UnexpectedDeposit(msg.value);
        }
        if (tip > 0) token.transferFrom(msg.sender, address(this), tip);

        _requests[requestId] =
            Request(msg.sender, uint32(modelId), uint24(callbackGasLimit), Status.Queued, uint32(block.number));
        _ledgers[requestId] = Ledger(uint96(msg.value), uint96(tip), 0, 0, 0, true);
        emit PredictionRequested(requestId, msg.sender, modelId, dataCid, tip, callbackGasLimit, msg.value);

        if (!counters.roundOpen) {
            _counters = Counters(uint32(requestId), counters.pending, true);
            uint256[] memory ids = new uint256[](1);
            ids[0] = requestId;
            _openRound(ids, tip);
        } else {
            _queue.push(counters.pending, uint96(tip), uint32(requestId));
            _counters = Counters(uint32(requestId), counters.pending + 1, true);
        }
    }

    /// @notice The smallest ETH deposit `requestPrediction` accepts for a callback of `callbackGasLimit`
    /// gas: that gas, CALLBACK_OVERHEAD and REIMBURSEMENT_TRANSFER_GAS at twice the current base fee plus
    /// `maxPriorityFee`. The closer is reimbursed at min(its gas price, base fee + maxPriorityFee), so the
    /// callback is paid for unless the base fee more than doubles before the request closes (then it is
    /// skipped, `CallbackSkipped`, and the result stays readable with `getResult`).
    function minimumDeposit(uint256 callbackGasLimit) public view returns (uint256) {
        uint256 gas = callbackGasLimit + CALLBACK_OVERHEAD + REIMBURSEMENT_TRANSFER_GAS;
        return gas * (2 * block.basefee + _params.maxPriorityFee);
    }

    /// @notice Take a queued request back: its tip comes back now, the deposit with `withdrawDeposit`.
    /// `position` is its place in the queue (from `queuePosition`, off chain; it may move when others
    /// join or leave: then this reverts with StaleQueueHint and the caller asks again). O(log n).
    function cancelRequest(uint256 requestId, uint256 position) external {
        Request storage req = _requests[requestId];
        if (req.requester != msg.sender) revert NotRequester(requestId, msg.sender);
        uint96 tip = _removeQueued(requestId, position);
        req.status = Status.Cancelled;
        req.blockNumber = uint32(block.number);
        if (tip > 0) token.transfer(msg.sender, tip);
        emit RequestCancelled(requestId, tip);
    }

    /// @notice The queue position of a queued request (a view: it scans the queue, for off-chain use).
    function queuePosition(uint256 requestId) external view returns (uint256) {
        uint32 pending = _counters.pending;
        for (uint256 p = 0; p < pending; ++p) {
            if (_queue.idAt(pending, p) == requestId) return p;
        }
        revert NotQueued(requestId);
    }

    /// @notice Send what is left of a closed request's callback deposit to `to`.
    function withdrawDeposit(uint256 requestId, address payable to) external {
        Request memory req = _requests[requestId];
        if (req.requester != msg.sender) revert NotRequester(requestId, msg.sender);
        if (uint8(req.status) < uint8(Status.Finalized)) revert NotClosed(requestId);
        uint256 amount = _ledgers[requestId].deposit;
        if (amount == 0) revert NothingToWithdraw(requestId);
        _ledgers[requestId].deposit = 0;
        _sendEth(to, amount);
    }

    function depositOf(uint256 requestId) external view returns (uint256) {
        return _ledgers[requestId].deposit;
    }

    /// @notice Number of requests ever made (ids run from 1 to requestCount).
    function requestCount() external view returns (uint256) {
        return _counters.requests;
    }

    function pendingCount() external view returns (uint256) {
        return _counters.pending;
    }
}
