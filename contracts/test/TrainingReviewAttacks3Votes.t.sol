// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {TrainingBase} from "../src/TrainingBase.sol";
import {TrainingTasks} from "../src/TrainingTasks.sol";
import {vm} from "./Base.sol";
import {TrainingFixture} from "./TrainingFixture.sol";

/// @dev Third outside review: the vote-0 rule, the decided score when seats are silent, and the commit
/// window that the last seat's commitment closes. A `test_attack_*` performs the attack and asserts its
/// goal is not reached (it fails while the attack works); a `test_resists_*` is an attack that held.
contract TrainingReviewAttacks3VotesTest is TrainingFixture {
    uint32 internal constant HONEST = 900_000;

    function setUp() public {
        _setUpTraining();
    }

    function _trainerStake(address who) internal view returns (uint256) {
        return _stakeOf(who, TrainingBase.Role.Trainer).amount;
    }

    /// Finding: a single vote of 0 burns an honest bond when one other seat stays silent. The decided
    /// score is the M-th highest of the votes that arrived (M = 2 of 3 seats), so with two votes in,
    /// the lowest one decides, and 0 "alone forfeits a bond" although no majority said the artifact
    /// failed. The attacker's vote is not outvoted (no clear majority agrees), so it is even paid, and
    /// the requester is refunded (Rejected).
    function test_attack_one_zero_vote_and_one_silent_seat_burn_an_honest_bond() public {
        uint256 id = _create(3, 800_000);
        _submitAll(id, _one(trainers[0]), _cids(_model(id)), _claims(HONEST));
        _drawDistinct(id);
        address[] memory seated = _seated(id);
        _commitVote(id, seated[0], false, _scores(HONEST));
        _commitVote(id, seated[1], false, _scores(HONEST));
        _commitVote(id, seated[2], false, _scores(0)); // the attacker (the requester's validator, say)
        _revealVote(id, seated[0]);
        _revealVote(id, seated[2]); // seated[1] is honest and offline when the reveals open
        _afterScoreReveals(id);
        panel.finalizeTask(id);
        vm.assertEq(_trainerStake(trainers[0]), STAKE, "one vote of 0 of three seats burned the honest bond");
    }

    /// Finding, the same root on a task whose test set was never revealed: the requester abandons, one
    /// validator of its own votes 0 on the holdout, one honest seat is silent; the only artifact is then
    /// "not verified" and the trainers' part goes back to the requester instead of to the trainer.
    function test_attack_on_an_abandoned_task_one_zero_vote_and_a_silent_seat_refund_the_requester() public {
        uint256 id = _create(3, 800_000);
        string memory cid = _model(id);
        _commit(id, trainers[0], cid, HONEST);
        _toRevealWindow(id);
        _reveal(id, trainers[0], cid, HONEST);
        vm.warp(_task(id).testDeadline + 1); // the requester never reveals its test set
        panel.finalizeTask(id); // fixes the holdout panel's draw
        _drawDistinct(id);
        address[] memory seated = _seated(id);
        _commitVote(id, seated[0], false, _scores(HONEST));
        _commitVote(id, seated[1], false, _scores(HONEST));
        _commitVote(id, seated[2], false, _scores(0)); // the requester's validator
        _revealVote(id, seated[0]);
        _revealVote(id, seated[2]);
        _afterScoreReveals(id);
        uint256 requesterBefore = token.balanceOf(requester);
        panel.finalizeTask(id);
        vm.assertEq(uint256(_task(id).status), uint256(TrainingBase.Status.Abandoned), "abandoned");
        vm.assertEq(token.balanceOf(requester), requesterBefore, "the abandoning requester got its escrow back");
        vm.assertEq(token.balanceOf(trainers[0]), FUNDS - STAKE + 80 ether, "the trainer was not paid");
    }

    /// Finding: the last seat to commit chooses when the reveal window opens and closes. Validators are
    /// told the commit deadline when drawn (ValidatorDrawn's scoreDeadline) and reveals used to follow
    /// it; an attacker that commits last right after the others moves the whole window (revealPeriod
    /// long) ahead of that deadline, so an honest validator revealing at the announced time is too late
    /// (slashed), and its silence is what the attacks above need.
    function test_attack_the_last_committer_moves_the_reveal_window_ahead_of_the_announced_one() public {
        TrainingTasks.Terms memory terms = _terms(3, 800_000);
        terms.scorePeriod = 1 days;
        vm.prank(requester);
        uint256 id = tasks.createTask(terms);
        _submitAll(id, _one(trainers[0]), _cids(_model(id)), _claims(HONEST));
        _drawDistinct(id);
        uint256 announced = _task(id).scoreDeadline; // as ValidatorDrawn announced it
        address[] memory seated = _seated(id);
        _commitVote(id, seated[0], false, _scores(HONEST));
        _commitVote(id, seated[1], false, _scores(HONEST));
        _commitVote(id, seated[2], false, _scores(0)); // the attacker commits last, at once
        vm.warp(announced + 1); // the honest validator reveals when the commit window it was given closed
        Ballot memory b = ballots[id][seated[0]];
        vm.prank(seated[0]);
        (bool ok,) = address(panel).call(
            abi.encodeCall(panel.revealScores, (id, b.unusable, b.scores, _voteSalt(id, seated[0])))
        );
        vm.assertTrue(ok, "the reveal window closed before the commit deadline the validator was given");
    }

    /// Held: with every seat revealing, two votes of 0 of five seats are outvoted: the bond is released,
    /// the model accepted, both attackers lose their seats' locks and are not paid.
    function test_resists_a_minority_of_zero_votes_on_a_full_panel() public {
        uint256 id = _create(5, 800_000);
        _submitAll(id, _one(trainers[0]), _cids(_model(id)), _claims(HONEST));
        _drawDistinct(id);
        address[] memory seated = _seated(id);
        for (uint256 i; i < 5; ++i) {
            _commitVote(id, seated[i], false, _scores(i < 2 ? 0 : HONEST));
        }
        for (uint256 i; i < 5; ++i) {
            _revealVote(id, seated[i]);
        }
        panel.finalizeTask(id);
        vm.assertEq(uint256(_task(id).status), uint256(TrainingBase.Status.Accepted), "accepted");
        vm.assertEq(_trainerStake(trainers[0]), STAKE, "bond released");
        vm.assertEq(_validatorStake(seated[0]), STAKE - 10 ether, "attacker 1 slashed");
        vm.assertEq(_validatorStake(seated[1]), STAKE - 10 ether, "attacker 2 slashed");
        vm.assertEq(token.balanceOf(seated[0]), FUNDS - STAKE, "attacker 1 unpaid");
    }

    function _oneHoldsTwo(uint256 id) internal view returns (bool) {
        address[] memory seated = _seated(id);
        for (uint256 i; i < seated.length; ++i) {
            if (seated[i] != address(0) && panel.memberOf(id, seated[i]).seats == 2) return true;
        }
        return false;
    }

    /// Held: a validator drawn twice (two seats of three) commits at once; that does not close the commit
    /// window on the third seat, whose validator commits at the deadline and then outvotes nobody: the
    /// double seat decides, but only by its own ballot counted per seat, as documented.
    function test_resists_a_double_seat_closing_the_commit_window_on_the_third() public {
        uint256 id = _create(3, 800_000);
        _submitAll(id, _one(trainers[0]), _cids(_model(id)), _claims(HONEST));
        _drawUntil(id, _oneHoldsTwo);
        address[] memory seated = _seated(id);
        (address double, address single) = panel.memberOf(id, seated[0]).seats == 2
            ? (seated[0], seated[0] == seated[1] ? seated[2] : seated[1])
            : (seated[1], seated[0]);
        uint256 deadline = _task(id).scoreDeadline;
        _commitVote(id, double, false, _scores(HONEST));
        vm.assertEq(uint256(_task(id).scoreDeadline), deadline, "two of three seats committed: still open");
        vm.warp(deadline);
        _commitVote(id, single, false, _scores(HONEST));
        _revealVote(id, double);
        _revealVote(id, single);
        panel.finalizeTask(id);
        vm.assertEq(uint256(_task(id).status), uint256(TrainingBase.Status.Accepted), "accepted");
        vm.assertTrue(token.balanceOf(single) >= FUNDS - STAKE + uint256(20 ether) / 3, "the late seat is paid its share");
    }
}
