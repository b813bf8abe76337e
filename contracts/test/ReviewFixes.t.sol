// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";
import {EMLToken} from "../src/EMLToken.sol";
import {EthML} from "../src/EthML.sol";
import {IEthML} from "../src/IEthML.sol";
import {ModelRegistry} from "../src/ModelRegistry.sol";
import {vm} from "./Base.sol";
import {HeavyConsumer, RecordingConsumer} from "./Consumers.sol";
import {ReviewFixture} from "./ReviewAttacksBase.sol";

/// @notice The edges of the fixes for the third review (ReviewAttacks*.t.sol): who loses what when a
/// quorum of reveals does not agree, the tip shares nobody earned, rounds sized by their callback gas
/// whatever the parameter history, an expired round's other requests back in the queue, balances past
/// 2^96, and one sentinel for "no result".
contract ReviewFixesTest is ReviewFixture {
    uint256 internal constant TIP = 10 ether;

    function setUp() public {
        _deployWith(_shipped(1));
    }

    /// @dev The supply is the initial one plus issued less burned, and the oracle holds exactly the
    /// miners' balances and the open tips (`openTips`).
    function _checkLedger(uint256 openTips) internal view {
        uint256 held = 0;
        for (uint256 i = 0; i < 7; ++i) {
            held += ethml.minerBalance(miners[i]);
        }
        vm.assertEq(token.balanceOf(address(ethml)), held + openTips, "escrow = balances + open tips");
        vm.assertEq(
            token.totalSupply(),
            INITIAL_SUPPLY + ethml.totalRewardsIssued() - ethml.totalBurned(),
            "supply = initial + issued - burned"
        );
    }

    // ------------------------------------------------------------------------------------------
    // A quorum of reveals that does not agree
    // ------------------------------------------------------------------------------------------

    /// 2-2-1: both pairs are largest groups, so neither loses anything (one of them may be honest); the
    /// lone answer kept the quorum from forming and loses bond / K. The tip burns.
    function test_a_tie_between_two_largest_groups_costs_only_the_slot_outside_both() public {
        uint256 id = _request(classifier, TIP);
        uint256 bond = ethml.getCurrentRound().bond;
        uint256 userBefore = token.balanceOf(USER);
        _round(1, [int256(1), 1, 2, 2, 3]);
        (int256 prediction, IEthML.Status status, uint256 agreeing,) = ethml.getResult(id);
        vm.assertEq(uint256(status), uint256(IEthML.Status.NoConsensus), "two of five");
        vm.assertEq(agreeing, 2, "the largest group");
        vm.assertEq(prediction, ethml.INVALID_INPUT(), "no result");
        for (uint256 i = 0; i < 4; ++i) {
            vm.assertEq(ethml.minerBalance(miners[i]), bond, "a largest group keeps its bond, earns nothing");
        }
        vm.assertEq(ethml.minerBalance(miners[4]), 0, "the lone answer loses its bond");
        vm.assertEq(token.balanceOf(USER), userBefore, "the tip is not refunded");
        vm.assertEq(ethml.totalBurned(), bond + TIP, "its bond and the tip burned");
        vm.assertEq(ethml.totalRewardsIssued(), 0, "no base reward");
        _checkLedger(0);
    }

    /// Regression: the lower median decides a result, but not who loses when there is none. Two honest
    /// slots at 100.00, two others at 50.00 and 60.00 (one slot silent): the lower median is 60.00 and
    /// its band holds only itself; the largest group is the honest pair, which keeps its bonds.
    function test_regression_without_a_quorum_spares_the_largest_band_not_the_median() public {
        uint256 id = _request(regressor, TIP);
        uint256 bond = ethml.getCurrentRound().bond;
        int256[5] memory v = [int256(10_000), 10_000, 5_000, 6_000, 0];
        int256[][5] memory answers;
        for (uint256 i = 0; i < 5; ++i) {
            answers[i] = _one(v[i]);
        }
        _commitAll(1, answers);
        for (uint256 i = 0; i < 4; ++i) {
            _revealAs(miners[i], 1, answers[i]);
        }
        vm.roll(block.number + 11);
        _closeAs(USER, 1);
        (, IEthML.Status status, uint256 agreeing,) = ethml.getResult(id);
        vm.assertEq(uint256(status), uint256(IEthML.Status.NoConsensus), "no quorum");
        vm.assertEq(agreeing, 1, "the median's band holds only the median");
        vm.assertEq(ethml.minerBalance(miners[0]), bond, "honest: bond back");
        vm.assertEq(ethml.minerBalance(miners[1]), bond, "honest: bond back");
        vm.assertEq(ethml.minerBalance(miners[2]), 0, "outside the largest group");
        vm.assertEq(ethml.minerBalance(miners[3]), 0, "outside the largest group, though the median");
        vm.assertEq(ethml.totalBurned(), 3 * bond + TIP, "two shares, the silent slot's bond, the tip");
        _checkLedger(0);
    }

    /// Fewer reveals than a quorum decide nothing about anyone's answer: the revealers get their bonds
    /// back, the silent slots lose theirs, and the requester, who was not served, gets its tip back.
    function test_fewer_reveals_than_a_quorum_refund_the_tip() public {
        uint256 id = _request(classifier, TIP);
        uint256 bond = ethml.getCurrentRound().bond;
        uint256 userBefore = token.balanceOf(USER);
        _commitAll(1, [_one(1), _one(2), _one(1), _one(1), _one(1)]);
        _revealAs(miners[0], 1, _one(1));
        _revealAs(miners[1], 1, _one(2));
        vm.roll(block.number + 11);
        _closeAs(USER, 1);
        (, IEthML.Status status,,) = ethml.getResult(id);
        vm.assertEq(uint256(status), uint256(IEthML.Status.NoConsensus), "two reveals");
        vm.assertEq(token.balanceOf(USER), userBefore + TIP, "tip refunded");
        vm.assertEq(ethml.minerBalance(miners[0]), bond, "revealed: bond back");
        vm.assertEq(ethml.minerBalance(miners[1]), bond, "revealed: bond back");
        vm.assertEq(ethml.totalBurned(), 3 * bond, "the three silent bonds");
        _checkLedger(0);
    }

    /// The tip shares of a round of several requests: each agreeing slot a fifth of each decided tip,
    /// whatever the others did; the rest burns, and the ledger still balances.
    function test_each_agreeing_slot_earns_a_fifth_of_each_tip_and_the_rest_burns() public {
        _deployWith(_shipped(2));
        _request(classifier, 0); // round 1, alone
        uint256 a = _request(classifier, 5 ether);
        uint256 b = _request(classifier, 3 ether);
        _roundAll(1);
        uint256 roundId = _currentRound();
        vm.assertEq(_roundRequests()[0], a, "a first");
        uint256[5] memory before;
        for (uint256 i = 0; i < 5; ++i) {
            before[i] = _holdings(miners[i]);
        }
        uint256 burned = ethml.totalBurned();
        int256[][5] memory answers;
        answers[0] = _pair(1, 1);
        answers[1] = _pair(1, 1);
        answers[2] = _pair(1, 1);
        answers[3] = _pair(1, 0); // wrong on b
        answers[4] = _pair(1, 1); // silent
        _commitAll(roundId, answers);
        for (uint256 i = 0; i < 4; ++i) {
            _revealAs(miners[i], roundId, answers[i]);
        }
        uint256 bond = ethml.getCurrentRound().bond;
        vm.roll(block.number + 11);
        _waitTarget();
        _closeAs(USER, roundId);
        (,, uint256 agreeingA,) = ethml.getResult(a);
        (,, uint256 agreeingB,) = ethml.getResult(b);
        vm.assertEq(agreeingA + agreeingB, 7, "four agree on a, three on b");
        uint256 base = uint256(BASE_REWARD) / 2;
        vm.assertEq(_holdings(miners[0]) - before[0], 2 * base + 1 ether + 0.6 ether, "two fifths");
        vm.assertEq(_holdings(miners[3]) + bond / 2 - before[3], base + 1 ether, "a's fifth, less bond / 2");
        vm.assertEq(before[4] - _holdings(miners[4]), bond, "the silent slot's whole bond");
        // a: one fifth unearned (the silent slot); b: two (slot 3 and the silent slot).
        vm.assertEq(ethml.totalBurned() - burned, bond + bond / 2 + 1 ether + 2 * 0.6 ether, "burned");
        _checkLedger(0);
    }

    function _pair(int256 x, int256 y) internal pure returns (int256[] memory v) {
        v = new int256[](2);
        (v[0], v[1]) = (x, y);
    }

    // ------------------------------------------------------------------------------------------
    // Callback gas whatever the parameter history
    // ------------------------------------------------------------------------------------------

    /// The worst close a history of parameters can make: requests with 3,333,333-gas callbacks queued
    /// under K = 1, then K = 16 at 555,555. The round after the change opens with two of them (a third
    /// would pass the 10,000,000 budget less two stale allowances); at its close every queued request is
    /// stale: one more fits the budget and is expired with its callback, the next does not and is served
    /// (it opens the next round). Three callbacks burn 10,000,000 gas in one close, within 12,500,000.
    function test_callbacks_queued_under_older_parameters_never_pass_the_close_budget() public {
        EthML.Parameters memory p = _shipped(1);
        p.maxQueueBlocks = 40;
        _deployWith(p);
        _request(classifier, 0); // round 1
        HeavyConsumer consumer = new HeavyConsumer(ethml);
        uint256 limit = 3_333_333;
        uint256 deposit = ethml.minimumDeposit(limit);
        vm.deal(address(this), 6 * deposit);
        uint256 first = ethml.requestCount() + 1;
        for (uint256 j = 0; j < 6; ++j) {
            consumer.request{value: deposit}(classifier, CID, limit);
        }
        EthML.Parameters memory next = _shipped(16);
        next.maxQueueBlocks = 40;
        next.revealBlocks = 100; // the queue goes stale while the round reveals
        vm.prank(ADMIN);
        ethml.setParameters(next);
        _roundAll(1);
        vm.assertEq(_roundRequests().length, 2, "two 3.3 M callbacks fit 10 M less 2 x 555,555");
        uint256 roundId = _currentRound();
        int256[][5] memory answers;
        for (uint256 i = 0; i < 5; ++i) {
            answers[i] = _same(1, 2);
        }
        _commitAll(roundId, answers);
        for (uint256 i = 0; i < 4; ++i) {
            _revealAs(miners[i], roundId, answers[i]);
        }
        vm.roll(block.number + 41); // every queued request is stale now
        (address[5] memory who, int256[] memory table) = _table(roundId, miners[4], answers[4]);
        bytes32 salt = _salt(miners[4], roundId);
        vm.prank(miners[4]);
        uint256 before = gasleft();
        ethml.revealAndClose{gas: 12_500_000}(roundId, salt, who, table);
        uint256 used = before - gasleft();
        vm.assertTrue(used > 10_000_000, "three callbacks burned their 3.3 M each");
        vm.assertTrue(used <= 12_500_000, "within the documented 12,500,000");
        vm.assertEq(uint256(_status(first + 2)), uint256(IEthML.Status.Expired), "the stale one that fit");
        uint256[] memory ids = _roundRequests();
        vm.assertEq(ids.length, 2, "the next round: the stale one that did not fit, and one more");
        vm.assertEq(ids[0], first + 3, "served as it is, not expired");
        vm.assertEq(ids[1], first + 4, "a second fits beside it");
    }

    /// After K rises from 1 to 2 (maxCallbackGasLimit from 3,333,333 to 2,500,000) a round may take
    /// 10,000,000 - 2 x 2,500,000 = 5,000,000 gas of callbacks: two requests of 3,333,333 queued before
    /// the change open one round each, and one of them shares its round with a 1,000,000-gas one. No
    /// request is ever over the budget alone: with (K + 2) x maxCallbackGasLimit <= 10,000,000 at every
    /// moment, no callback asks more than 3,333,333 and the budget is never less than 3,333,334.
    function test_requests_queued_under_a_larger_callback_cap_open_in_rounds_that_fit() public {
        _request(classifier, 0); // round 1
        HeavyConsumer consumer = new HeavyConsumer(ethml);
        vm.deal(address(this), 10 ether);
        uint256 big = 3_333_333;
        uint256 a = consumer.request{value: ethml.minimumDeposit(big)}(classifier, CID, big);
        uint256 b = consumer.request{value: ethml.minimumDeposit(big)}(classifier, CID, big);
        uint256 c = consumer.request{value: ethml.minimumDeposit(1_000_000)}(classifier, CID, 1_000_000);
        vm.prank(ADMIN);
        ethml.setParameters(_shipped(2));
        _roundAll(1);
        uint256[] memory ids = _roundRequests();
        vm.assertEq(ids.length, 1, "a alone: a and b together would need 6.7 M");
        vm.assertEq(ids[0], a, "a");
        _roundAll(1);
        ids = _roundRequests();
        vm.assertEq(ids.length, 2, "b and c: 4.3 M");
        vm.assertEq(ids[0], b, "b");
        vm.assertEq(ids[1], c, "c");
        _roundAll(1);
        vm.assertEq(uint256(_status(c)), uint256(IEthML.Status.Finalized), "all answered");
    }

    // ------------------------------------------------------------------------------------------
    // An expired round
    // ------------------------------------------------------------------------------------------

    /// Only the round's first request (the highest tip) expires; the others go back to the queue with
    /// their tips, keep their age (they still go stale), get no callback, and open the next round.
    function test_an_expired_round_requeues_all_but_its_highest_tip() public {
        EthML.Parameters memory p = _shipped(3);
        p.maxQueueBlocks = 100;
        _deployWith(p);
        _request(classifier, 0); // round 1
        RecordingConsumer consumer = new RecordingConsumer(ethml);
        vm.deal(address(this), 1 ether);
        uint256 top = _request(classifier, 3 ether);
        uint256 called = consumer.request{value: ethml.minimumDeposit(100_000)}(classifier, CID, 100_000);
        uint256 low = _request(classifier, 1 ether);
        uint256 later = _request(classifier, 0);
        _roundAll(1);
        uint256 roundId = _currentRound();
        vm.assertEq(_roundRequests().length, 3, "top, low, called");
        _commitAs(miners[0], roundId, _same(1, 3));
        vm.roll(block.number + 51);
        uint256 userBefore = token.balanceOf(USER);
        _expire(roundId);
        vm.assertEq(uint256(_status(top)), uint256(IEthML.Status.Expired), "the highest tip expired");
        vm.assertEq(token.balanceOf(USER), userBefore + 3 ether, "its tip back");
        vm.assertEq(consumer.calls(called), 0, "a requeued request is not called back");
        uint256[] memory ids = _roundRequests();
        vm.assertEq(ids.length, 3, "the next round");
        vm.assertEq(ids[0], low, "low (1 EML) first");
        vm.assertEq(ids[1], called, "then the oldest of the tipless");
        vm.assertEq(ids[2], later, "then the one that waited behind them");
        _checkLedger(1 ether);
        // Requeued requests keep their age: past maxQueueBlocks, the next opening expires them.
        _commitAs(miners[0], _currentRound(), _same(1, 3));
        vm.roll(block.number + 101);
        _expire(_currentRound()); // low expires as the first; called and later are stale: both expire
        vm.assertEq(uint256(_status(low)), uint256(IEthML.Status.Expired), "expired with its round");
        vm.assertEq(uint256(_status(called)), uint256(IEthML.Status.Expired), "stale");
        vm.assertEq(uint256(_status(later)), uint256(IEthML.Status.Expired), "stale");
        vm.assertEq(consumer.calls(called), 1, "called back once, when it expired");
        vm.assertEq(ethml.pendingCount(), 0, "nothing left");
        _checkLedger(0);
    }

    // ------------------------------------------------------------------------------------------
    // Balances past 2^96 and the one sentinel for "no result"
    // ------------------------------------------------------------------------------------------

    /// A holder of more than 2^96 wei of EML: `fund` refuses to pass it; an expiry or a close whose
    /// credit would pass it pays the credit out as EML instead (nothing truncated, nothing blocked).
    function test_balances_never_truncate_past_2_to_the_96() public {
        address rich = miners[0];
        uint256 max = type(uint96).max;
        address[] memory holders = new address[](6);
        uint256[] memory amounts = new uint256[](6);
        (holders[0], amounts[0]) = (rich, max + 100 ether);
        (holders[1], amounts[1]) = (USER, 100 ether);
        for (uint256 i = 1; i < 5; ++i) {
            (holders[i + 1], amounts[i + 1]) = (miners[i], 100 ether);
        }
        token = new EMLToken(holders, amounts);
        ethml = new EthML(token, registry, ADMIN, _shipped(1));
        token.bindOracle(address(ethml));
        vm.prank(rich);
        vm.expectRevert(abi.encodeWithSelector(SafeCast.SafeCastOverflowedUintDowncast.selector, 96, max + 1));
        ethml.fund(max + 1);
        vm.prank(rich);
        ethml.fund(max - 1 ether);
        vm.prank(rich);
        vm.expectRevert(abi.encodeWithSelector(SafeCast.SafeCastOverflowedUintDowncast.selector, 96, max + 1));
        ethml.fund(1 ether + 1);
        // An expiry: the bond comes back to a balance that was topped up to the maximum meanwhile.
        _request(classifier, 0);
        _commitAs(rich, 1, _one(1));
        vm.prank(rich);
        ethml.fund(SHIPPED_BOND + 1 ether); // back at the maximum
        vm.assertEq(ethml.minerBalance(rich), max, "at the maximum");
        uint256 wallet = token.balanceOf(rich);
        vm.roll(block.number + 51);
        _expire(1);
        vm.assertEq(ethml.minerBalance(rich), max, "the balance cannot hold the bond");
        vm.assertEq(token.balanceOf(rich), wallet + SHIPPED_BOND, "so the bond came back as EML");
        vm.assertEq(token.balanceOf(address(ethml)), max, "the oracle holds exactly the balance");
        // A close: the bond (from the balance) and the base reward come back as EML.
        _waitTarget();
        _request(classifier, 0);
        _round(2, [int256(1), 1, 1, 1, 1]);
        vm.assertEq(ethml.minerBalance(rich), max - SHIPPED_BOND, "the bond left the balance");
        vm.assertEq(token.balanceOf(rich), wallet + 2 * SHIPPED_BOND + BASE_REWARD, "bond and reward as EML");
        vm.assertEq(ethml.minerBalance(miners[1]), SHIPPED_BOND + BASE_REWARD, "the others as usual");
        uint256 held = max - SHIPPED_BOND + 4 * (SHIPPED_BOND + uint256(BASE_REWARD));
        vm.assertEq(token.balanceOf(address(ethml)), held, "the oracle holds exactly the balances");
    }

    /// A request that closes without a result reads INVALID_INPUT in getResult, in its callback and in
    /// PredictionFinalized alike (getResult used to read 0, a valid class, for NoConsensus and Expired).
    function test_no_result_reads_invalid_input_everywhere() public {
        RecordingConsumer consumer = new RecordingConsumer(ethml);
        vm.deal(address(this), 1 ether);
        uint256 noConsensus = consumer.request{value: ethml.minimumDeposit(100_000)}(classifier, CID, 100_000);
        uint256 expired = consumer.request{value: ethml.minimumDeposit(100_000)}(classifier, CID, 100_000);
        _round(1, [int256(1), 2, 3, 4, 5]);
        vm.roll(block.number + 51);
        _expire(_currentRound());
        int256 invalid = ethml.INVALID_INPUT();
        uint256[2] memory ids = [noConsensus, expired];
        for (uint256 k = 0; k < 2; ++k) {
            (int256 prediction, IEthML.Status status,,) = ethml.getResult(ids[k]);
            vm.assertTrue(status == IEthML.Status.NoConsensus || status == IEthML.Status.Expired, "closed");
            vm.assertEq(prediction, invalid, "getResult: INVALID_INPUT");
            vm.assertEq(consumer.predictions(ids[k]), invalid, "the callback: INVALID_INPUT");
            vm.assertEq(uint256(consumer.statuses(ids[k])), uint256(status), "the same status");
        }
        // Open requests read 0 with their status.
        uint256 open = _request(classifier, 0);
        (int256 p, IEthML.Status s,,) = ethml.getResult(open);
        vm.assertEq(p, 0, "open: 0");
        vm.assertEq(uint256(s), uint256(IEthML.Status.Current), "and says so");
    }
}
