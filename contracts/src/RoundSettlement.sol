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
/// - a fifth of each decided request's tip for each slot that agreed with it: a slot's share is the same
///   however many others agreed, disagreed or stayed silent, and the shares of the slots that did not
///   agree are burned;
/// - its bond back, less bond / K for every decided request (Finalized or InvalidInput) it answered
///   against the consensus, and for every request that closed without a quorum although a quorum of
///   slots revealed, when its answer was outside every largest group of agreeing answers. A slot that
///   did not reveal loses its whole bond.
/// Lost bonds and unearned tip shares are burned, never paid to anyone: the slots that outvote,
/// exclude or censor others earn exactly what they earn when everyone agrees, and a requester gets
/// nothing back from the slots that failed it. A request that closes without a quorum because fewer
/// than a quorum of slots revealed (NoConsensus) refunds its tip: its silent slots already lost their
/// whole bonds. One that closes without a quorum although a quorum revealed burns its tip: otherwise
/// revealing made-up answers would be a free veto that still publishes the honest answers.
abstract contract RoundSettlement is RoundClosing {
    /// @dev What the close accumulates per slot while it decides the round's requests.
    struct Tally {
        uint256 roundId;
        uint256 n;
        uint256 basePerEntry;
        /// @dev Slots that revealed, and EML of tips the close burns (shares nobody agreeing earned).
        uint256 revealedCount;
        uint256 tipsBurned;
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
        /// @dev NoConsensus with a quorum of reveals: the revealed slots outside every largest group.
        uint8 outside;
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
        t.revealedCount = Consensus.popcount(revealed);

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
            if (t.revealedCount < t.quorum) {
                // Too few reveals to decide anything: the silent slots lost their whole bonds.
                if (tip > 0) token.transfer(requester, tip);
                return d;
            }
            // A quorum revealed and did not agree: whoever kept it from forming pays bond / K, and the
            // tip burns (refunded, made-up answers would be a free veto; paid to the largest group, a
            // requester's own slots would take it back).
            t.tipsBurned += tip;
            for (uint256 i = 0; i < MINERS_PER_ROUND; ++i) {
                if (d.outside & (1 << i) != 0) ++t.wrong[i];
            }
            return d;
        }
        d.tipShare = tip / MINERS_PER_ROUND;
        t.tipsBurned += tip - d.tipShare * d.agreeing;
        for (uint256 i = 0; i < MINERS_PER_ROUND; ++i) {
            if (d.mask & (1 << i) != 0) {
                ++t.right[i];
                t.tips[i] += d.tipShare;
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
            if (t.revealedCount >= t.quorum) {
                uint8 kept =
                    Consensus.largestGroups(t.regression, t.decimals, values, revealed, t.toleranceBps, INVALID_INPUT);
                d.outside = revealed & ~kept;
            }
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
    /// of the bonds and the unearned tip shares, mints the base rewards (net of the burn: one token call)
    /// and reports it.
    function _pay(Tally memory t, Round memory round, address[5] calldata miners) private {
        uint256 bond = round.bond;
        uint256 issued = 0;
        uint256 burned = t.tipsBurned;
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
            _credit(miners[i], back[i] + rewards[i]);
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
