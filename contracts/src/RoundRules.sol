// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {Consensus} from "./Consensus.sol";
import {EthML} from "./EthML.sol";

/// @title RoundRules: the pure rules of a round, deployed by EthML's constructor.
/// @notice The consensus decision over revealed votes and the parameter limits live here, outside
/// EthML's runtime code (which would otherwise pass the 24,576-byte limit); EthML calls them.
contract RoundRules {
    int256 internal constant INVALID_INPUT = type(int256).min;

    /// @notice The result of a round from its revealed values: the consensus needs `quorum` agreeing
    /// revealed votes, invalid input included; otherwise the status is NoConsensus.
    function decide(
        EthML.ModelKind kind,
        uint8 decimals,
        int256[5] calldata values,
        uint8 revealed,
        uint16 toleranceBps,
        uint8 quorum
    ) external pure returns (int256 prediction, EthML.Status status, uint8 mask, uint8 agreeing) {
        int256 consensus;
        if (kind == EthML.ModelKind.Classification) {
            (consensus, mask) = Consensus.mode(values, revealed);
        } else {
            // Regression: "invalid input" needs a quorum of its own; otherwise the numbers decide.
            mask = Consensus.agreeExact(values, revealed, INVALID_INPUT);
            if (Consensus.popcount(mask) >= quorum) {
                consensus = INVALID_INPUT;
            } else {
                bool found;
                (consensus, found) = Consensus.median(values, revealed, INVALID_INPUT);
                if (found) {
                    mask =
                        Consensus.agreeWithin(values, revealed, consensus, 10 ** decimals, toleranceBps, INVALID_INPUT);
                }
            }
        }
        agreeing = uint8(Consensus.popcount(mask));
        if (agreeing < quorum) return (INVALID_INPUT, EthML.Status.NoConsensus, mask, agreeing);
        status = consensus == INVALID_INPUT ? EthML.Status.InvalidInput : EthML.Status.Finalized;
        prediction = consensus;
    }

    /// @notice Reverts with EthML.InvalidParameters when `p` passes a hard cap.
    function checkParameters(EthML.Parameters calldata p) external pure {
        if (p.minDifficulty == 0) revert EthML.InvalidParameters("minDifficulty is zero");
        if (p.maxDifficulty < p.minDifficulty) revert EthML.InvalidParameters("maxDifficulty below minDifficulty");
        if (p.targetSolveTime == 0) revert EthML.InvalidParameters("targetSolveTime is zero");
        if (p.expiryBlocks == 0 || p.expiryBlocks > 240) revert EthML.InvalidParameters("expiryBlocks outside 1..240");
        if (p.revealBlocks == 0 || p.revealBlocks > 1_000) {
            revert EthML.InvalidParameters("revealBlocks outside 1..1000");
        }
        if (p.maxQueueBlocks == 0) revert EthML.InvalidParameters("maxQueueBlocks is zero");
        if (p.regressionToleranceBps > 10_000) revert EthML.InvalidParameters("regressionToleranceBps above 10000");
        if (p.maxCallbackGasLimit > type(uint24).max) {
            revert EthML.InvalidParameters("maxCallbackGasLimit above 2^24-1");
        }
        if (p.baseReward > 100 ether) revert EthML.InvalidParameters("baseReward above 100 EML");
        if (p.quorum < 3 || p.quorum > 5) revert EthML.InvalidParameters("quorum outside 3..5");
    }
}
