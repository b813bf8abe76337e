// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {IAccessControl} from "@openzeppelin/contracts/access/IAccessControl.sol";
import {EthML} from "../src/EthML.sol";
import {EthMLTimelock} from "../src/EthMLTimelock.sol";
import {IEthML} from "../src/IEthML.sol";
import {ExampleConsumer} from "../src/UsingEthML.sol";
import {vm, EthMLFixture} from "./Base.sol";
import {HeavyConsumer} from "./Consumers.sol";

/// @dev One of the sybil identities of the attacker below.
contract Sybil {
    function commit(EthML ethml, uint256 id, uint256 nonce) external {
        ethml.commit(id, nonce, bytes32(uint256(1)));
    }
}

/// @dev Expires the current round and tries to fill the next one with pre-ground nonces in the same
/// transaction.
contract OpenAndFill {
    Sybil[5] public sybils;

    constructor() {
        for (uint256 i = 0; i < 5; ++i) {
            sybils[i] = new Sybil();
        }
    }

    function attack(EthML ethml, uint256 expiring, uint256 next, uint256[5] calldata nonces) external {
        ethml.expireRound(expiring, new address[](0));
        for (uint256 i = 0; i < 5; ++i) {
            sybils[i].commit(ethml, next, nonces[i]);
        }
    }
}

