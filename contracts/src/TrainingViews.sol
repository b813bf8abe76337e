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

    /// @notice The task an artifact (by its sha256) was first revealed in, and when (0, 0: never). A
    /// commitment made at or after `revealedAt` in another task is never accepted nor paid: check it
    /// before committing.
    function firstRevealOf(bytes32 artifactSha256) external view returns (uint256 taskId, uint256 revealedAt) {
        FirstReveal memory first = _firstReveal[artifactSha256];
        return (first.taskId, first.revealedAt);
    }

    /// @notice Whether submission `submissionId`'s artifact had been revealed in another task before it
    /// was committed (then it is never accepted nor paid).
    function revealedElsewhere(uint256 taskId, uint256 submissionId) external view returns (bool) {
        return (_revealedElsewhere[taskId] >> submissionId) & 1 != 0;
    }

    /// @notice keccak256(abi.encode(testCid, salt)): a task's test-set commitment.
    function commitmentFor(string calldata testCid, bytes32 salt) public pure returns (bytes32) {
        return keccak256(abi.encode(testCid, salt));
    }

    function submissionCommitment(
        uint256 taskId,
        address trainer,
        string calldata modelCid,
        bytes32 artifactSha256,
        uint256 claim,
        bytes32 salt
    ) public pure returns (bytes32) {
        return keccak256(abi.encode(taskId, trainer, modelCid, artifactSha256, claim, salt));
    }
}
