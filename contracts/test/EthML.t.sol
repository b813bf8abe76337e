// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {IERC20Errors} from "@openzeppelin/contracts/interfaces/draft-IERC6093.sol";
import {IAccessControl} from "@openzeppelin/contracts/access/IAccessControl.sol";
import {EthML} from "../src/EthML.sol";
import {ExampleConsumer, UsingEthML} from "../src/UsingEthML.sol";
import {vm, EthMLFixture} from "./Base.sol";

contract RevertingConsumer is UsingEthML {
    constructor(EthML e) UsingEthML(e) {}

    function request(uint256 modelId, string calldata cid, uint256 gasLimit) external returns (uint256) {
        return _requestPrediction(modelId, cid, 0, gasLimit);
    }

    function _onPrediction(uint256, int256, EthML.Status) internal pure override {
        revert("consumer is broken");
    }
}

contract GasBurningConsumer is UsingEthML {
    uint256 public sink;

    constructor(EthML e) UsingEthML(e) {}

    function request(uint256 modelId, string calldata cid, uint256 gasLimit) external returns (uint256) {
        return _requestPrediction(modelId, cid, 0, gasLimit);
    }

    function _onPrediction(uint256, int256, EthML.Status) internal override {
        while (true) {
            sink += 1;
        }
    }
}

