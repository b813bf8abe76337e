// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {EthML} from "../src/EthML.sol";
import {vm, EthMLFixture} from "./Base.sol";

/// @dev Random sequences of requests, commitments (valid or not), reveals (honest or not), closes,
/// expiries, cancellations, claims and time passing.
contract Handler is EthMLFixture {
    uint256 public commitsLanded;
    mapping(uint256 => mapping(address => int256)) internal committed;

    constructor() {
        EthML.Parameters memory p = _params(1, 16);
        p.maxQueueBlocks = 200;
        _deployWith(p);
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

    function commitOne(uint256 minerSeed, int64 prediction, bool honest) external {
        uint256 id = _currentId();
        if (id == 0) return;
        _afterOpening();
        address miner = miners[minerSeed % 7];
        if (ethml.hasCommitted(miner)) return;
        int256 value = int256(prediction % 3);
        uint256 nonce = honest ? _mine(miner) : uint256(uint64(prediction));
        vm.prank(miner);
        try ethml.commit(id, nonce, _commitment(miner, id, value)) {
            ++commitsLanded;
            committed[id][miner] = value;
        } catch {}
    }

    function revealOne(uint256 minerSeed, bool honest) external {
        uint256 id = _currentId();
        if (id == 0) return;
        address miner = miners[minerSeed % 7];
        int256 value = honest ? committed[id][miner] : committed[id][miner] + 1;
        vm.prank(miner);
        try ethml.reveal(id, value, _salt(miner, id)) {} catch {}
    }

    function close(uint256 blocks) external {
        uint256 id = _currentId();
        vm.roll(block.number + blocks % 30);
        if (id == 0) return;
        try ethml.closeRound(id) {} catch {}
    }

    function expire(uint256 blocks) external {
        EthML.CurrentRound memory r = ethml.getCurrentRound();
        vm.roll(block.number + blocks % 80);
        if (r.requestId == 0) return;
        if (block.number > r.commitDeadline && r.commits < 5) ethml.expireRequest(r.requestId);
    }

    function cancel(uint256 seed) external {
        uint256 pending = ethml.pendingCount();
        if (pending == 0) return;
        uint256 n = ethml.requestCount();
        for (uint256 k = 0; k < n; ++k) {
            uint256 id = (seed + k) % n + 1;
            if (ethml.requestStatus(id) != EthML.Status.Queued) continue;
            uint256 position = ethml.queuePosition(id);
            vm.prank(USER);
            ethml.cancelRequest(id, position);
            return;
        }
    }

    function claim(uint256 minerSeed) external {
        vm.prank(miners[minerSeed % 7]);
        try ethml.claimRewards() {} catch {}
    }

    function wait(uint256 secondsToWait) external {
        vm.warp(block.timestamp + secondsToWait % 60);
    }

    function openTips() external view returns (uint256 total) {
        // Tips still held for open requests: the current round's and the queued ones.
        uint256 n = ethml.requestCount();
        for (uint256 id = 1; id <= n; ++id) {
            EthML.Status s = ethml.requestStatus(id);
            if (s == EthML.Status.Queued || s == EthML.Status.Current) total += tipOf[id];
        }
    }

    mapping(uint256 => uint256) public tipOf;

    function _request(uint256 modelId, uint256 tip) internal override returns (uint256 id) {
        id = super._request(modelId, tip);
        tipOf[id] = tip;
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

    function _owed() internal view returns (uint256 base, uint256 tips) {
        for (uint256 i = 0; i < 7; ++i) {
            (uint256 b, uint256 t) = ethml.owedRewards(handler.minerAt(i));
            base += b;
            tips += t;
        }
    }

    /// @dev Conservation: every EML is held, escrowed for an open request, or owed to a miner, and the
    /// supply grows only by the base rewards issued.
    function invariant_tokens_are_conserved() public view {
        (uint256 owedBase, uint256 owedTips) = _owed();
        vm.assertEq(ethml.totalSupply() + owedBase, initialSupply + ethml.totalRewardsIssued(), "supply");
        vm.assertEq(ethml.balanceOf(address(ethml)), handler.openTips() + owedTips, "escrow = open tips + owed tips");
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
        vm.assertTrue(current <= 1, "at most one open round");
        uint256 currentId = ethml.getCurrentRound().requestId;
        vm.assertEq(current, currentId == 0 ? 0 : 1, "current matches the round");
        if (currentId == 0) vm.assertEq(queued, 0, "idle only when the queue is empty");
    }

    function invariant_results_have_a_quorum() public view {
        uint256 n = ethml.requestCount();
        for (uint256 id = 1; id <= n; ++id) {
            (, EthML.Status s, uint256 agreeing,) = ethml.getResult(id);
            if (s == EthML.Status.Finalized || s == EthML.Status.InvalidInput) {
                vm.assertTrue(agreeing >= 3 && agreeing <= 5, "a result needs three agreeing reveals");
            }
            if (s == EthML.Status.NoConsensus) vm.assertTrue(agreeing < 3, "no consensus means below quorum");
        }
    }
}
