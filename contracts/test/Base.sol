// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {EMLToken} from "../src/EMLToken.sol";
import {EthML} from "../src/EthML.sol";
import {IEthML} from "../src/IEthML.sol";
import {ModelRegistry} from "../src/ModelRegistry.sol";

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
    function prank(address sender, address origin) external;
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

/// @dev Deploys a system like the Python deployer does (token, registry, oracle, the token bound to the
/// oracle) and mines rounds: it remembers each round's commitment slots and revealed vectors, so a test
/// can close a round the way a node does, with the vectors from the Revealed events.
abstract contract EthMLFixture {
    EMLToken internal token;
    ModelRegistry internal registry;
    EthML internal ethml;
    address internal constant ADMIN = address(0xA11CE);
    address internal constant USER = address(0xB0B);
    address[7] internal miners;
    uint256 internal constant FUNDS = 1_000 ether;
    uint256 internal constant MINER_FUNDS = 100 ether;
    uint96 internal constant BASE_REWARD = 1 ether;
    uint96 internal constant BOND = 2 ether;
    uint256 internal constant INITIAL_SUPPLY = FUNDS + 7 * MINER_FUNDS;
    uint256 internal classifier;
    uint256 internal regressor;
    string internal constant CID = "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG";

    /// @dev Per round (of this deployment: see `_key`): the miner of each commitment slot and the vector
    /// each slot revealed.
    mapping(bytes32 => address[5]) internal slotMiners;
    mapping(bytes32 => mapping(uint256 => int256[])) internal slotAnswers;
    mapping(bytes32 => mapping(address => uint256)) internal slotOf;

    /// @dev Tests redeploy; round ids start again at 1 in each deployment.
    function _key(uint256 roundId) internal view returns (bytes32) {
        return keccak256(abi.encode(address(ethml), roundId));
    }

    function _params(uint64 minDifficulty, uint64 maxDifficulty) internal pure returns (EthML.Parameters memory) {
        return IEthML.Parameters({
            baseReward: BASE_REWARD,
            targetSolveTime: 15,
            minDifficulty: minDifficulty,
            maxDifficulty: maxDifficulty,
            expiryBlocks: 50,
            revealBlocks: 10,
            maxQueueBlocks: 10_000,
            maxCallbackGasLimit: 1_000_000,
            regressionToleranceBps: 100,
            quorum: 3,
            requestsPerRound: 1,
            minerBond: BOND,
            bondTipBps: 0,
            maxPriorityFee: 2 gwei
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
            // Miners send transactions: their accounts exist (an ETH transfer to them creates nothing).
            vm.deal(miners[i], 1 ether);
        }
        token = new EMLToken(holders, amounts);
        registry = new ModelRegistry(ADMIN);
        ethml = new EthML(token, registry, ADMIN, params);
        token.bindOracle(address(ethml));
        vm.startPrank(ADMIN);
        classifier =
            registry.registerModel("QmClassifierModelCid", bytes32(uint256(1)), ModelRegistry.ModelKind.Classification, 0, 30);
        regressor =
            registry.registerModel("QmRegressorModelCid", bytes32(uint256(2)), ModelRegistry.ModelKind.Regression, 2, 10);
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

    function _currentRound() internal view returns (uint256) {
        return ethml.getCurrentRound().roundId;
    }

    /// @dev The open round's request ids.
    function _roundRequests() internal view returns (uint256[] memory) {
        return ethml.getCurrentRound().requestIds;
    }

    /// @dev The first request of the open round (the only one when K = 1).
    function _currentId() internal view returns (uint256) {
        uint256[] memory ids = ethml.getCurrentRound().requestIds;
        return ids.length == 0 ? 0 : ids[0];
    }

    /// @dev The first nonce from 0 that satisfies the current difficulty for `miner`.
    function _mine(address miner) internal view returns (uint256 nonce) {
        (bytes32 challenge, uint256 difficulty) = _challenge();
        uint256 target = type(uint256).max / difficulty;
        while (uint256(keccak256(abi.encodePacked(challenge, miner, nonce))) >= target) {
            ++nonce;
        }
    }

    function _salt(address miner, uint256 roundId) internal pure returns (bytes32) {
        return keccak256(abi.encode("salt", miner, roundId));
    }

    function _commitment(address miner, uint256 roundId, int256[] memory answers) internal pure returns (bytes32) {
        return keccak256(abi.encode(roundId, miner, answers, _salt(miner, roundId)));
    }

    function _one(int256 value) internal pure returns (int256[] memory v) {
        v = new int256[](1);
        v[0] = value;
    }

    /// @dev `value` repeated `n` times.
    function _same(int256 value, uint256 n) internal pure returns (int256[] memory v) {
        v = new int256[](n);
        for (uint256 j = 0; j < n; ++j) {
            v[j] = value;
        }
    }

    /// @dev Moves past the opening block when the current round opened in this one.
    function _afterOpening() internal {
        EthML.CurrentRound memory r = ethml.getCurrentRound();
        if (r.roundId != 0 && block.number <= r.openBlock) vm.roll(block.number + 1);
    }

    function _commitAs(address miner, uint256 roundId, int256[] memory answers) internal {
        _afterOpening();
        uint256 nonce = _mine(miner);
        uint256 slot = ethml.getCurrentRound().commits;
        vm.prank(miner);
        ethml.commit(roundId, nonce, _commitment(miner, roundId, answers));
        slotMiners[_key(roundId)][slot] = miner;
        slotOf[_key(roundId)][miner] = slot;
    }

    function _revealAs(address miner, uint256 roundId, int256[] memory answers) internal {
        vm.prank(miner);
        ethml.reveal(roundId, answers, _salt(miner, roundId));
        slotAnswers[_key(roundId)][slotOf[_key(roundId)][miner]] = answers;
    }

    /// @dev What a closer sends: the revealers by slot and the slot-major answer table, from the reveals
    /// seen so far (plus `extra`'s vector at its slot, for revealAndClose).
    function _table(uint256 roundId, address extra, int256[] memory extraAnswers)
        internal
        view
        returns (address[5] memory who, int256[] memory answers)
    {
        uint256 n = ethml.getCurrentRound().requestIds.length;
        answers = new int256[](5 * n);
        for (uint256 i = 0; i < 5; ++i) {
            int256[] memory v = slotAnswers[_key(roundId)][i];
            if (extra != address(0) && slotMiners[_key(roundId)][i] == extra) v = extraAnswers;
            if (v.length == 0) continue;
            who[i] = slotMiners[_key(roundId)][i];
            for (uint256 j = 0; j < n; ++j) {
                answers[i * n + j] = v[j];
            }
        }
    }

    /// @dev The last reveal, closing the round in the same transaction (what a node does).
    function _revealAndCloseAs(address miner, uint256 roundId, int256[] memory answers) internal {
        (address[5] memory who, int256[] memory table) = _table(roundId, miner, answers);
        vm.prank(miner);
        ethml.revealAndClose(roundId, _salt(miner, roundId), who, table);
        slotAnswers[_key(roundId)][slotOf[_key(roundId)][miner]] = answers;
    }

    /// @dev closeRound by `closer` with the reveals so far.
    function _closeAs(address closer, uint256 roundId) internal {
        (address[5] memory who, int256[] memory table) = _table(roundId, address(0), new int256[](0));
        vm.prank(closer);
        ethml.closeRound(roundId, who, table);
    }

    function _commitAll(uint256 roundId, int256[][5] memory answers) internal {
        for (uint256 i = 0; i < 5; ++i) {
            _commitAs(miners[i], roundId, answers[i]);
        }
    }

    /// @dev A whole round: miners 0..4 commit their vectors, then reveal; the fifth reveal closes it.
    function _roundVectors(uint256 roundId, int256[][5] memory answers) internal {
        _commitAll(roundId, answers);
        for (uint256 i = 0; i < 4; ++i) {
            _revealAs(miners[i], roundId, answers[i]);
        }
        _revealAndCloseAs(miners[4], roundId, answers[4]);
    }

    /// @dev A whole one-request round (K = 1): miner i answers `predictions[i]`.
    function _round(uint256 roundId, int256[5] memory predictions) internal {
        int256[][5] memory answers;
        for (uint256 i = 0; i < 5; ++i) {
            answers[i] = _one(predictions[i]);
        }
        _roundVectors(roundId, answers);
    }

    /// @dev Every miner answers every request of the open round with `value`; returns the round id.
    function _roundAll(int256 value) internal returns (uint256 roundId) {
        roundId = _currentRound();
        uint256 n = _roundRequests().length;
        int256[][5] memory answers;
        for (uint256 i = 0; i < 5; ++i) {
            answers[i] = _same(value, n);
        }
        _roundVectors(roundId, answers);
    }

    /// @dev The committers of the open round, for expireRound.
    function _committers(uint256 roundId) internal view returns (address[] memory who) {
        uint256 commits = ethml.getCurrentRound().commits;
        who = new address[](commits);
        for (uint256 i = 0; i < commits; ++i) {
            who[i] = slotMiners[_key(roundId)][i];
        }
    }

    function _expire(uint256 roundId) internal {
        ethml.expireRound(roundId, _committers(roundId));
    }
}