contract GasMeasuringConsumer is UsingEthML {
    uint256 public gasAtEntry;

    constructor(EthML e) UsingEthML(e) {}

    function request(uint256 modelId, string calldata cid, uint256 gasLimit) external returns (uint256) {
        return _requestPrediction(modelId, cid, 0, gasLimit);
    }

    function _onPrediction(uint256, int256, EthML.Status) internal override {
        gasAtEntry = gasleft();
    }
}

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
        vm.assertEq(ethml.difficulty(), 4, "clamped up to min");
        p.minDifficulty = 0;
        vm.prank(ADMIN);
        vm.expectRevert(abi.encodeWithSelector(EthML.InvalidParameters.selector, "minDifficulty is zero"));
        ethml.setParameters(p);
        p = _params(9, 8);
        vm.prank(ADMIN);
        vm.expectRevert(abi.encodeWithSelector(EthML.InvalidParameters.selector, "maxDifficulty below minDifficulty"));
        ethml.setParameters(p);
        p = _params(1, 8);
        p.targetSolveTime = 0;
        vm.prank(ADMIN);
        vm.expectRevert(abi.encodeWithSelector(EthML.InvalidParameters.selector, "targetSolveTime is zero"));
        ethml.setParameters(p);
        p = _params(1, 8);
        p.expiryBlocks = 0;
        vm.prank(ADMIN);
        vm.expectRevert(abi.encodeWithSelector(EthML.InvalidParameters.selector, "expiryBlocks is zero"));
        ethml.setParameters(p);
        p = _params(1, 8);
        p.regressionToleranceBps = 10_001;
        vm.prank(ADMIN);
        vm.expectRevert(abi.encodeWithSelector(EthML.InvalidParameters.selector, "regressionToleranceBps above 10000"));
        ethml.setParameters(p);
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

    function test_request_pulls_tip_with_allowance() public {
        address poor = address(0xD00D);
        vm.prank(USER);
        ethml.transfer(poor, 10 ether);
        vm.prank(poor);
        vm.expectRevert(
            abi.encodeWithSelector(IERC20Errors.ERC20InsufficientAllowance.selector, address(ethml), 0, 5 ether)
        );
        ethml.requestPrediction(classifier, CID, 5 ether, 0);
        vm.prank(poor);
        ethml.approve(address(ethml), 50 ether);
        vm.prank(poor);
        vm.expectRevert(
            abi.encodeWithSelector(IERC20Errors.ERC20InsufficientBalance.selector, poor, 10 ether, 20 ether)
        );
        ethml.requestPrediction(classifier, CID, 20 ether, 0);
        vm.prank(poor);
        ethml.requestPrediction(classifier, CID, 5 ether, 0);
        vm.assertEq(ethml.balanceOf(poor), 5 ether, "tip pulled");
        vm.assertEq(ethml.balanceOf(address(ethml)), 5 ether, "tip escrowed");
        vm.assertEq(ethml.allowance(poor, address(ethml)), 45 ether, "allowance spent");
    }

    function test_first_request_becomes_current_with_challenge_event() public {
        vm.expectEmit();
        emit EthML.PredictionRequested(1, USER, classifier, CID, 0, 0);
        _request(classifier, 0);
        (bytes32 challenge, uint256 id, uint256 difficulty, uint256 modelId, string memory cid, uint256 n, uint256 exp) =
            ethml.getCurrentVariables();
        vm.assertEq(id, 1, "current");
        vm.assertTrue(challenge != bytes32(0), "challenge");
        vm.assertEq(difficulty, 1, "difficulty");
        vm.assertEq(modelId, classifier, "model");
        vm.assertEq(cid, CID, "cid");
        vm.assertEq(n, 0, "submissions");
        vm.assertEq(exp, block.number + 50, "expiry");
        vm.assertEq(uint256(ethml.requestStatus(1)), uint256(EthML.Status.Current), "status");
        _request(classifier, 0);
        vm.assertEq(uint256(ethml.requestStatus(2)), uint256(EthML.Status.Queued), "queued");
        vm.assertEq(ethml.pendingCount(), 1, "pending");
    }

    function test_cid_round_trips_for_every_length() public {
        for (uint256 len = 1; len <= 64; ++len) {
            string memory cid = _string(len);
            vm.prank(USER);
            uint256 id = ethml.requestPrediction(classifier, cid, 0, 0);
            (,, string memory stored,,) = ethml.getRequest(id);
            vm.assertEq(stored, cid, "cid");
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
            (, uint256 current,,,,,) = ethml.getCurrentVariables();
            vm.assertEq(current, expected[i], "order");
            _round(current, [int256(1), 1, 1, 1, 1]);
        }
        (, uint256 idle,,,,,) = ethml.getCurrentVariables();
        vm.assertEq(idle, 0, "idle after the queue drains");
    }

    function test_each_round_has_a_fresh_challenge() public {
        _request(classifier, 0);
        _request(classifier, 0);
        (bytes32 c1,,,,,,) = ethml.getCurrentVariables();
        _round(1, [int256(1), 1, 1, 1, 1]);
        (bytes32 c2, uint256 id,,,,,) = ethml.getCurrentVariables();
        vm.assertEq(id, 2, "next");
        vm.assertTrue(c1 != c2, "fresh challenge");
    }

    // ------------------------------------------------------------ submissions

    function test_submission_errors() public {
        vm.prank(miners[0]);
        vm.expectRevert(EthML.NoCurrentRequest.selector);
        ethml.submitMiningSolution(1, 1, 0);
        _request(classifier, 0);
        _request(classifier, 0);
        vm.prank(miners[0]);
        vm.expectRevert(abi.encodeWithSelector(EthML.NotCurrentRequest.selector, 2, 1));
        ethml.submitMiningSolution(2, 1, 0);
        _submit(0, 1, 1);
        uint256 nonce = _mine(miners[0]);
        vm.prank(miners[0]);
        vm.expectRevert(abi.encodeWithSelector(EthML.AlreadySubmitted.selector, 1, miners[0]));
        ethml.submitMiningSolution(1, 1, nonce);
        vm.prank(miners[1]);
        vm.expectRevert(abi.encodeWithSelector(EthML.PredictionOutOfRange.selector, int256(type(int96).max) + 1));
        ethml.submitMiningSolution(1, int256(type(int96).max) + 1, 0);
        vm.prank(miners[1]);
        vm.expectRevert(abi.encodeWithSelector(EthML.PredictionOutOfRange.selector, int256(type(int96).min)));
        ethml.submitMiningSolution(1, int256(type(int96).min), 0);
        vm.assertTrue(ethml.hasSubmitted(miners[0]), "submitted");
        vm.assertTrue(!ethml.hasSubmitted(miners[1]), "not submitted");
    }

    function test_invalid_nonce_rejected() public {
        _deploy(1 << 20, 1 << 20);
        _request(classifier, 0);
        (bytes32 challenge,, uint256 difficulty,,,,) = ethml.getCurrentVariables();
        uint256 target = type(uint256).max / difficulty;
        uint256 bad = 0;
        while (uint256(keccak256(abi.encodePacked(challenge, miners[0], bad))) < target) {
            ++bad;
        }
        vm.prank(miners[0]);
        vm.expectRevert(abi.encodeWithSelector(EthML.InvalidNonce.selector, 1, miners[0], bad));
        ethml.submitMiningSolution(1, 1, bad);
    }

    function test_nonce_is_bound_to_the_miner() public {
        _deploy(1 << 12, 1 << 12);
        _request(classifier, 0);
        uint256 nonce = _mine(miners[0]);
        (bytes32 challenge,, uint256 difficulty,,,,) = ethml.getCurrentVariables();
        bool validForOther =
            uint256(keccak256(abi.encodePacked(challenge, miners[1], nonce))) < type(uint256).max / difficulty;
        vm.assume(!validForOther);
        vm.prank(miners[1]);
        vm.expectRevert(abi.encodeWithSelector(EthML.InvalidNonce.selector, 1, miners[1], nonce));
        ethml.submitMiningSolution(1, 1, nonce);
        vm.prank(miners[0]);
        ethml.submitMiningSolution(1, 1, nonce);
    }

    // ---------------------------------------------------- finalization, rewards

    function test_classification_consensus_rewards_only_agreeing_miners() public {
        uint256 id = _request(classifier, 10 ether);
        _round(id, [int256(1), 0, 1, 2, 1]);
        (int256 prediction, EthML.Status status, address[5] memory who, int256[5] memory values, uint256 closed) =
            ethml.getResult(id);
        vm.assertEq(prediction, 1, "mode");
        vm.assertEq(uint256(status), uint256(EthML.Status.Finalized), "status");
        vm.assertEq(closed, block.number, "block");
        for (uint256 i = 0; i < 5; ++i) {
            vm.assertEq(who[i], miners[i], "miner");
        }
        vm.assertEq(values[3], 2, "values kept");
        // 10 EML shared by three: 3.333.. each, the dust to the first agreeing miner.
        uint256 share = uint256(10 ether) / 3;
        uint256 dust = 10 ether - share * 3;
        vm.assertEq(ethml.balanceOf(miners[0]), MINER_FUNDS + BASE_REWARD + share + dust, "miner 0");
        vm.assertEq(ethml.balanceOf(miners[1]), MINER_FUNDS, "miner 1 disagreed");
        vm.assertEq(ethml.balanceOf(miners[2]), MINER_FUNDS + BASE_REWARD + share, "miner 2");
        vm.assertEq(ethml.balanceOf(miners[3]), MINER_FUNDS, "miner 3 disagreed");
        vm.assertEq(ethml.balanceOf(miners[4]), MINER_FUNDS + BASE_REWARD + share, "miner 4");
        vm.assertEq(ethml.balanceOf(address(ethml)), 0, "escrow emptied");
        vm.assertEq(ethml.totalSupply(), INITIAL_SUPPLY + 3 * BASE_REWARD, "minted");
        vm.assertEq(ethml.totalRewardsMinted(), 3 * BASE_REWARD, "minted counter");
    }

    function test_classification_tie_breaks_to_smallest_value() public {
        uint256 id = _request(classifier, 0);
        _round(id, [int256(7), 3, 7, 3, 9]);
        (int256 prediction,,,,) = ethml.getResult(id);
        vm.assertEq(prediction, 3, "smallest of the tied modes");
    }

    function test_regression_median_and_tolerance() public {
        uint256 id = _request(regressor, 0);
        // median 10000; 1% band = 100: 9900 and 10100 agree, 10101 and 5 do not.
        _round(id, [int256(10_101), 9_900, 10_000, 5, 10_100]);
        (int256 prediction, EthML.Status status,,,) = ethml.getResult(id);
        vm.assertEq(prediction, 10_000, "median");
        vm.assertEq(uint256(status), uint256(EthML.Status.Finalized), "status");
        vm.assertEq(ethml.balanceOf(miners[0]), MINER_FUNDS, "outside band");
        vm.assertEq(ethml.balanceOf(miners[1]), MINER_FUNDS + BASE_REWARD, "lower edge");
        vm.assertEq(ethml.balanceOf(miners[3]), MINER_FUNDS, "far off");
        vm.assertEq(ethml.balanceOf(miners[4]), MINER_FUNDS + BASE_REWARD, "upper edge");
    }

    function test_invalid_input_consensus() public {
        ExampleConsumer consumer = new ExampleConsumer(ethml);
        vm.prank(USER);
        uint256 id = consumer.request(classifier, CID, 0);
        int256 bad = ethml.INVALID_INPUT();
        _round(id, [bad, bad, 1, bad, 2]);
        (int256 prediction, EthML.Status status,, int256[5] memory values,) = ethml.getResult(id);
        vm.assertEq(prediction, bad, "sentinel");
        vm.assertEq(values[0], bad, "sentinel kept per miner");
        vm.assertEq(uint256(status), uint256(EthML.Status.InvalidInput), "status");
        (, int256 told, EthML.Status toldStatus, bool received) = consumer.answers(id);
        vm.assertTrue(received, "consumer told");
        vm.assertEq(told, bad, "consumer value");
        vm.assertEq(uint256(toldStatus), uint256(EthML.Status.InvalidInput), "consumer status");
        vm.assertEq(ethml.balanceOf(miners[0]), MINER_FUNDS + BASE_REWARD, "agreeing on invalid is paid");
        vm.assertEq(ethml.balanceOf(miners[2]), MINER_FUNDS, "disagreeing is not");
    }

    function test_regression_invalid_input_consensus() public {
        uint256 id = _request(regressor, 0);
        int256 bad = ethml.INVALID_INPUT();
        _round(id, [bad, bad, 1, bad, 2]);
        (int256 prediction, EthML.Status status,,,) = ethml.getResult(id);
        vm.assertEq(prediction, bad, "sentinel median");
        vm.assertEq(uint256(status), uint256(EthML.Status.InvalidInput), "status");
        vm.assertEq(ethml.balanceOf(miners[2]), MINER_FUNDS, "a number does not agree with invalid");
    }

    function test_example_consumer_receives_prediction_and_tip_flows() public {
        ExampleConsumer consumer = new ExampleConsumer(ethml);
        vm.prank(USER);
        ethml.approve(address(consumer), 5 ether);
        vm.prank(USER);
        uint256 id = consumer.request(classifier, CID, 5 ether);
        vm.assertEq(ethml.balanceOf(address(ethml)), 5 ether, "escrow");
        _round(id, [int256(1), 1, 1, 1, 0]);
        (address requester, int256 prediction, EthML.Status status, bool received) = consumer.answers(id);
        vm.assertEq(requester, USER, "requester");
        vm.assertTrue(received, "received");
        vm.assertEq(prediction, 1, "prediction");
        vm.assertEq(uint256(status), uint256(EthML.Status.Finalized), "status");
        vm.assertEq(ethml.balanceOf(miners[1]), MINER_FUNDS + BASE_REWARD + 1.25 ether, "tip share");
    }

    function test_only_ethml_can_call_back() public {
        ExampleConsumer consumer = new ExampleConsumer(ethml);
        vm.expectRevert(abi.encodeWithSelector(UsingEthML.OnlyEthML.selector, address(this)));
        consumer.ethmlCallback(1, 1, 3);
    }

    function test_reverting_callback_does_not_block_finalization() public {
        RevertingConsumer consumer = new RevertingConsumer(ethml);
        uint256 id = consumer.request(classifier, CID, 50_000);
        for (uint256 i = 0; i < 4; ++i) {
            _submit(i, id, 1);
        }
        uint256 nonce = _mine(miners[4]);
        vm.expectEmit();
        emit EthML.CallbackFailed(id, address(consumer));
        vm.prank(miners[4]);
        ethml.submitMiningSolution(id, 1, nonce);
        vm.assertEq(uint256(ethml.requestStatus(id)), uint256(EthML.Status.Finalized), "finalized");
        vm.assertEq(ethml.balanceOf(miners[4]), MINER_FUNDS + BASE_REWARD, "paid");
    }

    function test_gas_burning_callback_does_not_block_finalization() public {
        GasBurningConsumer consumer = new GasBurningConsumer(ethml);
        uint256 id = consumer.request(classifier, CID, 300_000);
        _request(classifier, 0);
        for (uint256 i = 0; i < 4; ++i) {
            _submit(i, id, 1);
        }
        uint256 nonce = _mine(miners[4]);
        vm.expectEmit();
        emit EthML.CallbackFailed(id, address(consumer));
        vm.prank(miners[4]);
        ethml.submitMiningSolution{gas: 1_000_000}(id, 1, nonce);
        vm.assertEq(uint256(ethml.requestStatus(id)), uint256(EthML.Status.Finalized), "finalized");
        (, uint256 next,,,,,) = ethml.getCurrentVariables();
        vm.assertEq(next, id + 1, "queue moved on");
    }

    function test_callback_gets_its_full_gas_or_the_submission_reverts() public {
        GasMeasuringConsumer consumer = new GasMeasuringConsumer(ethml);
        uint256 limit = 200_000;
        uint256 id = consumer.request(classifier, CID, limit);
        for (uint256 i = 0; i < 4; ++i) {
            _submit(i, id, 1);
        }
        uint256 nonce = _mine(miners[4]);
        // Too little gas to forward the full limit: the submission reverts instead of short-changing the consumer.
        vm.prank(miners[4]);
        vm.expectPartialRevert(EthML.InsufficientGasForCallback.selector);
        ethml.submitMiningSolution{gas: 300_000}(id, 1, nonce);
        vm.prank(miners[4]);
        ethml.submitMiningSolution{gas: 2_000_000}(id, 1, nonce);
        uint256 got = consumer.gasAtEntry();
        vm.assertTrue(got > limit - 5_000 && got <= limit, "callback ran with its requested gas");
    }

    // ------------------------------------------------------------ expiry

    function test_expiry_refunds_tip_and_moves_on() public {
        ExampleConsumer consumer = new ExampleConsumer(ethml);
        vm.prank(USER);
        ethml.approve(address(consumer), 7 ether);
        vm.prank(USER);
        uint256 id = consumer.request(classifier, CID, 7 ether);
        uint256 next = _request(classifier, 0);
        _submit(0, id, 1);
        (,,,,,, uint256 expiresAt) = ethml.getCurrentVariables();
        vm.expectRevert(abi.encodeWithSelector(EthML.NotExpired.selector, id, expiresAt));
        ethml.expireRequest(id);
        vm.roll(expiresAt + 1);
        vm.expectRevert(abi.encodeWithSelector(EthML.NotCurrentRequest.selector, next, id));
        ethml.expireRequest(next);
        vm.expectEmit();
        emit EthML.RequestExpired(id, 7 ether, 1);
        ethml.expireRequest(id);
        vm.assertEq(ethml.balanceOf(address(consumer)), 7 ether, "refunded to the requester");
        vm.assertEq(uint256(ethml.requestStatus(id)), uint256(EthML.Status.Expired), "expired");
        (,, EthML.Status told, bool received) = consumer.answers(id);
        vm.assertTrue(received, "consumer told");
        vm.assertEq(uint256(told), uint256(EthML.Status.Expired), "told expired");
        (, uint256 current,,,,,) = ethml.getCurrentVariables();
        vm.assertEq(current, next, "queue moved on");
        vm.assertEq(ethml.balanceOf(miners[0]), MINER_FUNDS, "no reward for an expired request");
        vm.expectRevert(abi.encodeWithSelector(EthML.NotCurrentRequest.selector, id, next));
        ethml.expireRequest(id);
    }

    function test_expire_without_current_request() public {
        vm.expectRevert(EthML.NoCurrentRequest.selector);
        ethml.expireRequest(1);
    }

    // ------------------------------------------------------------ retarget

    function test_difficulty_retargets_in_bounded_steps() public {
        _deploy(1, 1 << 20);
        vm.warp(1_000);
        uint256 id = _request(classifier, 0);
        vm.warp(1_001); // solved in 1 s, target 15 s: at most doubles
        _round(id, [int256(1), 1, 1, 1, 1]);
        vm.assertEq(ethml.difficulty(), 2, "doubled, not x15");
        id = _request(classifier, 0);
        vm.warp(1_002);
        _round(id, [int256(1), 1, 1, 1, 1]);
        vm.assertEq(ethml.difficulty(), 4, "doubled again");
        id = _request(classifier, 0);
        vm.warp(1_002 + 1_000); // very slow: at most halves
        _round(id, [int256(1), 1, 1, 1, 1]);
        vm.assertEq(ethml.difficulty(), 2, "halved, not /66");
        id = _request(classifier, 0);
        vm.warp(1_002 + 1_000 + 15); // on target: unchanged
        _round(id, [int256(1), 1, 1, 1, 1]);
        vm.assertEq(ethml.difficulty(), 2, "steady");
    }

    function test_difficulty_respects_bounds() public {
        _deploy(4, 4);
        vm.warp(1_000);
        uint256 id = _request(classifier, 0);
        vm.warp(1_001);
        _round(id, [int256(1), 1, 1, 1, 1]);
        vm.assertEq(ethml.difficulty(), 4, "pinned");
    }

    // ------------------------------------------------------------ limits

    /// @dev Storage slots from `forge inspect EthML storageLayout`: modelCount = 8, _counters = 10.
    function test_model_and_request_id_limits() public {
        vm.store(address(ethml), bytes32(uint256(8)), bytes32(uint256(type(uint16).max)));
        vm.prank(ADMIN);
        vm.expectRevert(EthML.TooManyModels.selector);
        ethml.registerModel("Qm", bytes32(0), EthML.ModelKind.Classification, 0, 1);
        vm.store(address(ethml), bytes32(uint256(10)), bytes32(uint256(type(uint32).max)));
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

    function _string(uint256 len) internal pure returns (string memory) {
        bytes memory b = new bytes(len);
        for (uint256 i = 0; i < len; ++i) {
            b[i] = bytes1(uint8(0x41 + (i % 26)));
        }
        return string(b);
    }
}
