// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {EthML} from "../src/EthML.sol";
import {EthMLSettlement} from "../src/EthMLSettlement.sol";
import {IEthML} from "../src/IEthML.sol";
import {vm} from "./Base.sol";
import {HeavyConsumer} from "./Consumers.sol";
import {ReviewFixture} from "./ReviewAttacksBase.sol";

/// @notice Third outside review, the closing transaction: the calldata it carries, the sentinel and
/// int96 edges, parameters and models changed mid-round, the delegatecall to EthMLSettlement, and its
/// gas. `test_attack_*` tests assert the safe behaviour of an attack that worked at the review's snapshot.
contract ReviewAttacksCloseTest is ReviewFixture {
    function setUp() public {
        _deployWith(_shipped(4));
    }

    /// @dev Round 2 with `n` queued requests (round 1 alone), committed by miners 0..4 with `answers`,
    /// revealed by miners 0..3; returns its id.
    function _revealedFour(uint256 n, int256[][5] memory answers) internal returns (uint256 roundId) {
        _request(classifier, 0);
        for (uint256 j = 0; j < n; ++j) {
            _request(classifier, 1 ether);
        }
        _roundAll(1);
        roundId = _currentRound();
        _commitAll(roundId, answers);
        for (uint256 i = 0; i < 4; ++i) {
            _revealAs(miners[i], roundId, answers[i]);
        }
    }

    /// @dev A copy (memory arrays assign by reference).
    function _copy(address[5] memory a) internal pure returns (address[5] memory b) {
        for (uint256 i = 0; i < 5; ++i) {
            b[i] = a[i];
        }
    }

    function _fives(int256[] memory v) internal pure returns (int256[][5] memory a) {
        for (uint256 i = 0; i < 5; ++i) {
            a[i] = v;
        }
    }

    // ------------------------------------------------------------------------------------------
    // The vectors at the close
    // ------------------------------------------------------------------------------------------

    function test_close_calldata_that_does_not_match_the_reveals_is_refused() public {
        int256[][5] memory answers = _fives(_same(1, 4));
        uint256 roundId = _revealedFour(4, answers);
        vm.roll(block.number + 11); // slot 4 kept silent: anyone closes with four reveals
        (address[5] memory who, int256[] memory table) = _table(roundId, address(0), new int256[](0));

        // A table one answer short, or one too long.
        int256[] memory short = new int256[](table.length - 1);
        vm.expectRevert(abi.encodeWithSelector(IEthML.AnswerCount.selector, 20, 19));
        ethml.closeRound(roundId, who, short);
        int256[] memory long = new int256[](table.length + 1);
        vm.expectRevert(abi.encodeWithSelector(IEthML.AnswerCount.selector, 20, 21));
        ethml.closeRound(roundId, who, long);

        // One revealer named at two slots (its reward twice), or two revealers swapped.
        address[5] memory twice = _copy(who);
        twice[1] = who[0];
        vm.expectRevert(abi.encodeWithSelector(IEthML.RevealMismatch.selector, roundId, 1));
        ethml.closeRound(roundId, twice, table);
        address[5] memory swapped = _copy(who);
        (swapped[0], swapped[1]) = (who[1], who[0]);
        vm.expectRevert(abi.encodeWithSelector(IEthML.RevealMismatch.selector, roundId, 0));
        ethml.closeRound(roundId, swapped, table);

        // A revealed answer changed to win the consensus for someone.
        int256[] memory forged = new int256[](table.length);
        for (uint256 k = 0; k < table.length; ++k) {
            forged[k] = table[k];
        }
        forged[2 * 4 + 3] = 7;
        vm.expectRevert(abi.encodeWithSelector(IEthML.RevealMismatch.selector, roundId, 2));
        ethml.closeRound(roundId, who, forged);

        // The silent slot: the closer names itself there and fills in a winning vector. Ignored.
        address closer = miners[6];
        who[4] = closer;
        for (uint256 j = 0; j < 4; ++j) {
            table[4 * 4 + j] = type(int96).max;
        }
        vm.prank(closer);
        ethml.closeRound(roundId, who, table);
        vm.assertEq(ethml.minerBalance(closer), 0, "an unrevealed slot pays nobody");
        vm.assertEq(ethml.minerBalance(miners[4]), 0, "not even its committer");
        (int256 prediction, IEthML.Status status, uint256 agreeing,) = ethml.getResult(ethml.requestCount());
        vm.assertEq(uint256(status), uint256(IEthML.Status.Finalized), "decided by the four reveals");
        vm.assertEq(prediction, 1, "their answer");
        vm.assertEq(agreeing, 4, "four votes, the filled-in slot not among them");
    }

    function test_reveal_and_close_binds_the_callers_own_slot_and_vector() public {
        int256[][5] memory answers = _fives(_same(1, 4));
        uint256 roundId = _revealedFour(4, answers);
        (address[5] memory who, int256[] memory table) = _table(roundId, miners[4], answers[4]);
        bytes32 salt = _salt(miners[4], roundId);
        // Someone else than the last committer tries to close as if it were the last revealer.
        vm.prank(miners[5]);
        vm.expectRevert(abi.encodeWithSelector(IEthML.NotCommitted.selector, roundId, miners[5]));
        ethml.revealAndClose(roundId, salt, who, table);
        // An earlier revealer cannot reveal again through revealAndClose.
        vm.prank(miners[0]);
        vm.expectRevert(abi.encodeWithSelector(IEthML.AlreadyRevealed.selector, roundId, miners[0]));
        ethml.revealAndClose(roundId, _salt(miners[0], roundId), who, table);
        // The last one, with another vector than it committed at its own slot.
        table[4 * 4] = 0;
        vm.prank(miners[4]);
        vm.expectRevert(abi.encodeWithSelector(IEthML.CommitmentMismatch.selector, roundId, miners[4]));
        ethml.revealAndClose(roundId, salt, who, table);
        // Named at another slot than its own.
        table[4 * 4] = 1;
        address[5] memory moved = _copy(who);
        (moved[3], moved[4]) = (who[4], who[3]);
        vm.prank(miners[4]);
        vm.expectRevert(abi.encodeWithSelector(IEthML.RevealMismatch.selector, roundId, 4));
        ethml.revealAndClose(roundId, salt, moved, table);
        vm.prank(miners[4]);
        ethml.revealAndClose(roundId, salt, who, table);
    }

    function test_the_sentinel_and_int96_edges_neither_overflow_nor_sneak_through() public {
        EthML.Parameters memory p = _shipped(1);
        p.regressionToleranceBps = 10_000;
        _deployWith(p);
        uint256 id = _request(regressor, 0);
        int256 invalid = ethml.INVALID_INPUT();
        int256 top = type(int96).max;
        int256 bottom = type(int96).min;
        _commitAs(miners[0], 1, _one(top));
        _commitAs(miners[1], 1, _one(top));
        _commitAs(miners[2], 1, _one(bottom + 1));
        _commitAs(miners[3], 1, _one(invalid));
        _commitAs(miners[4], 1, _one(bottom)); // one below the accepted range
        // Out of range: refused at the reveal, so it can never reach the close.
        vm.prank(miners[4]);
        vm.expectRevert(abi.encodeWithSelector(IEthML.PredictionOutOfRange.selector, bottom));
        ethml.reveal(1, _one(bottom), _salt(miners[4], 1));
        vm.prank(miners[4]);
        vm.expectRevert(abi.encodeWithSelector(IEthML.PredictionOutOfRange.selector, top + 1));
        ethml.reveal(1, _one(top + 1), _salt(miners[4], 1));
        _revealAs(miners[0], 1, _one(top));
        _revealAs(miners[1], 1, _one(top));
        _revealAs(miners[2], 1, _one(bottom + 1));
        _revealAs(miners[3], 1, _one(invalid));
        vm.roll(block.number + 11);
        _closeAs(USER, 1); // |top - (bottom + 1)| is 2^96 - 2: no overflow in the band check
        (int256 prediction, IEthML.Status status, uint256 agreeing,) = ethml.getResult(id);
        // Lower median of {bottom+1, top, top} is top; the band of 100 % around it holds only the tops.
        vm.assertEq(uint256(status), uint256(IEthML.Status.NoConsensus), "two of three numbers agree: no quorum");
        vm.assertEq(agreeing, 2, "the two tops");
        // No result reads as INVALID_INPUT, as the callback and PredictionFinalized say it (it read 0).
        vm.assertEq(prediction, invalid, "no result");
        // A quorum at the very top of the range is stored and read back exactly.
        id = _request(regressor, 0);
        _round(_currentRound(), [top, top, top, invalid, invalid]);
        (prediction, status, agreeing,) = ethml.getResult(id);
        vm.assertEq(uint256(status), uint256(IEthML.Status.Finalized), "finalized");
        vm.assertEq(prediction, top, "int96 max round-trips through the uint96 ledger");
        id = _request(regressor, 0);
        _round(_currentRound(), [bottom + 1, bottom + 1, bottom + 1, top, invalid]);
        (prediction,,,) = ethml.getResult(id);
        vm.assertEq(prediction, bottom + 1, "and the most negative accepted value");
    }

    // ------------------------------------------------------------------------------------------
    // Parameters and models changed while a round is open
    // ------------------------------------------------------------------------------------------

    /// Queued requests keep the callback gas limit they were accepted with. The hard cap bounds
    /// (K + 2) x maxCallbackGasLimit by 10,000,000 for the parameters of the moment, not for the
    /// requests already queued: with K = 1 a limit of 3,333,333 is allowed; the admin then sets K = 16
    /// and a limit of 555,555 (both within the caps, and a change a timelock announces days ahead, so
    /// anyone can queue these requests before it lands). The next round opens with sixteen requests of
    /// 3.3 M gas each: the close needs more than 53 M gas, more than any block holds, so the round can
    /// never close (nor expire, which calls back the same requests). Every tip, bond and deposit in the
    /// oracle is stuck and the queue stops for good.
    function test_attack_callbacks_queued_before_a_change_of_k_make_the_round_unclosable() public {
        EthML.Parameters memory p = _shipped(1);
        vm.assertEq(p.maxCallbackGasLimit, 3_333_333, "K = 1 allows 3.3 M gas per callback");
        _deployWith(p);
        vm.fee(1 gwei);
        vm.txGasPrice(2 gwei);
        _request(classifier, 0); // round 1
        HeavyConsumer consumer = new HeavyConsumer(ethml);
        uint256 deposit = ethml.minimumDeposit(3_333_333);
        vm.deal(address(this), 16 * deposit);
        for (uint256 j = 0; j < 16; ++j) {
            consumer.request{value: deposit}(classifier, CID, 3_333_333);
        }
        EthML.Parameters memory next = _shipped(16);
        vm.assertEq(next.maxCallbackGasLimit, 555_555, "(16 + 2) x 555,555 <= 10,000,000");
        vm.prank(ADMIN);
        ethml.setParameters(next);
        _roundAll(1);
        uint256 roundId = _currentRound();
        uint256 n = _roundRequests().length; // 16 today: sixteen 3.3 M-gas callbacks in one round
        int256[][5] memory answers = _fives(_same(1, n));
        _commitAll(roundId, answers);
        for (uint256 i = 0; i < 4; ++i) {
            _revealAs(miners[i], roundId, answers[i]);
        }
        (address[5] memory who, int256[] memory table) = _table(roundId, miners[4], answers[4]);
        bytes memory closing = abi.encodeCall(EthML.revealAndClose, (roundId, _salt(miners[4], roundId), who, table));
        vm.prank(miners[4]);
        (bool closed,) = address(ethml).call{gas: 30_000_000}(closing);
        vm.assertTrue(closed, "a round must close within a 30,000,000-gas block (the tests hold it to 12,500,000)");
    }

    function test_parameter_changes_in_the_reveal_phase_do_not_touch_the_live_round() public {
        int256[][5] memory answers = _fives(_same(1, 4));
        answers[3] = _same(2, 4);
        answers[4] = _same(3, 4);
        uint256 roundId = _revealedFour(4, answers);
        EthML.Parameters memory p = _shipped(2);
        p.quorum = 4; // would make every request of the live round NoConsensus (three agree)
        p.revealBlocks = 1; // would close the window at once
        p.regressionToleranceBps = 0;
        p.baseReward = 0;
        p.maxPriorityFee = 0;
        vm.prank(ADMIN);
        ethml.setParameters(p);
        // The window is still the live round's 10 blocks: the last revealer is in time.
        vm.roll(block.number + 5);
        _waitTarget();
        uint256 bond = ethml.getCurrentRound().bond;
        uint256 before = ethml.minerBalance(miners[0]);
        _revealAndCloseAs(miners[4], roundId, answers[4]);
        uint256[] memory ids = new uint256[](4);
        for (uint256 j = 0; j < 4; ++j) {
            ids[j] = ethml.requestCount() - 3 + j;
            (, IEthML.Status status, uint256 agreeing,) = ethml.getResult(ids[j]);
            vm.assertEq(uint256(status), uint256(IEthML.Status.Finalized), "quorum 3 of the live round");
            vm.assertEq(agreeing, 3, "three agree");
        }
        vm.assertTrue(ethml.minerBalance(miners[0]) >= before + bond + BASE_REWARD, "the live round's bond and reward");
        vm.assertEq(ethml.parameters().quorum, 4, "the change applies from the next round");
    }

    /// Deactivating a model stops new requests for it; a round already open, and requests already
    /// queued, still close normally (nodes serve them: the node does not read the `active` flag).
    function test_a_model_deactivated_mid_round_does_not_block_the_close_or_the_queue() public {
        _request(classifier, 0); // round 1
        uint256 queued = _request(regressor, 1 ether);
        vm.prank(ADMIN);
        registry.deactivateModel(classifier);
        vm.prank(USER);
        vm.expectRevert(abi.encodeWithSelector(IEthML.ModelInactive.selector, classifier));
        ethml.requestPrediction(classifier, CID, 0, 0);
        _roundAll(1);
        (, IEthML.Status status,,) = ethml.getResult(1);
        vm.assertEq(uint256(status), uint256(IEthML.Status.Finalized), "the open round closed");
        vm.prank(ADMIN);
        registry.deactivateModel(regressor);
        vm.assertEq(_currentId(), queued, "the queued request of a now inactive model still opens");
        _roundAll(100);
        (, status,,) = ethml.getResult(queued);
        vm.assertEq(uint256(status), uint256(IEthML.Status.Finalized), "and is answered");
    }

    // ------------------------------------------------------------------------------------------
    // The delegatecall to EthMLSettlement
    // ------------------------------------------------------------------------------------------

    function test_the_settlement_code_refuses_direct_calls_and_holds_no_dangerous_opcode() public {
        EthMLSettlement settlement = ethml.settlement();
        address[5] memory who;
        vm.expectRevert(EthMLSettlement.DelegateCallOnly.selector);
        settlement.closeRound(1, who, new int256[](0));
        vm.expectRevert(EthMLSettlement.DelegateCallOnly.selector);
        settlement.revealAndClose(1, bytes32(0), who, new int256[](0));
        vm.expectRevert(EthMLSettlement.DelegateCallOnly.selector);
        settlement.expireRound(1, new address[](0));
        vm.expectRevert(EthMLSettlement.DelegateCallOnly.selector);
        settlement.expireQueued(1, 0);
        // Its code can never vanish or be swapped: no SELFDESTRUCT, DELEGATECALL or CALLCODE in it; EthML
        // has exactly one DELEGATECALL (to the immutable settlement address).
        (uint256 selfdestructs, uint256 delegatecalls, uint256 callcodes) = _opcodes(address(settlement).code);
        vm.assertEq(selfdestructs + delegatecalls + callcodes, 0, "settlement: none");
        (selfdestructs, delegatecalls, callcodes) = _opcodes(address(ethml).code);
        vm.assertEq(selfdestructs + callcodes, 0, "EthML: no selfdestruct or callcode");
        vm.assertEq(delegatecalls, 1, "EthML: one delegatecall");
        // The settlement's own storage is not EthML's: a role granted there (nobody can) would be inert,
        // and nobody holds its admin role.
        vm.assertTrue(!settlement.hasRole(bytes32(0), ADMIN), "no admin of the settlement contract");
    }

    /// @dev Counts opcodes in runtime code, skipping PUSH data (the metadata at the end may hold any
    /// bytes: it is cut off at the first INVALID (0xfe) that precedes the CBOR length).
    function _opcodes(bytes memory code)
        internal
        pure
        returns (uint256 selfdestructs, uint256 delegatecalls, uint256 callcodes)
    {
        uint256 end = code.length - 2 - (uint256(uint8(code[code.length - 2])) << 8 | uint8(code[code.length - 1]));
        for (uint256 i = 0; i < end; ++i) {
            uint8 op = uint8(code[i]);
            if (op >= 0x60 && op <= 0x7f) {
                i += op - 0x5f;
            } else if (op == 0xff) {
                ++selfdestructs;
            } else if (op == 0xf4) {
                ++delegatecalls;
            } else if (op == 0xf2) {
                ++callcodes;
            }
        }
    }
}
