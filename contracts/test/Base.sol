// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {EthML} from "../src/EthML.sol";

/// @dev The few forge cheatcodes these tests use, declared here instead of depending on forge-std.
interface Vm {
    struct Gas {
        uint64 gasLimit;
        uint64 gasTotalUsed;
        uint64 gasMemoryUsed;
        int64 gasRefunded;
        uint64 gasRemaining;
    }

    function lastCallGas() external view returns (Gas memory gas);
    function prank(address sender) external;
    function sign(uint256 privateKey, bytes32 digest) external pure returns (uint8 v, bytes32 r, bytes32 s);
    function addr(uint256 privateKey) external pure returns (address);
    function startPrank(address sender) external;
    function stopPrank() external;
    function roll(uint256 blockNumber) external;
    function deal(address account, uint256 newBalance) external;
    function txGasPrice(uint256 newGasPrice) external;
    function fee(uint256 newBasefee) external;
    function setBlockhash(uint256 blockNumber, bytes32 blockHash) external;
    function expectRevert() external;
    function warp(uint256 timestamp) external;
    function expectRevert(bytes calldata revertData) external;
    function expectRevert(bytes4 revertData) external;
    function expectPartialRevert(bytes4 revertData) external;
    function expectEmit() external;
    function assume(bool condition) external pure;
    function store(address target, bytes32 slot, bytes32 value) external;
    function load(address target, bytes32 slot) external view returns (bytes32 data);
    function readFile(string calldata path) external view returns (string memory);
    function parseJsonBytes32(string calldata json, string calldata key) external pure returns (bytes32);
    function parseJsonAddress(string calldata json, string calldata key) external pure returns (address);
    function parseJsonUint(string calldata json, string calldata key) external pure returns (uint256);
    function parseJsonBool(string calldata json, string calldata key) external pure returns (bool);
    function parseJsonKeys(string calldata json, string calldata key) external pure returns (string[] memory);
    function toString(uint256 value) external pure returns (string memory);
    function assertEq(uint256 left, uint256 right, string calldata err) external pure;
    function assertEq(int256 left, int256 right, string calldata err) external pure;
    function assertEq(address left, address right, string calldata err) external pure;
    function assertEq(bytes32 left, bytes32 right, string calldata err) external pure;
    function assertEq(bool left, bool right, string calldata err) external pure;
    function assertEq(string calldata left, string calldata right, string calldata err) external pure;
    function assertTrue(bool condition, string calldata err) external pure;
    function snapshotState() external returns (uint256 snapshotId);
    function revertToState(uint256 snapshotId) external returns (bool success);
    function getBlockNumber() external view returns (uint256 height);
    function getBlockTimestamp() external view returns (uint256 timestamp);
}

Vm constant vm = Vm(address(uint160(uint256(keccak256("hevm cheat code")))));

/// @dev Deploys a system like the Python deployer does and mines rounds.
abstract contract EthMLFixture {
    EthML internal ethml;
    address internal constant ADMIN = address(0xA11CE);
    address internal constant USER = address(0xB0B);
    address[7] internal miners;
    uint256 internal constant FUNDS = 1_000 ether;
    uint256 internal constant MINER_FUNDS = 1 ether;
    uint96 internal constant BASE_REWARD = 1 ether;
    uint256 internal constant INITIAL_SUPPLY = FUNDS + 7 * MINER_FUNDS;
    uint256 internal classifier;
    uint256 internal regressor;
    string internal constant CID = "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG";

    function _params(uint64 minDifficulty, uint64 maxDifficulty) internal pure returns (EthML.Parameters memory) {
        return EthML.Parameters({
            baseReward: BASE_REWARD,
            targetSolveTime: 15,
            minDifficulty: minDifficulty,
            maxDifficulty: maxDifficulty,
            expiryBlocks: 50,
            revealBlocks: 10,
            maxQueueBlocks: 10_000,
            maxCallbackGasLimit: 1_000_000,
            regressionToleranceBps: 100,
            quorum: 3
        });
    }

    function _deploy(uint64 minDifficulty, uint64 maxDifficulty) internal {
        _deployWith(_params(minDifficulty, maxDifficulty));
    }

    function _deployWith(EthML.Parameters memory params) internal {
        address[] memory holders = new address[](8);
        uint256[] memory amounts = new uint256[](8);
        holders[0] = USER;
        amounts[0] = FUNDS;
        for (uint256 i = 0; i < 7; ++i) {
            miners[i] = address(uint160(0x1000 + i));
            holders[i + 1] = miners[i];
            amounts[i + 1] = MINER_FUNDS;
        }
        ethml = new EthML(ADMIN, holders, amounts, params);
        vm.startPrank(ADMIN);
        classifier =
            ethml.registerModel("QmClassifierModelCid", bytes32(uint256(1)), EthML.ModelKind.Classification, 0, 30);
        regressor = ethml.registerModel("QmRegressorModelCid", bytes32(uint256(2)), EthML.ModelKind.Regression, 2, 10);
        vm.stopPrank();
        // Rounds start with time since the last reward, so the first one pays the full base reward.
        vm.warp(block.timestamp + 1_000);
    }

    function _request(uint256 modelId, uint256 tip) internal virtual returns (uint256) {
        vm.prank(USER);
        return ethml.requestPrediction(modelId, CID, tip, 0);
    }

    function _challenge() internal view returns (bytes32 challenge, uint256 difficulty) {
        EthML.CurrentRound memory r = ethml.getCurrentRound();
        return (r.challenge, r.difficulty);
    }

    /// @dev The first nonce from 0 that satisfies the current difficulty for `miner`.
    function _mine(address miner) internal view returns (uint256 nonce) {
        (bytes32 challenge, uint256 difficulty) = _challenge();
        uint256 target = type(uint256).max / difficulty;
        while (uint256(keccak256(abi.encodePacked(challenge, miner, nonce))) >= target) {
            ++nonce;
        }
    }

    function _salt(address miner, uint256 requestId) internal pure returns (bytes32) {
        return keccak256(abi.encode("salt", miner, requestId));
    }

    function _commitment(address miner, uint256 requestId, int256 prediction) internal pure returns (bytes32) {
        return keccak256(abi.encode(requestId, miner, prediction, _salt(miner, requestId)));
    }

    /// @dev Moves past the opening block when the current round opened in this one.
    function _afterOpening() internal {
        EthML.CurrentRound memory r = ethml.getCurrentRound();
        if (r.requestId != 0 && block.number <= r.openBlock) vm.roll(block.number + 1);
    }

    function _commitAs(address miner, uint256 requestId, int256 prediction) internal {
        _afterOpening();
        uint256 nonce = _mine(miner);
        vm.prank(miner);
        ethml.commit(requestId, nonce, _commitment(miner, requestId, prediction));
    }

    function _revealAs(address miner, uint256 requestId, int256 prediction) internal {
        vm.prank(miner);
        ethml.reveal(requestId, prediction, _salt(miner, requestId));
    }

    function _commitAll(uint256 requestId, int256[5] memory predictions) internal {
        for (uint256 i = 0; i < 5; ++i) {
            _commitAs(miners[i], requestId, predictions[i]);
        }
    }

    /// @dev A whole round: miners 0..4 commit, then all reveal (the fifth reveal closes it).
    function _round(uint256 requestId, int256[5] memory predictions) internal {
        _commitAll(requestId, predictions);
        for (uint256 i = 0; i < 5; ++i) {
            _revealAs(miners[i], requestId, predictions[i]);
        }
    }

    function _currentId() internal view returns (uint256) {
        return ethml.getCurrentRound().requestId;
    }
}
