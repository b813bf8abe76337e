// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {TrainingBase} from "../src/TrainingBase.sol";
import {TrainingTasks} from "../src/TrainingTasks.sol";
import {vm} from "./Base.sol";
import {TrainingFixture} from "./TrainingFixture.sol";

/// @dev The second outside review's payout findings (1-4, 6), at the edges of their fixes: what an
/// unjudged submission is paid, what a score of 0 means, how far a score may pass its claim, what a
/// task must pay its panel. Each attack is performed to its end.
contract TrainingFixesPayoutTest is TrainingFixture {
    uint256 internal constant BOND = 10 ether;

    function setUp() public {
        _setUpTraining();
    }

    function _junk(uint256 i) internal pure returns (string memory) {
        return string.concat("bafkreijunk", vm.toString(i));
    }

    /// @dev Everything `who` holds in EML: its balance and both of its stakes.
    function _wealth(address[] memory who) internal view returns (uint256 total) {
        for (uint256 i; i < who.length; ++i) {
            total += token.balanceOf(who[i]) + _stakeOf(who[i], TrainingBase.Role.Trainer).amount
                + _validatorStake(who[i]);
        }
    }

    /// @dev Commit `cids` from `who` (in that order), reveal them all; the test set stays hidden.
    function _submitHidden(uint256 id, address[] memory who, string[] memory cids, uint256 claim) internal {
        for (uint256 i; i < who.length; ++i) {
            _commit(id, who[i], cids[i], claim);
        }
        _toRevealWindow(id);
        for (uint256 i; i < who.length; ++i) {
            _reveal(id, who[i], cids[i], claim);
        }
    }

    /// @dev Past the test deadline: the first finalizeTask fixes the checking panel's draw; draw it.
    function _startCheck(uint256 id) internal {
        vm.warp(_task(id).testDeadline + 1);
        panel.finalizeTask(id);
        vm.assertEq(uint256(_task(id).status), uint256(TrainingBase.Status.Open), "the check starts");
        _draw(id, keccak256(abi.encode("check", id)));
    }

    // ---------------------------------------------------------------- 1, 2: unjudged submissions

    /// Finding 1 carried to its end: the requester pads its task with 15 sybil submissions of junk, never
    /// reveals its test set, and the checking panel votes each artifact's holdout score (0 for junk).
    /// The honest model takes the whole trainers' part, the validators theirs, the 15 junk bonds burn:
    /// the requester's side loses the escrow and every bond.
    function test_padding_an_abandoned_task_costs_the_escrow_and_every_junk_bond() public {
        address[] memory side = new address[](16);
        side[0] = requester;
        address[] memory who = new address[](16);
        string[] memory cids = new string[](16);
        for (uint256 i; i < 15; ++i) {
            side[1 + i] = spares[i];
            _stake(spares[i], TrainingBase.Role.Trainer, STAKE);
            (who[i], cids[i]) = (spares[i], _junk(i));
        }
        (who[15], cids[15]) = (trainers[0], MODEL);
        uint256 before = _wealth(side);
        uint256 id = _create(3, 800_000);
        _submitHidden(id, who, cids, 950_000);
        _startCheck(id);
        uint32[] memory holdout = new uint32[](16);
        holdout[15] = 950_000; // only the honest model reproduces its claim
        _allVote(id, true, holdout);
        uint256 honestBefore = token.balanceOf(trainers[0]);
        panel.finalizeTask(id);
        vm.assertEq(uint256(_task(id).status), uint256(TrainingBase.Status.Abandoned), "abandoned");
        vm.assertEq(token.balanceOf(trainers[0]) - honestBefore, 80 ether, "the honest model: the trainers' part");
        vm.assertEq(before - _wealth(side), REWARD + 15 * BOND, "the escrow and 15 bonds, lost");
    }

    /// Two trainers with the same artifact (deterministic training) and a third with another, all
    /// verified: the trainers' part goes whole to the earliest verified commitment, as an accepted task
    /// pays one winner (third review, finding 5: valid variants under several stakes each took a
    /// share); the others get their bonds back and nothing else.
    function test_the_trainers_part_goes_to_the_earliest_verified_commitment() public {
        uint256 id = _create(3, 800_000);
        _commit(id, trainers[0], MODEL, 950_000);
        _commit(id, trainers[1], "bafkreimodelother", 900_000);
        _commit(id, trainers[2], MODEL, 950_000); // the same bytes, committed later
        _toRevealWindow(id);
        _reveal(id, trainers[0], MODEL, 950_000);
        _reveal(id, trainers[1], "bafkreimodelother", 900_000);
        _reveal(id, trainers[2], MODEL, 950_000);
        _toTestWindow(id);
        _revealTest(id);
        _draw(id, keccak256("split"));
        uint32[] memory holdout = new uint32[](3);
        (holdout[0], holdout[1], holdout[2]) = (950_000, 900_000, 950_000);
        _allVote(id, true, holdout); // the test set is unusable; all three verify
        panel.finalizeTask(id);
        vm.assertEq(uint256(_task(id).status), uint256(TrainingBase.Status.Unusable), "unusable");
        vm.assertEq(token.balanceOf(trainers[0]), FUNDS - STAKE + 80 ether, "the earliest verified");
        vm.assertEq(token.balanceOf(trainers[1]), FUNDS - STAKE, "the other artifact, later: nothing");
        vm.assertEq(_stakeOf(trainers[1], TrainingBase.Role.Trainer).amount, STAKE, "its bond back");
        vm.assertEq(token.balanceOf(trainers[2]), FUNDS - STAKE, "the later copy: nothing");
        vm.assertEq(_stakeOf(trainers[2], TrainingBase.Role.Trainer).amount, STAKE, "but its bond back");
    }

    /// Nothing verifies (every submission junk): the trainers' part goes back to the requester, the
    /// validators keep theirs, every bond burns.
    function test_an_abandoned_task_with_nothing_verified_refunds_the_trainers_part() public {
        uint256 id = _create(3, 800_000);
        _submitHidden(id, _two(trainers[0], trainers[1]), _cids(JUNK, "bafkreimodeljunk2"), 900_000);
        _startCheck(id);
        _allVote(id, true, _scores(0, 0));
        uint256 before = token.balanceOf(requester);
        panel.finalizeTask(id);
        vm.assertEq(uint256(_task(id).status), uint256(TrainingBase.Status.Abandoned), "abandoned");
        vm.assertEq(token.balanceOf(requester) - before, 80 ether, "the trainers' part back");
        vm.assertEq(tasks.pendingBurn(), 2 * BOND, "both bonds burned");
    }

    /// Nobody can be drawn for the check (every validator stepped out): after three empty draws there is
    /// no clear majority, and the trainers' part (the whole escrow: no validator is paid) goes to the
    /// earliest revealed commitment, undecided like every other, with every bond back.
    function test_an_abandoned_check_without_a_majority_pays_the_earliest_revealed() public {
        uint256 id = _create(3, 800_000);
        _submitHidden(id, _two(trainers[0], trainers[1]), _cids(MODEL, JUNK), 900_000);
        for (uint256 i; i < 7; ++i) {
            vm.prank(validators[i]);
            tasks.setActive(false);
        }
        vm.roll(block.number + 1);
        _startCheck(id);
        for (uint256 round = 1; round < 3; ++round) {
            vm.assertEq(uint256(_task(id).seated), 0, "nobody to draw");
            vm.warp(_task(id).scoreDeadline + 1);
            panel.replaceNoShows(id);
            _draw(id, keccak256(abi.encode(round)));
        }
        _afterScoreReveals(id);
        panel.finalizeTask(id);
        vm.assertEq(uint256(_task(id).status), uint256(TrainingBase.Status.Abandoned), "abandoned");
        vm.assertEq(token.balanceOf(trainers[0]), FUNDS - STAKE + 100 ether, "the whole escrow");
        vm.assertEq(token.balanceOf(trainers[1]), FUNDS - STAKE, "the later one: nothing");
        vm.assertEq(_stakeOf(trainers[1], TrainingBase.Role.Trainer).amount, STAKE, "bonds back: nothing judged");
    }

    /// Holdout scores verify a claim within claimSlack (0.10) either way, not further: 0.80 and 1.0
    /// verify a claim of 0.90, 0.799999 does not; a claim of 0.85 is not verified by 0.950001.
    function test_a_holdout_score_verifies_a_claim_within_the_slack_either_way() public {
        uint256 id = _create(3, 0);
        address[] memory who = new address[](4);
        string[] memory cids = new string[](4);
        for (uint256 i; i < 4; ++i) {
            (who[i], cids[i]) = (trainers[i], _junk(100 + i));
        }
        for (uint256 i; i < 4; ++i) {
            _commit(id, who[i], cids[i], i == 3 ? 850_000 : 900_000);
        }
        _toRevealWindow(id);
        for (uint256 i; i < 4; ++i) {
            _reveal(id, who[i], cids[i], i == 3 ? 850_000 : 900_000);
        }
        _startCheck(id);
        uint32[] memory holdout = new uint32[](4);
        (holdout[0], holdout[1], holdout[2], holdout[3]) = (800_000, 1_000_000, 799_999, 950_001);
        _allVote(id, false, holdout); // (the flag does not matter without a test set: all are holdout votes)
        panel.finalizeTask(id);
        vm.assertEq(uint256(tasks.getSubmission(id, 0).bond), uint256(TrainingBase.Bond.Released), "0.10 below");
        vm.assertEq(uint256(tasks.getSubmission(id, 1).bond), uint256(TrainingBase.Bond.Released), "0.10 above");
        vm.assertEq(uint256(tasks.getSubmission(id, 2).bond), uint256(TrainingBase.Bond.Forfeited), "further below");
        vm.assertEq(uint256(tasks.getSubmission(id, 3).bond), uint256(TrainingBase.Bond.Forfeited), "further above");
        vm.assertEq(token.balanceOf(trainers[0]), FUNDS - STAKE + 80 ether, "the earliest verified: all 80");
        vm.assertEq(token.balanceOf(trainers[1]), FUNDS - STAKE, "the later verified: nothing");
        vm.assertEq(uint256(tasks.getSubmission(id, 1).score), 1_000_000, "the holdout score is recorded");
    }

    // ---------------------------------------------------------------- 3, 4: scores against claims

    function _stakeSpare0() internal {
        _stake(spares[0], TrainingBase.Role.Trainer, STAKE);
    }

    /// A model fit to the test set with a low claim (0.30) scores 1.0 but counts 0.40 (its claim plus
    /// the slack); an honest model of 0.45 beats it. The test-fit model keeps its bond: it is a real
    /// artifact (what stops a well-tuned one is the validators' re-fit, docs/training.md).
    function test_a_score_counts_up_to_its_claim_plus_the_slack() public {
        _stakeSpare0();
        uint256 id = _create(3, 0);
        _submitAll(id, _two(spares[0], trainers[0]), _cids("bafkreimemorized", MODEL), _claims(300_000, 450_000));
        _draw(id, keccak256("seed"));
        _allVote(id, false, _scores(1_000_000, 450_000));
        panel.finalizeTask(id);
        vm.assertEq(_task(id).accepted, 2, "the honest model");
        vm.assertEq(uint256(tasks.getSubmission(id, 0).bond), uint256(TrainingBase.Bond.Released), "released");
    }

    /// At the edge the cap makes a tie, and a tie goes to the earliest commitment: a claim of 0.80
    /// scoring 0.95 counts 0.90, equal to a claim of 0.90 scoring 0.90.
    function test_a_capped_score_ties_and_the_earliest_commitment_wins() public {
        _stakeSpare0();
        uint256 id = _create(3, 0);
        _submitAll(id, _two(trainers[0], spares[0]), _cids(MODEL, "bafkreimodelb"), _claims(800_000, 900_000));
        _draw(id, keccak256("seed"));
        _allVote(id, false, _scores(950_000, 900_000));
        panel.finalizeTask(id);
        vm.assertEq(_task(id).accepted, 1, "tied at 0.90: the earlier commitment");
        vm.assertEq(uint256(_task(id).rules.claimSlack), 100_000, "slack 0.10");
        uint256 b = _create(3, 0);
        _submitAll(b, _two(spares[0], trainers[0]), _cids(_model(b), "bafkreimodelc"), _claims(900_000, 800_000));
        _draw(b, keccak256("seed"));
        _allVote(b, false, _scores(900_000, 950_000));
        panel.finalizeTask(b);
        vm.assertEq(_task(b).accepted, 1, "committed first, the other way round: the same tie rule");
    }

    /// A test set easier than the holdout (an honest model scores 0.99 against its claim of 0.85) does not
    /// disqualify it: it counts 0.95 and is accepted.
    function test_an_easy_test_set_cannot_reject_an_honest_model() public {
        uint256 id = _create(3, 800_000);
        _submitAll(id, _one(trainers[0]), _cids(MODEL), _claims(850_000));
        _draw(id, keccak256("seed"));
        _allVote(id, false, _scores(990_000));
        panel.finalizeTask(id);
        vm.assertEq(uint256(_task(id).status), uint256(TrainingBase.Status.Accepted), "accepted");
        vm.assertEq(uint256(tasks.getSubmission(id, 0).score), 990_000, "its test-set score");
    }

    /// However hard the test set, an artifact that passes its checks keeps its bond: a score of 1 (the
    /// least a verified artifact is voted) is rejected and released; 0 (failed its checks) forfeits.
    function test_only_a_score_of_zero_forfeits_a_bond() public {
        _stakeSpare0();
        uint256 id = _create(3, 800_000);
        _submitAll(id, _two(trainers[0], spares[0]), _cids(MODEL, JUNK), _claims(950_000, 950_000));
        _draw(id, keccak256("seed"));
        _allVote(id, false, _scores(1, 0));
        panel.finalizeTask(id);
        vm.assertEq(uint256(_task(id).status), uint256(TrainingBase.Status.Rejected), "rejected");
        vm.assertEq(uint256(tasks.getSubmission(id, 0).bond), uint256(TrainingBase.Bond.Released), "score 1");
        vm.assertEq(uint256(tasks.getSubmission(id, 1).bond), uint256(TrainingBase.Bond.Forfeited), "score 0");
    }

    // ---------------------------------------------------------------- 6: a panel is paid

    /// At exactly the minimum reward (3 seats x 1 EML / 20 % = 15 EML) every seat that votes with the
    /// majority is paid its minimum; a wei less is refused.
    function test_the_minimum_reward_pays_every_seat_its_minimum() public {
        TrainingTasks.Terms memory terms = _terms(3, 800_000);
        terms.reward = 15 ether;
        vm.prank(requester);
        uint256 id = tasks.createTask(terms);
        _submitAll(id, _one(trainers[0]), _cids(MODEL), _claims(950_000));
        _drawDistinct(id);
        address[] memory seated = _seated(id);
        _allVote(id, false, _scores(950_000));
        panel.finalizeTask(id);
        for (uint256 i; i < 3; ++i) {
            vm.assertEq(token.balanceOf(seated[i]), FUNDS - STAKE + 1 ether, "1 EML a seat");
        }
        terms.reward = 15 ether - 1;
        vm.prank(requester);
        vm.expectRevert(
            abi.encodeWithSelector(
                TrainingBase.BadTerm.selector, TrainingBase.Term.Reward, 15 ether - 1, 15 ether, type(uint96).max
            )
        );
        tasks.createTask(terms);
    }

    /// The minimum follows the parameters the task is created under: raised later, it does not touch
    /// an open task; a task created after must pay it.
    function test_the_minimum_reward_is_checked_at_creation_only() public {
        TrainingTasks.Terms memory terms = _terms(3, 800_000);
        terms.reward = 15 ether;
        vm.prank(requester);
        uint256 id = tasks.createTask(terms);
        TrainingBase.Parameters memory p = _params();
        p.minSeatReward = 10 ether;
        vm.prank(ADMIN);
        tasks.setParameters(p);
        _submitAll(id, _one(trainers[0]), _cids(MODEL), _claims(950_000));
        _draw(id, keccak256("seed"));
        _allVote(id, false, _scores(950_000));
        panel.finalizeTask(id);
        vm.assertEq(uint256(_task(id).status), uint256(TrainingBase.Status.Accepted), "the open task runs on");
        terms = _terms(3, 800_000); // the new parameters version
        vm.prank(requester);
        vm.expectRevert(
            abi.encodeWithSelector(
                TrainingBase.BadTerm.selector, TrainingBase.Term.Reward, REWARD, 150 ether, type(uint96).max
            )
        );
        tasks.createTask(terms);
    }
}
