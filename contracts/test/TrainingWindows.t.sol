// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {ModelRegistry} from "../src/ModelRegistry.sol";
import {TrainingBase} from "../src/TrainingBase.sol";
import {TrainingTasks} from "../src/TrainingTasks.sol";
import {vm} from "./Base.sol";
import {TrainingFixture} from "./TrainingFixture.sol";

/// @dev Every window of a task, and every refusal with the values it names.
contract TrainingWindowsTest is TrainingFixture {
    function setUp() public {
        _setUpTraining();
    }

    function test_submission_windows() public {
        uint256 id = _create(1, 500_000);
        TrainingBase.Task memory t = _task(id);
        _commit(id, trainers[0], MODEL, 900_000);
        vm.expectRevert(
            abi.encodeWithSelector(
                TrainingBase.TooEarly.selector, id, TrainingBase.Step.RevealSubmission, t.submitDeadline + 1
            )
        );
        _reveal(id, trainers[0], MODEL, 900_000);
        vm.warp(t.submitDeadline + 1);
        vm.expectRevert(
            abi.encodeWithSelector(
                TrainingBase.TooLate.selector, id, TrainingBase.Step.CommitSubmission, t.submitDeadline
            )
        );
        _commit(id, trainers[1], MODEL, 900_000);
        vm.expectRevert(
            abi.encodeWithSelector(
                TrainingBase.TooEarly.selector, id, TrainingBase.Step.RevealTestSet, t.revealDeadline + 1
            )
        );
        _revealTest(id);
        vm.expectRevert(abi.encodeWithSelector(TrainingBase.CommitmentMismatch.selector, id, trainers[0]));
        _reveal(id, trainers[0], MODEL, 900_001); // not what was committed
        vm.expectRevert(abi.encodeWithSelector(TrainingBase.NoCommitment.selector, id, trainers[1]));
        _reveal(id, trainers[1], MODEL, 900_000);
        _reveal(id, trainers[0], MODEL, 900_000);
        vm.expectRevert(abi.encodeWithSelector(TrainingBase.AlreadyRevealed.selector, id, trainers[0]));
        _reveal(id, trainers[0], MODEL, 900_000);
        vm.warp(t.revealDeadline + 1);
        vm.expectRevert(
            abi.encodeWithSelector(TrainingBase.TooLate.selector, id, TrainingBase.Step.RevealSubmission, t.revealDeadline)
        );
        _reveal(id, trainers[0], MODEL, 900_000);
        vm.prank(requester);
        vm.expectRevert(abi.encodeWithSelector(TrainingBase.TestSetMismatch.selector, id));
        tasks.revealTestSet(id, "bafkreiother", TEST_SALT);
        vm.expectRevert(
            abi.encodeWithSelector(TrainingBase.TooEarly.selector, id, TrainingBase.Step.Finalize, t.testDeadline + 1)
        );
        _finalize(id);
        vm.warp(t.testDeadline + 1);
        vm.expectRevert(
            abi.encodeWithSelector(TrainingBase.TooLate.selector, id, TrainingBase.Step.RevealTestSet, t.testDeadline)
        );
        _revealTest(id);
    }

    function test_a_claim_below_the_minimum_or_a_model_the_registry_refuses_cannot_be_revealed() public {
        uint256 id = _create(1, 800_000);
        _commit(id, trainers[0], MODEL, 700_000);
        string memory longCid = "bafkreiaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        _commit(id, trainers[1], longCid, 900_000);
        _commit(id, trainers[2], MODEL, 1_000_001);
        _toRevealWindow(id);
        vm.expectRevert(abi.encodeWithSelector(TrainingBase.ClaimBelowMinimum.selector, id, 700_000, 800_000));
        _reveal(id, trainers[0], MODEL, 700_000);
        vm.expectRevert(abi.encodeWithSelector(ModelRegistry.CidTooLong.selector, bytes(longCid).length, 64));
        _reveal(id, trainers[1], longCid, 900_000);
        vm.expectRevert(abi.encodeWithSelector(TrainingBase.ScoreOutOfRange.selector, 1_000_001));
        _reveal(id, trainers[2], MODEL, 1_000_001);
    }

    function test_terms_are_checked() public {
        TrainingTasks.Terms memory terms = _terms(3, 0);
        vm.startPrank(requester);
        terms.datasetCid = "";
        vm.expectRevert(abi.encodeWithSelector(TrainingBase.BadTerm.selector, TrainingBase.Term.DatasetCid, 0, 1, 64));
        tasks.createTask(terms);
        terms = _terms(3, 0);
        terms.specCid = "";
        vm.expectRevert(ModelRegistry.EmptyCid.selector);
        tasks.createTask(terms);
        terms = _terms(3, 0);
        terms.decimals = 2; // a classifier has none
        vm.expectRevert(
            abi.encodeWithSelector(ModelRegistry.InvalidModel.selector, "classification models have no decimals")
        );
        tasks.createTask(terms);
        terms = _terms(3, 0);
        terms.featureCount = 0;
        vm.expectRevert(abi.encodeWithSelector(ModelRegistry.InvalidModel.selector, "featureCount is zero"));
        tasks.createTask(terms);
        terms = _terms(3, 0);
        terms.testSetCommitment = 0;
        vm.expectRevert(
            abi.encodeWithSelector(
                TrainingBase.BadTerm.selector, TrainingBase.Term.TestSetCommitment, 0, 1, type(uint256).max
            )
        );
        tasks.createTask(terms);
        // The validators' part (20 %) must pay each seat at least minSeatReward (1 EML): 15 EML for 3 seats.
        terms = _terms(3, 0);
        terms.reward = 15 ether - 1;
        vm.expectRevert(
            abi.encodeWithSelector(
                TrainingBase.BadTerm.selector, TrainingBase.Term.Reward, 15 ether - 1, 15 ether, type(uint96).max
            )
        );
        tasks.createTask(terms);
        terms = _terms(9, 0);
        terms.reward = 45 ether - 1;
        vm.expectRevert(
            abi.encodeWithSelector(
                TrainingBase.BadTerm.selector, TrainingBase.Term.Reward, 45 ether - 1, 45 ether, type(uint96).max
            )
        );
        tasks.createTask(terms);
        terms.reward = 45 ether;
        tasks.createTask(terms); // exactly the minimum
        terms = _terms(3, 0);
        terms.submitPeriod = 9;
        vm.expectRevert(
            abi.encodeWithSelector(TrainingBase.BadTerm.selector, TrainingBase.Term.SubmitPeriod, 9, 10, 7 days)
        );
        tasks.createTask(terms);
        terms = _terms(3, 0);
        terms.submitPeriod = 7 days + 1;
        vm.expectRevert(
            abi.encodeWithSelector(TrainingBase.BadTerm.selector, TrainingBase.Term.SubmitPeriod, 7 days + 1, 10, 7 days)
        );
        tasks.createTask(terms);
        terms = _terms(3, 0);
        terms.scorePeriod = 7 days + 1;
        vm.expectRevert(
            abi.encodeWithSelector(TrainingBase.BadTerm.selector, TrainingBase.Term.ScorePeriod, 7 days + 1, 10, 7 days)
        );
        tasks.createTask(terms);
        terms.scorePeriod = 7 days;
        tasks.createTask(terms); // the longest allowed
        for (uint8 v = 0; v <= 10; v += 2) {
            terms = _terms(v, 0);
            vm.expectRevert(abi.encodeWithSelector(TrainingBase.BadTerm.selector, TrainingBase.Term.Validations, v, 1, 9));
            tasks.createTask(terms);
        }
        terms = _terms(11, 0);
        vm.expectRevert(abi.encodeWithSelector(TrainingBase.BadTerm.selector, TrainingBase.Term.Validations, 11, 1, 9));
        tasks.createTask(terms);
        terms = _terms(3, 1_000_001);
        vm.expectRevert(
            abi.encodeWithSelector(TrainingBase.BadTerm.selector, TrainingBase.Term.MinScore, 1_000_001, 0, 1_000_000)
        );
        tasks.createTask(terms);
        vm.stopPrank();
    }

    function test_draws_wait_for_their_block_and_refix_when_its_hash_is_gone() public {
        uint256 id = _create(3, 0);
        _submitAll(id, _one(trainers[0]), _cids(MODEL), _claims(900_000));
        uint256 drawBlock = _task(id).drawBlock;
        vm.assertEq(drawBlock, block.number + 2, "two blocks on");
        vm.roll(drawBlock);
        vm.expectRevert(abi.encodeWithSelector(TrainingBase.DrawNotReady.selector, id, drawBlock, drawBlock));
        panel.drawPanel(id);
        vm.expectRevert(abi.encodeWithSelector(TrainingBase.DrawPending.selector, id, drawBlock));
        _finalize(id);
        vm.roll(drawBlock + 300); // nobody drew in time: the hash is gone
        panel.drawPanel(id);
        vm.assertEq(_task(id).drawBlock, block.number + 2, "a new block fixed");
        vm.assertEq(uint256(_task(id).seated), 0, "nothing drawn from a missing hash");
        _draw(id, keccak256("later"));
        vm.assertEq(uint256(_task(id).seated), 3, "drawn");
        vm.expectRevert(abi.encodeWithSelector(TrainingBase.NoDrawPending.selector, id));
        panel.drawPanel(id);
    }

    function test_score_windows_and_refusals() public {
        uint256 id = _create(3, 0);
        _submitAll(id, _one(trainers[0]), _cids(MODEL), _claims(900_000));
        _drawDistinct(id);
        address[] memory seated = _seated(id);
        TrainingBase.Task memory t = _task(id);
        vm.prank(spares[0]);
        vm.expectRevert(abi.encodeWithSelector(TrainingBase.NotOnPanel.selector, id, spares[0]));
        panel.commitScores(id, bytes32(0));
        _commitVote(id, seated[0], false, _scores(900_000));
        vm.prank(seated[0]);
        vm.expectRevert(abi.encodeWithSelector(TrainingBase.AlreadyCommitted.selector, id, seated[0]));
        panel.commitScores(id, bytes32(0));
        vm.expectRevert(
            abi.encodeWithSelector(
                TrainingBase.TooEarly.selector, id, TrainingBase.Step.RevealScores, t.scoreDeadline + 1
            )
        );
        _revealVote(id, seated[0]); // seats still open: nobody reveals before every seat is committed
        vm.prank(seated[1]);
        vm.expectRevert(abi.encodeWithSelector(TrainingBase.NoCommitment.selector, id, seated[1]));
        panel.revealScores(id, false, _scores(900_000), bytes32(0));
        _commitVote(id, seated[1], false, _scores(2_000_000));
        vm.warp(block.timestamp + 10 minutes);
        _commitVote(id, seated[2], false, _scores(900_000));
        // Every seat committed: the reveals open now, before the commit period would have ended, and
        // still close revealPeriod after the announced commit deadline (third review, finding 7: the
        // last seat to commit no longer moves scoreDeadline).
        vm.assertEq(_task(id).scoreDeadline, t.scoreDeadline, "the announced deadline stands");
        vm.assertTrue(block.timestamp < t.scoreDeadline, "before the commit period would have ended");
        vm.prank(seated[0]);
        vm.expectRevert(abi.encodeWithSelector(TrainingBase.ScoreCount.selector, 2, 1));
        panel.revealScores(id, false, _scores(900_000, 1), _voteSalt(id, seated[0]));
        vm.prank(seated[0]);
        vm.expectRevert(abi.encodeWithSelector(TrainingBase.CommitmentMismatch.selector, id, seated[0]));
        panel.revealScores(id, false, _scores(900_001), _voteSalt(id, seated[0]));
        _revealVote(id, seated[0]);
        vm.expectRevert(abi.encodeWithSelector(TrainingBase.AlreadyRevealed.selector, id, seated[0]));
        _revealVote(id, seated[0]);
        vm.expectRevert(abi.encodeWithSelector(TrainingBase.ScoreOutOfRange.selector, 2_000_000));
        _revealVote(id, seated[1]);
        vm.expectRevert(
            abi.encodeWithSelector(
                TrainingBase.TooEarly.selector, id, TrainingBase.Step.Finalize, t.scoreDeadline + REVEAL + 1
            )
        );
        _finalize(id);
        vm.warp(t.scoreDeadline + REVEAL + 1);
        vm.expectRevert(
            abi.encodeWithSelector(TrainingBase.TooLate.selector, id, TrainingBase.Step.RevealScores, t.scoreDeadline + REVEAL)
        );
        _revealVote(id, seated[2]);
        vm.warp(t.scoreDeadline + 1);
        _revealVote(id, seated[2]);
        vm.warp(t.scoreDeadline + REVEAL + 1);
        _finalize(id);
        // Two of three revealed the same score: accepted; the one never revealed loses slashBps.
        vm.assertEq(uint256(_task(id).status), uint256(TrainingBase.Status.Accepted), "two of three");
        vm.assertEq(_validatorStake(seated[1]), STAKE - 10 ether, "never revealed: slashed");
        vm.assertEq(_validatorStake(seated[0]), STAKE, "revealed: kept");
    }
}
