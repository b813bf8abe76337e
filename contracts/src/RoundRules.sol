// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {IEthML} from "./IEthML.sol";

/// @title RoundRules: the hard caps on the oracle's parameters, deployed by EthML's constructor.
/// @notice Kept outside EthML's runtime code (it runs only when parameters change). The caps bound what
/// an admin (a timelock in production) can do to miners and requesters, and keep every transaction of a
/// round within a block: at most (requestsPerRound + MAX_STALE_EXPIRIES) callbacks run in one closing
/// transaction, so their gas limits together stay within MAX_CALLBACK_GAS_PER_CLOSE.
contract RoundRules {
    /// @notice The callback gas one closing transaction may have to forward, at most (EthML enforces it
    /// round by round too, for requests queued under earlier parameters).
    uint256 public constant MAX_CALLBACK_GAS_PER_CLOSE = 10_000_000;
    uint256 internal constant MAX_REQUESTS_PER_ROUND = 16;
    uint256 internal constant MAX_STALE_EXPIRIES = 2;

    /// @notice Reverts with IEthML.InvalidParameters when `p` passes a hard cap.
    function checkParameters(IEthML.Parameters calldata p) external pure {
        if (p.minDifficulty == 0) revert IEthML.InvalidParameters("minDifficulty is zero");
        if (p.maxDifficulty < p.minDifficulty) revert IEthML.InvalidParameters("maxDifficulty below minDifficulty");
        if (p.targetSolveTime == 0) revert IEthML.InvalidParameters("targetSolveTime is zero");
        if (p.expiryBlocks == 0 || p.expiryBlocks > 240) revert IEthML.InvalidParameters("expiryBlocks outside 1..240");
        if (p.revealBlocks == 0 || p.revealBlocks > 1_000) {
            revert IEthML.InvalidParameters("revealBlocks outside 1..1000");
        }
        if (p.maxQueueBlocks == 0) revert IEthML.InvalidParameters("maxQueueBlocks is zero");
        if (p.regressionToleranceBps > 10_000) {
            revert IEthML.InvalidParameters("regressionToleranceBps above 10000");
        }
        if (p.maxCallbackGasLimit > type(uint24).max) {
            revert IEthML.InvalidParameters("maxCallbackGasLimit above 2^24-1");
        }
        if (p.baseReward > 100 ether) revert IEthML.InvalidParameters("baseReward above 100 EML");
        // At 5 one slot would veto every request; every majority of five slots is at most 4.
        if (p.quorum < 3 || p.quorum > 4) revert IEthML.InvalidParameters("quorum outside 3..4");
        if (p.requestsPerRound == 0 || p.requestsPerRound > MAX_REQUESTS_PER_ROUND) {
            revert IEthML.InvalidParameters("requestsPerRound outside 1..16");
        }
        if ((uint256(p.requestsPerRound) + MAX_STALE_EXPIRIES) * p.maxCallbackGasLimit > MAX_CALLBACK_GAS_PER_CLOSE) {
            revert IEthML.InvalidParameters("(requestsPerRound + 2) x maxCallbackGasLimit above 10000000");
        }
        if (p.minerBond > 100 ether) revert IEthML.InvalidParameters("minerBond above 100 EML");
        if (p.bondTipBps > 20_000) revert IEthML.InvalidParameters("bondTipBps above 20000");
        if (p.maxPriorityFee > 1_000 gwei) revert IEthML.InvalidParameters("maxPriorityFee above 1000 gwei");
    }
}
