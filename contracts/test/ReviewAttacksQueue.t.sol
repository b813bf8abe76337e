// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {EthML} from "../src/EthML.sol";
import {IEthML} from "../src/IEthML.sol";
import {vm} from "./Base.sol";
import {ReviewFixture} from "./ReviewAttacksBase.sol";

/// @notice Third outside review, the queue and time: random requests, cancellations, queue expiries,
/// closes, round expiries and blocks passing, checked step by step against a plain model of the queue
/// (highest tip then oldest, at most two stale expiries per opening, K per round, an expired round's
/// requests but the first back in the queue); the commit, reveal,
/// expiry and staleness windows at their exact edges; the retarget's bounds.
contract ReviewAttacksQueueTest is ReviewFixture {
    uint256 internal constant K = 3;
    uint256 internal constant STALE = 40;

    // The model.
    uint256[] internal live; // queued, not in the open round
    uint256[] internal current; // the open round's requests, in vector order
    mapping(uint256 => uint256) internal tipOf;
    mapping(uint256 => uint256) internal madeAt;
    mapping(uint256 => IEthML.Status) internal expected;
    uint256 internal made;

    function setUp() public {
        EthML.Parameters memory p = _shipped(uint8(K));
        p.maxQueueBlocks = uint32(STALE);
        _deployWith(p);
    }

    // ------------------------------------------------------------------------------------------
    // The queue against its model
    // ------------------------------------------------------------------------------------------

    /// forge-config: default.fuzz.runs = 48
    function testFuzz_queue_under_cancel_expiry_and_rounds_matches_its_model(uint256 seed) public {
        for (uint256 step = 0; step < 40; ++step) {
            uint256 r = uint256(keccak256(abi.encode(seed, step)));
            uint256 op = r % 10;
            if (op < 4) _opRequest(r >> 8);
            else if (op == 4) _opCancel(r >> 8);
            else if (op == 5) _opExpireQueued(r >> 8);
            else if (op == 6) vm.roll(block.number + (r >> 8) % 30);
            else _opClose();
            _checkModel();
        }
        _checkLedger();
    }

    function _opRequest(uint256 r) internal {
        uint256 tip = (r % 4) * 1 ether;
        uint256 id = _request(classifier, tip);
        ++made;
        tipOf[id] = tip;
        madeAt[id] = block.number;
        if (current.length == 0) {
            current.push(id);
            expected[id] = IEthML.Status.Current;
        } else {
            live.push(id);
            expected[id] = IEthML.Status.Queued;
        }
    }

    function _opCancel(uint256 r) internal {
        if (live.length == 0) return;
        uint256 id = live[r % live.length];
        uint256 position = ethml.queuePosition(id);
        uint256 before = token.balanceOf(USER);
        vm.prank(USER);
        ethml.cancelRequest(id, position);
        vm.assertEq(token.balanceOf(USER), before + tipOf[id], "cancel refunds the tip");
        _drop(id);
        expected[id] = IEthML.Status.Cancelled;
    }

    function _opExpireQueued(uint256 r) internal {
        if (live.length == 0) return;
        uint256 id = live[r % live.length];
        uint256 position = ethml.queuePosition(id);
        if (block.number <= madeAt[id] + STALE) {
            vm.expectRevert(abi.encodeWithSelector(IEthML.QueuedNotStale.selector, id, madeAt[id] + STALE));
            ethml.expireQueued(id, position);
            return;
        }
        ethml.expireQueued(id, position);
        _drop(id);
        expected[id] = IEthML.Status.Expired;
    }

    /// @dev Closes the open round (every miner answers 1) or, past its commit window, expires it; then
    /// the model opens the next one as `_advance` should.
    function _opClose() internal {
        if (current.length == 0) return;
        EthML.CurrentRound memory round = ethml.getCurrentRound();
        IEthML.Status outcome;
        if (block.number + 1 > round.commitDeadline) {
            if (block.number <= round.commitDeadline) vm.roll(round.commitDeadline + 1);
            ethml.expireRound(round.roundId, new address[](0));
            outcome = IEthML.Status.Expired;
        } else {
            _roundAll(1);
            outcome = IEthML.Status.Finalized;
        }
        if (outcome == IEthML.Status.Finalized) {
            for (uint256 j = 0; j < current.length; ++j) {
                expected[current[j]] = outcome;
            }
        } else {
            // An expired round: its first request (the highest tip) expires, the others wait again.
            expected[current[0]] = outcome;
            for (uint256 j = 1; j < current.length; ++j) {
                live.push(current[j]);
                expected[current[j]] = IEthML.Status.Queued;
            }
        }
        delete current;
        uint256 expiredHere = 0;
        while (current.length < K && live.length > 0) {
            uint256 best = 0;
            for (uint256 i = 1; i < live.length; ++i) {
                uint256 a = live[i];
                uint256 b = live[best];
                if (tipOf[a] > tipOf[b] || (tipOf[a] == tipOf[b] && a < b)) best = i;
            }
            uint256 id = live[best];
            _drop(id);
            if (expiredHere < 2 && block.number > madeAt[id] + STALE) {
                ++expiredHere;
                expected[id] = IEthML.Status.Expired;
            } else {
                current.push(id);
                expected[id] = IEthML.Status.Current;
            }
        }
    }

    function _drop(uint256 id) internal {
        for (uint256 i = 0; i < live.length; ++i) {
            if (live[i] == id) {
                live[i] = live[live.length - 1];
                live.pop();
                return;
            }
        }
        revert("not live");
    }

    function _checkModel() internal view {
        vm.assertEq(ethml.requestCount(), made, "every request counted");
        vm.assertEq(ethml.pendingCount(), live.length, "the queue's length");
        uint256[] memory ids = _roundRequests();
        vm.assertEq(ids.length, current.length, "the open round's size");
        for (uint256 j = 0; j < ids.length; ++j) {
            vm.assertEq(ids[j], current[j], "the open round: highest tip, then oldest");
        }
        for (uint256 id = 1; id <= made; ++id) {
            vm.assertEq(uint256(_status(id)), uint256(expected[id]), "every request's status");
        }
    }

    /// @dev EML: the oracle holds the miners' balances and the open tips, nothing more or less; the supply
    /// is the initial one plus what was issued less what was burned.
    function _checkLedger() internal view {
        uint256 held = 0;
        for (uint256 i = 0; i < 7; ++i) {
            held += ethml.minerBalance(miners[i]);
        }
        for (uint256 id = 1; id <= made; ++id) {
            if (expected[id] == IEthML.Status.Queued || expected[id] == IEthML.Status.Current) held += tipOf[id];
        }
        vm.assertEq(token.balanceOf(address(ethml)), held, "escrow = balances + open tips");
        vm.assertEq(
            token.totalSupply(),
            INITIAL_SUPPLY + ethml.totalRewardsIssued() - ethml.totalBurned(),
            "supply = initial + issued - burned"
        );
    }

    /// A griefer that moves the queue (here: cancelling its own entry, so the last one, the victim's,
    /// takes its place) makes a cancel sent with an older position revert with StaleQueueHint. It locks
    /// nothing: the victim reads the position again and cancels; each move cost the griefer a request and
    /// a cancellation, more than the victim's retry.
    function test_a_moved_queue_entry_is_cancelled_with_a_fresh_hint() public {
        _request(classifier, 0); // round 1
        address griefer = miners[6];
        vm.prank(griefer);
        uint256 decoy = ethml.requestPrediction(classifier, CID, 0, 0);
        uint256 victim = _request(classifier, 0);
        uint256 hint = ethml.queuePosition(victim);
        uint256 decoyAt = ethml.queuePosition(decoy);
        vm.prank(griefer);
        ethml.cancelRequest(decoy, decoyAt); // lands first
        vm.prank(USER);
        vm.expectRevert(abi.encodeWithSelector(IEthML.StaleQueueHint.selector, victim, hint));
        ethml.cancelRequest(victim, hint);
        uint256 fresh = ethml.queuePosition(victim);
        vm.prank(USER);
        ethml.cancelRequest(victim, fresh);
        vm.assertEq(uint256(_status(victim)), uint256(IEthML.Status.Cancelled), "cancelled on the retry");
    }

    // ------------------------------------------------------------------------------------------
    // Windows at their edges
    // ------------------------------------------------------------------------------------------

    function test_commit_reveal_and_expiry_windows_at_their_exact_edges() public {
        _request(classifier, 0);
        uint256 open = block.number;
        // Commit window: blocks open+1 .. open+50.
        vm.prank(miners[0]);
        vm.expectRevert(abi.encodeWithSelector(IEthML.ChallengeNotYetAvailable.selector, 1, open));
        ethml.commit(1, 0, bytes32(uint256(1)));
        for (uint256 i = 0; i < 4; ++i) {
            _commitAs(miners[i], 1, _one(1));
        }
        vm.roll(open + 50);
        address[] memory four = _committers(1);
        vm.expectRevert(abi.encodeWithSelector(IEthML.NotExpired.selector, 1, open + 50));
        ethml.expireRound(1, four);
        _commitAs(miners[4], 1, _one(1)); // the last block of the window still takes it
        uint256 reveal = block.number;
        // Reveal window: blocks reveal .. reveal+10; closeRound before its end only with all five.
        for (uint256 i = 0; i < 3; ++i) {
            _revealAs(miners[i], 1, _one(1));
        }
        vm.roll(reveal + 10);
        _revealAs(miners[3], 1, _one(1));
        (address[5] memory who, int256[] memory table) = _table(1, address(0), new int256[](0));
        vm.expectRevert(abi.encodeWithSelector(IEthML.RevealWindowOpen.selector, 1, reveal + 10));
        ethml.closeRound(1, who, table);
        vm.roll(reveal + 11);
        vm.prank(miners[4]);
        vm.expectRevert(abi.encodeWithSelector(IEthML.RevealWindowClosed.selector, 1, reveal + 10));
        ethml.reveal(1, _one(1), _salt(miners[4], 1));
        _closeAs(USER, 1);

        // A round that misses its fifth commitment: refused at open+51, expirable from then on.
        _request(classifier, 0);
        open = block.number;
        _commitAs(miners[0], 2, _one(1));
        uint256 held = ethml.minerBalance(miners[0]);
        vm.roll(open + 51);
        uint256 nonce = _mine(miners[1]);
        vm.prank(miners[1]);
        vm.expectRevert(abi.encodeWithSelector(IEthML.CommitWindowClosed.selector, 2, open + 50));
        ethml.commit(2, nonce, bytes32(uint256(1)));
        _expire(2);
        vm.assertEq(ethml.minerBalance(miners[0]), held + SHIPPED_BOND, "the lone committer's bond comes back");
        vm.assertEq(uint256(_status(2)), uint256(IEthML.Status.Expired), "the request expired");
    }

    /// The retarget moves at most x2 or /2 per round, on the commit phase alone; an expiry halves it;
    /// neither crosses the bounds.
    function test_the_difficulty_moves_by_at_most_a_factor_of_two_per_round() public {
        EthML.Parameters memory p = _shipped(1);
        (p.minDifficulty, p.maxDifficulty) = (64, 64);
        _deployWith(p);
        (p.minDifficulty, p.maxDifficulty) = (32, 512);
        vm.prank(ADMIN);
        ethml.setParameters(p);
        _request(classifier, 0);
        _roundAll(1); // five commitments the block after the opening: as fast as it gets
        vm.assertEq(ethml.difficulty(), 128, "doubled, not x15");
        _request(classifier, 0);
        _roundAll(1);
        _request(classifier, 0);
        _roundAll(1);
        vm.assertEq(ethml.difficulty(), 512, "at the maximum");
        _request(classifier, 0);
        _roundAll(1);
        vm.assertEq(ethml.difficulty(), 512, "and no further");
        // A commit phase of a day halves it once.
        _request(classifier, 0);
        uint256 roundId = _currentRound();
        for (uint256 i = 0; i < 4; ++i) {
            _commitAs(miners[i], roundId, _one(1));
        }
        vm.warp(block.timestamp + 1 days);
        _commitAs(miners[4], roundId, _one(1));
        vm.assertEq(ethml.difficulty(), 256, "halved, not /5760");
        for (uint256 i = 0; i < 4; ++i) {
            _revealAs(miners[i], roundId, _one(1));
        }
        // A reveal phase of a week changes nothing.
        vm.warp(block.timestamp + 7 days);
        _revealAndCloseAs(miners[4], roundId, _one(1));
        vm.assertEq(ethml.difficulty(), 256, "the reveal phase does not count");
        // Expiries halve it, down to the minimum and no lower.
        for (uint256 e = 0; e < 4; ++e) {
            _request(classifier, 0);
            vm.roll(block.number + 51);
            _expire(_currentRound());
        }
        vm.assertEq(ethml.difficulty(), 32, "at the minimum");
    }
}
