// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {TrainingBase} from "./TrainingBase.sol";

/// @title TrainingViews: what a client reads of submissions, and the commitments it must make (part of
/// TrainingTasks' own half of the code; the task and panel views are TrainingPanel's, the registration
/// queue's TrainingSettlement's).
abstract contract TrainingViews is TrainingBase {
    function getSubmission(uint256 taskId, uint256 submissionId) external view returns (Submission memory) {
        if (submissionId >= _tasks[taskId].submissions) revert NoCommitment(taskId, address(0));
        return _submissions[taskId][submissionId];
    }

    /// @notice The submission index + 1 of `trainer` on `taskId`, 0 when none.
    function submissionOf(uint256 taskId, address trainer) external view returns (uint256) {
        return _submissionOf[taskId][trainer].index;
    }

    /// @notice keccak256(abi.encode(testCid, salt)): a task's test-set commitment.
    function commitmentFor(string calldata testCid, bytes32 salt) external pure returns (bytes32) {
        return keccak256(abi.encode(testCid, salt));
    }

    function submissionCommitment(
        uint256 taskId,
        address trainer,
        string calldata modelCid,
        bytes32 artifactSha256,
        uint256 claim,
        bytes32 salt
    ) external pure returns (bytes32) {
        return keccak256(abi.encode(taskId, trainer, modelCid, artifactSha256, claim, salt));
    }
}
