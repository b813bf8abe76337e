// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {IEthMLConsumer} from "./IEthML.sol";
import {OracleStorage} from "./OracleStorage.sol";
import {PredictionQueue} from "./PredictionQueue.sol";

/// @title RoundClosing: what every transaction that closes requests does, and the consumers' callbacks.
/// @notice Closing a request records its end and refunds or pays out its tip; the round that closed
/// opens the next with up to K queued requests (highest tip, then oldest), expiring on the way up to
/// MAX_STALE_EXPIRIES requests that waited past `maxQueueBlocks`.
/// @dev Callbacks run at the end of the closing transaction, after every state change, each with
/// exactly its own gas limit. The reimbursement of each (its gas at a bounded price) is taken out of its
/// deposit before any callback runs, so a consumer that withdraws deposits from inside a callback (its
/// own, or another request's of the same round) cannot make the closer pay.
abstract contract RoundClosing is OracleStorage {
    using PredictionQueue for PredictionQueue.Heap;

    /// @dev A consumer to call back, with the reimbursement already reserved from its deposit.
    struct Notice {
        uint256 requestId;
        address consumer;
        uint256 gasLimit;
        int256 prediction;
        Status status;
        uint8 agreeing;
        uint256 reserved;
    }

    struct Notices {
        Notice[] items;
        uint256 count;
        /// @dev The callback gas limits queued so far in this transaction.
        uint256 gas;
    }

    /// @dev Opens the next round with up to K queued requests (highest tip, then oldest), or leaves the
    /// oracle idle. Parameters changed during the last round apply from here.
    /// Requests that waited past maxQueueBlocks are expired on the way, at most MAX_STALE_EXPIRIES of
    /// them, and only while their callbacks fit, with those this transaction already queued, in
    /// MAX_CALLBACK_GAS_PER_CLOSE; a stale request past either limit is served as it is.
    /// The round takes requests while their callback gas limits, plus MAX_STALE_EXPIRIES times
    /// maxCallbackGasLimit (the stale expiries its own close may make), fit in MAX_CALLBACK_GAS_PER_CLOSE;
    /// a first request over that opens alone. Requests queued under a smaller K and a larger
    /// maxCallbackGasLimit therefore open in smaller rounds, and no close ever needs more callback gas.
    function _advance(Notices memory notices) internal {
        _applyPendingParameters();
        Counters memory counters = _counters;
        uint256 k = _params.requestsPerRound;
        uint256 maxAge = _params.maxQueueBlocks;
        uint256 budget = MAX_CALLBACK_GAS_PER_CLOSE - MAX_STALE_EXPIRIES * _params.maxCallbackGasLimit;
        uint256[] memory ids = new uint256[](k);
        uint256 count = 0;
        uint256 totalTip = 0;
        uint256 callbackGas = 0;
        uint256 expired = 0;
        while (count < k && counters.pending > 0) {
            uint32 id = _queue.idAt(counters.pending, 0);
            Request memory req = _requests[id];
            uint256 gasLimit = req.callbackGasLimit;
            if (
                expired < MAX_STALE_EXPIRIES && block.number > uint256(req.blockNumber) + maxAge
                    && notices.gas + gasLimit <= MAX_CALLBACK_GAS_PER_CLOSE
            ) {
                _queue.pop(counters.pending);
                --counters.pending;
                ++expired;
                _expireRequest(id, 0, notices);
                continue;
            }
            if (count > 0 && callbackGas + gasLimit > budget) break;
            (uint96 tip,) = _queue.pop(counters.pending);
            --counters.pending;
            ids[count++] = id;
            totalTip += tip;
            callbackGas += gasLimit;
        }
        counters.roundOpen = count > 0;
        _counters = counters;
        if (count == 0) {
            _round.count = 0;
            return;
        }
        assembly ("memory-safe") {
            mstore(ids, count)
        }
        _openRound(ids, totalTip);
    }

    /// @dev Puts the requests of an expired round but its first back in the queue (they keep their age,
    /// so they can still go stale); the first one, the highest tip, expires.
    function _requeue(uint256[] memory ids) internal {
        Counters memory counters = _counters;
        for (uint256 j = 1; j < ids.length; ++j) {
            uint256 id = ids[j];
            _queue.push(counters.pending, _ledgers[id].value, uint32(id));
            ++counters.pending;
        }
        _counters = counters;
    }

    /// @dev Closes an open request as Expired: its tip goes back, its consumer is told.
    function _expireRequest(uint256 requestId, uint256 roundId, Notices memory notices) internal {
        (address requester, uint256 tip) = _closeRequest(requestId, roundId, Status.Expired, INVALID_INPUT, 0, 0, notices);
        if (tip > 0) token.transfer(requester, tip);
        emit RequestExpired(requestId, roundId, tip);
    }

    /// @dev Records a request's end in its two slots and, when it has a callback, reserves the
    /// reimbursement out of its deposit and queues the call (made by `_deliver`). Returns the requester
    /// and the tip the request held (the caller pays it out or refunds it).
    function _closeRequest(
        uint256 requestId,
        uint256 roundId,
        Status status,
        int256 prediction,
        uint256 agreeing,
        uint8 agreeingMask,
        Notices memory notices
    ) internal returns (address requester, uint256 tip) {
        Request storage stored = _requests[requestId];
        Request memory req = stored;
        stored.status = status;
        stored.blockNumber = uint32(block.number);
        requester = req.requester;
        Ledger memory ledger = _ledgers[requestId];
        tip = ledger.value;
        if (req.callbackGasLimit > 0 && requester.code.length > 0) {
            ledger.deposit = _reserve(requestId, req, ledger.deposit, prediction, status, agreeing, notices);
        }
        ledger.value = status == Status.Finalized ? uint96(int96(prediction)) : 0;
        ledger.roundId = uint32(roundId);
        ledger.agreeing = uint8(agreeing);
        ledger.agreeingMask = agreeingMask;
        _ledgers[requestId] = ledger;
    }

    /// @dev Takes the callback's reimbursement at the bounded price out of `deposit` and queues the call;
    /// when the deposit cannot pay it, no call is made. Returns what is left of the deposit.
    function _reserve(
        uint256 requestId,
        Request memory req,
        uint96 deposit,
        int256 prediction,
        Status status,
        uint256 agreeing,
        Notices memory notices
    ) private returns (uint96) {
        uint256 required =
            (uint256(req.callbackGasLimit) + CALLBACK_OVERHEAD + REIMBURSEMENT_TRANSFER_GAS) * _callbackPrice();
        if (deposit < required) {
            emit CallbackSkipped(requestId, deposit, required);
            return deposit;
        }
        notices.items[notices.count++] =
            Notice(requestId, req.requester, req.callbackGasLimit, prediction, status, uint8(agreeing), required);
        notices.gas += req.callbackGasLimit;
        return uint96(deposit - required);
    }

    function _notices(uint256 capacity) internal pure returns (Notices memory notices) {
        notices.items = new Notice[](capacity);
    }

    /// @dev Calls back every queued consumer with exactly its gas limit (never reverting because of it),
    /// then pays the closer, in one transfer, what each call used plus CALLBACK_OVERHEAD and its share of
    /// REIMBURSEMENT_TRANSFER_GAS at the bounded price, out of what was reserved; the unused part of each
    /// reserve returns to its deposit.
    function _deliver(Notices memory notices) internal {
        if (notices.count == 0) return;
        uint256 total = 0;
        uint256 price = _callbackPrice();
        uint256 shared = REIMBURSEMENT_TRANSFER_GAS / notices.count;
        for (uint256 i = 0; i < notices.count; ++i) {
            total += _callBack(notices.items[i], price, shared);
        }
        if (total > 0) _sendEth(msg.sender, total);
    }

    function _callBack(Notice memory n, uint256 price, uint256 shared) private returns (uint256 pay) {
        uint256 limit = n.gasLimit;
        // EIP-150 forwards at most 63/64 of the remaining gas: make sure the consumer gets all of `limit`.
        uint256 required = limit + limit / 63 + CALLBACK_GAS_RESERVE;
        if (gasleft() < required) revert InsufficientGasForCallback(required, gasleft());
        bytes memory data =
            abi.encodeCall(IEthMLConsumer.ethmlCallback, (n.requestId, n.prediction, uint8(n.status), n.agreeing));
        address target = n.consumer;
        bool ok;
        uint256 before = gasleft();
        assembly ("memory-safe") {
            // No return data is copied, so a consumer cannot grief with a huge revert reason.
            ok := call(limit, target, 0, add(data, 32), mload(data), 0, 0)
        }
        uint256 used = before - gasleft();
        if (!ok) emit CallbackFailed(n.requestId, target);
        pay = (used + CALLBACK_OVERHEAD + shared) * price;
        if (pay > n.reserved) pay = n.reserved;
        if (pay < n.reserved) _ledgers[n.requestId].deposit += uint96(n.reserved - pay);
        emit CallbackReimbursed(n.requestId, msg.sender, pay);
    }
}