/// @notice Each test performs one attack of the first outside review (copying, one vote winning,
/// predictable challenges, callback gas, starvation, reward farming, the admin) and shows that it no
/// longer pays. The second review's findings are in Review.t.sol.
contract AttacksTest is EthMLFixture {
    function setUp() public {
        _deploy(1, 1);
    }

    // 1. Copying answers -----------------------------------------------------------------------

    function test_copier_cannot_read_answers_before_committing() public {
        uint256 id = _request(classifier, 10 ether);
        _commitAll(1, [_one(1), _one(1), _one(1), _one(1), _one(1)]);
        // Everything public about the round before the reveal phase: no prediction in it.
        EthML.CurrentRound memory r = ethml.getCurrentRound();
        vm.assertEq(r.commits, 5, "five commitments");
        vm.assertEq(r.revealedMask, 0, "nothing revealed");
        (int256 prediction, IEthML.Status status, uint256 agreeing,) = ethml.getResult(id);
        vm.assertEq(prediction, 0, "no result");
        vm.assertEq(uint256(status), uint256(IEthML.Status.Current), "open");
        vm.assertEq(agreeing, 0, "no votes");
    }

    function test_copier_who_did_not_run_the_model_gets_nothing_and_loses_its_bond() public {
        uint256 id = _request(classifier, 10 ether);
        // Four honest miners commit 1; the copier (miner 4) commits a placeholder it hopes to swap.
        for (uint256 i = 0; i < 4; ++i) {
            _commitAs(miners[i], 1, _one(1));
        }
        _commitAs(miners[4], 1, _one(0));
        for (uint256 i = 0; i < 4; ++i) {
            _revealAs(miners[i], 1, _one(1));
        }
        // It has now seen the answer, but its commitment binds it to what it committed.
        vm.prank(miners[4]);
        vm.expectRevert(abi.encodeWithSelector(IEthML.CommitmentMismatch.selector, 1, miners[4]));
        ethml.reveal(1, _one(1), _salt(miners[4], 1));
        // It keeps its silence; after the window the round closes with the four reveals.
        vm.roll(block.number + 11);
        _closeAs(USER, 1);
        (int256 prediction, IEthML.Status status, uint256 agreeing,) = ethml.getResult(id);
        vm.assertEq(uint256(status), uint256(IEthML.Status.Finalized), "finalized");
        vm.assertEq(prediction, 1, "the honest answer");
        vm.assertEq(agreeing, 4, "four agree");
        vm.assertEq(ethml.minerBalance(miners[4]), 0, "the copier earns nothing");
        vm.assertEq(token.balanceOf(miners[4]), MINER_FUNDS - BOND, "and its bond is burned");
        vm.assertEq(ethml.minerBalance(miners[0]), BOND + BASE_REWARD + 2 ether, "a fifth of the tip, not a fourth");
        vm.assertEq(ethml.totalBurned(), BOND + 2 ether, "the copier's bond and its tip share burned");
    }

    // 2. One vote wins ----------------------------------------------------------------------------

    function test_five_different_votes_are_no_consensus() public {
        ExampleConsumer consumer = new ExampleConsumer(ethml);
        vm.prank(USER);
        token.approve(address(consumer), 5 ether);
        vm.deal(USER, 1 ether);
        uint256 deposit = ethml.minimumDeposit(consumer.CALLBACK_GAS());
        vm.prank(USER);
        uint256 id = consumer.request{value: deposit}(classifier, CID, 5 ether);
        _round(1, [int256(5), 4, 3, 2, 1]);
        (int256 prediction, IEthML.Status status, uint256 agreeing,) = ethml.getResult(id);
        vm.assertEq(uint256(status), uint256(IEthML.Status.NoConsensus), "no consensus");
        vm.assertEq(agreeing, 1, "one vote is not a quorum");
        vm.assertEq(prediction, ethml.INVALID_INPUT(), "no prediction");
        vm.assertEq(ethml.totalRewardsIssued(), 0, "no base reward");
        // Five reveals, a quorum of them, and no quorum agreed: every answer is a largest group (of one),
        // so no bond is lost, and the tip burns (refunded, disagreeing would be a free veto).
        vm.assertEq(ethml.totalBurned(), 5 ether, "the tip burned, no bond");
        for (uint256 i = 0; i < 5; ++i) {
            vm.assertEq(ethml.minerBalance(miners[i]), BOND, "every bond back");
        }
        vm.assertEq(token.balanceOf(address(consumer)), 0, "the tip is not refunded");
        (,, IEthML.Status told, uint8 toldAgreeing, bool received,,) = consumer.answers(id);
        vm.assertTrue(received, "consumer told");
        vm.assertEq(uint256(told), uint256(IEthML.Status.NoConsensus), "told: no consensus");
        vm.assertEq(uint256(toldAgreeing), 1, "told the count");
    }

    function test_one_invalid_vote_does_not_win_a_tie() public {
        uint256 id = _request(classifier, 0);
        int256 bad = ethml.INVALID_INPUT();
        _round(1, [bad, 1, 2, 3, 4]);
        (, IEthML.Status status,,) = ethml.getResult(id);
        vm.assertEq(uint256(status), uint256(IEthML.Status.NoConsensus), "not invalid input on one vote");
        id = _request(classifier, 0);
        _round(2, [bad, bad, 1, 1, 2]);
        (, status,,) = ethml.getResult(id);
        vm.assertEq(uint256(status), uint256(IEthML.Status.NoConsensus), "a 2-2 split decides nothing");
    }

    // 3. Predictable challenges -------------------------------------------------------------------

    function test_cannot_open_a_round_and_fill_it_in_one_transaction() public {
        _request(classifier, 0);
        _request(classifier, 0);
        vm.roll(block.number + 51);
        OpenAndFill attacker = new OpenAndFill();
        uint256[5] memory nonces;
        vm.expectRevert(abi.encodeWithSelector(IEthML.ChallengeNotYetAvailable.selector, 2, block.number));
        attacker.attack(ethml, 1, 2, nonces);
    }

    function test_nonces_ground_before_the_opening_block_do_not_count() public {
        _deploy(1 << 12, 1 << 12);
        _request(classifier, 0);
        // The attacker guesses the opening block's hash before it exists and grinds ahead.
        bytes32 guess = ethml.challengeFor(keccak256("a guess at the next block hash"), 1);
        uint256 target = type(uint256).max / (1 << 12);
        uint256 nonce;
        while (uint256(keccak256(abi.encodePacked(guess, miners[0], nonce))) >= target) {
            ++nonce;
        }
        vm.roll(block.number + 1);
        (bytes32 real,) = _challenge();
        vm.assertTrue(real != guess, "the real challenge needs the real block hash");
        vm.assume(uint256(keccak256(abi.encodePacked(real, miners[0], nonce))) >= target);
        vm.prank(miners[0]);
        vm.expectRevert(abi.encodeWithSelector(IEthML.InvalidNonce.selector, 1, miners[0], nonce));
        ethml.commit(1, nonce, bytes32(0));
    }

    // 4. Callback gas paid by the requester --------------------------------------------------------

    /// The closer is made whole for a consumer's 1,000,000-gas callback, and not enriched by it beyond the
    /// cold-consumer allowance (2,600 gas) that a forge test, where the consumer's account is already
    /// warm, does not charge. The closer's account exists before (a miner sends transactions): an ETH
    /// transfer to a new account would cost 25,000 gas more and hide the machinery's real cost.
    function test_closing_miner_does_not_pay_for_a_heavy_callback() public {
        uint256 price = 10 gwei;
        vm.fee(8 gwei); // the closer's price is within base fee + maxPriorityFee (2 gwei)
        vm.txGasPrice(price);
        vm.assertTrue(miners[4].balance > 0, "the closer's account exists");
        _closerNetCost(0); // the first close creates counters: not a fair comparison
        uint256 plain = _closerNetCost(0);
        uint256 heavy = _closerNetCost(1_000_000);
        vm.assertTrue(heavy <= plain, "a 1M-gas callback costs the closer nothing");
        vm.assertTrue(plain - heavy <= 5_000 * price, "and pays it within 5,000 gas of its cost");
    }

    /// @dev The closer's net cost in wei (gas used at `price`, minus the reimbursement) of the close.
    function _closerNetCost(uint256 callbackGas) internal returns (uint256) {
        if (callbackGas == 0) {
            _request(classifier, 0);
        } else {
            HeavyConsumer consumer = new HeavyConsumer(ethml);
            uint256 deposit = ethml.minimumDeposit(callbackGas) * 10;
            vm.deal(address(this), deposit);
            consumer.request{value: deposit}(classifier, CID, callbackGas);
        }
        uint256 roundId = _currentRound();
        _commitAll(roundId, [_one(1), _one(1), _one(1), _one(1), _one(1)]);
        for (uint256 i = 0; i < 4; ++i) {
            _revealAs(miners[i], roundId, _one(1));
        }
        address closer = miners[4];
        (address[5] memory who, int256[] memory table) = _table(roundId, closer, _one(1));
        bytes32 salt = _salt(closer, roundId);
        uint256 balance = closer.balance;
        vm.prank(closer);
        uint256 before = gasleft();
        ethml.revealAndClose{gas: 2_000_000}(roundId, salt, who, table);
        uint256 used = before - gasleft();
        uint256 reimbursed = closer.balance - balance;
        return used * tx.gasprice - reimbursed;
    }

    function test_deposit_left_over_goes_back_to_the_requester() public {
        vm.txGasPrice(1 gwei);
        HeavyConsumer consumer = new HeavyConsumer(ethml);
        vm.deal(address(this), 1 ether);
        uint256 id = consumer.request{value: 0.01 ether}(classifier, CID, 100_000);
        _round(1, [int256(1), 1, 1, 1, 1]);
        uint256 left = ethml.depositOf(id);
        vm.assertTrue(left > 0 && left < 0.01 ether, "part of the deposit paid the closer");
        vm.prank(address(consumer));
        ethml.withdrawDeposit(id, payable(USER));
        vm.assertEq(USER.balance, left, "the rest is the requester's");
    }

    // 5. Starvation --------------------------------------------------------------------------------

    function test_requester_can_cancel_a_queued_request() public {
        _request(classifier, 0);
        uint256 a = _request(classifier, 3 ether);
        uint256 b = _request(classifier, 2 ether);
        uint256 c = _request(classifier, 1 ether);
        uint256 balance = token.balanceOf(USER);
        uint256 position = ethml.queuePosition(b);
        vm.prank(miners[0]);
        vm.expectRevert(abi.encodeWithSelector(IEthML.NotRequester.selector, b, miners[0]));
        ethml.cancelRequest(b, position);
        vm.prank(USER);
        vm.expectRevert(abi.encodeWithSelector(IEthML.StaleQueueHint.selector, b, position + 1));
        ethml.cancelRequest(b, position + 1);
        vm.prank(USER);
        ethml.cancelRequest(b, position);
        vm.assertEq(token.balanceOf(USER), balance + 2 ether, "tip refunded");
        vm.assertEq(uint256(ethml.requestStatus(b)), uint256(IEthML.Status.Cancelled), "cancelled");
        vm.assertEq(ethml.pendingCount(), 2, "left the queue");
        vm.prank(USER);
        vm.expectRevert(abi.encodeWithSelector(IEthML.NotQueued.selector, 1));
        ethml.cancelRequest(1, 0);
        // The queue still serves the others in order.
        _roundAll(1);
        vm.assertEq(_currentId(), a, "highest tip next");
        _roundAll(1);
        vm.assertEq(_currentId(), c, "then the rest, without the cancelled one");
    }

    function test_out_tipped_request_expires_when_popped_with_bounded_work() public {
        EthML.Parameters memory p = _params(1, 1);
        p.maxQueueBlocks = 100;
        _deployWith(p);
        _request(classifier, 0);
        uint256[4] memory starved;
        for (uint256 i = 0; i < 4; ++i) {
            starved[i] = _request(classifier, 1 ether);
        }
        uint256 balance = token.balanceOf(USER);
        vm.roll(block.number + 101);
        uint256 fresh = _request(classifier, 0);
        _expire(1);
        // Two stale requests are expired and refunded on this close, no more; the third is served.
        vm.assertEq(uint256(ethml.requestStatus(starved[0])), uint256(IEthML.Status.Expired), "first expired");
        vm.assertEq(uint256(ethml.requestStatus(starved[1])), uint256(IEthML.Status.Expired), "second expired");
        vm.assertEq(_currentId(), starved[2], "bounded: the third is opened");
        vm.assertEq(token.balanceOf(USER), balance + 2 ether, "both tips refunded");
        vm.assertEq(uint256(ethml.requestStatus(fresh)), uint256(IEthML.Status.Queued), "the fresh one waits");
    }

    // 6. Reward farming ----------------------------------------------------------------------------

    function test_self_made_requests_do_not_mint_faster_than_honest_mining() public {
        // Honest mining: one round per targetSolveTime (15 s) for ten minutes.
        uint256 start = ethml.totalRewardsIssued();
        for (uint256 i = 0; i < 40; ++i) {
            vm.warp(block.timestamp + 15);
            _request(classifier, 0);
            _roundAll(1);
        }
        uint256 honest = ethml.totalRewardsIssued() - start;
        // Farming: the same five addresses request and mine their own zero-tip requests, one round
        // every two seconds, for the next ten minutes.
        start = ethml.totalRewardsIssued();
        for (uint256 i = 0; i < 300; ++i) {
            vm.warp(block.timestamp + 2);
            _request(classifier, 0);
            _roundAll(1);
        }
        uint256 farmed = ethml.totalRewardsIssued() - start;
        vm.assertTrue(farmed <= honest, "farming mints no more per hour than mining honestly");
        vm.assertEq(honest, 40 * 5 * uint256(BASE_REWARD), "honest mining is paid in full");
    }

    // 7. Admin hits the live round -----------------------------------------------------------------

    function test_parameter_changes_wait_for_the_next_round() public {
        _request(classifier, 0);
        _request(classifier, 0);
        EthML.Parameters memory p = _params(8, 8);
        p.baseReward = 2 ether;
        p.expiryBlocks = 5;
        p.minerBond = 3 ether;
        vm.prank(ADMIN);
        ethml.setParameters(p);
        (, bool pending) = ethml.pendingParameters();
        vm.assertTrue(pending, "pending");
        EthML.CurrentRound memory r = ethml.getCurrentRound();
        vm.assertEq(r.difficulty, 1, "the live round keeps its difficulty");
        vm.assertEq(r.commitDeadline, r.openBlock + 50, "and its expiry");
        vm.assertEq(r.bond, BOND, "and its bond");
        _roundAll(1);
        vm.assertEq(ethml.minerBalance(miners[0]), BOND + BASE_REWARD, "and its reward");
        r = ethml.getCurrentRound();
        vm.assertEq(r.difficulty, 8, "the next round has the new difficulty");
        vm.assertEq(r.commitDeadline, r.openBlock + 5, "the new expiry");
        vm.assertEq(r.bond, 3 ether, "and the new bond");
        (, pending) = ethml.pendingParameters();
        vm.assertTrue(!pending, "applied");
    }

    function test_base_reward_and_bond_have_hard_caps() public {
        EthML.Parameters memory p = _params(1, 1);
        p.baseReward = 1_000_000 ether;
        vm.prank(ADMIN);
        vm.expectRevert(abi.encodeWithSelector(IEthML.InvalidParameters.selector, "baseReward above 100 EML"));
        ethml.setParameters(p);
        p = _params(1, 1);
        p.minerBond = 1_000 ether;
        vm.prank(ADMIN);
        vm.expectRevert(abi.encodeWithSelector(IEthML.InvalidParameters.selector, "minerBond above 100 EML"));
        ethml.setParameters(p);
    }

    function test_timelock_admin_delays_every_change() public {
        address[] memory proposers = new address[](1);
        proposers[0] = ADMIN;
        EthMLTimelock timelock = new EthMLTimelock(2 days, proposers, proposers);
        EthML governed = new EthML(token, registry, address(timelock), _params(1, 1));
        EthML.Parameters memory p = _params(4, 4);
        vm.prank(ADMIN);
        vm.expectRevert(
            abi.encodeWithSelector(IAccessControl.AccessControlUnauthorizedAccount.selector, ADMIN, bytes32(0))
        );
        governed.setParameters(p);
        bytes memory call = abi.encodeCall(EthML.setParameters, (p));
        vm.prank(ADMIN);
        timelock.schedule(address(governed), 0, call, bytes32(0), bytes32(0), 2 days);
        vm.prank(ADMIN);
        vm.expectRevert();
        timelock.execute(address(governed), 0, call, bytes32(0), bytes32(0));
        vm.warp(block.timestamp + 2 days);
        vm.prank(ADMIN);
        timelock.execute(address(governed), 0, call, bytes32(0), bytes32(0));
        vm.assertEq(governed.difficulty(), 4, "applied after the delay");
    }

    // 8. Small ones ----------------------------------------------------------------------------------

    function test_close_events_carry_the_shares() public {
        uint256 id = _request(classifier, 10 ether);
        _commitAll(1, [_one(1), _one(1), _one(1), _one(1), _one(1)]);
        for (uint256 i = 0; i < 4; ++i) {
            _revealAs(miners[i], 1, _one(1));
        }
        address[5] memory who = [miners[0], miners[1], miners[2], miners[3], miners[4]];
        uint256 each = uint256(BASE_REWARD) + 2 ether;
        uint256[5] memory rewards = [each, each, each, each, each];
        uint256[5] memory back = [uint256(BOND), BOND, BOND, BOND, BOND];
        (address[5] memory closers, int256[] memory table) = _table(1, miners[4], _one(1));
        bytes32 salt = _salt(miners[4], 1);
        vm.expectEmit();
        emit IEthML.RoundClosed(1, who, 0x1f, rewards, back);
        vm.expectEmit();
        emit IEthML.PredictionFinalized(id, 1, 1, IEthML.Status.Finalized, 5, 0x1f, BASE_REWARD, 2 ether);
        vm.prank(miners[4]);
        ethml.revealAndClose(1, salt, closers, table);
    }
}
