// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {TrainingBase} from "../src/TrainingBase.sol";
import {vm} from "./Base.sol";
import {TrainingFixture} from "./TrainingFixture.sol";

/// @dev Attacks found by reading only TrainingTasks and docs/training.md as an outsider, after the
/// redesign: each performed, each shown to fail.
contract TrainingOwnReviewTest is TrainingFixture {
    address internal attacker;

    function setUp() public {
        _setUpTraining();
        attacker = spares[0];
    }

    function _fund(address who, uint256 amount) internal {
        vm.prank(requester);
        token.transfer(who, amount);
    }

    function _readyToDraw() internal returns (uint256 id) {
        id = _create(3, 800_000);
        _submitAll(id, _one(trainers[0]), _cids(MODEL), _claims(950_000));
    }

    function _panelOf(uint256 id) internal view returns (bytes32) {
        return keccak256(abi.encode(_seated(id)));
    }

    /// Once the fixed block is mined its hash is public, and the draw can be computed before anyone calls
    /// drawPanel. Staking more, stepping in or out, or leaving after that point does not move the draw:
    /// it reads the weights as they stood when the draw was fixed.
    function test_stake_changes_after_the_draw_is_fixed_cannot_steer_it() public {
        _stake(attacker, TrainingBase.Role.Validator, STAKE); // a validator before the draw is fixed
        vm.roll(block.number + 1);
        uint256 id = _readyToDraw();
        uint256 drawBlock = _task(id).drawBlock;
        vm.roll(drawBlock + 1);
        vm.setBlockhash(drawBlock, keccak256("public now"));
        uint256 snap = vm.snapshotState();
        panel.drawPanel(id);
        bytes32 fair = _panelOf(id);
        vm.revertToState(snap);
        // Everything an attacker who read the hash could do before calling drawPanel:
        _fund(attacker, 50_000 ether);
        _stake(attacker, TrainingBase.Role.Validator, 50_000 ether);
        for (uint256 i; i < 5; ++i) {
            _stake(spares[1 + i], TrainingBase.Role.Validator, STAKE); // new sybils
        }
        vm.prank(validators[0]);
        tasks.setActive(false);
        vm.prank(validators[1]);
        tasks.requestUnstake(TrainingBase.Role.Validator);
        panel.drawPanel(id);
        vm.assertEq(_panelOf(id), fair, "the same panel");
    }

    /// A validator drawn from the weights at the fixing block may have left before the draw: its seat
    /// stays empty for the next round instead of going to whoever holds the slot now.
    function test_a_seat_whose_validator_left_before_the_draw_waits_for_the_next_round() public {
        uint256 id = _readyToDraw();
        vm.roll(block.number + 1); // the draw is fixed; what follows happens after
        address leaving = validators[3];
        vm.prank(leaving);
        tasks.requestUnstake(TrainingBase.Role.Validator); // after the fixing block: still in that draw
        vm.warp(block.timestamp + 1 days);
        vm.prank(leaving);
        tasks.withdrawStake(TrainingBase.Role.Validator);
        _stake(attacker, TrainingBase.Role.Validator, 1_000 ether); // would love that slot
        bool sawEmpty;
        for (uint256 s; s < 40 && !sawEmpty; ++s) {
            uint256 snap = vm.snapshotState();
            _draw(id, keccak256(abi.encode(s)));
            vm.assertTrue(!_isSeated(id, leaving) && !_isSeated(id, attacker), "neither the leaver nor a newcomer");
            if (_task(id).seated < 3) {
                sawEmpty = true;
                vm.warp(_task(id).scoreDeadline + 1);
                panel.replaceNoShows(id); // the empty seat is drawn again
                _draw(id, keccak256("next"));
                vm.assertEq(uint256(_task(id).seated), 3, "filled in the next round");
            } else {
                vm.revertToState(snap);
            }
        }
        vm.assertTrue(sawEmpty, "some seed lands on the leaver's slot");
    }

    /// A trainer that also holds most of the validator stake never sits on its own task's panel.
    function test_a_trainer_is_never_drawn_for_its_own_task() public {
        _fund(trainers[0], 50_000 ether);
        _stake(trainers[0], TrainingBase.Role.Validator, 50_000 ether);
        vm.roll(block.number + 1);
        uint256 id = _readyToDraw();
        for (uint256 s; s < 30; ++s) {
            uint256 snap = vm.snapshotState();
            _draw(id, keccak256(abi.encode(s)));
            vm.assertTrue(!_isSeated(id, trainers[0]), "never its own panel");
            vm.revertToState(snap);
        }
    }

    /// A validator that wants to copy the others' scores must commit first; whatever it committed is all
    /// it can reveal once it has seen theirs, and not revealing costs slashBps.
    function test_a_validator_cannot_copy_revealed_scores() public {
        uint256 id = _readyToDraw();
        _draw(id, keccak256("seed"));
        address[] memory seated = _seated(id);
        _commitVote(id, seated[0], false, _scores(950_000));
        _commitVote(id, seated[1], false, _scores(950_000));
        vm.prank(seated[2]);
        panel.commitScores(id, keccak256("a guess"));
        _revealVote(id, seated[0]);
        _revealVote(id, seated[1]);
        vm.prank(seated[2]);
        vm.expectRevert(abi.encodeWithSelector(TrainingBase.CommitmentMismatch.selector, id, seated[2]));
        panel.revealScores(id, false, _scores(950_000), _voteSalt(id, seated[2]));
        _afterScoreReveals(id);
        _finalize(id);
        vm.assertEq(_validatorStake(seated[2]), STAKE - 10 ether, "no reveal: slashed");
    }

    /// A validator outvoted on several submissions of one task is slashed once.
    function test_a_validator_outvoted_on_every_submission_is_slashed_once() public {
        uint256 id = _create(3, 800_000);
        _submitAll(id, _two(trainers[0], trainers[1]), _cids(MODEL, JUNK), _claims(950_000, 900_000));
        _draw(id, keccak256("seed"));
        address[] memory seated = _seated(id);
        _commitVote(id, seated[0], false, _scores(0, 1_000_000));
        _commitVote(id, seated[1], false, _scores(950_000, 100_000));
        _commitVote(id, seated[2], false, _scores(950_000, 100_000));
        for (uint256 i; i < 3; ++i) {
            _revealVote(id, seated[i]);
        }
        _finalize(id);
        vm.assertEq(_validatorStake(seated[0]), STAKE - 10 ether, "slashBps once");
    }

    /// A freed validator slot is not handed to a newcomer until no draw can still read its old weight.
    function test_a_freed_slot_is_quarantined() public {
        uint256 slot = tasks.stakeOf(validators[6], TrainingBase.Role.Validator).slot;
        vm.prank(validators[6]);
        tasks.requestUnstake(TrainingBase.Role.Validator);
        vm.warp(block.timestamp + 1 days);
        vm.prank(validators[6]);
        tasks.withdrawStake(TrainingBase.Role.Validator);
        _stake(spares[1], TrainingBase.Role.Validator, STAKE);
        vm.assertTrue(tasks.stakeOf(spares[1], TrainingBase.Role.Validator).slot != slot, "not yet");
        vm.roll(block.number + tasks.SLOT_QUARANTINE() + 1);
        _stake(spares[2], TrainingBase.Role.Validator, STAKE);
        vm.assertEq(uint256(tasks.stakeOf(spares[2], TrainingBase.Role.Validator).slot), slot, "reused after it");
    }

    /// Stake under the minimum takes no place in the draw (so a swarm of dust stakes cannot fill it).
    function test_stake_below_the_minimum_takes_no_draw_slot() public {
        _stake(spares[1], TrainingBase.Role.Validator, STAKE - 1);
        vm.assertEq(uint256(tasks.stakeOf(spares[1], TrainingBase.Role.Validator).slot), 0, "no slot");
        _stake(spares[1], TrainingBase.Role.Validator, 1);
        vm.assertTrue(tasks.stakeOf(spares[1], TrainingBase.Role.Validator).slot != 0, "a slot at the minimum");
    }

    /// A claim that does not reproduce on the holdout: honest validators vote 0 for its artifact (it
    /// fails its checks), so it is not accepted and loses its bond, though its test-set score would
    /// have been higher; the lower honest submission wins.
    function test_an_inflated_claim_is_not_accepted() public {
        uint256 id = _create(3, 500_000);
        _submitAll(id, _two(trainers[0], trainers[1]), _cids(MODEL, JUNK), _claims(800_000, 990_000));
        _draw(id, keccak256("seed"));
        _allVote(id, false, _scores(800_000, 0));
        _finalize(id);
        vm.assertEq(_task(id).accepted, 1, "the honest claim");
        vm.assertEq(uint256(tasks.getSubmission(id, 1).bond), uint256(TrainingBase.Bond.Forfeited), "inflated");
    }

    address internal leaver;

    /// @dev Seats 0-4: validators 0 and 1 and the attacker once each, the other two seats empty (the lot
    /// fell on the leaver, whose stake is gone).
    function _threeOfFive(uint256 id) internal view returns (bool) {
        address[] memory seated = _seated(id);
        uint256 empty;
        for (uint256 i; i < 5; ++i) {
            if (seated[i] == address(0)) ++empty;
        }
        return empty == 2 && panel.memberOf(id, validators[0]).seats == 1 && panel.memberOf(id, validators[1]).seats == 1
            && panel.memberOf(id, attacker).seats == 1;
    }

    /// @dev The two empty seats stay empty (the lot falls on the leaver again).
    function _twoEmpty(uint256 id) internal view returns (bool) {
        return _task(id).seated == 3;
    }

    /// @dev The leaver stakes, the next draw is fixed, the leaver leaves before it is made: its weight is
    /// in that draw, its stake is not, so seats the lot gives it stay empty.
    function _leaveAfterTheFixing(uint256 id, bool first) internal {
        if (!first) {
            _stake(leaver, TrainingBase.Role.Validator, 1_000 ether);
            vm.roll(block.number + 1);
            vm.warp(_task(id).scoreDeadline + 1);
            panel.replaceNoShows(id); // nobody to fine; the empty seats are drawn again
        }
        vm.roll(block.number + 1);
        vm.prank(leaver);
        tasks.requestUnstake(TrainingBase.Role.Validator);
        vm.warp(block.timestamp + 1 days);
        vm.prank(leaver);
        tasks.withdrawStake(TrainingBase.Role.Validator);
    }

    /// A panel short of seats: a requester asks for 5 seats; besides two honest validators and its own,
    /// most of the stake belongs to a validator that leaves each time a draw is fixed, so the lot leaves
    /// two seats empty in all three draws. Its own validator commits and never reveals. A clear majority
    /// is counted against the seats filled (2 of 3), so that one silent seat cannot block the two honest
    /// ones and win the requester a refund.
    function test_a_silent_seat_cannot_block_a_panel_short_of_validators() public {
        for (uint256 i = 2; i < 7; ++i) {
            vm.prank(validators[i]);
            tasks.setActive(false); // two honest validators left, plus the requester's
        }
        leaver = spares[1];
        _stake(attacker, TrainingBase.Role.Validator, STAKE);
        _stake(leaver, TrainingBase.Role.Validator, 1_000 ether);
        vm.roll(block.number + 1);
        uint256 id = _create(5, 800_000);
        _submitAll(id, _one(trainers[0]), _cids(MODEL), _claims(950_000));
        _leaveAfterTheFixing(id, true);
        _drawUntil(id, _threeOfFive);
        _commitVote(id, validators[0], false, _scores(950_000));
        _commitVote(id, validators[1], false, _scores(950_000));
        _commitVote(id, attacker, false, _scores(0));
        for (uint256 round = 1; round < 3; ++round) {
            _leaveAfterTheFixing(id, false);
            _drawUntil(id, _twoEmpty);
        }
        vm.assertEq(uint256(_task(id).seated), 3, "three of five seats");
        vm.warp(_task(id).scoreDeadline + 1);
        _revealVote(id, validators[0]);
        _revealVote(id, validators[1]);
        _afterScoreReveals(id);
        uint256 before = token.balanceOf(requester);
        _finalize(id);
        vm.assertEq(uint256(_task(id).status), uint256(TrainingBase.Status.Accepted), "two of three seats decide");
        vm.assertEq(token.balanceOf(requester), before, "no refund");
        vm.assertEq(_validatorStake(attacker), STAKE - 10 ether, "the silent seat is slashed");
    }
}

