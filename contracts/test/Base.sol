// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {EthML} from "../src/EthML.sol";

/// @dev The few forge cheatcodes these tests use, declared here instead of depending on forge-std.
interface Vm {
    function prank(address sender) external;
    function startPrank(address sender) external;
    function stopPrank() external;
    function roll(uint256 blockNumber) external;
    function warp(uint256 timestamp) external;
    function expectRevert(bytes calldata revertData) external;
    function expectRevert(bytes4 revertData) external;
    function expectPartialRevert(bytes4 revertData) external;
    function expectEmit() external;
    function assume(bool condition) external pure;
    function store(address target, bytes32 slot, bytes32 value) external;
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

    function _params(uint128 minDifficulty, uint128 maxDifficulty) internal pure returns (EthML.Parameters memory) {
        return EthML.Parameters({
            baseReward: BASE_REWARD,
            targetSolveTime: 15,
            minDifficulty: minDifficulty,
            maxDifficulty: maxDifficulty,
            expiryBlocks: 50,
            maxCallbackGasLimit: 1_000_000,
            regressionToleranceBps: 100
        });
    }

    function _deploy(uint128 minDifficulty, uint128 maxDifficulty) internal {
        address[] memory holders = new address[](8);
        uint256[] memory amounts = new uint256[](8);
        holders[0] = USER;
        amounts[0] = FUNDS;
        for (uint256 i = 0; i < 7; ++i) {
            miners[i] = address(uint160(0x1000 + i));
            holders[i + 1] = miners[i];
            amounts[i + 1] = MINER_FUNDS;
        }
        ethml = new EthML(ADMIN, holders, amounts, _params(minDifficulty, maxDifficulty));
        vm.startPrank(ADMIN);
        classifier =
            ethml.registerModel("QmClassifierModelCid", bytes32(uint256(1)), EthML.ModelKind.Classification, 0, 30);
        regressor = ethml.registerModel("QmRegressorModelCid", bytes32(uint256(2)), EthML.ModelKind.Regression, 2, 10);
        vm.stopPrank();
        vm.prank(USER);
        ethml.approve(address(ethml), type(uint256).max);
    }

    function _request(uint256 modelId, uint256 tip) internal returns (uint256) {
        vm.prank(USER);
        return ethml.requestPrediction(modelId, CID, tip, 0);
    }

    /// @dev The first nonce from 0 that satisfies the current difficulty for `miner`.
    function _mine(address miner) internal view returns (uint256 nonce) {
        (bytes32 challenge,, uint256 difficulty,,,,) = ethml.getCurrentVariables();
        uint256 target = type(uint256).max / difficulty;
        while (uint256(keccak256(abi.encodePacked(challenge, miner, nonce))) >= target) {
            ++nonce;
        }
    }

    function _submit(uint256 minerIndex, uint256 requestId, int256 prediction) internal {
        address miner = miners[minerIndex];
        uint256 nonce = _mine(miner);
        vm.prank(miner);
        ethml.submitMiningSolution(requestId, prediction, nonce);
    }

    function _round(uint256 requestId, int256[5] memory predictions) internal {
        for (uint256 i = 0; i < 5; ++i) {
            _submit(i, requestId, predictions[i]);
        }
    }
}
