// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {DrawTree} from "../src/DrawTree.sol";
import {TrainingBase} from "../src/TrainingBase.sol";
import {TrainingTasks} from "../src/TrainingTasks.sol";
import {vm} from "./Base.sol";
import {TrainingFixture} from "./TrainingFixture.sol";

/// @dev The second outside review's panel findings (5, 7, 8), at the edges of their fixes: seats drawn
/// with replacement, what a seat locks and for how long, leaving around a draw, the draw's places.
contract TrainingFixesPanelTest is TrainingFixture {
    /// @dev TrainingBase's _slotsUsed (forge inspect TrainingTasks storageLayout); checked before use.
    bytes32 internal constant SLOTS_USED = bytes32(uint256(19));
    address internal double;

    function setUp() public {
        _setUpTraining();
    }

    function _slotOf(address v) internal view returns (uint256) {
        return tasks.stakeOf(v, TrainingBase.Role.Validator).slot;
    }

    /// @dev A panel of three seats where one validator holds two.
    function _oneHoldsTwo(uint256 id) internal view returns (bool) {
        address[] memory seated = _seated(id);
        for (uint256 i; i < 3; ++i) {
            if (seated[i] != address(0) && panel.memberOf(id, seated[i]).seats == 2) return true;
        }
        return false;
    }

    function _twoSeatPanel() internal returns (uint256 id, address single) {
        id = _create(3, 800_000);
        _submitAll(id, _one(trainers[0]), _cids(MODEL), _claims(950_000));
        _drawUntil(id, _oneHoldsTwo);
        address[] memory seated = _seated(id);
        for (uint256 i; i < 3; ++i) {
            if (panel.memberOf(id, seated[i]).seats == 2) double = seated[i];
            else single = seated[i];
        }
    }

    // ---------------------------------------------------------------- 7: seats drawn with replacement

    /// A validator drawn twice holds two seats: it commits once, locks 10 % of its weight per seat, its
    /// ballot counts twice (here a clear majority on its own), and it is paid per seat.
    function test_a_validator_drawn_twice_holds_two_seats_one_ballot_paid_per_seat() public {
        (uint256 id, address single) = _twoSeatPanel();
        TrainingBase.Member memory m = panel.memberOf(id, double);
        vm.assertEq(uint256(m.locked), 20 ether, "10 EML locked per seat");
        vm.assertEq(uint256(_stakeOf(double, TrainingBase.Role.Validator).locked), 20 ether, "out of its stake");
        vm.assertEq(uint256(_stakeOf(double, TrainingBase.Role.Validator).openWork), 1, "one task");
        _commitVote(id, double, false, _scores(950_000));
        vm.assertEq(uint256(_task(id).committed), 2, "one commitment, two seats");
        vm.prank(double);
        vm.expectRevert(abi.encodeWithSelector(TrainingBase.AlreadyCommitted.selector, id, double));
        panel.commitScores(id, bytes32(0));
        _commitVote(id, single, false, _scores(0)); // against it
        _revealVote(id, double);
        _revealVote(id, single);
        vm.assertEq(uint256(_task(id).votes), 3, "three votes");
        panel.finalizeTask(id);
        vm.assertEq(uint256(_task(id).status), uint256(TrainingBase.Status.Accepted), "two seats of three decide");
        vm.assertEq(token.balanceOf(double), FUNDS - STAKE + 20 ether, "both seats' pay: 20 EML");
        vm.assertEq(_validatorStake(single), STAKE - 10 ether, "the outvoted seat loses its lock");
        vm.assertEq(_stakeOf(double, TrainingBase.Role.Validator).locked, 0, "locks released");
    }

    /// The same validator silent: it loses both seats' locks, 20 EML; one vote of three seats decides
    /// nothing.
    function test_a_silent_validator_loses_the_lock_of_every_seat_it_holds() public {
        (uint256 id, address single) = _twoSeatPanel();
        _commitVote(id, double, false, _scores(950_000));
        _commitVote(id, single, false, _scores(950_000));
        _revealVote(id, single);
        _afterScoreReveals(id);
        panel.finalizeTask(id);
        vm.assertEq(uint256(_task(id).status), uint256(TrainingBase.Status.Undecided), "1 vote of 3 seats");
        vm.assertEq(_validatorStake(double), STAKE - 20 ether, "two seats, two locks");
        vm.assertEq(_validatorStake(single), STAKE, "the revealed vote keeps its stake");
    }

    /// @dev Seat 2 went to a validator that has already committed (drawn again).
    function _seatTwoCommitted(uint256 id) internal view returns (bool) {
        return panel.getSeat(id, 2).state == TrainingBase.SeatState.Committed;
    }

    /// A no-show's seat drawn again lands on a validator that already committed: its ballot covers the
    /// new seat, the panel is complete at once, and the reveals open (before the new commit window's
    /// announced deadline, which stands: they close revealPeriod after it).
    function test_a_committed_validator_drawn_again_completes_the_panel() public {
        uint256 id = _create(3, 800_000);
        _submitAll(id, _one(trainers[0]), _cids(MODEL), _claims(950_000));
        _drawDistinct(id);
        address[] memory seated = _seated(id);
        _commitVote(id, seated[0], false, _scores(950_000));
        _commitVote(id, seated[1], false, _scores(950_000));
        vm.warp(_task(id).scoreDeadline + 1);
        panel.replaceNoShows(id);
        _drawUntil(id, _seatTwoCommitted);
        address again = panel.getSeat(id, 2).validator;
        vm.assertEq(uint256(_task(id).committed), 3, "complete");
        vm.assertEq(_task(id).scoreDeadline, block.timestamp + _task(id).scorePeriod, "the announced deadline");
        vm.assertEq(uint256(panel.memberOf(id, again).seats), 2, "two seats now");
        _revealVote(id, seated[0]);
        _revealVote(id, seated[1]);
        panel.finalizeTask(id);
        vm.assertEq(uint256(_task(id).status), uint256(TrainingBase.Status.Accepted), "accepted");
        vm.assertEq(_validatorStake(seated[2]), STAKE - 2 ether, "the no-show's slice");
    }

    /// Splitting stake buys nothing: a third of the stake in three minimum stakes is drawn to about a
    /// third of the seats, as the same stake in one account is (300 seats each, the same seeds).
    function test_split_stake_is_drawn_in_proportion_to_its_stake_only() public {
        for (uint256 i; i < 7; ++i) {
            vm.prank(validators[i]);
            tasks.setActive(false);
        }
        _stake(spares[10], TrainingBase.Role.Validator, 600 ether);
        for (uint256 i; i < 3; ++i) {
            _stake(spares[i], TrainingBase.Role.Validator, STAKE); // split
        }
        vm.roll(block.number + 1);
        uint256 id = _create(3, 0);
        _submitAll(id, _one(trainers[0]), _cids(MODEL), _claims(950_000));
        uint256 split = _attackerSeats(id, 3);
        for (uint256 i; i < 3; ++i) {
            vm.prank(spares[i]);
            tasks.setActive(false);
        }
        _stake(spares[5], TrainingBase.Role.Validator, 300 ether); // the same stake, one account
        vm.roll(block.number + 1);
        uint256 whole = _create(3, 0);
        _submitAll(whole, _one(trainers[1]), _cids(_model(whole)), _claims(950_000));
        uint256 single = _attackerSeats(whole, 1);
        vm.assertTrue(split > 70 && split < 130, "a third of 300 seats, split");
        vm.assertTrue(single > 70 && single < 130, "a third of 300 seats, whole");
    }

    /// @dev Seats the attacker's accounts (spares 0-2, or spares 5 when `accounts` is 1) take in 100 draws.
    function _attackerSeats(uint256 id, uint256 accounts) internal returns (uint256 seats) {
        for (uint256 s; s < 100; ++s) {
            uint256 snap = vm.snapshotState();
            _draw(id, keccak256(abi.encode("proportion", s)));
            for (uint256 i; i < accounts; ++i) {
                seats += panel.memberOf(id, accounts == 1 ? spares[5] : spares[i]).seats;
            }
            vm.revertToState(snap);
        }
    }

    /// A validator whose free stake cannot back a seat it is drawn to does not take it (here, at a 50 %
    /// slash, its first two seats lock all of its stake): the seat stays empty for the next draw
    /// (third review, finding 6: it used to take the seat and lock what was left, nothing).
    function test_a_seat_its_free_stake_cannot_back_stays_empty() public {
        TrainingBase.Parameters memory p = _params();
        p.slashBps = 5_000;
        vm.prank(ADMIN);
        tasks.setParameters(p);
        for (uint256 i = 1; i < 7; ++i) {
            vm.prank(validators[i]);
            tasks.setActive(false);
        }
        vm.roll(block.number + 1);
        uint256 id = _create(3, 800_000);
        _submitAll(id, _one(trainers[0]), _cids(MODEL), _claims(950_000));
        _draw(id, keccak256("alone"));
        vm.assertEq(uint256(panel.memberOf(id, validators[0]).seats), 2, "two seats of three");
        vm.assertEq(uint256(panel.memberOf(id, validators[0]).locked), STAKE, "50 + 50");
        vm.assertEq(uint256(_task(id).seated), 2, "the third left for the next draw");
        vm.prank(validators[0]);
        tasks.requestUnstake(TrainingBase.Role.Validator);
        vm.warp(block.timestamp + 1 days);
        vm.prank(validators[0]);
        vm.expectPartialRevert(TrainingBase.StakeLocked.selector);
        tasks.withdrawStake(TrainingBase.Role.Validator);
    }

    // ---------------------------------------------------------------- 5: what open work locks, how long

    /// A seated validator leaving withdraws all but its seat's lock at once, the lock after the task.
    function test_a_seated_validator_withdraws_all_but_its_seat_lock() public {
        TrainingTasks.Terms memory terms = _terms(3, 800_000);
        terms.scorePeriod = 2 days;
        vm.prank(requester);
        uint256 id = tasks.createTask(terms);
        _submitAll(id, _one(trainers[0]), _cids(MODEL), _claims(950_000));
        _drawDistinct(id);
        address v = _seated(id)[0];
        vm.prank(v);
        tasks.requestUnstake(TrainingBase.Role.Validator);
        vm.warp(block.timestamp + 1 days);
        vm.prank(v);
        tasks.withdrawStake(TrainingBase.Role.Validator);
        vm.assertEq(token.balanceOf(v), FUNDS - 10 ether, "90 EML back while seated");
        _allVote(id, false, _scores(950_000));
        panel.finalizeTask(id);
        vm.prank(v);
        tasks.withdrawStake(TrainingBase.Role.Validator);
        vm.assertTrue(token.balanceOf(v) >= FUNDS + 6.66 ether, "the lock back, and its pay");
        vm.assertEq(_validatorStake(v), 0, "nothing left staked");
    }

    /// @dev A validator of `sybils` sits on the panel and has not committed.
    function _sybilUncommitted(uint256 id) internal view returns (bool) {
        for (uint256 i = 20; i < 23; ++i) {
            if (_isSeated(id, spares[i])) return panel.getSeat(id, panel.seatOf(id, spares[i]) - 1).state == TrainingBase.SeatState.Drawn;
        }
        return false;
    }

    /// The longest a task can be held by silent seats: three requester sybils, one seated in each draw,
    /// never commit, at the longest score period (7 days). The task still settles within three score
    /// periods and a reveal period of its test set (plus the blocks of the draws), and each sybil pays
    /// its no-show slice; meanwhile everyone else's stake is free but for the seat locks and bonds.
    function test_silent_seats_hold_a_task_at_most_three_score_periods() public {
        for (uint256 i = 20; i < 23; ++i) {
            _stake(spares[i], TrainingBase.Role.Validator, 300 ether);
        }
        vm.roll(block.number + 1);
        TrainingTasks.Terms memory terms = _terms(3, 800_000);
        terms.scorePeriod = 7 days;
        vm.prank(requester);
        uint256 id = tasks.createTask(terms);
        _submitAll(id, _one(trainers[0]), _cids(MODEL), _claims(950_000));
        uint256 start = block.timestamp;
        for (uint256 round; round < 3; ++round) {
            if (round > 0) {
                vm.warp(_task(id).scoreDeadline + 1);
                panel.replaceNoShows(id);
            }
            _drawUntil(id, _sybilUncommitted);
            address[] memory seated = _seated(id);
            for (uint256 i; i < 3; ++i) {
                TrainingBase.Seat memory st = panel.getSeat(id, i);
                bool sybil = seated[i] == spares[20] || seated[i] == spares[21] || seated[i] == spares[22];
                if (!sybil && st.state == TrainingBase.SeatState.Drawn && panel.seatOf(id, seated[i]) == i + 1) {
                    _commitVote(id, seated[i], false, _scores(950_000));
                }
            }
        }
        vm.warp(_task(id).scoreDeadline + 1);
        address[] memory last = _seated(id);
        for (uint256 i; i < 3; ++i) {
            TrainingBase.Seat memory st = panel.getSeat(id, i);
            if (st.state == TrainingBase.SeatState.Committed && panel.seatOf(id, last[i]) == i + 1) _revealVote(id, last[i]);
        }
        _afterScoreReveals(id);
        panel.finalizeTask(id);
        vm.assertTrue(block.timestamp <= start + 3 * 7 days + REVEAL + 10, "three score periods and a reveal");
        vm.assertTrue(uint256(_task(id).status) != uint256(TrainingBase.Status.Open), "settled");
        for (uint256 i = 20; i < 23; ++i) {
            vm.assertTrue(_validatorStake(spares[i]) < 300 ether, "each silent sybil paid its slice");
        }
    }

    // ---------------------------------------------------------------- 8: leaving around a draw

    /// A validator weighed in a fixed draw cannot leave before the draw is made: unstakeDelay is at least
    /// a day, far beyond the draw's look-back, so if the lot lands on it, it is seated with its lock.
    function test_a_validator_weighed_in_a_draw_is_still_staked_when_it_is_made() public {
        uint256 id = _create(3, 800_000);
        _submitAll(id, _one(trainers[0]), _cids(MODEL), _claims(950_000));
        vm.roll(block.number + 1); // the draw is fixed
        address leaver = validators[0];
        vm.prank(leaver);
        tasks.requestUnstake(TrainingBase.Role.Validator);
        vm.prank(leaver);
        vm.expectPartialRevert(TrainingBase.StakeLocked.selector);
        tasks.withdrawStake(TrainingBase.Role.Validator);
        _drawUntil(id, _leaverSeated);
        vm.assertEq(uint256(_task(id).seated), 3, "no seat left empty");
        vm.assertTrue(panel.memberOf(id, leaver).locked >= 10 ether, "its seat locks its stake");
    }

    function _leaverSeated(uint256 id) internal view returns (bool) {
        return _isSeated(id, validators[0]);
    }

    // ---------------------------------------------------------------- 7: the draw's places

    /// An idle stake (stepped out, leaving, or below the minimum) gives its place up: another validator
    /// takes it once it has been at zero for SLOT_QUARANTINE blocks; the idle one gets another place when
    /// it comes back.
    function test_an_idle_stake_gives_its_draw_place_up_after_the_quarantine() public {
        uint256 place = _slotOf(validators[6]);
        vm.prank(validators[6]);
        tasks.setActive(false);
        vm.roll(block.number + tasks.SLOT_QUARANTINE());
        _stake(spares[1], TrainingBase.Role.Validator, STAKE);
        vm.assertTrue(_slotOf(spares[1]) != place, "not while a draw could still read it");
        vm.roll(block.number + 1);
        _stake(spares[2], TrainingBase.Role.Validator, STAKE);
        vm.assertEq(_slotOf(spares[2]), place, "given to another after the quarantine");
        vm.prank(validators[6]);
        tasks.setActive(true);
        vm.assertTrue(_slotOf(validators[6]) != place && _slotOf(validators[6]) != 0, "a place of its own again");
        (uint256 weight,) = tasks.drawWeight(validators[6]);
        vm.assertEq(weight, STAKE, "back in the draw");
        (weight,) = tasks.drawWeight(spares[2]);
        vm.assertEq(weight, STAKE, "the newcomer's weight, not the old owner's");
    }

    /// Stepping out and back in keeps the place (no churn can use places up), whenever it happens.
    function test_a_validator_back_before_its_place_is_given_away_keeps_it() public {
        uint256 place = _slotOf(validators[6]);
        for (uint256 i; i < 5; ++i) {
            vm.prank(validators[6]);
            tasks.setActive(false);
            vm.roll(block.number + (i == 4 ? 2_000 : 1));
            vm.prank(validators[6]);
            tasks.setActive(true);
            vm.assertEq(_slotOf(validators[6]), place, "the same place");
        }
        _stake(spares[1], TrainingBase.Role.Validator, STAKE);
        vm.assertEq(_slotOf(spares[1]), 8, "a newcomer gets a new place, not a taken one");
    }

    /// With all 4,096 places given out, a newcomer is refused until a place has been idle for the
    /// quarantine; then it takes that one.
    function test_a_full_draw_admits_a_newcomer_only_to_an_idle_place() public {
        vm.assertEq(uint256(vm.load(address(tasks), SLOTS_USED)), 7, "the storage slot of _slotsUsed");
        vm.store(address(tasks), SLOTS_USED, bytes32(DrawTree.CAPACITY)); // every place given out
        vm.startPrank(spares[1]);
        token.approve(address(tasks), type(uint256).max);
        vm.expectRevert(abi.encodeWithSelector(TrainingBase.ValidatorSetFull.selector, DrawTree.CAPACITY));
        tasks.stake(TrainingBase.Role.Validator, STAKE);
        vm.stopPrank();
        uint256 place = _slotOf(validators[3]);
        vm.prank(validators[3]);
        tasks.requestUnstake(TrainingBase.Role.Validator);
        vm.roll(block.number + tasks.SLOT_QUARANTINE() + 1);
        _stake(spares[1], TrainingBase.Role.Validator, STAKE);
        vm.assertEq(_slotOf(spares[1]), place, "the leaver's place");
    }
}
