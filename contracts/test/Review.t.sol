// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {EthML} from "../src/EthML.sol";
import {IEthML} from "../src/IEthML.sol";
import {ExampleConsumer} from "../src/UsingEthML.sol";
import {vm, EthMLFixture} from "./Base.sol";
import {DepositRaidingConsumer, DepositWithdrawingConsumer, RecordingConsumer} from "./Consumers.sol";

/// @notice The second outside review: each test performs one attack and shows that it fails.
contract ReviewTest is EthMLFixture {
    uint256 internal constant LIMIT = 100_000;
    uint256 internal constant OVERHEAD = 15_500; // CALLBACK_OVERHEAD + REIMBURSEMENT_TRANSFER_GAS

    function setUp() public {
        _deploy(1, 1);
    }

    /// @dev What `deploy_system` uses: K = 8, a 2 EML bond plus half the round's tips.
    function _production(uint64 minDifficulty, uint64 maxDifficulty) internal pure returns (EthML.Parameters memory p) {
        p = _params(minDifficulty, maxDifficulty);
        p.requestsPerRound = 8;
        p.bondTipBps = 5_000;
    }

    // 1. A consumer withdraws its deposit inside its own callback ------------------------------------

    function test_withdrawing_the_deposit_inside_the_callback_does_not_make_the_closer_pay() public {
        vm.fee(8 gwei);
        vm.txGasPrice(10 gwei);
        DepositWithdrawingConsumer consumer = new DepositWithdrawingConsumer(ethml);
        uint256 deposit = ethml.minimumDeposit(LIMIT);
        vm.deal(address(this), deposit);
        uint256 id = consumer.request{value: deposit}(classifier, CID, LIMIT);
        _commitAll(1, [_one(1), _one(1), _one(1), _one(1), _one(1)]);
        for (uint256 i = 0; i < 4; ++i) {
            _revealAs(miners[i], 1, _one(1));
        }
        uint256 before = miners[4].balance;
        _revealAndCloseAs(miners[4], 1, _one(1));
        uint256 paid = miners[4].balance - before;
        uint256 reserved = (LIMIT + OVERHEAD) * 10 gwei;
        vm.assertTrue(paid >= OVERHEAD * 10 gwei, "the closer is reimbursed");
        vm.assertEq(consumer.taken(), deposit - reserved, "the consumer could take only what was not reserved");
        vm.assertEq(ethml.depositOf(id), reserved - paid, "the unused reserve is the consumer's again");
    }

    function test_raiding_other_deposits_of_the_round_inside_a_callback_does_not_make_the_closer_pay() public {
        _deployWith(_production(1, 1));
        vm.fee(8 gwei);
        vm.txGasPrice(10 gwei);
        _request(classifier, 0); // round 1, alone
        DepositRaidingConsumer raider = new DepositRaidingConsumer(ethml);
        uint256 deposit = ethml.minimumDeposit(LIMIT);
        vm.deal(address(this), 3 * deposit);
        raider.requestMany{value: 3 * deposit}(classifier, CID, LIMIT, 3, deposit);
        _roundAll(1); // round 2 opens with the raider's three requests
        vm.assertEq(_roundRequests().length, 3, "one round for all three");
        uint256 roundId = _currentRound();
        int256[][5] memory answers;
        for (uint256 i = 0; i < 5; ++i) {
            answers[i] = _same(1, 3);
        }
        _commitAll(roundId, answers);
        for (uint256 i = 0; i < 4; ++i) {
            _revealAs(miners[i], roundId, answers[i]);
        }
        uint256 before = miners[4].balance;
        _revealAndCloseAs(miners[4], roundId, answers[4]);
        uint256 paid = miners[4].balance - before;
        vm.assertTrue(paid >= 3 * OVERHEAD * 10 gwei, "the closer is reimbursed for all three callbacks");
        uint256 reserved = (LIMIT + OVERHEAD) * 10 gwei;
        vm.assertTrue(raider.taken() <= 3 * deposit - paid, "it took nothing of what the closer was paid");
        vm.assertTrue(raider.taken() >= 3 * (deposit - reserved), "it could take only what was not reserved");
    }

    function test_expiry_paths_reserve_the_reimbursement_too() public {
        EthML.Parameters memory p = _params(1, 1);
        p.maxQueueBlocks = 100;
        _deployWith(p);
        vm.fee(8 gwei);
        vm.txGasPrice(10 gwei);
        uint256 deposit = ethml.minimumDeposit(LIMIT);
        vm.deal(address(this), 10 * deposit);
        DepositWithdrawingConsumer inRound = new DepositWithdrawingConsumer(ethml);
        DepositWithdrawingConsumer stale = new DepositWithdrawingConsumer(ethml);
        DepositWithdrawingConsumer queued = new DepositWithdrawingConsumer(ethml);
        inRound.request{value: deposit}(classifier, CID, LIMIT); // round 1
        stale.request{value: deposit}(classifier, CID, LIMIT); // expires when round 2 would open
        vm.roll(block.number + 101);
        _request(classifier, 0); // fresh: opens round 2
        uint256 lonely = queued.request{value: deposit}(classifier, CID, LIMIT); // waits behind it
        // Expiring round 1: its request's callback and the stale one's, both reimbursed.
        address closer = miners[6];
        uint256 before = closer.balance;
        vm.prank(closer);
        ethml.expireRound(1, new address[](0));
        vm.assertTrue(closer.balance - before >= 2 * OVERHEAD * 10 gwei, "expiry and stale expiry reimbursed");
        vm.assertTrue(inRound.taken() > 0 && stale.taken() > 0, "both were told and took their own rest");
        // expireQueued on the last one, from the queue.
        vm.roll(block.number + 101);
        before = closer.balance;
        uint256 position = ethml.queuePosition(lonely);
        vm.prank(closer);
        ethml.expireQueued(lonely, position);
        vm.assertTrue(closer.balance - before >= OVERHEAD * 10 gwei, "expireQueued reimbursed");
        vm.assertEq(uint256(ethml.requestStatus(lonely)), uint256(IEthML.Status.Expired), "expired");
    }

    // 2. The retarget counted the reveal window ----------------------------------------------------

    /// @dev Five rounds whose commit phase takes exactly the target (15 s); `withhold` slot 4 never
    /// reveals, so each round waits out its reveal window (60 s) and is closed by someone else.
    function _rounds(bool withhold) internal returns (uint256[5] memory difficulties) {
        EthML.Parameters memory p = _params(1 << 10, 1 << 10);
        _deployWith(p);
        p.minDifficulty = 1;
        p.maxDifficulty = 1 << 20;
        vm.prank(ADMIN);
        ethml.setParameters(p);
        for (uint256 r = 0; r < 6; ++r) {
            _request(classifier, 0);
        }
        for (uint256 r = 0; r < 5; ++r) {
            uint256 roundId = _currentRound();
            uint256 opened = block.timestamp;
            for (uint256 i = 0; i < 4; ++i) {
                _commitAs(miners[i], roundId, _one(1));
            }
            vm.warp(opened + 15);
            _commitAs(miners[4], roundId, _one(1));
            for (uint256 i = 0; i < 4; ++i) {
                _revealAs(miners[i], roundId, _one(1));
            }
            vm.warp(block.timestamp + 60);
            if (withhold) {
                vm.roll(block.number + 11);
                _closeAs(miners[0], roundId);
            } else {
                _revealAndCloseAs(miners[4], roundId, _one(1));
            }
            difficulties[r] = ethml.difficulty();
        }
    }

    function test_a_withholding_miner_no_longer_drives_the_difficulty_down() public {
        uint256[5] memory d = _rounds(true);
        for (uint256 r = 0; r < 5; ++r) {
            vm.assertEq(d[r], 1 << 10, "steady at 2^10 (was halved every round)");
        }
        vm.assertEq(token.balanceOf(miners[4]), MINER_FUNDS - 5 * uint256(BOND), "and the withholder lost five bonds");
    }

    function test_honest_rounds_with_a_slow_reveal_phase_keep_the_difficulty() public {
        uint256[5] memory d = _rounds(false);
        for (uint256 r = 0; r < 5; ++r) {
            vm.assertEq(d[r], 1 << 10, "75-second rounds with a 15-second commit phase keep 2^10");
        }
    }

    function test_reveal_phase_started_carries_the_next_difficulty() public {
        _deploy(1, 1 << 20);
        _request(classifier, 0);
        uint256 opened = block.timestamp;
        for (uint256 i = 0; i < 4; ++i) {
            _commitAs(miners[i], 1, _one(1));
        }
        vm.warp(opened + 5); // a third of the target: the next round doubles
        uint256 nonce = _mine(miners[4]);
        bytes32 commitment = _commitment(miners[4], 1, _one(1));
        vm.expectEmit();
        emit IEthML.RevealPhaseStarted(1, block.number + 10, 2);
        vm.prank(miners[4]);
        ethml.commit(1, nonce, commitment);
    }

    // 3. Withholding and hedging were free ---------------------------------------------------------

    /// @dev An attacker with miners 3 and 4 commits both classes and runs no model; three honest
    /// miners answer the truth. Returns the attacker's EML after the round minus before.
    function _hedge(uint256 k, uint256 tip) internal returns (int256 net) {
        _deployWith(_production(1, 1));
        _request(classifier, tip); // round 1, alone (K requests from round 2 on)
        for (uint256 j = 0; j < k; ++j) {
            _request(classifier, tip);
        }
        _roundAll(1);
        uint256 roundId = _currentRound();
        uint256 n = _roundRequests().length;
        vm.assertEq(n, k, "a round of k requests");
        int256[] memory truth = new int256[](n);
        for (uint256 j = 0; j < n; ++j) {
            truth[j] = int256(j % 2);
        }
        uint256 before = _holdings(miners[3]) + _holdings(miners[4]);
        _roundVectors(roundId, [truth, truth, truth, _same(0, n), _same(1, n)]);
        net = int256(_holdings(miners[3]) + _holdings(miners[4])) - int256(before);
    }

    function _holdings(address who) internal view returns (uint256) {
        return token.balanceOf(who) + ethml.minerBalance(who);
    }

    function test_hedging_two_slots_across_both_classes_loses_money() public {
        vm.assertTrue(_hedge(1, 0) < 0, "K = 1, no tip: the lost bond exceeds the reward");
        vm.assertTrue(_hedge(1, 10 ether) < 0, "K = 1, 10 EML tip: the bond grows with the tip");
        vm.assertTrue(_hedge(8, 0) < 0, "K = 8, no tips");
        vm.assertTrue(_hedge(8, 10 ether) < 0, "K = 8, 10 EML each");
        // Running the model with the same two slots pays.
        _deployWith(_production(1, 1));
        _request(classifier, 10 ether);
        uint256 before = _holdings(miners[3]) + _holdings(miners[4]);
        _roundAll(1);
        vm.assertTrue(_holdings(miners[3]) + _holdings(miners[4]) > before, "honest slots earn");
    }

    function test_withholding_three_slots_after_seeing_the_honest_reveals_loses_more_than_the_tip() public {
        _deployWith(_production(1, 1));
        uint256 tip = 10 ether;
        // The attacker is the requester (miners 2..4 and USER): it wants the answer and its tip back.
        uint256 before = token.balanceOf(USER) + _holdings(miners[2]) + _holdings(miners[3]) + _holdings(miners[4]);
        uint256 id = _request(classifier, tip);
        _commitAll(1, [_one(1), _one(1), _one(1), _one(1), _one(1)]);
        _revealAs(miners[0], 1, _one(1));
        _revealAs(miners[1], 1, _one(1)); // the answer is public now; the attacker withholds
        vm.roll(block.number + 11);
        _closeAs(miners[0], 1);
        (, IEthML.Status status,,) = ethml.getResult(id);
        vm.assertEq(uint256(status), uint256(IEthML.Status.NoConsensus), "below the quorum");
        uint256 afterwards = token.balanceOf(USER) + _holdings(miners[2]) + _holdings(miners[3]) + _holdings(miners[4]);
        uint256 bond = BOND + tip / 2;
        vm.assertEq(before - afterwards, 3 * bond, "three bonds burned, the tip back");
        vm.assertTrue(3 * bond > tip, "withholding costs more than the tip it saves");
        vm.assertEq(ethml.minerBalance(miners[0]), bond, "the honest reveals get their bonds back");
    }

    function test_a_huge_tip_cannot_price_miners_out_of_a_round() public {
        _deployWith(_production(1, 1));
        vm.prank(USER);
        ethml.requestPrediction(classifier, CID, 900 ether, 0);
        vm.assertEq(ethml.getCurrentRound().bond, ethml.MAX_BOND(), "the bond stops at 100 EML");
        _roundAll(1);
        vm.assertEq(ethml.totalBurned(), 0, "and the round is answered");
    }

    function test_a_majority_that_outvotes_the_minority_gains_nothing_from_the_minority_bonds() public {
        _deployWith(_production(1, 1));
        uint256 id = _request(classifier, 0);
        // Three colluding slots (2..4) answer 0; the honest two answer 1 and are outvoted.
        _round(1, [int256(1), 1, 0, 0, 0]);
        (int256 prediction,,,) = ethml.getResult(id);
        vm.assertEq(prediction, 0, "controlling a quorum decides the result: the remaining trust");
        vm.assertEq(ethml.minerBalance(miners[2]), BOND + BASE_REWARD, "the majority is paid as usual, no more");
        vm.assertEq(ethml.totalBurned(), 2 * uint256(BOND), "the minority's bonds are burned, not paid out");
    }

    // 4. A request expired in the queue got no callback --------------------------------------------

    function test_requests_expired_in_the_queue_are_called_back() public {
        EthML.Parameters memory p = _params(1, 1);
        p.maxQueueBlocks = 100;
        _deployWith(p);
        RecordingConsumer consumer = new RecordingConsumer(ethml);
        uint256 deposit = ethml.minimumDeposit(LIMIT);
        vm.deal(address(this), 10 * deposit);
        _request(classifier, 0);
        uint256 atOpening = consumer.request{value: deposit}(classifier, CID, LIMIT);
        uint256 byAnyone = consumer.request{value: deposit}(classifier, CID, LIMIT);
        uint256 position = ethml.queuePosition(byAnyone);
        vm.expectRevert(abi.encodeWithSelector(IEthML.QueuedNotStale.selector, byAnyone, block.number + 100));
        ethml.expireQueued(byAnyone, position);
        vm.roll(block.number + 101);
        // Round 1 expires; the opening of the next expires both stale requests (at most two per opening).
        _expire(1);
        vm.assertEq(consumer.calls(atOpening), 1, "told once");
        vm.assertEq(uint256(consumer.statuses(atOpening)), uint256(IEthML.Status.Expired), "told: expired");
        vm.assertEq(consumer.predictions(atOpening), ethml.INVALID_INPUT(), "no prediction");
        vm.assertEq(consumer.calls(byAnyone), 1, "the second too");
        // And with expireQueued, by anyone, one at a time.
        _request(classifier, 0); // opens round 2
        uint256 third = consumer.request{value: deposit}(classifier, CID, LIMIT);
        vm.roll(block.number + 101);
        position = ethml.queuePosition(third);
        vm.prank(miners[6]);
        ethml.expireQueued(third, position);
        vm.assertEq(consumer.calls(third), 1, "told by expireQueued");
        vm.assertEq(uint256(consumer.statuses(third)), uint256(IEthML.Status.Expired), "expired");
    }

    // 5. Reimbursement at tx.gasprice ----------------------------------------------------------------

    function test_a_closer_with_a_huge_gas_price_is_reimbursed_at_base_fee_plus_the_cap() public {
        vm.fee(10 gwei);
        RecordingConsumer consumer = new RecordingConsumer(ethml);
        uint256 deposit = 1 ether; // plenty: a greedy closer would take it all
        vm.deal(address(this), deposit);
        uint256 id = consumer.request{value: deposit}(classifier, CID, LIMIT);
        _commitAll(1, [_one(1), _one(1), _one(1), _one(1), _one(1)]);
        for (uint256 i = 0; i < 4; ++i) {
            _revealAs(miners[i], 1, _one(1));
        }
        vm.txGasPrice(10_000 gwei); // the closer builds its own block and names its price
        uint256 before = miners[4].balance;
        _revealAndCloseAs(miners[4], 1, _one(1));
        uint256 paid = miners[4].balance - before;
        vm.assertTrue(paid <= (LIMIT + OVERHEAD) * 12 gwei, "at most base fee + 2 gwei per gas");
        vm.assertTrue(ethml.depositOf(id) >= deposit - (LIMIT + OVERHEAD) * 12 gwei, "the deposit keeps the rest");
    }

    function test_a_callback_the_deposit_cannot_pay_is_skipped_not_paid_by_the_closer() public {
        vm.fee(1 gwei);
        RecordingConsumer consumer = new RecordingConsumer(ethml);
        uint256 deposit = ethml.minimumDeposit(LIMIT); // at 2 x 1 gwei + 2 gwei
        vm.deal(address(this), deposit);
        uint256 id = consumer.request{value: deposit}(classifier, CID, LIMIT);
        vm.fee(5 gwei); // the base fee more than doubled before the close
        vm.txGasPrice(7 gwei);
        _commitAll(1, [_one(1), _one(1), _one(1), _one(1), _one(1)]);
        for (uint256 i = 0; i < 4; ++i) {
            _revealAs(miners[i], 1, _one(1));
        }
        uint256 before = miners[4].balance;
        _revealAndCloseAs(miners[4], 1, _one(1));
        vm.assertEq(consumer.calls(id), 0, "no call the deposit cannot pay for");
        vm.assertEq(miners[4].balance, before, "nothing paid, nothing owed");
        vm.assertEq(ethml.depositOf(id), deposit, "the deposit is the requester's");
        (int256 prediction, IEthML.Status status,,) = ethml.getResult(id);
        vm.assertEq(prediction, 1, "the result is there to read");
        vm.assertEq(uint256(status), uint256(IEthML.Status.Finalized), "finalized");
    }

    // 6. ExampleConsumer.cancel scanned the queue ----------------------------------------------------

    function test_example_consumer_cancels_behind_a_thousand_requests_in_log_time() public {
        ExampleConsumer consumer = new ExampleConsumer(ethml);
        for (uint256 i = 0; i < 1_000; ++i) {
            _request(classifier, 0);
        }
        uint256 deposit = ethml.minimumDeposit(consumer.CALLBACK_GAS());
        vm.deal(USER, deposit);
        vm.prank(USER);
        uint256 id = consumer.request{value: deposit}(classifier, CID, 0);
        uint256 position = ethml.queuePosition(id); // a view, off chain
        vm.assertEq(position, 999, "last in the queue");
        vm.prank(USER);
        vm.expectRevert(abi.encodeWithSelector(IEthML.StaleQueueHint.selector, id, 0));
        consumer.cancel(id, 0);
        vm.prank(USER);
        uint256 before = gasleft();
        consumer.cancel(id, position);
        uint256 used = before - gasleft();
        vm.assertTrue(used < 80_000, "no scan: tens of thousands of gas, not 610,000");
        vm.assertEq(uint256(ethml.requestStatus(id)), uint256(IEthML.Status.Cancelled), "cancelled");
    }

    // 7. Events and docs disagreed -------------------------------------------------------------------

    function test_round_opened_names_its_requests_and_bond() public {
        _deployWith(_production(1, 1));
        _request(classifier, 0);
        uint256[] memory ids = new uint256[](3);
        for (uint256 j = 0; j < 3; ++j) {
            ids[j] = _request(classifier, 2 ether);
        }
        _commitAll(1, [_one(1), _one(1), _one(1), _one(1), _one(1)]);
        for (uint256 i = 0; i < 4; ++i) {
            _revealAs(miners[i], 1, _one(1));
        }
        (address[5] memory who, int256[] memory table) = _table(1, miners[4], _one(1));
        bytes32 salt = _salt(miners[4], 1);
        vm.expectEmit();
        emit IEthML.RoundOpened(2, ids, 1, block.number + 50, BOND + 3 ether);
        vm.prank(miners[4]);
        ethml.revealAndClose(1, salt, who, table);
    }
}
