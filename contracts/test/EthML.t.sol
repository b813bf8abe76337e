// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {IAccessControl} from "@openzeppelin/contracts/access/IAccessControl.sol";
import {IERC20Errors} from "@openzeppelin/contracts/interfaces/draft-IERC6093.sol";
import {EthML} from "../src/EthML.sol";
import {ExampleConsumer, UsingEthML} from "../src/UsingEthML.sol";
import {vm, EthMLFixture} from "./Base.sol";
import {GasBurningConsumer, GasMeasuringConsumer, RevertingConsumer} from "./Consumers.sol";

contract EthMLTest is EthMLFixture {
    function setUp() public {
        _deploy(1, 1);
    }

    // ------------------------------------------------------------------ token

    function test_token_metadata_and_initial_holders() public view {
        vm.assertEq(ethml.name(), "EthML Token", "name");
        vm.assertEq(ethml.symbol(), "EML", "symbol");
        vm.assertEq(ethml.decimals(), 18, "decimals");
        vm.assertEq(ethml.balanceOf(USER), FUNDS, "user funds");
        vm.assertEq(ethml.balanceOf(miners[3]), MINER_FUNDS, "miner funds");
        vm.assertEq(ethml.totalSupply(), INITIAL_SUPPLY, "supply");
    }

    function test_constructor_rejects_mismatched_holders() public {
        address[] memory holders = new address[](2);
        uint256[] memory amounts = new uint256[](1);
        vm.expectRevert(abi.encodeWithSelector(EthML.LengthMismatch.selector, 2, 1));
        new EthML(ADMIN, holders, amounts, _params(1, 1));
    }

    // --------------------------------------------------------------- registry

    function test_register_model_stores_everything() public view {
        EthML.Model memory m = ethml.getModel(regressor);
        vm.assertEq(m.cid, "QmRegressorModelCid", "cid");
        vm.assertEq(m.artifactSha256, bytes32(uint256(2)), "sha");
        vm.assertEq(uint256(m.kind), uint256(EthML.ModelKind.Regression), "kind");
        vm.assertEq(uint256(m.decimals), 2, "decimals");
        vm.assertEq(uint256(m.featureCount), 10, "features");
        vm.assertTrue(m.active, "active");
        vm.assertEq(ethml.modelCount(), 2, "count");
    }

    function test_register_model_only_admin() public {
        vm.expectRevert(
            abi.encodeWithSelector(
                IAccessControl.AccessControlUnauthorizedAccount.selector, USER, ethml.MODEL_ADMIN_ROLE()
            )
        );
        vm.prank(USER);
        ethml.registerModel("Qm", bytes32(0), EthML.ModelKind.Classification, 0, 1);
    }

    function test_register_model_validates() public {
        vm.startPrank(ADMIN);
        vm.expectRevert(EthML.EmptyCid.selector);
        ethml.registerModel("", bytes32(0), EthML.ModelKind.Classification, 0, 1);
        vm.expectRevert(abi.encodeWithSelector(EthML.CidTooLong.selector, 65, 64));
        ethml.registerModel(_string(65), bytes32(0), EthML.ModelKind.Classification, 0, 1);
        vm.expectRevert(abi.encodeWithSelector(EthML.InvalidParameters.selector, "decimals above 18"));
        ethml.registerModel("Qm", bytes32(0), EthML.ModelKind.Regression, 19, 1);
        vm.expectRevert(
            abi.encodeWithSelector(EthML.InvalidParameters.selector, "classification models have no decimals")
        );
        ethml.registerModel("Qm", bytes32(0), EthML.ModelKind.Classification, 2, 1);
        vm.expectRevert(abi.encodeWithSelector(EthML.InvalidParameters.selector, "featureCount is zero"));
        ethml.registerModel("Qm", bytes32(0), EthML.ModelKind.Classification, 0, 0);
        vm.stopPrank();
    }

    function test_deactivate_model_blocks_requests() public {
        vm.prank(ADMIN);
        ethml.deactivateModel(classifier);
        vm.assertTrue(!ethml.getModel(classifier).active, "inactive");
        vm.expectRevert(abi.encodeWithSelector(EthML.ModelInactive.selector, classifier));
        _request(classifier, 0);
    }

    function test_unknown_model() public {
        vm.expectRevert(abi.encodeWithSelector(EthML.UnknownModel.selector, 0));
        ethml.getModel(0);
        vm.expectRevert(abi.encodeWithSelector(EthML.UnknownModel.selector, 3));
        _request(3, 0);
        vm.prank(ADMIN);
        vm.expectRevert(abi.encodeWithSelector(EthML.UnknownModel.selector, 9));
        ethml.deactivateModel(9);
    }

    // ----------------------------------------------------------- parameters

    function test_set_parameters_validates_and_clamps_difficulty() public {
        EthML.Parameters memory p = _params(4, 8);
        vm.prank(USER);
        vm.expectRevert(
            abi.encodeWithSelector(IAccessControl.AccessControlUnauthorizedAccount.selector, USER, bytes32(0))
        );
        ethml.setParameters(p);
        vm.prank(ADMIN);
        ethml.setParameters(p);
        vm.assertEq(ethml.difficulty(), 4, "idle: applied at once, clamped up to min");
        string[8] memory reasons = [
            "minDifficulty is zero",
            "maxDifficulty below minDifficulty",
            "targetSolveTime is zero",
            "expiryBlocks outside 1..240",
            "revealBlocks outside 1..1000",
            "regressionToleranceBps above 10000",
            "baseReward above 100 EML",
            "quorum outside 3..5"
        ];
        for (uint256 k = 0; k < reasons.length; ++k) {
            p = _params(1, 8);
            if (k == 0) p.minDifficulty = 0;
            if (k == 1) p.minDifficulty = 9;
            if (k == 2) p.targetSolveTime = 0;
            if (k == 3) p.expiryBlocks = 241;
            if (k == 4) p.revealBlocks = 0;
            if (k == 5) p.regressionToleranceBps = 10_001;
            if (k == 6) p.baseReward = 100 ether + 1;
            if (k == 7) p.quorum = 2;
            vm.prank(ADMIN);
            vm.expectRevert(abi.encodeWithSelector(EthML.InvalidParameters.selector, reasons[k]));
            ethml.setParameters(p);
        }
    }

    // -------------------------------------------------------------- requests

    function test_request_validation_errors() public {
        vm.startPrank(USER);
        vm.expectRevert(EthML.EmptyCid.selector);
        ethml.requestPrediction(classifier, "", 0, 0);
        vm.expectRevert(abi.encodeWithSelector(EthML.CidTooLong.selector, 65, 64));
        ethml.requestPrediction(classifier, _string(65), 0, 0);
        vm.expectRevert(abi.encodeWithSelector(EthML.CallbackGasLimitTooHigh.selector, 1_000_001, 1_000_000));
        ethml.requestPrediction(classifier, CID, 0, 1_000_001);
        vm.expectRevert(abi.encodeWithSelector(EthML.TipTooLarge.selector, uint256(type(uint96).max) + 1));
        ethml.requestPrediction(classifier, CID, uint256(type(uint96).max) + 1, 0);
        vm.stopPrank();
    }

    function test_request_takes_tip_from_the_callers_balance() public {
        address poor = address(0xD00D);
        vm.prank(USER);
        ethml.transfer(poor, 10 ether);
        vm.prank(poor);
        vm.expectRevert(
            abi.encodeWithSelector(IERC20Errors.ERC20InsufficientBalance.selector, poor, 10 ether, 20 ether)
        );
        ethml.requestPrediction(classifier, CID, 20 ether, 0);
        vm.prank(poor);
        ethml.requestPrediction(classifier, CID, 5 ether, 0);
        vm.assertEq(ethml.balanceOf(poor), 5 ether, "tip taken");
        vm.assertEq(ethml.balanceOf(address(ethml)), 5 ether, "tip escrowed");
    }

    function test_tokens_sent_straight_to_the_oracle_are_refused() public {
        vm.prank(USER);
        vm.expectRevert(EthML.TransferToOracle.selector);
        ethml.transfer(address(ethml), 1 ether);
        vm.prank(USER);
        ethml.approve(USER, 1 ether);
        vm.prank(USER);
        vm.expectRevert(EthML.TransferToOracle.selector);
        ethml.transferFrom(USER, address(ethml), 1 ether);
    }

    function test_first_request_opens_a_round_with_its_event() public {
        vm.expectEmit();
        emit EthML.PredictionRequested(1, USER, classifier, CID, 0, 0, 0);
        vm.expectEmit();
        emit EthML.RoundOpened(1, classifier, 1, block.number + 50);
        _request(classifier, 0);
        EthML.CurrentRound memory r = ethml.getCurrentRound();
        vm.assertEq(r.requestId, 1, "current");
        vm.assertEq(r.challenge, bytes32(0), "no challenge in the opening block");
        vm.assertEq(r.difficulty, 1, "difficulty");
        vm.assertEq(r.modelId, classifier, "model");
        vm.assertEq(r.openBlock, block.number, "open block");
        vm.assertEq(r.commitDeadline, block.number + 50, "commit deadline");
        vm.assertEq(uint256(ethml.requestStatus(1)), uint256(EthML.Status.Current), "status");
        vm.roll(block.number + 1);
        r = ethml.getCurrentRound();
        vm.assertEq(r.challenge, ethml.challengeFor(blockhash(block.number - 1), 1), "challenge from the block hash");
        vm.assertTrue(r.challenge != bytes32(0), "challenge");
        _request(classifier, 0);
        vm.assertEq(uint256(ethml.requestStatus(2)), uint256(EthML.Status.Queued), "queued");
        vm.assertEq(ethml.pendingCount(), 1, "pending");
    }

    function test_every_cid_length_is_announced() public {
        for (uint256 len = 1; len <= 64; ++len) {
            string memory cid = _string(len);
            vm.expectEmit();
            emit EthML.PredictionRequested(len, USER, classifier, cid, 0, 0, 0);
            vm.prank(USER);
            ethml.requestPrediction(classifier, cid, 0, 0);
        }
    }

    function test_queue_order_is_tip_then_age() public {
        uint256 first = _request(classifier, 0); // current at once
        uint256 a = _request(classifier, 1 ether);
        uint256 b = _request(classifier, 5 ether);
        uint256 c = _request(classifier, 5 ether);
        uint256 d = _request(classifier, 3 ether);
        uint256 e = _request(classifier, 0);
        uint256[6] memory expected = [first, b, c, d, a, e];
        for (uint256 i = 0; i < 6; ++i) {
            uint256 current = _currentId();
            vm.assertEq(current, expected[i], "order");
            _round(current, [int256(1), 1, 1, 1, 1]);
        }
        vm.assertEq(_currentId(), 0, "idle after the queue drains");
    }

    function test_each_round_has_a_fresh_challenge() public {
        _request(classifier, 0);
        _request(classifier, 0);
        _afterOpening();
        (bytes32 c1,) = _challenge();
        _round(1, [int256(1), 1, 1, 1, 1]);
        _afterOpening();
        (bytes32 c2,) = _challenge();
        vm.assertEq(_currentId(), 2, "next");
        vm.assertTrue(c1 != c2, "fresh challenge");
    }

    // ------------------------------------------------------------ commit, reveal

    function test_commit_errors() public {
        vm.prank(miners[0]);
        vm.expectRevert(EthML.NoCurrentRequest.selector);
        ethml.commit(1, 0, bytes32(0));
        _request(classifier, 0);
        _request(classifier, 0);
        vm.prank(miners[0]);
        vm.expectRevert(abi.encodeWithSelector(EthML.ChallengeNotYetAvailable.selector, 1, block.number));
        ethml.commit(1, 0, bytes32(0));
        vm.roll(block.number + 1);
        vm.prank(miners[0]);
        vm.expectRevert(abi.encodeWithSelector(EthML.NotCurrentRequest.selector, 2, 1));
        ethml.commit(2, 0, bytes32(0));
        _commitAs(miners[0], 1, 1);
        uint256 nonce = _mine(miners[0]);
        vm.prank(miners[0]);
        vm.expectRevert(abi.encodeWithSelector(EthML.AlreadyCommitted.selector, 1, miners[0]));
        ethml.commit(1, nonce, bytes32(0));
        vm.assertTrue(ethml.hasCommitted(miners[0]), "committed");
        vm.assertTrue(!ethml.hasCommitted(miners[1]), "not committed");
        vm.prank(miners[1]);
        vm.expectRevert(abi.encodeWithSelector(EthML.NotRevealPhase.selector, 1));
        ethml.reveal(1, 1, bytes32(0));
        for (uint256 i = 1; i < 5; ++i) {
            _commitAs(miners[i], 1, 1);
        }
        nonce = _mine(miners[5]);
        vm.prank(miners[5]);
        vm.expectRevert(abi.encodeWithSelector(EthML.CommitPhaseOver.selector, 1));
        ethml.commit(1, nonce, bytes32(0));
    }

    function test_reveal_errors() public {
        uint256 id = _request(classifier, 0);
        _commitAll(id, [int256(1), 1, 1, 1, 1]);
        vm.prank(miners[5]);
        vm.expectRevert(abi.encodeWithSelector(EthML.NotCommitted.selector, id, miners[5]));
        ethml.reveal(id, 1, bytes32(0));
        vm.prank(miners[0]);
        vm.expectRevert(abi.encodeWithSelector(EthML.CommitmentMismatch.selector, id, miners[0]));
        ethml.reveal(id, 2, _salt(miners[0], id));
        _revealAs(miners[0], id, 1);
        vm.prank(miners[0]);
        vm.expectRevert(abi.encodeWithSelector(EthML.AlreadyRevealed.selector, id, miners[0]));
        ethml.reveal(id, 1, _salt(miners[0], id));
        vm.expectRevert(abi.encodeWithSelector(EthML.RevealWindowOpen.selector, id, block.number + 10));
        ethml.closeRound(id);
        vm.roll(block.number + 11);
        vm.prank(miners[1]);
        vm.expectRevert(abi.encodeWithSelector(EthML.RevealWindowClosed.selector, id, block.number - 1));
        ethml.reveal(id, 1, _salt(miners[1], id));
    }

    function test_prediction_out_of_range_is_refused_at_reveal() public {
        uint256 id = _request(classifier, 0);
        int256 big = int256(type(int96).max) + 1;
        _commitAll(id, [big, 1, 1, 1, 1]);
        vm.prank(miners[0]);
        vm.expectRevert(abi.encodeWithSelector(EthML.PredictionOutOfRange.selector, big));
        ethml.reveal(id, big, _salt(miners[0], id));
    }

    function test_invalid_nonce_rejected() public {
        _deploy(1 << 20, 1 << 20);
        _request(classifier, 0);
        vm.roll(block.number + 1);
        (bytes32 challenge, uint256 difficulty) = _challenge();
        uint256 target = type(uint256).max / difficulty;
        uint256 bad = 0;
        while (uint256(keccak256(abi.encodePacked(challenge, miners[0], bad))) < target) {
            ++bad;
        }
        vm.prank(miners[0]);
        vm.expectRevert(abi.encodeWithSelector(EthML.InvalidNonce.selector, 1, miners[0], bad));
        ethml.commit(1, bad, bytes32(0));
    }

    function test_nonce_is_bound_to_the_miner() public {
        _deploy(1 << 12, 1 << 12);
        _request(classifier, 0);
        vm.roll(block.number + 1);
        uint256 nonce = _mine(miners[0]);
        (bytes32 challenge, uint256 difficulty) = _challenge();
        bool validForOther =
            uint256(keccak256(abi.encodePacked(challenge, miners[1], nonce))) < type(uint256).max / difficulty;
        vm.assume(!validForOther);
        vm.prank(miners[1]);
        vm.expectRevert(abi.encodeWithSelector(EthML.InvalidNonce.selector, 1, miners[1], nonce));
        ethml.commit(1, nonce, bytes32(0));
        vm.prank(miners[0]);
        ethml.commit(1, nonce, bytes32(0));
    }

    // ---------------------------------------------------- finalization, rewards

    function test_classification_consensus_rewards_only_agreeing_miners() public {
        uint256 id = _request(classifier, 10 ether);
        _round(id, [int256(1), 0, 1, 2, 1]);
        (int256 prediction, EthML.Status status, uint256 agreeing, uint256 closed) = ethml.getResult(id);
        vm.assertEq(prediction, 1, "mode");
        vm.assertEq(uint256(status), uint256(EthML.Status.Finalized), "status");
        vm.assertEq(agreeing, 3, "agreeing");
        vm.assertEq(closed, block.number, "block");
        // 10 EML shared by three: 3.333.. each, the dust to the first agreeing miner.
        uint256 share = uint256(10 ether) / 3;
        uint256 dust = 10 ether - share * 3;
        _assertOwed(0, BASE_REWARD, share + dust);
        _assertOwed(1, 0, 0);
        _assertOwed(2, BASE_REWARD, share);
        _assertOwed(3, 0, 0);
        _assertOwed(4, BASE_REWARD, share);
        vm.assertEq(ethml.totalRewardsIssued(), 3 * BASE_REWARD, "issued");
        vm.prank(miners[0]);
        ethml.claimRewards();
        vm.assertEq(ethml.balanceOf(miners[0]), MINER_FUNDS + BASE_REWARD + share + dust, "claimed");
        vm.prank(miners[0]);
        vm.expectRevert(abi.encodeWithSelector(EthML.NothingToClaim.selector, miners[0]));
        ethml.claimRewards();
        for (uint256 i = 2; i < 5; i += 2) {
            vm.prank(miners[i]);
            ethml.claimRewards();
        }
        vm.assertEq(ethml.balanceOf(address(ethml)), 0, "escrow emptied");
        vm.assertEq(ethml.totalSupply(), INITIAL_SUPPLY + 3 * BASE_REWARD, "minted");
    }

    function test_regression_median_and_tolerance() public {
        uint256 id = _request(regressor, 0);
        // median 10000; 1% band = 100: 9900 and 10100 agree, 10101 and 5 do not.
        _round(id, [int256(10_101), 9_900, 10_000, 5, 10_100]);
        (int256 prediction, EthML.Status status, uint256 agreeing,) = ethml.getResult(id);
        vm.assertEq(prediction, 10_000, "median");
        vm.assertEq(uint256(status), uint256(EthML.Status.Finalized), "status");
        vm.assertEq(agreeing, 3, "agreeing");
        _assertOwed(0, 0, 0);
        _assertOwed(1, BASE_REWARD, 0);
        _assertOwed(3, 0, 0);
        _assertOwed(4, BASE_REWARD, 0);
    }

    function test_regression_median_of_zero_has_a_band() public {
        uint256 id = _request(regressor, 0);
        // Two decimals: 1.00 is 100 units, so the 1% band around 0 is 1 unit.
        _round(id, [int256(0), 1, -1, 0, 2]);
        (int256 prediction, EthML.Status status, uint256 agreeing,) = ethml.getResult(id);
        vm.assertEq(prediction, 0, "median");
        vm.assertEq(uint256(status), uint256(EthML.Status.Finalized), "finalized");
        vm.assertEq(agreeing, 4, "0, 1, -1, 0 agree; 2 does not");
    }

    function test_invalid_input_with_quorum() public {
        ExampleConsumer consumer = new ExampleConsumer(ethml);
        uint256 deposit = ethml.minimumDeposit(consumer.CALLBACK_GAS());
        vm.deal(USER, 1 ether);
        vm.prank(USER);
        uint256 id = consumer.request{value: deposit}(classifier, CID, 0);
        int256 bad = ethml.INVALID_INPUT();
        _round(id, [bad, bad, 1, bad, 2]);
        (int256 prediction, EthML.Status status, uint256 agreeing,) = ethml.getResult(id);
        vm.assertEq(prediction, bad, "sentinel");
        vm.assertEq(uint256(status), uint256(EthML.Status.InvalidInput), "status");
        vm.assertEq(agreeing, 3, "three said invalid");
        (, int256 told, EthML.Status toldStatus, uint8 toldAgreeing, bool received,,) = consumer.answers(id);
        vm.assertTrue(received, "consumer told");
        vm.assertEq(told, bad, "consumer value");
        vm.assertEq(uint256(toldStatus), uint256(EthML.Status.InvalidInput), "consumer status");
        vm.assertEq(uint256(toldAgreeing), 3, "consumer told the count");
        _assertOwed(0, BASE_REWARD, 0);
        _assertOwed(2, 0, 0);
    }

    function test_regression_invalid_input_needs_quorum() public {
        uint256 id = _request(regressor, 0);
        int256 bad = ethml.INVALID_INPUT();
        _round(id, [bad, bad, 100, bad, 101]);
        (, EthML.Status status,,) = ethml.getResult(id);
        vm.assertEq(uint256(status), uint256(EthML.Status.InvalidInput), "three invalid votes");
        _assertOwed(2, 0, 0);
        id = _request(regressor, 0);
        _round(id, [bad, bad, 100, 100, 100]);
        (int256 prediction, EthML.Status status2,,) = ethml.getResult(id);
        vm.assertEq(uint256(status2), uint256(EthML.Status.Finalized), "three numbers win over two invalid");
        vm.assertEq(prediction, 100, "value");
    }

    function test_example_consumer_receives_prediction_and_tip_flows() public {
        ExampleConsumer consumer = new ExampleConsumer(ethml);
        vm.prank(USER);
        ethml.approve(address(consumer), 5 ether);
        vm.deal(USER, 1 ether);
        uint256 deposit = ethml.minimumDeposit(consumer.CALLBACK_GAS());
        vm.prank(USER);
        uint256 id = consumer.request{value: deposit}(classifier, CID, 5 ether);
        vm.assertEq(ethml.balanceOf(address(ethml)), 5 ether, "escrow");
        _round(id, [int256(1), 1, 1, 1, 0]);
        (address requester, int256 prediction, EthML.Status status, uint8 agreeing, bool received,,) =
            consumer.answers(id);
        vm.assertEq(requester, USER, "requester");
        vm.assertTrue(received, "received");
        vm.assertEq(prediction, 1, "prediction");
        vm.assertEq(uint256(agreeing), 4, "agreeing");
        vm.assertEq(uint256(status), uint256(EthML.Status.Finalized), "status");
        _assertOwed(1, BASE_REWARD, 1.25 ether);
    }

    function test_only_ethml_can_call_back() public {
        ExampleConsumer consumer = new ExampleConsumer(ethml);
        vm.expectRevert(abi.encodeWithSelector(UsingEthML.OnlyEthML.selector, address(this)));
        consumer.ethmlCallback(1, 1, 3, 5);
    }

    function test_callback_needs_a_deposit() public {
        RevertingConsumer consumer = new RevertingConsumer(ethml);
        uint256 required = ethml.minimumDeposit(50_000);
        vm.expectRevert(abi.encodeWithSelector(EthML.CallbackDepositTooSmall.selector, 0, required));
        consumer.request(classifier, CID, 50_000);
        vm.deal(USER, 1 ether);
        vm.prank(USER);
        vm.expectRevert(abi.encodeWithSelector(EthML.UnexpectedDeposit.selector, 1));
        ethml.requestPrediction{value: 1}(classifier, CID, 0, 0);
    }

    function test_reverting_callback_does_not_block_finalization() public {
        RevertingConsumer consumer = new RevertingConsumer(ethml);
        vm.deal(address(this), 1 ether);
        uint256 id = consumer.request{value: 0.01 ether}(classifier, CID, 50_000);
        _commitAll(id, [int256(1), 1, 1, 1, 1]);
        for (uint256 i = 0; i < 4; ++i) {
            _revealAs(miners[i], id, 1);
        }
        vm.expectEmit();
        emit EthML.CallbackFailed(id, address(consumer));
        _revealAs(miners[4], id, 1);
        vm.assertEq(uint256(ethml.requestStatus(id)), uint256(EthML.Status.Finalized), "finalized");
        _assertOwed(4, BASE_REWARD, 0);
    }

    function test_gas_burning_callback_does_not_block_finalization() public {
        GasBurningConsumer consumer = new GasBurningConsumer(ethml);
        vm.deal(address(this), 1 ether);
        uint256 id = consumer.request{value: 0.01 ether}(classifier, CID, 300_000);
        _request(classifier, 0);
        _commitAll(id, [int256(1), 1, 1, 1, 1]);
        for (uint256 i = 0; i < 4; ++i) {
            _revealAs(miners[i], id, 1);
        }
        bytes32 salt = _salt(miners[4], id);
        vm.expectEmit();
        emit EthML.CallbackFailed(id, address(consumer));
        vm.prank(miners[4]);
        ethml.reveal{gas: 1_000_000}(id, 1, salt);
        vm.assertEq(uint256(ethml.requestStatus(id)), uint256(EthML.Status.Finalized), "finalized");
        vm.assertEq(_currentId(), id + 1, "queue moved on");
    }

    function test_callback_gets_its_full_gas_or_the_close_reverts() public {
        GasMeasuringConsumer consumer = new GasMeasuringConsumer(ethml);
        uint256 limit = 200_000;
        vm.deal(address(this), 1 ether);
        uint256 id = consumer.request{value: 0.01 ether}(classifier, CID, limit);
        _commitAll(id, [int256(1), 1, 1, 1, 1]);
        for (uint256 i = 0; i < 4; ++i) {
            _revealAs(miners[i], id, 1);
        }
        bytes32 salt = _salt(miners[4], id);
        // Too little gas to forward the full limit: the reveal reverts instead of short-changing the consumer.
        vm.prank(miners[4]);
        vm.expectPartialRevert(EthML.InsufficientGasForCallback.selector);
        ethml.reveal{gas: 220_000}(id, 1, salt);
        vm.prank(miners[4]);
        ethml.reveal{gas: 2_000_000}(id, 1, salt);
        uint256 got = consumer.gasAtEntry();
        vm.assertTrue(got > limit - 5_000 && got <= limit, "callback ran with its requested gas");
    }

    // ------------------------------------------------------------ expiry

    function test_expiry_refunds_tip_and_moves_on() public {
        ExampleConsumer consumer = new ExampleConsumer(ethml);
        vm.prank(USER);
        ethml.approve(address(consumer), 7 ether);
        vm.deal(USER, 1 ether);
        uint256 deposit = ethml.minimumDeposit(consumer.CALLBACK_GAS());
        vm.prank(USER);
        uint256 id = consumer.request{value: deposit}(classifier, CID, 7 ether);
        uint256 next = _request(classifier, 0);
        _commitAs(miners[0], id, 1);
        uint256 expiresAt = ethml.getCurrentRound().commitDeadline;
        vm.expectRevert(abi.encodeWithSelector(EthML.NotExpired.selector, id, expiresAt));
        ethml.expireRequest(id);
        vm.roll(expiresAt + 1);
        vm.expectRevert(abi.encodeWithSelector(EthML.NotCurrentRequest.selector, next, id));
        ethml.expireRequest(next);
        vm.expectEmit();
        emit EthML.RequestExpired(id, 7 ether, 1, 1);
        ethml.expireRequest(id);
        vm.assertEq(ethml.balanceOf(address(consumer)), 7 ether, "refunded to the requester");
        vm.assertEq(uint256(ethml.requestStatus(id)), uint256(EthML.Status.Expired), "expired");
        (,, EthML.Status told,, bool received,,) = consumer.answers(id);
        vm.assertTrue(received, "consumer told");
        vm.assertEq(uint256(told), uint256(EthML.Status.Expired), "told expired");
        vm.assertEq(_currentId(), next, "queue moved on");
        _assertOwed(0, 0, 0);
        vm.expectRevert(abi.encodeWithSelector(EthML.NotCurrentRequest.selector, id, next));
        ethml.expireRequest(id);
        // The consumer hands the refund to its user.
        uint256 before = ethml.balanceOf(USER);
        vm.prank(USER);
        consumer.reclaim(id);
        vm.assertEq(ethml.balanceOf(USER), before + 7 ether, "user got the tip back");
        vm.assertEq(ethml.balanceOf(address(consumer)), 0, "consumer keeps nothing");
        vm.prank(USER);
        vm.expectRevert(abi.encodeWithSelector(ExampleConsumer.AlreadyReclaimed.selector, id));
        consumer.reclaim(id);
    }

    function test_expire_without_current_request() public {
        vm.expectRevert(EthML.NoCurrentRequest.selector);
        ethml.expireRequest(1);
    }

    // ------------------------------------------------------------ retarget

    function test_difficulty_retargets_in_bounded_steps() public {
        _deploy(1, 1 << 20);
        vm.warp(10_000);
        uint256 id = _request(classifier, 0);
        vm.warp(10_001); // commits in 1 s, target 15 s: at most doubles
        _round(id, [int256(1), 1, 1, 1, 1]);
        vm.assertEq(ethml.difficulty(), 2, "doubled, not x15");
        id = _request(classifier, 0);
        vm.warp(10_002);
        _round(id, [int256(1), 1, 1, 1, 1]);
        vm.assertEq(ethml.difficulty(), 4, "doubled again");
        id = _request(classifier, 0);
        vm.warp(10_002 + 1_000); // very slow: at most halves
        _round(id, [int256(1), 1, 1, 1, 1]);
        vm.assertEq(ethml.difficulty(), 2, "halved, not /66");
        id = _request(classifier, 0);
        vm.warp(10_002 + 1_000 + 15); // on target: unchanged
        _round(id, [int256(1), 1, 1, 1, 1]);
        vm.assertEq(ethml.difficulty(), 2, "steady");
    }

    function test_difficulty_respects_bounds() public {
        _deploy(4, 4);
        vm.warp(10_000);
        uint256 id = _request(classifier, 0);
        vm.warp(10_001);
        _round(id, [int256(1), 1, 1, 1, 1]);
        vm.assertEq(ethml.difficulty(), 4, "pinned");
    }

    // ------------------------------------------------------------ limits

    /// @dev Storage slots from `forge inspect EthML storageLayout`: modelCount = 11, _counters = 13 (EIP-2612 nonces take slot 5).
    function test_model_and_request_id_limits() public {
        vm.store(address(ethml), bytes32(uint256(11)), bytes32(uint256(type(uint16).max)));
        vm.prank(ADMIN);
        vm.expectRevert(EthML.TooManyModels.selector);
        ethml.registerModel("Qm", bytes32(0), EthML.ModelKind.Classification, 0, 1);
        vm.store(address(ethml), bytes32(uint256(13)), bytes32(uint256(type(uint32).max)));
        vm.expectRevert(EthML.TooManyRequests.selector);
        _request(classifier, 0);
    }

    function test_callback_gas_parameter_fits_uint24() public {
        EthML.Parameters memory p = _params(1, 1);
        p.maxCallbackGasLimit = uint32(type(uint24).max) + 1;
        vm.prank(ADMIN);
        vm.expectRevert(abi.encodeWithSelector(EthML.InvalidParameters.selector, "maxCallbackGasLimit above 2^24-1"));
        ethml.setParameters(p);
    }

    // ------------------------------------------------------------ helpers

    function _assertOwed(uint256 minerIndex, uint256 base, uint256 tips) internal view {
        (uint256 b, uint256 t) = ethml.owedRewards(miners[minerIndex]);
        vm.assertEq(b, base, "owed base");
        vm.assertEq(t, tips, "owed tips");
    }

    function _string(uint256 len) internal pure returns (string memory) {
        bytes memory b = new bytes(len);
        for (uint256 i = 0; i < len; ++i) {
            b[i] = bytes1(uint8(0x41 + (i % 26)));
        }
        return string(b);
    }
}
