// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {DrawTree} from "./DrawTree.sol";
import {TrainingBase} from "./TrainingBase.sol";

/// @title TrainingPanel: validators drawn by lot, their scores committed then revealed.
/// @notice Revealing the test set fixes a later block (`drawDelayBlocks` on); once it is mined, anyone may
/// call `drawPanel`, which seeds the lot with that block's hash and draws the empty seats by validator
/// stake as it stood when the draw was fixed, never the requester, a trainer of the task or a validator
/// already seated. Seated validators commit keccak256(abi.encode(taskId, validator, unusable, scores,
/// salt)) within `scorePeriod`; seats left uncommitted are handed to new validators (`replaceNoShows`
/// fines and benches the no-shows and fixes the next draw) up to MAX_ROUNDS draws. Reveals open when every
/// seat has committed, or when the last commit window has closed, and last `revealPeriod`.
abstract contract TrainingPanel is TrainingBase {
    using DrawTree for DrawTree.Tree;

    /// @notice Reveal the test set (anyone holding the preimage: the requester, its relayer) after the
    /// submission reveals and before the test deadline; fixes the block that draws the validators.
    function revealTestSet(uint256 taskId, string calldata testCid, bytes32 salt) external {
        Task storage t = _openTask(taskId);
        if (block.timestamp <= t.revealDeadline) revert TooEarly(taskId, Step.RevealTestSet, t.revealDeadline + 1);
        if (block.timestamp > t.testDeadline) revert TooLate(taskId, Step.RevealTestSet, t.testDeadline);
        if (t.testRevealed) revert AlreadyRevealed(taskId, msg.sender);
        if (t.revealed == 0) revert NoSubmissions(taskId);
        if (keccak256(abi.encode(testCid, salt)) != t.testSetCommitment) revert TestSetMismatch(taskId);
        t.testRevealed = true;
        t.testCid = testCid;
        emit TestSetRevealed(taskId, testCid);
        _fixDraw(taskId, t);
    }

    /// @notice Draw the panel's empty seats from the hash of the block fixed for it. Anyone may call it
    /// once that block is mined; if it is more than 256 blocks old (its hash is gone), a new block is
    /// fixed instead (DrawFixed) and the call must be made again after it.
    function drawPanel(uint256 taskId) external {
        Task storage t = _openTask(taskId);
        uint256 drawBlock = t.drawBlock;
        if (drawBlock == 0) revert NoDrawPending(taskId);
        if (block.number <= drawBlock) revert DrawNotReady(taskId, drawBlock, block.number);
        bytes32 hash = blockhash(drawBlock);
        if (hash == 0) {
            _fixDraw(taskId, t);
            return;
        }
        t.drawBlock = 0;
        uint256 round = ++t.round;
        uint256 deadline = block.timestamp + t.scorePeriod;
        t.scoreDeadline = uint40(deadline);
        bytes32 seed = keccak256(abi.encode(hash, taskId, round));
        _fill(taskId, t, seed, drawBlock - t.rules.drawDelayBlocks, deadline);
    }

    /// @notice A seated validator's hidden vote: keccak256(abi.encode(taskId, validator, unusable, scores,
    /// salt)) (see scoreCommitment), within its commit window.
    function commitScores(uint256 taskId, bytes32 commitment) external {
        Task storage t = _openTask(taskId);
        Seat storage st = _seatFor(taskId);
        if (st.state != SeatState.Drawn) revert AlreadyCommitted(taskId, msg.sender);
        if (block.timestamp > t.scoreDeadline) revert TooLate(taskId, Step.CommitScores, t.scoreDeadline);
        st.commitment = commitment;
        st.state = SeatState.Committed;
        t.committed += 1;
        emit ScoresCommitted(taskId, _seatOf[taskId][msg.sender] - 1, msg.sender);
    }

    /// @notice After a commit window closed with seats uncommitted: each drawn validator that never
    /// committed loses `noShowBps` of its stake and leaves the draw (setActive brings it back), and the
    /// next draw is fixed for the empty seats.
    function replaceNoShows(uint256 taskId) external {
        Task storage t = _openTask(taskId);
        if (t.drawBlock != 0) revert DrawPending(taskId, t.drawBlock);
        if (t.round == 0) revert NothingToReplace(taskId);
        if (block.timestamp <= t.scoreDeadline) revert TooEarly(taskId, Step.ReplaceNoShows, t.scoreDeadline + 1);
        uint256 validations = t.validations;
        if (t.committed == validations) revert NothingToReplace(taskId);
        if (t.round >= MAX_ROUNDS) revert NoRoundsLeft(taskId, MAX_ROUNDS);
        for (uint256 seat; seat < validations; ++seat) {
            Seat storage st = _seats[taskId][seat];
            if (st.state != SeatState.Drawn) continue;
            address validator = st.validator;
            _unseat(taskId, t, st, validator);
            _benchNoShow(taskId, validator, t.rules.noShowBps);
        }
        _fixDraw(taskId, t);
    }

    /// @notice Open the committed vote: `unusable` (with no scores) reports the test set as unusable;
    /// otherwise one score in millionths per submission index (0..submissions-1; the scores of
    /// submissions never revealed are ignored).
    function revealScores(uint256 taskId, bool unusable, uint32[] calldata scores, bytes32 salt) external {
        Task storage t = _openTask(taskId);
        Seat storage st = _seatFor(taskId);
        if (st.state == SeatState.Revealed) revert AlreadyRevealed(taskId, msg.sender);
        if (st.state != SeatState.Committed) revert NoCommitment(taskId, msg.sender);
        _checkRevealWindow(taskId, t);
        uint256 expected = unusable ? 0 : t.submissions;
        if (scores.length != expected) revert ScoreCount(scores.length, expected);
        if (keccak256(abi.encode(taskId, msg.sender, unusable, scores, salt)) != st.commitment) {
            revert CommitmentMismatch(taskId, msg.sender);
        }
        for (uint256 i; i < scores.length; ++i) {
            if (scores[i] > SCORE_SCALE) revert ScoreOutOfRange(scores[i]);
            st.scores[i] = scores[i];
        }
        st.unusable = unusable;
        st.state = SeatState.Revealed;
        t.votes += 1;
        emit ScoresRevealed(taskId, _seatOf[taskId][msg.sender] - 1, msg.sender, unusable, scores);
    }

    function getSeat(uint256 taskId, uint256 seat) external view returns (Seat memory) {
        return _seats[taskId][seat];
    }

    /// @notice The seat (index + 1) `validator` holds on `taskId`'s panel, 0 when none.
    function seatOf(uint256 taskId, address validator) external view returns (uint256) {
        return _seatOf[taskId][validator];
    }

    function scoreCommitment(uint256 taskId, address validator, bool unusable, uint32[] calldata scores, bytes32 salt)
        external
        pure
        returns (bytes32)
    {
        return keccak256(abi.encode(taskId, validator, unusable, scores, salt));
    }

    /// @notice keccak256(abi.encode(testCid, salt)): a task's test-set commitment.
    function commitmentFor(string calldata testCid, bytes32 salt) external pure returns (bytes32) {
        return keccak256(abi.encode(testCid, salt));
    }

    function submissionCommitment(
        uint256 taskId,
        address trainer,
        string calldata modelCid,
        bytes32 artifactSha256,
        uint256 claim,
        bytes32 salt
    ) external pure returns (bytes32) {
        return keccak256(abi.encode(taskId, trainer, modelCid, artifactSha256, claim, salt));
    }

    /// @dev Take `bps` of a validator's stake for burning; returns the amount.
    function _penalize(address validator, uint256 bps) internal returns (uint256 cut) {
        Stake storage s = _stakes[validator][Role.Validator];
        cut = uint256(s.amount) * bps / 10_000;
        s.amount -= uint128(cut);
        pendingBurn += cut;
        _syncWeight(validator, s);
    }

    /// @dev A validator that never committed: a slice of its stake, and out of the draw until it steps back in.
    function _benchNoShow(uint256 taskId, address validator, uint256 bps) internal {
        _stakes[validator][Role.Validator].active = false;
        uint256 cut = _penalize(validator, bps);
        emit NoShow(taskId, validator, cut);
        emit ValidatorActive(validator, false);
    }

    /// @dev Reveals wait until no seat can be taken any more: every seat committed, or the last commit
    /// window closed (after it, seats left uncommitted must be replaced first while rounds remain).
    function _checkRevealWindow(uint256 taskId, Task storage t) internal view {
        uint256 deadline = t.scoreDeadline;
        if (t.committed < t.validations) {
            if (block.timestamp <= deadline) revert TooEarly(taskId, Step.RevealScores, deadline + 1);
            if (t.round < MAX_ROUNDS) revert PanelIncomplete(taskId, t.committed, t.validations);
        }
        uint256 closes = deadline + t.rules.revealPeriod;
        if (block.timestamp > closes) revert TooLate(taskId, Step.RevealScores, closes);
    }

    function _seatFor(uint256 taskId) private view returns (Seat storage) {
        uint256 seat = _seatOf[taskId][msg.sender];
        if (seat == 0) revert NotOnPanel(taskId, msg.sender);
        return _seats[taskId][seat - 1];
    }

    function _unseat(uint256 taskId, Task storage t, Seat storage st, address validator) internal {
        delete _seatOf[taskId][validator];
        _stakes[validator][Role.Validator].openWork -= 1;
        st.validator = address(0);
        st.state = SeatState.Empty;
        t.seated -= 1;
    }

    /// @dev A draw in progress: the weights are read at block `asOf`; `slots` and `weights` (the first `n`)
    /// are left out of it, `left` is the weight still in it.
    struct Draw {
        bytes32 seed;
        uint256 asOf;
        uint256 left;
        uint256 n;
        uint256[] slots;
        uint256[] weights;
    }

    /// @dev Draw every empty seat: seat k takes the slot at position keccak256(seed, k) mod the weight left,
    /// the weights read at block `asOf`, the requester, the trainers, the seated and the drawn left out.
    /// A slot whose owner left since `asOf` (or is one of those) leaves its seat for the next round.
    function _fill(uint256 taskId, Task storage t, bytes32 seed, uint256 asOf, uint256 deadline) private {
        Draw memory d;
        d.seed = seed;
        d.asOf = asOf;
        d.slots = new uint256[](1 + MAX_SUBMISSIONS + MAX_VALIDATIONS);
        d.weights = new uint256[](d.slots.length);
        d.left = _tree.totalAt(asOf);
        _exclude(d, t.requester);
        for (uint256 i; i < t.submissions; ++i) {
            _exclude(d, _submissions[taskId][i].trainer);
        }
        uint256 validations = t.validations;
        for (uint256 seat; seat < validations; ++seat) {
            _exclude(d, _seats[taskId][seat].validator);
        }
        for (uint256 seat; seat < validations && d.left > 0; ++seat) {
            if (_seats[taskId][seat].state != SeatState.Empty) continue;
            address validator = _slotOwner[_drawOne(d, seat)];
            if (
                validator == address(0) || validator == t.requester || _submissionOf[taskId][validator] != 0
                    || _seatOf[taskId][validator] != 0
            ) continue;
            _seat(taskId, t, seat, validator, deadline);
        }
    }

    /// @dev The slot drawn for `seat`, then left out of the rest of the draw.
    function _drawOne(Draw memory d, uint256 seat) private view returns (uint256 slot) {
        uint256 target = uint256(keccak256(abi.encode(d.seed, seat))) % d.left;
        slot = _tree.find(target, d.asOf, d.slots, d.weights, d.n);
        uint256 weight = _tree.weightAt(slot, d.asOf);
        d.slots[d.n] = slot;
        d.weights[d.n++] = weight;
        d.left -= weight;
    }

    function _seat(uint256 taskId, Task storage t, uint256 seat, address validator, uint256 deadline) private {
        Seat storage st = _seats[taskId][seat];
        st.validator = validator;
        st.state = SeatState.Drawn;
        _seatOf[taskId][validator] = seat + 1;
        _stakes[validator][Role.Validator].openWork += 1;
        t.seated += 1;
        emit ValidatorDrawn(taskId, seat, validator, deadline);
    }

    function _exclude(Draw memory d, address account) private view {
        if (account == address(0)) return;
        uint256 slot = _stakes[account][Role.Validator].slot;
        if (slot == 0) return;
        uint256 weight = _tree.weightAt(slot, d.asOf);
        if (weight == 0) return;
        d.slots[d.n] = slot;
        d.weights[d.n++] = weight;
        d.left -= weight;
    }
}
