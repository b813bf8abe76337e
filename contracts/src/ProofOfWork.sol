// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

/// @title ProofOfWork: the nonce check shared bit for bit with the C core and the Python reference.
/// @notice message = abi.encodePacked(bytes32 challenge, address miner, uint256 nonce) (84 bytes);
/// valid iff uint256(keccak256(message)) < type(uint256).max / difficulty. Expected work: `difficulty` hashes.
library ProofOfWork {
    function hash(bytes32 challenge, address miner, uint256 nonce) internal pure returns (bytes32) {
        return keccak256(abi.encodePacked(challenge, miner, nonce));
    }

    function target(uint256 difficulty) internal pure returns (uint256) {
        return type(uint256).max / difficulty;
    }

    function isValid(bytes32 challenge, address miner, uint256 nonce, uint256 difficulty) internal pure returns (bool) {
        return uint256(hash(challenge, miner, nonce)) < target(difficulty);
    }
}
