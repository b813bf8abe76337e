// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {DrawTree} from "./DrawTree.sol";
import {TrainingBase} from "./TrainingBase.sol";

/// @title TrainingPanel: validators drawn by lot, their scores committed then revealed.
/// @notice Revealing the test set (or finalizeTask on a task whose test set was never revealed) fixes a
/// later block (`drawDelayBlocks` on); once it is mined, anyone may call `drawPanel`, which seeds the lot
/// with that block's hash and draws every empty seat by validator stake as it stood when the draw was
/// fixed, with replacement: a validator drawn k times holds k seats, casts one ballot that counts k
/// times, and locks slashBps of its weight per seat. The requester and the task's trainers are never
/// drawn. Seated validators commit keccak256(abi.encode(taskId, validator, unusable, scores, salt))
/// within `scorePeriod`; seats left uncommitted are handed to new validators (`replaceNoShows` fines and
/// benches the no-shows and fixes the next draw) up to MAX_ROUNDS draws. Reveals open when every seat has
/// committed or when the last commit window has closed, and close `revealPeriod` after that commit
/// window's announced deadline (scoreDeadline), never earlier.
abstract contract TrainingPanel is TrainingBase {
    using DrawTree for DrawTree.Tree;

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
    /// salt)) (see scoreCommitment), within its commit window. One for all the seats it holds; once every
    /// seat has committed the reveals open, but they still close only revealPeriod after the commit
    /// deadline each seat was announced (scoreDeadline, in ValidatorDrawn), which never moves earlier.
    function commitScores(uint256 taskId, bytes32 commitment) external {
        Task storage t = _openTask(taskId);
        (Member storage m, Seat storage lead) = _memberFor(taskId);
        if (lead.state != SeatState.Drawn) revert AlreadyCommitted(taskId, msg.sender);
        if (block.timestamp > t.scoreDeadline) revert TooLate(taskId, Step.CommitScores, t.scoreDeadline);
        lead.commitment = commitment;
        lead.state = SeatState.Committed;
        uint256 committed = t.committed + m.seats;
        t.committed = uint8(committed);
        emit ScoresCommitted(taskId, m.seat - 1, msg.sender);
    }

    /// @notice After a commit window closed with seats uncommitted: each drawn validator that never
    /// committed loses noShowBps of the weight that drew each of its seats and leaves the draw (setActive
    /// brings it back), and the next draw is fixed for the empty seats.
    function replaceNoShows(uint256 taskId) external {
        Task storage t = _openTask(taskId);
        if (t.drawBlock != 0) revert DrawPending(taskId, t.drawBlock);
        if (t.round == 0) revert NothingToReplace(taskId);
        if (block.timestamp <= t.scoreDeadline) revert TooEarly(taskId, Step.ReplaceNoShows, t.scoreDeadline + 1);
        if (t.committed == t.validations) revert NothingToReplace(taskId);
        if (t.round >= MAX_ROUNDS) revert NoRoundsLeft(taskId, MAX_ROUNDS);
        for (uint256 seat = t.validations; seat > 0;) {
            Seat storage st = _seats[taskId][--seat];
            address validator = st.validator;
            if (validator == address(0)) continue;
            Member storage m = _members[taskId][validator];
            uint256 lead = m.seat - 1;
            if (_seats[taskId][lead].state != SeatState.Drawn) continue;
            st.validator = address(0); // seats are cleared from the last, so its first seat goes last
            st.state = SeatState.Empty;
            t.seated -= 1;
            if (seat == lead) {
                _settleMember(taskId, validator, m, SeatState.Drawn, t.rules);
                delete _members[taskId][validator];
            }
        }
        _fixDraw(taskId, t);
    }

    /// @notice Open the committed vote: one score in millionths per submission index (0..submissions-1;
    /// the scores of submissions never revealed are ignored). `unusable` reports the test set unusable:
    /// the scores are then each artifact's score on the dataset's holdout (as on a task whose test set
    /// was never revealed). A score of 0 says the artifact failed its checks (docs/training.md).
    function revealScores(uint256 taskId, bool unusable, uint32[] calldata scores, bytes32 salt) external {
        Task storage t = _openTask(taskId);
        (Member storage m, Seat storage lead) = _memberFor(taskId);
        if (lead.state == SeatState.Revealed) revert AlreadyRevealed(taskId, msg.sender);
        if (lead.state != SeatState.Committed) revert NoCommitment(taskId, msg.sender);
        _checkRevealWindow(taskId, t);
        if (scores.length != t.submissions) revert ScoreCount(scores.length, t.submissions);
        if (keccak256(abi.encode(taskId, msg.sender, unusable, scores, salt)) != lead.commitment) {
            revert CommitmentMismatch(taskId, msg.sender);
        }
        for (uint256 i; i < scores.length; ++i) {
            if (scores[i] > SCORE_SCALE) revert ScoreOutOfRange(scores[i]);
            lead.scores[i] = scores[i];
        }
        lead.unusable = unusable;
        lead.state = SeatState.Revealed;
        t.votes += m.seats;
        emit ScoresRevealed(taskId, m.seat - 1, msg.sender, unusable, scores);
    }

    function getTask(uint256 taskId) external view returns (Task memory) {
        Task memory t = _tasks[taskId];
        if (t.status == Status.None) revert UnknownTask(taskId);
        return t;
    }

    /// @notice A seat, showing its validator's ballot (kept in the validator's first seat).
    function getSeat(uint256 taskId, uint256 seat) external view returns (Seat memory) {
        address validator = _seats[taskId][seat].validator;
        if (validator == address(0)) return _seats[taskId][seat];
        return _seats[taskId][_members[taskId][validator].seat - 1];
    }

    /// @notice The first seat (index + 1) `validator` holds on `taskId`'s panel, 0 when none.
    function seatOf(uint256 taskId, address validator) external view returns (uint256) {
        return _members[taskId][validator].seat;
    }

    /// @notice `validator`'s first seat + 1, seats held and stake locked on `taskId`.
    function memberOf(uint256 taskId, address validator) external view returns (Member memory) {
        return _members[taskId][validator];
    }

    function scoreCommitment(uint256 taskId, address validator, bool unusable, uint32[] calldata scores, bytes32 salt)
        external
        pure
        returns (bytes32)
    {
        return keccak256(abi.encode(taskId, validator, unusable, scores, salt));
    }

    /// @dev A member's seats are settled: its lock released, the part of it `state` costs burned (a
    /// no-show: noShowBps/slashBps of it; a silent or outvoted vote: all of it; else nothing).
    function _settleMember(uint256 taskId, address validator, Member storage m, SeatState state, Rules storage r)
        internal
    {
        Stake storage s = _stakes[validator][Role.Validator];
        uint256 locked = m.locked;
        uint256 cut;
        if (state == SeatState.Drawn) {
            cut = r.slashBps == 0 ? 0 : locked * r.noShowBps / r.slashBps;
            s.active = false;
        } else if (state == SeatState.Committed) {
            cut = locked;
        }
        s.locked -= uint128(locked);
        s.openWork -= 1;
        s.amount -= uint128(cut);
        pendingBurn += cut;
        uint256 slot = _heldSlot(validator, s);
        if (slot != 0) _setWeight(slot, _weightOf(s)); // it can only fall here
        if (state == SeatState.Drawn) {
            emit NoShow(taskId, validator, cut);
            emit ValidatorActive(validator, false);
        } else if (state == SeatState.Committed) {
            emit Slashed(taskId, validator, cut);
        }
    }

    /// @dev Reveals wait until no seat can be taken any more: every seat committed, or the last commit
    /// window closed (after it, seats left uncommitted must be replaced first while rounds remain). They
    /// close revealPeriod after the announced commit deadline, however early the last seat committed, so
    /// a seat that commits last cannot pull the window ahead of the one the others were given.
    function _checkRevealWindow(uint256 taskId, Task storage t) internal view {
        uint256 deadline = t.scoreDeadline;
        if (t.committed < t.validations) {
            if (block.timestamp <= deadline) revert TooEarly(taskId, Step.RevealScores, deadline + 1);
            if (t.round < MAX_ROUNDS) revert PanelIncomplete(taskId, t.committed, t.validations);
        }
        uint256 closes = deadline + t.rules.revealPeriod;
        if (block.timestamp > closes) revert TooLate(taskId, Step.RevealScores, closes);
    }

    function _memberFor(uint256 taskId) private view returns (Member storage m, Seat storage lead) {
        m = _members[taskId][msg.sender];
        if (m.seat == 0) revert NotOnPanel(taskId, msg.sender);
        lead = _seats[taskId][m.seat - 1];
    }

    /// @dev Draw every empty seat: seat k takes the slot at position keccak256(seed, k) mod W, W being the
    /// weights at block `asOf` less the requester's and the trainers' (left out of the draw); a validator
    /// already seated can be drawn again. A slot whose validator has left since (its stake withdrawn), or
    /// whose free stake cannot cover the seat's lock (see _seat), leaves its seat for the next round.
    function _fill(uint256 taskId, Task storage t, bytes32 seed, uint256 asOf, uint256 deadline) private {
        uint256[] memory slots = new uint256[](1 + MAX_SUBMISSIONS);
        uint256[] memory weights = new uint256[](slots.length);
        uint256 n = _exclude(slots, weights, 0, t.requester, asOf);
        for (uint256 i; i < t.submissions; ++i) {
            n = _exclude(slots, weights, n, _submissions[taskId][i].trainer, asOf);
        }
        uint256 left = _tree.totalAt(asOf);
        for (uint256 k; k < n; ++k) {
            left -= weights[k];
        }
        if (left == 0) return;
        for (uint256 seat; seat < t.validations; ++seat) {
            if (_seats[taskId][seat].validator != address(0)) continue;
            uint256 slot = _tree.find(uint256(keccak256(abi.encode(seed, seat))) % left, asOf, slots, weights, n);
            address validator = _slotOwner[slot];
            if (
                validator == address(0) || _stakes[validator][Role.Validator].amount == 0
                    || validator == t.requester || _submissionOf[taskId][validator].index != 0
            ) continue;
            _seat(taskId, t, seat, validator, _tree.weightAt(slot, asOf), deadline);
        }
    }

    /// @dev Seat `validator` (its first seat, or one more) and lock slashBps of `weight` (the weight that
    /// drew it). A validator whose free stake cannot cover that lock (its stake is locked by seats on
    /// other open tasks, or by this draw's earlier seats) is not seated: the seat stays empty for the next
    /// draw, so no seat is ever held with less at stake than its lock.
    function _seat(uint256 taskId, Task storage t, uint256 seat, address validator, uint256 weight, uint256 deadline)
        private
    {
        Stake storage s = _stakes[validator][Role.Validator];
        uint256 lock = weight * t.rules.slashBps / 10_000;
        if (lock > s.amount - s.locked) return;
        Seat storage st = _seats[taskId][seat];
        st.validator = validator;
        Member storage m = _members[taskId][validator];
        if (m.seats == 0) {
            m.seat = uint8(seat + 1);
            st.state = SeatState.Drawn;
            s.openWork += 1;
        } else if (_seats[taskId][m.seat - 1].state == SeatState.Committed) {
            t.committed += 1; // its ballot is committed already and counts for this seat too
        }
        m.seats += 1;
        m.locked += uint128(lock);
        s.locked += uint128(lock);
        t.seated += 1;
        emit ValidatorDrawn(taskId, seat, validator, deadline);
    }

    /// @dev Put `account`'s slot and its weight at `asOf` at position `n` of the left-out list (unless it
    /// had none); returns the new length.
    function _exclude(uint256[] memory slots, uint256[] memory weights, uint256 n, address account, uint256 asOf)
        private
        view
        returns (uint256)
    {
        if (account == address(0)) return n;
        uint256 slot = _heldSlot(account, _stakes[account][Role.Validator]);
        if (slot == 0) return n;
        uint256 weight = _tree.weightAt(slot, asOf);
        if (weight == 0) return n;
        slots[n] = slot;
        weights[n] = weight;
        return n + 1;
    }
}
