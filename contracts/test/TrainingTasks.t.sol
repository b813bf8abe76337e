// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {ModelRegistry} from "../src/ModelRegistry.sol";
import {TrainingBase} from "../src/TrainingBase.sol";
import {TrainingTasks} from "../src/TrainingTasks.sol";
import {TrainingValidation} from "../src/TrainingValidation.sol";
import {vm} from "./Base.sol";
import {TrainingFixture} from "./TrainingFixture.sol";

/// @dev A task's life, every window and every refusal.
contract TrainingTasksTest is TrainingFixture {
    uint256 internal constant BOND = 10 ether; // 10 % of the reward

    function setUp() public {
        _setUpTraining();
    }

    function _held() internal view returns (uint256 total) {
        for (uint256 i; i < 4; ++i) {
            total += _stakeOf(trainers[i], TrainingBase.Role.Trainer).amount;
        }
        for (uint256 i; i < 7; ++i) {
            total += _validatorStake(validators[i]);
        }
    }

    function test_an_honest_task_is_accepted_paid_and_registered() public {
        uint256 id = _create(3, 800_000);
        _submitAll(id, _two(trainers[0], trainers[1]), _cids(MODEL, JUNK), _claims(950_000, 900_000));
        _draw(id, keccak256("seed"));
        address[] memory seated = _seated(id);
        _allVote(id, false, _scores(950_000, 0)); // the junk fails its checks: 0
        uint256 trainerBefore = token.balanceOf(trainers[0]);
        _finalize(id); // every seat revealed: no need to wait for the window's end
        TrainingBase.Task memory t = _task(id);
        vm.assertEq(uint256(t.status), uint256(TrainingBase.Status.Accepted), "accepted");
        vm.assertEq(t.accepted, 1, "the first submission");
        vm.assertEq(uint256(t.registration), uint256(TrainingBase.Registration.Registered), "registered");
        ModelRegistry.Model memory m = registry.getModel(t.modelId);
        vm.assertEq(m.cid, MODEL, "model cid");
        vm.assertEq(m.artifactSha256, _sha(MODEL), "artifact sha256");
        vm.assertEq(uint256(m.featureCount), 13, "feature count from the terms");
        vm.assertEq(token.balanceOf(trainers[0]) - trainerBefore, 80 ether, "the reward less the validator part");
        for (uint256 i; i < 3; ++i) {
            vm.assertTrue(token.balanceOf(seated[i]) >= FUNDS - STAKE + 6.66 ether, "validators share 20 EML");
        }
        vm.assertEq(uint256(tasks.getSubmission(id, 0).score), 950_000, "decided score");
        vm.assertEq(uint256(tasks.getSubmission(id, 1).bond), uint256(TrainingBase.Bond.Forfeited), "junk forfeits");
        vm.assertEq(_stakeOf(trainers[1], TrainingBase.Role.Trainer).amount, STAKE - BOND, "bond left the stake");
        vm.assertEq(_stakeOf(trainers[0], TrainingBase.Role.Trainer).locked, 0, "bond released");
        vm.assertEq(tasks.pendingBurn(), BOND, "the forfeited bond waits for the burn");
        vm.assertEq(token.balanceOf(address(tasks)), _held() + tasks.pendingBurn(), "escrow paid out");
        vm.expectRevert(abi.encodeWithSelector(TrainingBase.TaskClosed.selector, id, TrainingBase.Status.Accepted));
        _finalize(id);
    }

    function test_penalties_are_burned_by_anyone() public {
        uint256 id = _create(1, 800_000);
        _commit(id, trainers[0], MODEL, 900_000);
        vm.warp(_task(id).revealDeadline + 1); // never revealed: the bond is forfeited
        _finalize(id);
        vm.assertEq(uint256(_task(id).status), uint256(TrainingBase.Status.Empty), "nothing revealed");
        uint256 supply = token.totalSupply();
        vm.prank(spares[0]);
        panel.burnPenalties();
        vm.assertEq(supply - token.totalSupply(), BOND, "burned");
        vm.assertEq(tasks.pendingBurn(), 0, "nothing pending");
    }

    function test_nobody_submitting_refunds_the_requester_after_the_submit_window() public {
        uint256 id = _create(3, 0);
        uint256 deadline = _task(id).submitDeadline;
        vm.expectRevert(
            abi.encodeWithSelector(TrainingBase.TooEarly.selector, id, TrainingBase.Step.Finalize, deadline + 1)
        );
        _finalize(id);
        vm.warp(deadline + 1);
        uint256 before = token.balanceOf(requester);
        _finalize(id);
        vm.assertEq(token.balanceOf(requester) - before, REWARD, "full refund");
        vm.assertEq(uint256(_task(id).status), uint256(TrainingBase.Status.Empty), "empty");
    }

    function test_roles_come_from_stakes_and_bonds_lock_free_stake() public {
        uint256 id = _create(1, 0);
        vm.prank(spares[0]);
        vm.expectRevert(
            abi.encodeWithSelector(TrainingBase.NotStaked.selector, spares[0], TrainingBase.Role.Trainer)
        );
        tasks.commitSubmission(id, bytes32(0));
        vm.prank(requester);
        vm.expectRevert(abi.encodeWithSelector(TrainingBase.RequesterCannotSubmit.selector, id));
        tasks.commitSubmission(id, bytes32(0));
        _commit(id, trainers[0], MODEL, 900_000);
        vm.prank(trainers[0]);
        vm.expectRevert(abi.encodeWithSelector(TrainingBase.AlreadySubmitted.selector, id, trainers[0]));
        tasks.commitSubmission(id, bytes32(0));
        // A reward of 1,000 EML asks a 100 EML bond: the trainer's whole free stake, once.
        TrainingTasks.Terms memory big = _terms(1, 0);
        big.reward = 1_000 ether;
        vm.startPrank(requester);
        uint256 a = tasks.createTask(big);
        uint256 b = tasks.createTask(big);
        vm.stopPrank();
        _commit(a, trainers[1], MODEL, 900_000);
        vm.prank(trainers[1]);
        vm.expectRevert(abi.encodeWithSelector(TrainingBase.FreeStakeBelowBond.selector, trainers[1], 0, 100 ether));
        tasks.commitSubmission(b, bytes32(0));
        vm.assertEq(_stakeOf(trainers[1], TrainingBase.Role.Trainer).locked, 100 ether, "locked");
    }

    /// Unstaking waits the delay; then everything but the bonds of open submissions comes back at once,
    /// the bonds once their tasks settle.
    function test_stakes_wait_for_the_delay_and_open_work_locks_only_its_bond() public {
        uint256 id = _create(1, 0);
        _commit(id, trainers[0], MODEL, 900_000);
        vm.startPrank(trainers[0]);
        vm.expectRevert(
            abi.encodeWithSelector(TrainingBase.UnstakeNotRequested.selector, trainers[0], TrainingBase.Role.Trainer)
        );
        tasks.withdrawStake(TrainingBase.Role.Trainer);
        tasks.requestUnstake(TrainingBase.Role.Trainer);
        uint256 unlockAt = block.timestamp + 1 days;
        vm.warp(unlockAt - 1);
        vm.expectRevert(
            abi.encodeWithSelector(
                TrainingBase.StakeLocked.selector, trainers[0], TrainingBase.Role.Trainer, unlockAt, 1
            )
        );
        tasks.withdrawStake(TrainingBase.Role.Trainer);
        vm.warp(unlockAt);
        tasks.withdrawStake(TrainingBase.Role.Trainer); // all but the open bond
        vm.assertEq(token.balanceOf(trainers[0]), FUNDS - BOND, "the free stake is back");
        vm.assertEq(_stakeOf(trainers[0], TrainingBase.Role.Trainer).amount, BOND, "the bond stays");
        vm.expectRevert(
            abi.encodeWithSelector(
                TrainingBase.StakeLocked.selector, trainers[0], TrainingBase.Role.Trainer, unlockAt, 1
            )
        );
        tasks.withdrawStake(TrainingBase.Role.Trainer); // nothing free left
        vm.stopPrank();
        vm.assertTrue(!tasks.isStaked(trainers[0], TrainingBase.Role.Trainer), "leaving: no new work");
        vm.warp(_task(id).revealDeadline + 1);
        _finalize(id); // unrevealed: Empty, the bond forfeited
        vm.assertEq(_stakeOf(trainers[0], TrainingBase.Role.Trainer).amount, 0, "the bond went to the burn");
        vm.prank(trainers[0]);
        vm.expectRevert(
            abi.encodeWithSelector(TrainingBase.NothingStaked.selector, trainers[0], TrainingBase.Role.Trainer)
        );
        tasks.withdrawStake(TrainingBase.Role.Trainer);
    }

    function test_a_validator_leaving_or_stepping_out_is_not_drawn() public {
        (uint256 weight, uint256 total) = tasks.drawWeight(validators[0]);
        vm.assertEq(weight, STAKE, "weight = stake");
        vm.assertEq(total, 7 * STAKE, "total");
        vm.prank(validators[0]);
        tasks.requestUnstake(TrainingBase.Role.Validator);
        vm.prank(validators[1]);
        tasks.setActive(false);
        (weight, total) = tasks.drawWeight(validators[0]);
        vm.assertEq(weight, 0, "leaving");
        vm.assertEq(total, 5 * STAKE, "two out");
        vm.roll(block.number + 1);
        // Each draw from the same state: ten open panels of five would lock the five others' whole
        // stakes (10 % a seat), and a stake fully locked is no longer seated (third review, finding 6).
        for (uint256 s; s < 10; ++s) {
            uint256 snap = vm.snapshotState();
            uint256 id = _create(5, 0);
            _submitAll(id, _one(trainers[0]), _cids(_model(id)), _claims(900_000));
            _draw(id, keccak256(abi.encode(s)));
            vm.assertTrue(!_isSeated(id, validators[0]) && !_isSeated(id, validators[1]), "never drawn");
            vm.assertEq(uint256(_task(id).seated), 5, "the five others");
            vm.revertToState(snap);
        }
    }

    function test_a_no_show_is_fined_benched_and_replaced() public {
        uint256 id = _create(3, 800_000);
        _submitAll(id, _one(trainers[0]), _cids(MODEL), _claims(900_000));
        _drawDistinct(id);
        address[] memory seated = _seated(id);
        _commitVote(id, seated[0], false, _scores(900_000));
        _commitVote(id, seated[1], false, _scores(900_000));
        uint256 deadline = _task(id).scoreDeadline;
        vm.expectRevert(
            abi.encodeWithSelector(TrainingBase.TooEarly.selector, id, TrainingBase.Step.ReplaceNoShows, deadline + 1)
        );
        panel.replaceNoShows(id);
        vm.warp(deadline + 1);
        vm.prank(seated[2]);
        vm.expectRevert(abi.encodeWithSelector(TrainingBase.TooLate.selector, id, TrainingBase.Step.CommitScores, deadline));
        panel.commitScores(id, bytes32(0));
        vm.expectRevert(abi.encodeWithSelector(TrainingBase.PanelIncomplete.selector, id, 2, 3));
        _revealVote(id, seated[0]);
        vm.expectRevert(abi.encodeWithSelector(TrainingBase.PanelIncomplete.selector, id, 2, 3));
        _finalize(id);
        vm.prank(spares[0]); // anyone
        panel.replaceNoShows(id);
        vm.assertEq(_validatorStake(seated[2]), STAKE - 2 ether, "a 2 % slice");
        vm.assertTrue(!_stakeOf(seated[2], TrainingBase.Role.Validator).active, "benched");
        vm.assertTrue(!_isSeated(id, seated[2]), "unseated");
        vm.assertEq(_stakeOf(seated[2], TrainingBase.Role.Validator).openWork, 0, "free of the task");
        _drawUntil(id, _seatTwoUncommitted); // (a draw that seats one of the two again: test_a_seat_...)
        address replacement = panel.getSeat(id, 2).validator;
        vm.assertTrue(replacement != address(0) && replacement != seated[2], "a new validator in the seat");
        vm.assertTrue(replacement != seated[0] && replacement != seated[1], "not one already seated");
        _commitVote(id, replacement, false, _scores(900_000));
        for (uint256 i; i < 2; ++i) {
            _revealVote(id, seated[i]);
        }
        _revealVote(id, replacement);
        _finalize(id);
        vm.assertEq(uint256(_task(id).status), uint256(TrainingBase.Status.Accepted), "completed");
        vm.prank(seated[2]);
        tasks.setActive(true);
        (uint256 weight,) = tasks.drawWeight(seated[2]);
        vm.assertEq(weight, 0, "the slice took it below the minimum stake");
        _stake(seated[2], TrainingBase.Role.Validator, 2 ether);
        (weight,) = tasks.drawWeight(seated[2]);
        vm.assertEq(weight, STAKE, "topped up: back in the draw");
    }

    /// @dev Seat 2 went to a validator that has not committed (not one of the committed, drawn again).
    function _seatTwoUncommitted(uint256 id) internal view returns (bool) {
        return panel.getSeat(id, 2).state == TrainingBase.SeatState.Drawn;
    }

    function test_after_the_last_round_the_panel_decides_with_the_seats_it_has() public {
        uint256 id = _create(3, 800_000);
        _submitAll(id, _one(trainers[0]), _cids(MODEL), _claims(900_000));
        _drawDistinct(id);
        address[] memory first = _seated(id);
        _commitVote(id, first[0], false, _scores(900_000));
        _commitVote(id, first[1], false, _scores(900_000));
        address[] memory missing = new address[](3);
        for (uint256 round = 1; round < 3; ++round) {
            vm.warp(_task(id).scoreDeadline + 1);
            missing[round - 1] = panel.getSeat(id, 2).validator;
            panel.replaceNoShows(id);
            _drawUntil(id, _seatTwoUncommitted);
        }
        missing[2] = panel.getSeat(id, 2).validator;
        uint256 deadline = _task(id).scoreDeadline;
        vm.warp(deadline + 1);
        vm.expectRevert(abi.encodeWithSelector(TrainingBase.NoRoundsLeft.selector, id, 3));
        panel.replaceNoShows(id);
        _revealVote(id, first[0]);
        _revealVote(id, first[1]);
        vm.warp(deadline + REVEAL + 1);
        _finalize(id);
        vm.assertEq(uint256(_task(id).status), uint256(TrainingBase.Status.Accepted), "two of three seats agree");
        for (uint256 i; i < 3; ++i) {
            vm.assertEq(_validatorStake(missing[i]), STAKE - 2 ether, "each no-show fined once");
        }
        vm.assertEq(_stakeOf(missing[2], TrainingBase.Role.Validator).openWork, 0, "released");
    }

    function test_no_clear_majority_refunds_the_requester_less_the_validators() public {
        uint256 id = _create(3, 800_000);
        _submitAll(id, _one(trainers[0]), _cids(MODEL), _claims(900_000));
        _drawDistinct(id);
        address[] memory seated = _seated(id);
        _commitVote(id, seated[0], true, _scores(900_000));
        _commitVote(id, seated[1], false, _scores(900_000));
        _commitVote(id, seated[2], false, _scores(900_000));
        _revealVote(id, seated[0]);
        _revealVote(id, seated[1]); // seated[2] never reveals
        _afterScoreReveals(id);
        uint256 before = token.balanceOf(requester);
        _finalize(id);
        vm.assertEq(uint256(_task(id).status), uint256(TrainingBase.Status.Undecided), "one each way");
        vm.assertEq(token.balanceOf(requester) - before, 80 ether, "the reward less the validators' part");
        vm.assertEq(_validatorStake(seated[0]), STAKE, "no majority: nobody outvoted");
        vm.assertEq(_validatorStake(seated[1]), STAKE, "no majority: nobody outvoted");
        vm.assertEq(_validatorStake(seated[2]), STAKE - 10 ether, "never revealed");
        vm.assertEq(_stakeOf(trainers[0], TrainingBase.Role.Trainer).amount, STAKE, "bond released");
    }

    function test_draws_are_weighted_by_stake() public {
        // Validators 0..5 step out; validator 6 (100 EML) against spares[0] (300 EML): about 1 to 3.
        for (uint256 i; i < 6; ++i) {
            vm.prank(validators[i]);
            tasks.setActive(false);
        }
        _stake(spares[0], TrainingBase.Role.Validator, 300 ether);
        vm.roll(block.number + 1);
        uint256 id = _create(1, 0);
        _submitAll(id, _one(trainers[0]), _cids(MODEL), _claims(900_000));
        uint256 small;
        for (uint256 s; s < 200; ++s) {
            uint256 snap = vm.snapshotState();
            _draw(id, keccak256(abi.encode(s)));
            if (_isSeated(id, validators[6])) ++small;
            vm.revertToState(snap);
        }
        vm.assertTrue(small > 30 && small < 70, "drawn about a quarter of the time");
    }

    function test_the_validation_half_called_directly_holds_and_changes_nothing() public {
        uint256 id = _create(1, 0);
        TrainingValidation direct = TrainingValidation(tasks.validation());
        vm.expectRevert(abi.encodeWithSelector(TrainingBase.UnknownTask.selector, id));
        direct.finalizeTask(id);
        direct.burnPenalties();
        vm.assertEq(token.balanceOf(address(direct)), 0, "holds nothing");
        (bool hasRoles,) = address(direct).staticcall(abi.encodeCall(tasks.hasRole, (bytes32(0), ADMIN)));
        vm.assertTrue(!hasRoles, "no role code, so no roles");
        vm.assertEq(uint256(_task(id).status), uint256(TrainingBase.Status.Open), "the task is untouched");
    }

    function test_pausing_stops_new_tasks_and_stakes_only() public {
        uint256 id = _create(1, 0);
        _commit(id, trainers[0], MODEL, 900_000);
        vm.prank(ADMIN);
        tasks.pause();
        TrainingTasks.Terms memory terms = _terms(1, 0);
        vm.prank(requester);
        vm.expectRevert(bytes4(keccak256("EnforcedPause()")));
        tasks.createTask(terms);
        vm.prank(trainers[1]);
        vm.expectRevert(bytes4(keccak256("EnforcedPause()")));
        tasks.stake(TrainingBase.Role.Trainer, 1 ether);
        _commit(id, trainers[1], MODEL, 900_000); // open tasks run on
        bytes32 pauser = tasks.PAUSER_ROLE();
        vm.prank(trainers[2]);
        vm.expectRevert(
            abi.encodeWithSelector(
                bytes4(keccak256("AccessControlUnauthorizedAccount(address,bytes32)")), trainers[2], pauser
            )
        );
        tasks.unpause();
    }
}
