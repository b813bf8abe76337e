// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {Consensus} from "./Consensus.sol";
import {ModelRegistry} from "./ModelRegistry.sol";
import {RoundClosing} from "./RoundClosing.sol";

/// @title RoundSettlement: closing a round, request by request, and paying its miners.
/// @notice The closing transaction carries every revealed answer vector (they are in the `Revealed`
/// events, so anyone can close), each checked against the hash its reveal stored. Each request of the
/// round is then decided on its own: consensus over the revealed answers for it, a result only with a
/// quorum of agreeing miners, its own status, result, tip and callback.
/// Paid per commitment slot, into the miner's balance here (`claimRewards` takes it out):
/// - the base reward: baseReward x min(1, time since the last rewarded close / targetSolveTime),
///   split evenly over the round's K requests, for each decided request the miner agreed with;
/// - an equal share of each tip among the miners that agreed (the remainder to the first of them);
/// - its bond back, less bond / K for every decided request (Finalized or InvalidInput) it answered
///   against the consensus. A slot that did not reveal loses its whole bond. Lost bonds are burned, not
///   paid to the others: a majority gains nothing by outvoting or excluding a minority.
/// A request without a quorum (NoConsensus) refunds its tip and costs nobody anything.
abstract contract RoundSettlement is RoundClosing {
    /// @dev What the close accumulates per slot while it decides the round's requests.
    struct Tally {
        uint256 roundId;
        uint256 n;
        uint256 basePerEntry;
        uint256 decided;
        uint256[5] right;
        uint256[5] wrong;
        uint256[5] tips;
        uint256 quorum;
        uint256 toleranceBps;
        uint256 cachedModel;
        bool regression;
        uint8 decimals;
    }

    /// @dev One request's outcome, kept until the events are emitted.
    struct Decision {
        uint256 requestId;
        int256 prediction;
        Status status;
        uint256 agreeing;
        uint8 mask;
        uint256 tipShare;
    }

    /// @dev Settles the open round `round` with the revealers `miners` and the flat answer table
    /// `answers` (slot-major: slot i's answer for request j at i * K + j; slots that did not reveal may
    /// hold anything). `selfSlot` (< 5) is a slot whose opening the caller already checked.
    function _settle(Round memory round, address[5] calldata miners, int256[] calldata answers, uint256 selfSlot)
        internal
    {
        Tally memory t;
        t.roundId = round.id;
        t.n = round.count;
        if (answers.length != MINERS_PER_ROUND * t.n) revert AnswerCount(MINERS_PER_ROUND * t.n, answers.length);
        uint8 revealed = round.revealedMask;
        _checkRevealed(round.id, t.n, revealed, miners, answers, selfSlot);

        t.quorum = _params.quorum;
        t.toleranceBps = _params.regressionToleranceBps;
        uint256 base = _baseReward();
        t.basePerEntry = base / t.n;
        uint256[] memory ids = _roundRequestIds(t.n);
        Decision[] memory decisions = new Decision[](t.n);
        Notices memory notices = _notices(t.n + MAX_STALE_EXPIRIES);
        for (uint256 j = 0; j < t.n; ++j) {
            decisions[j] = _decide(t, ids[j], j, revealed, answers, notices);
        }
        _pay(t, round, miners);
        for (uint256 j = 0; j < t.n; ++j) {
            Decision memory d = decisions[j];
            bool decided = d.status != Status.NoConsensus;
            emit PredictionFinalized(
                d.requestId,
                t.roundId,
                d.prediction,
                d.status,
                d.agreeing,
                d.mask,
                decided ? t.basePerEntry : 0,
                d.tipShare
            );
        }
        _advance(notices);
        _deliver(notices);
    }

    /// @dev Every revealed slot's vector must hash, with its miner, to what its reveal stored.
    function _checkRevealed(
        uint256 roundId,
        uint256 n,
        uint8 revealed,
        address[5] calldata miners,
        int256[] calldata answers,
        uint256 selfSlot
    ) private view {
        for (uint256 i = 0; i < MINERS_PER_ROUND; ++i) {
            if (revealed & (1 << i) == 0 || i == selfSlot) continue;
            if (keccak256(abi.encodePacked(miners[i], answers[i * n:(i + 1) * n])) != _hashes[i]) {
                revert RevealMismatch(roundId, i);
            }
        }
    }

    /// @dev The base reward per miner for a round closing now: time-weighted, so that however many
    /// rounds run, issuance per hour is at most what rounds at the target pace issue.
    function _baseReward() private view returns (uint256) {
        uint256 elapsed = block.timestamp - _state.lastRewardTime;
        uint256 target = _params.targetSolveTime;
        uint256 full = _params.baseReward;
        return elapsed >= target ? full : full * elapsed / target;
    }

    function _decide(
        Tally memory t,
        uint256 requestId,
        uint256 j,
        uint8 revealed,
        int256[] calldata answers,
        Notices memory notices
    ) private returns (Decision memory d) {
        d = _consensus(t, requestId, j, revealed, answers);
        (address requester, uint256 tip) =
            _closeRequest(requestId, t.roundId, d.status, d.prediction, d.agreeing, d.mask, notices);
        if (d.status == Status.NoConsensus) {
            if (tip > 0) token.transfer(requester, tip);
            return d;
        }
        ++t.decided;
        d.tipShare = tip / d.agreeing;
        uint256 dust = tip - d.tipShare * d.agreeing;
        for (uint256 i = 0; i < MINERS_PER_ROUND; ++i) {
            if (d.mask & (1 << i) != 0) {
                ++t.right[i];
                t.tips[i] += d.tipShare + dust;
                dust = 0;
            } else if (revealed & (1 << i) != 0) {
                ++t.wrong[i];
            }
        }
    }

    /// @dev Request `requestId` (the round's j-th) decided from the revealed slots' j-th answers.
    function _consensus(Tally memory t, uint256 requestId, uint256 j, uint8 revealed, int256[] calldata answers)
        private
        view
        returns (Decision memory d)
    {
        int256[5] memory values;
        for (uint256 i = 0; i < MINERS_PER_ROUND; ++i) {
            if (revealed & (1 << i) != 0) values[i] = answers[i * t.n + j];
        }
        _loadShape(t, _requests[requestId].modelId);
        int256 consensus;
        (consensus, d.mask, d.agreeing) =
            Consensus.decide(t.regression, t.decimals, values, revealed, t.toleranceBps, t.quorum, INVALID_INPUT);
        d.requestId = requestId;
        if (d.agreeing < t.quorum) {
            d.status = Status.NoConsensus;
            d.prediction = INVALID_INPUT;
        } else {
            d.status = consensus == INVALID_INPUT ? Status.InvalidInput : Status.Finalized;
            d.prediction = consensus;
        }
    }

    /// @dev The model's kind and decimals, read from the registry once per run of one model.
    function _loadShape(Tally memory t, uint256 modelId) private view {
        if (t.cachedModel == modelId) return;
        (ModelRegistry.ModelKind kind, uint8 decimals,,) = registry.shapeOf(modelId);
        t.cachedModel = modelId;
        t.regression = kind == ModelRegistry.ModelKind.Regression;
        t.decimals = decimals;
    }

    /// @dev Credits each revealed slot's miner its rewards and what is left of its bond, burns the rest
    /// of the bonds, mints the base rewards (net of the burn: one token call) and reports it.
    function _pay(Tally memory t, Round memory round, address[5] calldata miners) private {
        uint256 bond = round.bond;
        uint256 issued = 0;
        uint256 burned = 0;
        address[5] memory paid;
        uint256[5] memory rewards;
        uint256[5] memory back;
        for (uint256 i = 0; i < MINERS_PER_ROUND; ++i) {
            if (round.revealedMask & (1 << i) == 0) {
                burned += bond;
                continue;
            }
            uint256 lost = bond * t.wrong[i] / t.n;
            uint256 base = t.basePerEntry * t.right[i];
            paid[i] = miners[i];
            back[i] = bond - lost;
            rewards[i] = base + t.tips[i];
            issued += base;
            burned += lost;
            _miners[miners[i]].balance += uint96(back[i] + rewards[i]);
        }
        Totals memory totals = _totals;
        if (issued > 0) {
            _state.lastRewardTime = uint40(block.timestamp);
            totals.issued += uint128(issued);
        }
        totals.burned += uint128(burned);
        _totals = totals;
        if (issued > burned) token.mint(address(this), issued - burned);
        else if (burned > issued) token.burn(burned - issued);
        emit RoundClosed(t.roundId, paid, round.revealedMask, rewards, back);
    }
}
