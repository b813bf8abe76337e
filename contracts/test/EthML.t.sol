// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {IAccessControl} from "@openzeppelin/contracts/access/IAccessControl.sol";
import {IERC20Errors} from "@openzeppelin/contracts/interfaces/draft-IERC6093.sol";
import {EthML} from "../src/EthML.sol";
import {EthMLSettlement} from "../src/EthMLSettlement.sol";
import {IEthML} from "../src/IEthML.sol";
import {ModelRegistry} from "../src/ModelRegistry.sol";
import {ExampleConsumer, UsingEthML} from "../src/UsingEthML.sol";
import {vm, EthMLFixture} from "./Base.sol";
import {GasBurningConsumer, GasMeasuringConsumer, RevertingConsumer} from "./Consumers.sol";

/// @dev The oracle with one request per round (K = 1): requests, commitments, reveals, consensus,
/// rewards and bonds, callbacks, expiry, retarget and limits. Rounds of several requests: Rounds.t.sol.
contract EthMLTest is EthMLFixture {
    function setUp() public {
        _deploy(1, 1);
    }

    // -------------------------------------------------------------- requests

    function test_request_validation_errors() public {
        vm.startPrank(USER);
        vm.expectRevert(IEthML.EmptyCid.selector);
        ethml.requestPrediction(classifier, "", 0, 0);
        vm.expectRevert(abi.encodeWithSelector(IEthML.CidTooLong.selector, 65, 64));
        ethml.requestPrediction(classifier, _string(65), 0, 0);
        vm.expectRevert(abi.encodeWithSelector(IEthML.CallbackGasLimitTooHigh.selector, 1_000_001, 1_000_000));
        ethml.requestPrediction(classifier, CID, 0, 1_000_001);
        vm.expectRevert(abi.encodeWithSelector(IEthML.TipTooLarge.selector, uint256(type(uint96).max) + 1));
        ethml.requestPrediction(classifier, CID, uint256(type(uint96).max) + 1, 0);
        vm.stopPrank();
    }

    function test_unknown_and_inactive_models() public {
        vm.expectRevert(abi.encodeWithSelector(ModelRegistry.UnknownModel.selector, 3));
        _request(3, 0);
        vm.prank(ADMIN);
        registry.deactivateModel(classifier);
        vm.expectRevert(abi.encodeWithSelector(IEthML.ModelInactive.selector, classifier));
        _request(classifier, 0);
    }

    function test_request_takes_tip_from_the_callers_balance_without_approval() public {
        address poor = address(0xD00D);
        vm.prank(USER);
        token.transfer(poor, 10 ether);
        vm.prank(poor);
        vm.expectRevert(
            abi.encodeWithSelector(IERC20Errors.ERC20InsufficientBalance.selector, poor, 10 ether, 20 ether)
        );
        ethml.requestPrediction(classifier, CID, 20 ether, 0);
        vm.assertEq(token.allowance(poor, address(ethml)), 0, "no approval given");
        vm.prank(poor);
        ethml.requestPrediction(classifier, CID, 5 ether, 0);
        vm.assertEq(token.balanceOf(poor), 5 ether, "tip taken");
        vm.assertEq(token.balanceOf(address(ethml)), 5 ether, "tip escrowed");
    }

    function test_first_request_opens_a_round_with_its_event() public {
        uint256[] memory ids = new uint256[](1);
        ids[0] = 1;
        vm.expectEmit();
        emit IEthML.PredictionRequested(1, USER, classifier, CID, 0, 0, 0);
        vm.expectEmit();
        emit IEthML.RoundOpened(1, ids, 1, block.number + 50, BOND);
        _request(classifier, 0);
        EthML.CurrentRound memory r = ethml.getCurrentRound();
        vm.assertEq(r.roundId, 1, "current round");
        vm.assertEq(r.requestIds.length, 1, "alone");
        vm.assertEq(r.requestIds[0], 1, "the request");
        vm.assertEq(r.challenge, bytes32(0), "no challenge in the opening block");
        vm.assertEq(r.difficulty, 1, "difficulty");
        vm.assertEq(r.openBlock, block.number, "open block");
        vm.assertEq(r.commitDeadline, block.number + 50, "commit deadline");
        vm.assertEq(r.bond, BOND, "bond");
        vm.assertEq(uint256(ethml.requestStatus(1)), uint256(IEthML.Status.Current), "status");
        vm.roll(block.number + 1);
        r = ethml.getCurrentRound();
        vm.assertEq(r.challenge, ethml.challengeFor(blockhash(block.number - 1), 1), "challenge from the block hash");
        vm.assertTrue(r.challenge != bytes32(0), "challenge");
        _request(classifier, 0);
        vm.assertEq(uint256(ethml.requestStatus(2)), uint256(IEthML.Status.Queued), "queued");
        vm.assertEq(ethml.pendingCount(), 1, "pending");
    }

    function test_every_cid_length_is_announced() public {
        for (uint256 len = 1; len <= 64; ++len) {
            string memory cid = _string(len);
            vm.expectEmit();
            emit IEthML.PredictionRequested(len, USER, classifier, cid, 0, 0, 0);
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
            vm.assertEq(_currentId(), expected[i], "order");
            _roundAll(1);
        }
        vm.assertEq(_currentId(), 0, "idle after the queue drains");
        vm.assertEq(_currentRound(), 0, "no open round");
    }

    function test_each_round_has_a_fresh_challenge() public {
        _request(classifier, 0);
        _request(classifier, 0);
        _afterOpening();
        (bytes32 c1,) = _challenge();
        _roundAll(1);
        _afterOpening();
        (bytes32 c2,) = _challenge();
        vm.assertEq(_currentRound(), 2, "next round");
        vm.assertTrue(c1 != c2, "fresh challenge");
    }

    // ------------------------------------------------------------ commit, reveal

    function test_commit_errors() public {
        vm.prank(miners[0]);
        vm.expectRevert(IEthML.NoOpenRound.selector);
        ethml.commit(1, 0, bytes32(0));
        _request(classifier, 0);
        _request(classifier, 0);
        vm.prank(miners[0]);
        vm.expectRevert(abi.encodeWithSelector(IEthML.ChallengeNotYetAvailable.selector, 1, block.number));
        ethml.commit(1, 0, bytes32(0));
        vm.roll(block.number + 1);
        vm.prank(miners[0]);
        vm.expectRevert(abi.encodeWithSelector(IEthML.NotCurrentRound.selector, 2, 1));
        ethml.commit(2, 0, bytes32(0));
        _commitAs(miners[0], 1, _one(1));
        uint256 nonce = _mine(miners[0]);
        vm.prank(miners[0]);
        vm.expectRevert(abi.encodeWithSelector(IEthML.AlreadyCommitted.selector, 1, miners[0]));
        ethml.commit(1, nonce, bytes32(0));
        vm.assertTrue(ethml.hasCommitted(miners[0]), "committed");
        vm.assertTrue(!ethml.hasCommitted(miners[1]), "not committed");
        vm.prank(miners[1]);
        vm.expectRevert(abi.encodeWithSelector(IEthML.NotRevealPhase.selector, 1));
        ethml.reveal(1, _one(1), bytes32(0));
        for (uint256 i = 1; i < 5; ++i) {
            _commitAs(miners[i], 1, _one(1));
        }
        nonce = _mine(miners[5]);
        vm.prank(miners[5]);
        vm.expectRevert(abi.encodeWithSelector(IEthML.CommitPhaseOver.selector, 1));
        ethml.commit(1, nonce, bytes32(0));
    }

    function test_reveal_errors() public {
        _request(classifier, 0);
        _commitAll(1, [_one(1), _one(1), _one(1), _one(1), _one(1)]);
        vm.prank(miners[5]);
        vm.expectRevert(abi.encodeWithSelector(IEthML.NotCommitted.selector, 1, miners[5]));
        ethml.reveal(1, _one(1), bytes32(0));
        vm.prank(miners[0]);
        vm.expectRevert(abi.encodeWithSelector(IEthML.CommitmentMismatch.selector, 1, miners[0]));
        ethml.reveal(1, _one(2), _salt(miners[0], 1));
        vm.prank(miners[0]);
        vm.expectRevert(abi.encodeWithSelector(IEthML.AnswerCount.selector, 1, 2));
        ethml.reveal(1, _same(1, 2), _salt(miners[0], 1));
        _revealAs(miners[0], 1, _one(1));
        vm.prank(miners[0]);
        vm.expectRevert(abi.encodeWithSelector(IEthML.AlreadyRevealed.selector, 1, miners[0]));
        ethml.reveal(1, _one(1), _salt(miners[0], 1));
        (address[5] memory who, int256[] memory table) = _table(1, address(0), new int256[](0));
        vm.expectRevert(abi.encodeWithSelector(IEthML.RevealWindowOpen.selector, 1, block.number + 10));
        ethml.closeRound(1, who, table);
        vm.roll(block.number + 11);
        vm.prank(miners[1]);
        vm.expectRevert(abi.encodeWithSelector(IEthML.RevealWindowClosed.selector, 1, block.number - 1));
        ethml.reveal(1, _one(1), _salt(miners[1], 1));
    }

    function test_reveal_and_close_only_for_the_last_reveal() public {
        _request(classifier, 0);
        _commitAll(1, [_one(1), _one(1), _one(1), _one(1), _one(1)]);
        _revealAs(miners[0], 1, _one(1));
        (address[5] memory who, int256[] memory table) = _table(1, miners[1], _one(1));
        vm.prank(miners[1]);
        vm.expectRevert(abi.encodeWithSelector(IEthML.NotLastReveal.selector, 1));
        ethml.revealAndClose(1, _salt(miners[1], 1), who, table);
        for (uint256 i = 1; i < 4; ++i) {
            _revealAs(miners[i], 1, _one(1));
        }
        (who, table) = _table(1, miners[4], _one(1));
        who[4] = miners[5];
        vm.prank(miners[4]);
        vm.expectRevert(abi.encodeWithSelector(IEthML.RevealMismatch.selector, 1, 4));
        ethml.revealAndClose(1, _salt(miners[4], 1), who, table);
        _revealAndCloseAs(miners[4], 1, _one(1));
        vm.assertEq(uint256(ethml.requestStatus(1)), uint256(IEthML.Status.Finalized), "closed");
    }

    function test_all_revealed_closes_at_once_without_the_window() public {
        _request(classifier, 0);
        _commitAll(1, [_one(1), _one(1), _one(1), _one(1), _one(1)]);
        for (uint256 i = 0; i < 5; ++i) {
            _revealAs(miners[i], 1, _one(1));
        }
        _closeAs(USER, 1);
        vm.assertEq(uint256(ethml.requestStatus(1)), uint256(IEthML.Status.Finalized), "closed by anyone");
    }

    function test_close_checks_every_vector_against_its_reveal() public {
        _request(classifier, 0);
        int256[5] memory said = [int256(1), 1, 0, 0, 1];
        _commitAll(1, [_one(1), _one(1), _one(0), _one(0), _one(1)]);
        for (uint256 i = 0; i < 5; ++i) {
            _revealAs(miners[i], 1, _one(said[i]));
        }
        (address[5] memory who, int256[] memory table) = _table(1, address(0), new int256[](0));
        table[2] = 1; // the closer claims slot 2 said 1
        vm.expectRevert(abi.encodeWithSelector(IEthML.RevealMismatch.selector, 1, 2));
        ethml.closeRound(1, who, table);
        (who, table) = _table(1, address(0), new int256[](0));
        who[3] = miners[6]; // or that someone else revealed slot 3
        vm.expectRevert(abi.encodeWithSelector(IEthML.RevealMismatch.selector, 1, 3));
        ethml.closeRound(1, who, table);
        vm.expectRevert(abi.encodeWithSelector(IEthML.AnswerCount.selector, 5, 4));
        ethml.closeRound(1, who, new int256[](4));
        _closeAs(USER, 1);
        (int256 prediction,, uint256 agreeing,) = ethml.getResult(1);
        vm.assertEq(prediction, 1, "the honest table decides");
        vm.assertEq(agreeing, 3, "three said 1");
    }

    function test_prediction_out_of_range_is_refused_at_reveal() public {
        _request(classifier, 0);
        int256 big = int256(type(int96).max) + 1;
        _commitAll(1, [_one(big), _one(1), _one(1), _one(1), _one(1)]);
        vm.prank(miners[0]);
        vm.expectRevert(abi.encodeWithSelector(IEthML.PredictionOutOfRange.selector, big));
        ethml.reveal(1, _one(big), _salt(miners[0], 1));
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
        vm.expectRevert(abi.encodeWithSelector(IEthML.InvalidNonce.selector, 1, miners[0], bad));
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
        vm.expectRevert(abi.encodeWithSelector(IEthML.InvalidNonce.selector, 1, miners[1], nonce));
        ethml.commit(1, nonce, bytes32(0));
        vm.prank(miners[0]);
        ethml.commit(1, nonce, bytes32(0));
    }

    function test_the_settlement_code_cannot_be_called_directly() public {
        EthMLSettlement settlement = ethml.settlement();
        address[5] memory who;
        vm.expectRevert(EthMLSettlement.DelegateCallOnly.selector);
        settlement.closeRound(1, who, new int256[](5));
        vm.expectRevert(EthMLSettlement.DelegateCallOnly.selector);
        settlement.expireQueued(1, 0);
    }

    // ---------------------------------------------------- finalization, rewards

    function test_classification_consensus_rewards_only_agreeing_miners() public {
        uint256 id = _request(classifier, 10 ether);
        _round(1, [int256(1), 0, 1, 2, 1]);
        (int256 prediction, IEthML.Status status, uint256 agreeing, uint256 closed) = ethml.getResult(id);
        vm.assertEq(prediction, 1, "mode");
        vm.assertEq(uint256(status), uint256(IEthML.Status.Finalized), "status");
        vm.assertEq(agreeing, 3, "agreeing");
        vm.assertEq(closed, block.number, "block");
        (uint256 roundId, uint8 mask) = ethml.closingRound(id);
        vm.assertEq(roundId, 1, "closing round");
        vm.assertEq(uint256(mask), 0x15, "slots 0, 2, 4 agreed");
        // A fifth of the 10 EML for each of the three agreeing slots; the two fifths of the slots that
        // disagreed burn with their whole bonds (one decided request of one: bond / K = the bond).
        uint256 share = uint256(10 ether) / 5;
        _assertBalance(0, BOND + BASE_REWARD + share);
        _assertBalance(1, 0);
        _assertBalance(2, BOND + BASE_REWARD + share);
        _assertBalance(3, 0);
        _assertBalance(4, BOND + BASE_REWARD + share);
        vm.assertEq(ethml.totalRewardsIssued(), 3 * BASE_REWARD, "issued");
        vm.assertEq(ethml.totalBurned(), 2 * uint256(BOND) + 2 * share, "two bonds and two tip shares burned");
        vm.assertEq(
            token.totalSupply(), INITIAL_SUPPLY + 3 * BASE_REWARD - 2 * BOND - 2 * share, "minted net of the burn"
        );
        vm.prank(miners[0]);
        ethml.claimRewards();
        vm.assertEq(token.balanceOf(miners[0]), MINER_FUNDS + BASE_REWARD + share, "claimed");
        vm.assertEq(token.balanceOf(miners[1]), MINER_FUNDS - BOND, "the bond is gone");
        vm.prank(miners[0]);
        vm.expectRevert(abi.encodeWithSelector(IEthML.NothingToClaim.selector, miners[0]));
        ethml.claimRewards();
        for (uint256 i = 2; i < 5; i += 2) {
            vm.prank(miners[i]);
            ethml.claimRewards();
        }
        vm.assertEq(token.balanceOf(address(ethml)), 0, "escrow emptied");
    }

    function test_bond_comes_from_the_balance_held_here_first() public {
        _request(classifier, 0);
        _round(1, [int256(1), 1, 1, 1, 1]);
        // Miner 0 now holds its bond and a reward here; the next commitment takes the bond from that.
        uint256 held = ethml.minerBalance(miners[0]);
        uint256 tokens = token.balanceOf(miners[0]);
        _request(classifier, 0);
        _commitAs(miners[0], 2, _one(1));
        vm.assertEq(ethml.minerBalance(miners[0]), held - BOND, "bond from the balance");
        vm.assertEq(token.balanceOf(miners[0]), tokens, "no transfer");
        // Partial claims keep the rest as bond capital; fund adds to it.
        vm.prank(miners[0]);
        ethml.claim(1 ether);
        vm.prank(miners[0]);
        vm.expectRevert(abi.encodeWithSelector(IEthML.ClaimTooLarge.selector, 100 ether, held - BOND - 1 ether));
        ethml.claim(100 ether);
        vm.prank(miners[5]);
        ethml.fund(5 ether);
        vm.assertEq(ethml.minerBalance(miners[5]), 5 ether, "funded");
        vm.assertEq(token.balanceOf(miners[5]), MINER_FUNDS - 5 ether, "from its EML");
    }

    function test_regression_median_and_tolerance() public {
        uint256 id = _request(regressor, 0);
        // median 10000; 1% band = 100: 9900 and 10100 agree, 10101 and 5 do not.
        _round(1, [int256(10_101), 9_900, 10_000, 5, 10_100]);
        (int256 prediction, IEthML.Status status, uint256 agreeing,) = ethml.getResult(id);
        vm.assertEq(prediction, 10_000, "median");
        vm.assertEq(uint256(status), uint256(IEthML.Status.Finalized), "status");
        vm.assertEq(agreeing, 3, "agreeing");
        _assertBalance(0, 0);
        _assertBalance(1, BOND + BASE_REWARD);
        _assertBalance(3, 0);
        _assertBalance(4, BOND + BASE_REWARD);
    }

    function test_regression_median_of_zero_has_a_band() public {
        uint256 id = _request(regressor, 0);
        // Two decimals: 1.00 is 100 units, so the 1% band around 0 is 1 unit.
        _round(1, [int256(0), 1, -1, 0, 2]);
        (int256 prediction, IEthML.Status status, uint256 agreeing,) = ethml.getResult(id);
        vm.assertEq(prediction, 0, "median");
        vm.assertEq(uint256(status), uint256(IEthML.Status.Finalized), "finalized");
        vm.assertEq(agreeing, 4, "0, 1, -1, 0 agree; 2 does not");
    }

    function test_invalid_input_with_quorum() public {
        ExampleConsumer consumer = new ExampleConsumer(ethml);
        uint256 deposit = ethml.minimumDeposit(consumer.CALLBACK_GAS());
        vm.deal(USER, 1 ether);
        vm.prank(USER);
        uint256 id = consumer.request{value: deposit}(classifier, CID, 0);
        int256 bad = ethml.INVALID_INPUT();
        _round(1, [bad, bad, 1, bad, 2]);
        (int256 prediction, IEthML.Status status, uint256 agreeing,) = ethml.getResult(id);
        vm.assertEq(prediction, bad, "sentinel");
        vm.assertEq(uint256(status), uint256(IEthML.Status.InvalidInput), "status");
        vm.assertEq(agreeing, 3, "three said invalid");
        (, int256 told, IEthML.Status toldStatus, uint8 toldAgreeing, bool received,,) = consumer.answers(id);
        vm.assertTrue(received, "consumer told");
        vm.assertEq(told, bad, "consumer value");
        vm.assertEq(uint256(toldStatus), uint256(IEthML.Status.InvalidInput), "consumer status");
        vm.assertEq(uint256(toldAgreeing), 3, "consumer told the count");
        _assertBalance(0, BOND + BASE_REWARD);
        _assertBalance(2, 0);
    }

    function test_regression_invalid_input_needs_quorum() public {
        uint256 id = _request(regressor, 0);
        int256 bad = ethml.INVALID_INPUT();
        _round(1, [bad, bad, 100, bad, 101]);
        (, IEthML.Status status,,) = ethml.getResult(id);
        vm.assertEq(uint256(status), uint256(IEthML.Status.InvalidInput), "three invalid votes");
        _assertBalance(2, 0);
        id = _request(regressor, 0);
        _round(2, [bad, bad, 100, 100, 100]);
        (int256 prediction, IEthML.Status status2,,) = ethml.getResult(id);
        vm.assertEq(uint256(status2), uint256(IEthML.Status.Finalized), "three numbers win over two invalid");
        vm.assertEq(prediction, 100, "value");
    }

    function test_example_consumer_receives_prediction_and_tip_flows() public {
        ExampleConsumer consumer = new ExampleConsumer(ethml);
        vm.prank(USER);
        token.approve(address(consumer), 5 ether);
        vm.deal(USER, 1 ether);
        uint256 deposit = ethml.minimumDeposit(consumer.CALLBACK_GAS());
        vm.prank(USER);
        uint256 id = consumer.request{value: deposit}(classifier, CID, 5 ether);
        vm.assertEq(token.balanceOf(address(ethml)), 5 ether, "escrow");
        _round(1, [int256(1), 1, 1, 1, 0]);
        (address requester, int256 prediction, IEthML.Status status, uint8 agreeing, bool received,,) =
            consumer.answers(id);
        vm.assertEq(requester, USER, "requester");
        vm.assertTrue(received, "received");
        vm.assertEq(prediction, 1, "prediction");
        vm.assertEq(uint256(agreeing), 4, "agreeing");
        vm.assertEq(uint256(status), uint256(IEthML.Status.Finalized), "status");
        _assertBalance(1, BOND + BASE_REWARD + 1 ether); // a fifth of the tip, however many agreed
    }

    function test_only_ethml_can_call_back() public {
        ExampleConsumer consumer = new ExampleConsumer(ethml);
        vm.expectRevert(abi.encodeWithSelector(UsingEthML.OnlyEthML.selector, address(this)));
        consumer.ethmlCallback(1, 1, 3, 5);
    }

    function test_callback_needs_a_deposit() public {
        RevertingConsumer consumer = new RevertingConsumer(ethml);
        uint256 required = ethml.minimumDeposit(50_000);
        vm.expectRevert(abi.encodeWithSelector(IEthML.CallbackDepositTooSmall.selector, 0, required));
        consumer.request(classifier, CID, 50_000);
        vm.deal(USER, 1 ether);
        vm.prank(USER);
        vm.expectRevert(abi.encodeWithSelector(IEthML.UnexpectedDeposit.selector, 1));
        ethml.requestPrediction{value: 1}(classifier, CID, 0, 0);
    }

    function test_reverting_callback_does_not_block_finalization() public {
        RevertingConsumer consumer = new RevertingConsumer(ethml);
        vm.deal(address(this), 1 ether);
        uint256 id = consumer.request{value: 0.01 ether}(classifier, CID, 50_000);
        _commitAll(1, [_one(1), _one(1), _one(1), _one(1), _one(1)]);
        for (uint256 i = 0; i < 4; ++i) {
            _revealAs(miners[i], 1, _one(1));
        }
        vm.expectEmit();
        emit IEthML.CallbackFailed(id, address(consumer));
        _revealAndCloseAs(miners[4], 1, _one(1));
        vm.assertEq(uint256(ethml.requestStatus(id)), uint256(IEthML.Status.Finalized), "finalized");
        _assertBalance(4, BOND + BASE_REWARD);
    }

    function test_gas_burning_callback_does_not_block_finalization() public {
        GasBurningConsumer consumer = new GasBurningConsumer(ethml);
        vm.deal(address(this), 1 ether);
        uint256 id = consumer.request{value: 0.01 ether}(classifier, CID, 300_000);
        _request(classifier, 0);
        _commitAll(1, [_one(1), _one(1), _one(1), _one(1), _one(1)]);
        for (uint256 i = 0; i < 4; ++i) {
            _revealAs(miners[i], 1, _one(1));
        }
        (address[5] memory who, int256[] memory table) = _table(1, miners[4], _one(1));
        bytes32 salt = _salt(miners[4], 1);
        vm.expectEmit();
        emit IEthML.CallbackFailed(id, address(consumer));
        vm.prank(miners[4]);
        ethml.revealAndClose{gas: 1_000_000}(1, salt, who, table);
        vm.assertEq(uint256(ethml.requestStatus(id)), uint256(IEthML.Status.Finalized), "finalized");
        vm.assertEq(_currentId(), id + 1, "queue moved on");
    }

    function test_callback_gets_its_full_gas_or_the_close_reverts() public {
        GasMeasuringConsumer consumer = new GasMeasuringConsumer(ethml);
        uint256 limit = 200_000;
        vm.deal(address(this), 1 ether);
        consumer.request{value: 0.01 ether}(classifier, CID, limit);
        _commitAll(1, [_one(1), _one(1), _one(1), _one(1), _one(1)]);
        for (uint256 i = 0; i < 4; ++i) {
            _revealAs(miners[i], 1, _one(1));
        }
        (address[5] memory who, int256[] memory table) = _table(1, miners[4], _one(1));
        bytes32 salt = _salt(miners[4], 1);
        // Too little gas to forward the full limit: the close reverts instead of short-changing the consumer.
        vm.prank(miners[4]);
        vm.expectPartialRevert(IEthML.InsufficientGasForCallback.selector);
        ethml.revealAndClose{gas: 250_000}(1, salt, who, table);
        vm.prank(miners[4]);
        ethml.revealAndClose{gas: 2_000_000}(1, salt, who, table);
        uint256 got = consumer.gasAtEntry();
        vm.assertTrue(got > limit - 5_000 && got <= limit, "callback ran with its requested gas");
    }

    // ------------------------------------------------------------ expiry

    function test_expiry_refunds_tips_returns_bonds_and_moves_on() public {
        ExampleConsumer consumer = new ExampleConsumer(ethml);
        vm.prank(USER);
        token.approve(address(consumer), 7 ether);
        vm.deal(USER, 1 ether);
        uint256 deposit = ethml.minimumDeposit(consumer.CALLBACK_GAS());
        vm.prank(USER);
        uint256 id = consumer.request{value: deposit}(classifier, CID, 7 ether);
        uint256 next = _request(classifier, 0);
        _commitAs(miners[0], 1, _one(1));
        vm.assertEq(token.balanceOf(miners[0]), MINER_FUNDS - BOND, "bonded");
        uint256 expiresAt = ethml.getCurrentRound().commitDeadline;
        address[] memory committers = _committers(1);
        vm.expectRevert(abi.encodeWithSelector(IEthML.NotExpired.selector, 1, expiresAt));
        ethml.expireRound(1, committers);
        vm.roll(expiresAt + 1);
        vm.expectRevert(abi.encodeWithSelector(IEthML.NotCurrentRound.selector, 2, 1));
        ethml.expireRound(2, new address[](0));
        vm.expectRevert(abi.encodeWithSelector(IEthML.CommittersMismatch.selector, 1));
        ethml.expireRound(1, new address[](0));
        address[] memory wrong = new address[](1);
        wrong[0] = miners[1];
        vm.expectRevert(abi.encodeWithSelector(IEthML.CommittersMismatch.selector, 1));
        ethml.expireRound(1, wrong);
        vm.expectEmit();
        emit IEthML.RequestExpired(id, 1, 7 ether);
        vm.expectEmit();
        emit IEthML.RoundExpired(1, 1, 1);
        _expire(1);
        vm.assertEq(token.balanceOf(address(consumer)), 7 ether, "refunded to the requester");
        vm.assertEq(uint256(ethml.requestStatus(id)), uint256(IEthML.Status.Expired), "expired");
        (,, IEthML.Status told,, bool received,,) = consumer.answers(id);
        vm.assertTrue(received, "consumer told");
        vm.assertEq(uint256(told), uint256(IEthML.Status.Expired), "told expired");
        vm.assertEq(_currentId(), next, "queue moved on");
        _assertBalance(0, BOND); // the bond back, no reward
        vm.expectRevert(abi.encodeWithSelector(IEthML.NotCurrentRound.selector, 1, 2));
        ethml.expireRound(1, committers);
        // The consumer hands the refund to its user.
        uint256 before = token.balanceOf(USER);
        vm.prank(USER);
        consumer.reclaim(id);
        vm.assertEq(token.balanceOf(USER), before + 7 ether, "user got the tip back");
        vm.assertEq(token.balanceOf(address(consumer)), 0, "consumer keeps nothing");
        vm.prank(USER);
        vm.expectRevert(abi.encodeWithSelector(ExampleConsumer.AlreadyReclaimed.selector, id));
        consumer.reclaim(id);
    }

    function test_expire_without_an_open_round() public {
        vm.expectRevert(IEthML.NoOpenRound.selector);
        ethml.expireRound(1, new address[](0));
    }

    function test_nobody_reveals_all_bonds_burn_and_tips_return() public {
        uint256 id = _request(classifier, 3 ether);
        _commitAll(1, [_one(1), _one(1), _one(1), _one(1), _one(1)]);
        uint256 supply = token.totalSupply();
        uint256 userBalance = token.balanceOf(USER);
        vm.roll(block.number + 11);
        _closeAs(USER, 1);
        (, IEthML.Status status, uint256 agreeing,) = ethml.getResult(id);
        vm.assertEq(uint256(status), uint256(IEthML.Status.NoConsensus), "no consensus");
        vm.assertEq(agreeing, 0, "nobody");
        vm.assertEq(token.balanceOf(USER), userBalance + 3 ether, "tip refunded");
        vm.assertEq(token.totalSupply(), supply - 5 * uint256(BOND), "five bonds burned");
    }

    // ------------------------------------------------------------ retarget

    function test_difficulty_retargets_on_the_commit_phase_in_bounded_steps() public {
        _deploy(1, 1 << 20);
        vm.warp(10_000);
        _request(classifier, 0);
        vm.warp(10_001); // commits in 1 s, target 15 s: at most doubles
        _roundAll(1);
        vm.assertEq(ethml.difficulty(), 2, "doubled, not x15");
        _request(classifier, 0);
        vm.warp(10_002);
        _roundAll(1);
        vm.assertEq(ethml.difficulty(), 4, "doubled again");
        _request(classifier, 0);
        vm.warp(10_002 + 1_000); // very slow: at most halves
        _roundAll(1);
        vm.assertEq(ethml.difficulty(), 2, "halved, not /66");
        _request(classifier, 0);
        vm.warp(10_002 + 1_000 + 15); // on target: unchanged
        _roundAll(1);
        vm.assertEq(ethml.difficulty(), 2, "steady");
    }

    function test_difficulty_respects_bounds() public {
        _deploy(4, 4);
        vm.warp(10_000);
        _request(classifier, 0);
        vm.warp(10_001);
        _roundAll(1);
        vm.assertEq(ethml.difficulty(), 4, "pinned");
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
        string[14] memory reasons = [
            "minDifficulty is zero",
            "maxDifficulty below minDifficulty",
            "targetSolveTime is zero",
            "expiryBlocks outside 1..240",
            "revealBlocks outside 1..1000",
            "regressionToleranceBps above 10000",
            "baseReward above 100 EML",
            "quorum outside 3..4",
            "requestsPerRound outside 1..16",
            "requestsPerRound outside 1..16",
            "(requestsPerRound + 2) x maxCallbackGasLimit above 10000000",
            "minerBond above 100 EML",
            "bondTipBps above 20000",
            "maxPriorityFee above 1000 gwei"
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
            if (k == 7) p.quorum = k % 2 == 1 ? 5 : 2; // 5: one slot would veto every request
            if (k == 8) p.requestsPerRound = 0;
            if (k == 9) p.requestsPerRound = 17;
            if (k == 10) (p.requestsPerRound, p.maxCallbackGasLimit) = (16, 600_000);
            if (k == 11) p.minerBond = 100 ether + 1;
            if (k == 12) p.bondTipBps = 20_001;
            if (k == 13) p.maxPriorityFee = 1_000 gwei + 1;
            vm.prank(ADMIN);
            vm.expectRevert(abi.encodeWithSelector(IEthML.InvalidParameters.selector, reasons[k]));
            ethml.setParameters(p);
        }
    }

    function test_callback_gas_parameter_fits_uint24() public {
        EthML.Parameters memory p = _params(1, 1);
        p.maxCallbackGasLimit = uint32(type(uint24).max) + 1;
        vm.prank(ADMIN);
        vm.expectRevert(abi.encodeWithSelector(IEthML.InvalidParameters.selector, "maxCallbackGasLimit above 2^24-1"));
        ethml.setParameters(p);
    }

    // ------------------------------------------------------------ limits

    /// @dev Storage slot from `forge inspect EthML storageLayout`: _counters = 7 (AccessControl's roles
    /// take slot 0, the two parameter sets 1..6).
    function test_request_id_limit() public {
        vm.store(address(ethml), bytes32(uint256(7)), bytes32(uint256(type(uint32).max)));
        vm.expectRevert(IEthML.TooManyRequests.selector);
        _request(classifier, 0);
    }

    // ------------------------------------------------------------ helpers

    function _assertBalance(uint256 minerIndex, uint256 expected) internal view {
        vm.assertEq(ethml.minerBalance(miners[minerIndex]), expected, "miner balance");
    }

    function _string(uint256 len) internal pure returns (string memory) {
        bytes memory b = new bytes(len);
        for (uint256 i = 0; i < len; ++i) {
            b[i] = bytes1(uint8(0x41 + (i % 26)));
        }
        return string(b);
    }
}
