// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {EthML} from "../src/EthML.sol";
import {vm, EthMLFixture} from "./Base.sol";

/// @dev Random sequences of requests, submissions (valid or not), expiries and time passing.
contract Handler is EthMLFixture {
    uint256 public submissionsLanded;

    constructor() {
        _deploy(1, 16);
    }

    function system() external view returns (EthML) {
        return ethml;
    }

    function minerAt(uint256 i) external view returns (address) {
        return miners[i];
    }

    function request(uint256 modelSeed, uint96 tip) external {
        uint256 modelId = modelSeed % 2 == 0 ? classifier : regressor;
        uint256 amount = uint256(tip) % 5 ether;
        _request(modelId, amount);
    }

    function submit(uint256 minerSeed, int64 prediction, bool honest) external {
        (, uint256 id,,,,,) = ethml.getCurrentVariables();
        if (id == 0) return;
        address miner = miners[minerSeed % 7];
        if (ethml.hasSubmitted(miner)) return;
        uint256 nonce = honest ? _mine(miner) : uint256(uint64(prediction));
        vm.prank(miner);
        try ethml.submitMiningSolution(id, int256(prediction % 3), nonce) {
            ++submissionsLanded;
        } catch {}
    }

    function expire(uint256 blocks) external {
        (, uint256 id,,,,, uint256 expiresAt) = ethml.getCurrentVariables();
        vm.roll(block.number + blocks % 80);
        if (id == 0) return;
        if (block.number > expiresAt) ethml.expireRequest(id);
    }

    function wait(uint256 secondsToWait) external {
        vm.warp(block.timestamp + secondsToWait % 60);
    }
}

contract InvariantsTest {
    Handler internal handler;
    EthML internal ethml;
    uint256 internal initialSupply;

    function setUp() public {
        handler = new Handler();
        ethml = handler.system();
        initialSupply = ethml.totalSupply();
    }

    function targetContracts() public view returns (address[] memory targets) {
        targets = new address[](1);
        targets[0] = address(handler);
    }

    function invariant_supply_is_initial_plus_rewards() public view {
        vm.assertEq(ethml.totalSupply(), initialSupply + ethml.totalRewardsMinted(), "supply");
    }

    function invariant_no_request_finalizes_with_fewer_than_five() public view {
        uint256 n = ethml.requestCount();
        for (uint256 id = 1; id <= n; ++id) {
            EthML.Status s = ethml.requestStatus(id);
            if (s != EthML.Status.Finalized && s != EthML.Status.InvalidInput) continue;
            (,, address[5] memory who,,) = ethml.getResult(id);
            for (uint256 i = 0; i < 5; ++i) {
                vm.assertTrue(who[i] != address(0), "five miners");
                for (uint256 j = 0; j < i; ++j) {
                    vm.assertTrue(who[i] != who[j], "distinct miners");
                }
            }
        }
    }

    function invariant_no_request_is_lost() public view {
        uint256 n = ethml.requestCount();
        uint256 queued;
        uint256 current;
        for (uint256 id = 1; id <= n; ++id) {
            EthML.Status s = ethml.requestStatus(id);
            vm.assertTrue(s != EthML.Status.None, "every request id is known");
            if (s == EthML.Status.Queued) ++queued;
            if (s == EthML.Status.Current) ++current;
        }
        vm.assertEq(queued, ethml.pendingCount(), "every queued request is in the queue");
        vm.assertTrue(current <= 1, "at most one current request");
        (, uint256 currentId,,,,,) = ethml.getCurrentVariables();
        vm.assertEq(current, currentId == 0 ? 0 : 1, "current matches the round");
        if (currentId == 0) vm.assertEq(queued, 0, "idle only when the queue is empty");
    }

    function invariant_escrow_covers_open_tips() public view {
        // Escrow never goes negative and is empty whenever nothing is open.
        (, uint256 currentId,,,,,) = ethml.getCurrentVariables();
        if (currentId == 0) vm.assertEq(ethml.balanceOf(address(ethml)), 0, "no stray escrow");
    }
}
