// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {EthML} from "../src/EthML.sol";
import {IEthML} from "../src/IEthML.sol";
import {vm, EthMLFixture} from "./Base.sol";
import {HeavyConsumer, RecordingConsumer} from "./Consumers.sol";

/// @notice Rounds of up to K requests: which requests a round takes, and every request of a round
/// answered as if it were alone (its own consensus, status, result, tip, callback and gas limit).
contract RoundsTest is EthMLFixture {
    function setUp() public {
        _deployWith(_k(8));
    }

    function _k(uint8 k) internal pure returns (EthML.Parameters memory p) {
        p = _params(1, 1);
        p.requestsPerRound = k;
    }

    /// @dev Round 1 opens alone with a throwaway request; the requests made while it is open wait, and
    /// its close opens round 2 with up to K of them.
    function _queueBehindFirst() internal {
        _request(classifier, 0);
    }

    function test_an_idle_oracle_opens_a_round_alone_and_the_next_takes_up_to_k() public {
        uint256 first = _request(classifier, 0);
        vm.assertEq(_roundRequests().length, 1, "alone");
        vm.assertEq(_roundRequests()[0], first, "at once");
        uint256[] memory queued = new uint256[](10);
        for (uint256 j = 0; j < 10; ++j) {
            queued[j] = _request(classifier, j == 9 ? 5 ether : 0);
        }
        _roundAll(1);
        uint256[] memory ids = _roundRequests();
        vm.assertEq(ids.length, 8, "eight of ten");
        vm.assertEq(ids[0], queued[9], "highest tip first");
        for (uint256 j = 1; j < 8; ++j) {
            vm.assertEq(ids[j], queued[j - 1], "then the oldest");
        }
        vm.assertEq(ethml.pendingCount(), 2, "two wait");
        for (uint256 j = 0; j < 8; ++j) {
            vm.assertEq(uint256(ethml.requestStatus(ids[j])), uint256(IEthML.Status.Current), "current");
        }
        vm.assertEq(uint256(ethml.requestStatus(queued[8])), uint256(IEthML.Status.Queued), "queued");
        _roundAll(1);
        vm.assertEq(_roundRequests().length, 2, "the last two");
        _roundAll(1);
        vm.assertEq(_currentRound(), 0, "idle");
    }

    function test_each_request_of_a_round_is_decided_on_its_own() public {
        _queueBehindFirst();
        uint256 a = _request(classifier, 4 ether); // a 3-2 split: finalized
        uint256 b = _request(regressor, 0); // three invalid: invalid input
        uint256 c = _request(classifier, 3 ether); // all different: no consensus
        uint256 d = _request(regressor, 0); // numbers within the band
        _roundAll(1);
        vm.warp(block.timestamp + 15); // the base reward is time-weighted
        uint256 roundId = _currentRound();
        uint256[] memory ids = _roundRequests();
        vm.assertEq(ids.length, 4, "one round of four");
        uint256[5] memory before;
        for (uint256 i = 0; i < 5; ++i) {
            before[i] = _holdings(miners[i]);
        }
        vm.assertEq(ids[0], a, "a");
        vm.assertEq(ids[1], c, "c");
        int256 bad = ethml.INVALID_INPUT();
        int256[][5] memory answers;
        // a, c, b, d in round order (tip, then age)
        answers[0] = _vec(1, 0, bad, 1_000);
        answers[1] = _vec(1, 1, bad, 1_005);
        answers[2] = _vec(1, 2, bad, 995);
        answers[3] = _vec(0, 3, 7, 1_500);
        answers[4] = _vec(0, 4, 8, 1_000);
        uint256 userBalance = token.balanceOf(USER);
        _roundVectors(roundId, answers);

        _assertResult(a, 1, IEthML.Status.Finalized, 3);
        _assertResult(b, bad, IEthML.Status.InvalidInput, 3);
        _assertResult(c, 0, IEthML.Status.NoConsensus, 1);
        _assertResult(d, 1_000, IEthML.Status.Finalized, 4);
        vm.assertEq(token.balanceOf(USER), userBalance, "no tip comes back: c had a quorum of reveals");
        // Per slot: decided requests a, b, d; c (five different answers, each a largest group of one)
        // costs no bond, but its tip burns. Slot 0 agreed on all three; slot 3 on none; slot 4 on d only.
        // Each agreeing slot earns a fifth of a's tip; the two disagreeing fifths burn.
        uint256 basePer = uint256(BASE_REWARD) / 4;
        uint256 bondPer = uint256(BOND) / 4;
        uint256 fifth = uint256(4 ether) / 5;
        vm.assertEq(_holdings(miners[0]) - before[0], 3 * basePer + fifth, "slot 0: three right");
        vm.assertEq(before[3] - _holdings(miners[3]), 3 * bondPer, "slot 3: three wrong, no reward");
        vm.assertEq(before[4] - _holdings(miners[4]), 2 * bondPer - basePer, "slot 4: d right, a and b wrong");
        vm.assertEq(
            ethml.totalBurned(),
            3 * bondPer + 2 * bondPer + 2 * fifth + 3 ether,
            "slot 3 lost three shares, slot 4 two; two fifths of a's tip and c's whole tip"
        );
    }

    function _holdings(address who) internal view returns (uint256) {
        return token.balanceOf(who) + ethml.minerBalance(who);
    }

    function _vec(int256 a, int256 c, int256 b, int256 d) internal pure returns (int256[] memory v) {
        v = new int256[](4);
        (v[0], v[1], v[2], v[3]) = (a, c, b, d);
    }

    function _assertResult(uint256 id, int256 prediction, IEthML.Status status, uint256 agreeing) internal view {
        (int256 p, IEthML.Status s, uint256 n,) = ethml.getResult(id);
        vm.assertEq(uint256(s), uint256(status), "status");
        vm.assertEq(p, status == IEthML.Status.NoConsensus ? ethml.INVALID_INPUT() : prediction, "prediction");
        vm.assertEq(n, agreeing, "agreeing");
    }

    function test_each_request_gets_its_own_callback_with_its_own_gas_limit() public {
        _queueBehindFirst();
        RecordingConsumer consumer = new RecordingConsumer(ethml);
        uint256[3] memory limits = [uint256(120_000), 200_000, 500_000];
        uint256[3] memory ids;
        vm.deal(address(this), 10 ether);
        for (uint256 j = 0; j < 3; ++j) {
            ids[j] = consumer.request{value: ethml.minimumDeposit(limits[j])}(classifier, CID, limits[j]);
        }
        uint256 plain = _request(classifier, 0);
        _roundAll(1);
        vm.assertEq(_roundRequests().length, 4, "one round");
        int256[][5] memory answers;
        for (uint256 i = 0; i < 5; ++i) {
            answers[i] = new int256[](4);
            for (uint256 j = 0; j < 4; ++j) {
                answers[i][j] = int256(j); // request j's answer is j
            }
        }
        uint256 roundId = _currentRound();
        _commitAll(roundId, answers);
        for (uint256 i = 0; i < 4; ++i) {
            _revealAs(miners[i], roundId, answers[i]);
        }
        (address[5] memory who, int256[] memory table) = _table(roundId, miners[4], answers[4]);
        bytes32 salt = _salt(miners[4], roundId);
        vm.prank(miners[4]);
        ethml.revealAndClose{gas: 3_000_000}(roundId, salt, who, table);
        for (uint256 j = 0; j < 3; ++j) {
            vm.assertEq(consumer.calls(ids[j]), 1, "told once");
            vm.assertEq(consumer.predictions(ids[j]), int256(j), "its own answer");
            uint256 got = consumer.gasAtEntry(ids[j]);
            vm.assertTrue(got > limits[j] - 5_000 && got <= limits[j], "its own gas limit");
        }
        vm.assertEq(consumer.calls(plain), 0, "no callback asked, none made");
        (int256 p,,,) = ethml.getResult(plain);
        vm.assertEq(p, 3, "pull-style result");
    }

    function test_a_closer_is_made_whole_for_eight_callbacks() public {
        vm.fee(8 gwei);
        vm.txGasPrice(10 gwei);
        uint256 plain = _closerNetGas(false);
        uint256 withCallbacks = _closerNetGas(true);
        vm.assertTrue(withCallbacks <= plain + 1_000, "the closer pays nothing for eight callbacks");
        // Over-reimbursed by the cold access to each consumer that the reimbursement includes and a forge
        // test (one transaction, every account warm) does not charge: 2,600 gas each at most.
        vm.assertTrue(plain - withCallbacks <= 8 * 3_000, "and is paid little more than they cost");
    }

    /// @dev A round of eight requests (through eight consumers with 100,000-gas callbacks, or from an
    /// EOA), closed by miner 4: the gas it used minus what it was reimbursed, in gas at the test's price.
    function _closerNetGas(bool callbacks) internal returns (uint256) {
        _deployWith(_k(8));
        _queueBehindFirst();
        RecordingConsumer[8] memory consumers;
        uint256 deposit = ethml.minimumDeposit(100_000);
        vm.deal(address(this), 8 * deposit);
        for (uint256 j = 0; j < 8; ++j) {
            consumers[j] = new RecordingConsumer(ethml); // eight consumers: eight cold accounts on a real chain
            if (callbacks) consumers[j].request{value: deposit}(classifier, CID, 100_000);
            else _request(classifier, 0);
        }
        _roundAll(1);
        uint256 roundId = _currentRound();
        int256[][5] memory answers;
        for (uint256 i = 0; i < 5; ++i) {
            answers[i] = _same(1, 8);
        }
        _commitAll(roundId, answers);
        for (uint256 i = 0; i < 4; ++i) {
            _revealAs(miners[i], roundId, answers[i]);
        }
        (address[5] memory who, int256[] memory table) = _table(roundId, miners[4], answers[4]);
        bytes32 salt = _salt(miners[4], roundId);
        uint256 balance = miners[4].balance;
        vm.prank(miners[4]);
        uint256 before = gasleft();
        ethml.revealAndClose{gas: 3_000_000}(roundId, salt, who, table);
        uint256 used = before - gasleft();
        uint256 reimbursed = (miners[4].balance - balance) / 10 gwei;
        if (callbacks) {
            for (uint256 j = 0; j < 8; ++j) {
                vm.assertEq(consumers[j].calls(j + 2), 1, "eight callbacks");
            }
        }

        return used - reimbursed;
    }

    function test_a_perfect_round_pays_the_whole_base_reward_and_the_bond_back() public {
        _queueBehindFirst();
        for (uint256 j = 0; j < 8; ++j) {
            _request(classifier, 1 ether);
        }
        _roundAll(1);
        uint256 before = ethml.minerBalance(miners[2]) + token.balanceOf(miners[2]);
        vm.warp(block.timestamp + 15);
        _roundAll(1);
        uint256 afterwards = ethml.minerBalance(miners[2]) + token.balanceOf(miners[2]);
        vm.assertEq(afterwards - before, BASE_REWARD + 8 * 0.2 ether, "the whole base reward, tips, the bond back");
    }

    function test_a_round_of_sixteen_uses_two_id_slots() public {
        EthML.Parameters memory p = _k(16);
        p.maxCallbackGasLimit = 500_000;
        _deployWith(p);
        _queueBehindFirst();
        uint256[] memory expected = new uint256[](16);
        for (uint256 j = 0; j < 16; ++j) {
            expected[j] = _request(classifier, 0);
        }
        _roundAll(1);
        uint256[] memory ids = _roundRequests();
        vm.assertEq(ids.length, 16, "sixteen");
        for (uint256 j = 0; j < 16; ++j) {
            vm.assertEq(ids[j], expected[j], "in order");
        }
        _roundAll(1);
        for (uint256 j = 0; j < 16; ++j) {
            (int256 prediction, IEthML.Status s,,) = ethml.getResult(expected[j]);
            vm.assertEq(uint256(s), uint256(IEthML.Status.Finalized), "finalized");
            vm.assertEq(prediction, 1, "answered");
        }
    }

    function test_a_change_of_k_waits_for_the_next_round() public {
        _queueBehindFirst();
        for (uint256 j = 0; j < 6; ++j) {
            _request(classifier, 0);
        }
        vm.prank(ADMIN);
        ethml.setParameters(_k(2));
        _roundAll(1);
        vm.assertEq(_roundRequests().length, 2, "the next round takes two");
        vm.assertEq(ethml.parameters().requestsPerRound, 2, "applied at the close");
    }

    /// @notice The documented budget of a closing transaction: K at its cap (16), every callback at the
    /// largest limit the cap allows ((16 + 2) x 555,555 <= 10,000,000) and burning all of it, two stale
    /// requests expired (and called back) by the opening of the next round, a queue of a thousand.
    function test_the_worst_closing_transaction_fits_the_documented_budget() public {
        EthML.Parameters memory p = _k(16);
        p.maxCallbackGasLimit = 555_555;
        p.maxQueueBlocks = 30;
        p.revealBlocks = 100;
        _deployWith(p);
        _queueBehindFirst();
        HeavyConsumer consumer = new HeavyConsumer(ethml);
        uint256 deposit = ethml.minimumDeposit(555_555);
        vm.deal(address(this), 20 * deposit);
        for (uint256 j = 0; j < 18; ++j) {
            consumer.request{value: deposit}(classifier, CID, 555_555); // 16 for round 2, then 2 that go stale
        }
        for (uint256 j = 0; j < 1_000; ++j) {
            _request(classifier, 0);
        }
        _roundAll(1);
        vm.assertEq(_roundRequests().length, 16, "sixteen heavy callbacks");
        uint256 roundId = _currentRound();
        int256[][5] memory answers;
        for (uint256 i = 0; i < 5; ++i) {
            answers[i] = _same(1, 16);
        }
        _commitAll(roundId, answers);
        for (uint256 i = 0; i < 4; ++i) {
            _revealAs(miners[i], roundId, answers[i]);
        }
        vm.roll(block.number + 31); // the two left in the queue are stale now
        (address[5] memory who, int256[] memory table) = _table(roundId, miners[4], answers[4]);
        bytes32 salt = _salt(miners[4], roundId);
        vm.prank(miners[4]);
        uint256 before = gasleft();
        ethml.revealAndClose{gas: 14_000_000}(roundId, salt, who, table);
        uint256 used = before - gasleft();
        vm.assertEq(uint256(ethml.requestStatus(19)), uint256(IEthML.Status.Expired), "stale, expired at the opening");
        vm.assertTrue(used > 10_000_000, "the callbacks did burn their gas");
        vm.assertTrue(used <= 12_500_000, "within the documented 12,500,000");
    }
}
