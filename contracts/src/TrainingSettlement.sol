// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {TrainingPanel} from "./TrainingPanel.sol";
import {TrainingVerdict} from "./TrainingVerdict.sol";

/// @dev EMLToken's burn.
interface IBurnable {
    function burn(uint256 amount) external;
}

/// @title TrainingSettlement: the verdict, the money, the registration.
/// @notice `finalizeTask` (anyone, once the task's last window has passed) decides how the task ended,
/// settles every bond and seat, pays, and then registers an accepted model. On a task whose test set was
/// never revealed, its first call instead fixes the draw of a panel that checks the submissions on the
/// dataset's holdout; the task settles as Abandoned after that panel. The registration is attempted last
/// and its failure (registry full, role revoked, cap reached) is recorded and the task queued, never
/// reverted: escrow and stakes are settled whatever the registry does; `retryRegistration` serves the
/// queue first in, first out.
abstract contract TrainingSettlement is TrainingPanel {
    using SafeERC20 for IERC20;

    /// @notice finalizeTask and retryRegistration refuse to start a registration with less gas than this
    /// left, so a caller cannot make it fail by starving it.
    uint256 public constant REGISTRATION_GAS = 300_000;

    /// @dev What finalizeTask decided. A ballot is of kind 1 (holdout scores: an unusable report, or any
    /// vote on a task whose test set was never revealed) or 2 (test-set scores); a clear majority of one
    /// kind judges the submissions, and the seats of the other kind are outvoted.
    struct Tally {
        Status status;
        uint8 judge; // the kind of ballot that judged the submissions (0: none had a clear majority)
        uint256 m; // a clear majority of the seats filled
        uint256 winner; // submission index + 1
        uint32 score; // the winner's decided score
        uint256 rank; // the winner's score, counted up to its claim + claimSlack
        uint256 payees; // seats paid
        bool anyUndecided; // a revealed submission's score had no clear majority
        uint8[9] kind; // by seat: 0 no ballot revealed, 1 holdout, 2 test set
        uint32[16][9] ballots;
        bool[9] pays; // the seat gets a share of the validators' part
        bool[9] slash; // outvoted by a clear majority
        bool[16] forfeit; // judged: the artifact failed its checks
        bool[16] undecided; // fewer than a clear majority of the seats agree on its score
        uint32[16] decided;
    }

    /// @notice Settle a task once its last window has passed (or at once when every seat has revealed).
    /// Reverts TooEarly (with the first second it can succeed), DrawPending or PanelIncomplete otherwise.
    /// On a task whose test set was never revealed, the first call after testDeadline fixes the draw of
    /// the checking panel (DrawFixed) and settles nothing.
    function finalizeTask(uint256 taskId) external nonReentrant {
        Task storage t = _openTask(taskId);
        Tally memory tally;
        tally.status = _readiness(taskId, t);
        if (tally.status == Status.None) return _fixDraw(taskId, t);
        if (tally.status == Status.Open) _judge(taskId, t, tally);
        t.status = tally.status;
        t.accepted = uint8(tally.winner);
        _settleBonds(taskId, t, tally);
        _settleSeats(taskId, t, tally);
        _pay(taskId, t, tally);
        if (tally.status != Status.Accepted) return;
        if (!t.rules.registers) {
            Registration r = t.rules.registrationsPerPeriod == 0 ? Registration.Closed : Registration.BelowMinimumReward;
            t.registration = r;
            emit RegistrationSkipped(taskId, r, "");
        } else if (_queueHead != _queueTail) {
            _enqueue(taskId, t, Registration.Deferred, "");
        } else {
            _register(taskId, t, false);
        }
    }

    /// @notice Register the model of the first task in the registration queue (deferred by the cap, or
    /// refused by the registry); reverts NotFirstInLine for any other, and with the reason when it fails
    /// again.
    function retryRegistration(uint256 taskId) external nonReentrant {
        Task storage t = _tasks[taskId];
        Registration r = t.registration;
        if (t.status != Status.Accepted || (r != Registration.Deferred && r != Registration.Failed)) {
            revert NotRetryable(taskId, r);
        }
        uint256 first = _queue[_queueHead];
        if (first != taskId) revert NotFirstInLine(taskId, first);
        _register(taskId, t, true);
    }

    /// @notice Burn the penalties collected so far (anyone may call it).
    function burnPenalties() external nonReentrant {
        uint256 amount = pendingBurn;
        pendingBurn = 0;
        IBurnable(address(token)).burn(amount);
        emit PenaltiesBurned(amount);
    }

    /// @notice The current registration window: when it started and how many registrations it has used.
    function registrationWindow() external view returns (uint256 start, uint256 used) {
        return (_windowStart, _windowUsed);
    }

    /// @notice The registration queue: the task retryRegistration serves next (0: none) and how many wait.
    function registrationQueue() external view returns (uint256 first, uint256 waiting) {
        return (_queue[_queueHead], _queueTail - _queueHead);
    }
    /// @dev Empty when nothing was revealed; None when an abandoned task's check must be drawn first; Open
    /// when the panel's votes decide.
    function _readiness(uint256 taskId, Task storage t) private view returns (Status) {
        if (t.revealed == 0) {
            uint256 closes = t.submissions == 0 ? t.submitDeadline : t.revealDeadline;
            if (block.timestamp <= closes) revert TooEarly(taskId, Step.Finalize, closes + 1);
            return Status.Empty;
        }
        if (!t.testRevealed) {
            if (block.timestamp <= t.testDeadline) revert TooEarly(taskId, Step.Finalize, t.testDeadline + 1);
            if (t.round == 0 && t.drawBlock == 0) return Status.None;
        }
        if (t.drawBlock != 0) revert DrawPending(taskId, t.drawBlock);
        if (t.committed < t.validations && t.round < MAX_ROUNDS) {
            revert PanelIncomplete(taskId, t.committed, t.validations);
        }
        uint256 revealCloses = t.scoreDeadline + t.rules.revealPeriod;
        if (t.votes < t.validations && block.timestamp <= revealCloses) {
            revert TooEarly(taskId, Step.Finalize, revealCloses + 1);
        }
        return Status.Open;
    }

    /// @dev A clear majority is counted against the seats filled (every seat, unless too few validators
    /// could be drawn), so one silent seat cannot block a panel the draw could not fill.
    function _judge(uint256 taskId, Task storage t, Tally memory tally) private view {
        bool abandoned = !t.testRevealed;
        uint256 validations = t.validations;
        tally.m = TrainingVerdict.majority(t.seated);
        uint256[3] memory count;
        for (uint256 seat; seat < validations; ++seat) {
            address validator = _seats[taskId][seat].validator;
            if (validator == address(0)) continue;
            Seat storage lead = _seats[taskId][_members[taskId][validator].seat - 1];
            if (lead.state != SeatState.Revealed) continue;
            uint8 kind = abandoned || lead.unusable ? 1 : 2;
            tally.kind[seat] = kind;
            tally.ballots[seat] = lead.scores;
            ++count[kind];
        }
        if (count[1] >= tally.m) {
            tally.judge = 1;
            tally.status = abandoned ? Status.Abandoned : Status.Unusable;
        } else if (count[2] >= tally.m) {
            tally.judge = 2;
        } else {
            tally.status = abandoned ? Status.Abandoned : Status.Undecided;
        }
        if (tally.judge != 0) _score(taskId, t, tally, count[tally.judge]);
        if (tally.judge == 2) {
            tally.status = tally.winner != 0 ? Status.Accepted : tally.anyUndecided ? Status.Undecided : Status.Rejected;
        }
        for (uint256 seat; seat < validations; ++seat) {
            uint8 kind = tally.kind[seat];
            if (kind == 0) continue;
            if (tally.judge != 0 && kind != tally.judge) tally.slash[seat] = true;
            if (!tally.slash[seat]) {
                tally.pays[seat] = true;
                ++tally.payees;
            }
        }
    }

    /// @dev Each revealed submission's score is what a clear majority of the seats filled agrees on: the
    /// M-th highest judging vote, when at least M votes lie within scoreTolerance of it. Without such a
    /// majority (seats silent, votes apart) the submission is undecided: its bond is released, it is not
    /// accepted and nobody is slashed over it, so one vote of 0 beside a silent seat decides nothing.
    /// Test-set scores: a decided score of 0 (the artifact failed its checks) forfeits the bond; a score
    /// of at least the minimum is eligible, unless its artifact was revealed in another task before it
    /// was committed, ranked by its score counted up to its claim + claimSlack (a model scoring far above
    /// its own holdout claim wins nothing by it); the best wins, the earliest commitment among equals.
    /// Holdout scores: an artifact is verified when its decided score is not 0 and within claimSlack of
    /// its claim; the others' bonds are forfeited.
    function _score(uint256 taskId, Task storage t, Tally memory tally, uint256 votesPerSubmission) private view {
        uint256 tolerance = t.rules.scoreTolerance;
        uint256 slack = t.rules.claimSlack;
        uint256 elsewhere = _revealedElsewhere[taskId];
        for (uint256 i; i < t.submissions; ++i) {
            Submission storage s = _submissions[taskId][i];
            if (!s.revealed) continue;
            (uint32 score, bool decided) = _decide(tally, i, votesPerSubmission, tolerance);
            if (!decided) {
                tally.undecided[i] = true;
                tally.anyUndecided = true;
                continue;
            }
            tally.decided[i] = score;
            uint256 claim = s.claim;
            if (score == 0 || (tally.judge == 1 && TrainingVerdict.far(score, claim, slack))) {
                tally.forfeit[i] = true;
            } else if (tally.judge == 2 && score >= t.minScore && (elsewhere >> i) & 1 == 0) {
                uint256 rank = score < claim + slack ? score : claim + slack;
                if (tally.winner == 0 || rank > tally.rank) {
                    (tally.winner, tally.score, tally.rank) = (i + 1, score, rank);
                }
            }
        }
    }

    /// @dev Submission `i`'s score by the judging ballots, and whether a clear majority of the seats agrees
    /// on it; when one does, the seats it outvotes on it are marked for the slash.
    function _decide(Tally memory tally, uint256 i, uint256 n, uint256 tolerance)
        private
        pure
        returns (uint32 score, bool decided)
    {
        uint32[] memory votes = new uint32[](n);
        uint256 k;
        for (uint256 seat; seat < 9; ++seat) {
            if (tally.kind[seat] == tally.judge) votes[k++] = tally.ballots[seat][i];
        }
        uint256 agreeing;
        (score, agreeing) = TrainingVerdict.decide(votes, tally.m, tolerance);
        if (agreeing < tally.m) return (0, false);
        for (uint256 seat; seat < 9; ++seat) {
            if (tally.kind[seat] == tally.judge && TrainingVerdict.far(tally.ballots[seat][i], score, tolerance)) {
                tally.slash[seat] = true;
            }
        }
        return (score, true);
    }

    /// @dev A bond is forfeited when its submission was never revealed or failed its checks.
    function _settleBonds(uint256 taskId, Task storage t, Tally memory tally) private {
        uint256 bond = t.rules.bond;
        for (uint256 i; i < t.submissions; ++i) {
            Submission storage s = _submissions[taskId][i];
            bool forfeit = !s.revealed || tally.forfeit[i];
            _settleBond(s.trainer, bond, forfeit);
            s.bond = forfeit ? Bond.Forfeited : Bond.Released;
            if (tally.judge != 0 && s.revealed) s.score = tally.decided[i];
            emit BondSettled(taskId, i, s.trainer, s.bond, bond);
        }
    }

    /// @dev Each validator on the panel, once (at its first seat): its lock released; a no-show loses
    /// noShowBps/slashBps of it, a vote never revealed or outvoted by a clear majority all of it.
    function _settleSeats(uint256 taskId, Task storage t, Tally memory tally) private {
        for (uint256 seat; seat < t.validations; ++seat) {
            Seat storage st = _seats[taskId][seat];
            address validator = st.validator;
            if (validator == address(0)) continue;
            Member storage m = _members[taskId][validator];
            if (m.seat != seat + 1) continue;
            SeatState state = st.state;
            if (state == SeatState.Revealed && tally.slash[seat]) state = SeatState.Committed;
            _settleMember(taskId, validator, m, state, t.rules);
        }
    }

    function _pay(uint256 taskId, Task storage t, Tally memory tally) private {
        uint256 escrow = t.reward;
        Status status = tally.status;
        uint256 toValidators;
        if (tally.payees > 0) toValidators = escrow * t.rules.validatorShareBps / 10_000;
        uint256 rest = escrow - toValidators;
        uint256 toTrainers;
        uint256 toRequester;
        uint256 payee = tally.winner;
        if (status == Status.Unusable || status == Status.Abandoned) payee = _payee(taskId, t, tally);
        if (payee != 0) {
            toTrainers = rest;
            _send(_submissions[taskId][payee - 1].trainer, rest);
        } else {
            toRequester = rest;
            _send(t.requester, rest);
        }
        if (toValidators > 0) _splitToValidators(taskId, t, tally, toValidators);
        emit TaskSettled(taskId, status, tally.winner, tally.score, toTrainers, toValidators, toRequester);
    }

    /// @dev Who is paid the trainers' part when the test set was unusable or never revealed (index + 1, 0:
    /// nobody, the requester is refunded): the earliest commitment the panel verified, as an accepted
    /// task pays one winner (variants of one model under several stakes take nothing more); when none
    /// was verified, the earliest whose score no clear majority decided (the requester, who withheld or
    /// spoiled the test set, is not refunded by silent seats). Never an artifact revealed in another
    /// task before it was committed.
    function _payee(uint256 taskId, Task storage t, Tally memory tally) private view returns (uint256 fallback_) {
        uint256 elsewhere = _revealedElsewhere[taskId];
        for (uint256 i; i < t.submissions; ++i) {
            if (!_submissions[taskId][i].revealed || tally.forfeit[i] || (elsewhere >> i) & 1 != 0) continue;
            if (tally.judge != 0 && !tally.undecided[i]) return i + 1;
            if (fallback_ == 0) fallback_ = i + 1;
        }
    }

    /// @dev Equal shares per seat paid, to each validator at its first seat; the remainder to the first.
    function _splitToValidators(uint256 taskId, Task storage t, Tally memory tally, uint256 amount) private {
        uint256 share = amount / tally.payees;
        uint256 dust = amount - share * tally.payees;
        for (uint256 seat; seat < t.validations; ++seat) {
            if (!tally.pays[seat]) continue;
            address validator = _seats[taskId][seat].validator;
            Member storage m = _members[taskId][validator];
            if (m.seat != seat + 1) continue;
            _send(validator, share * m.seats + dust);
            dust = 0;
        }
    }

    /// @dev The bond goes back to the trainer's free stake, or to the burn.
    function _settleBond(address trainer, uint256 bond, bool forfeit) private {
        Stake storage s = _stakes[trainer][Role.Trainer];
        s.locked -= uint128(bond);
        s.openWork -= 1;
        if (forfeit) {
            s.amount -= uint128(bond);
            pendingBurn += bond;
        }
    }

    function _send(address to, uint256 amount) private {
        if (amount > 0) token.safeTransfer(to, amount);
    }

    /// @dev Register now if the window allows; otherwise (or if the registry refuses) join the queue. A
    /// retry registers the queue's first task or reverts with the reason.
    function _register(uint256 taskId, Task storage t, bool retry) private {
        (bool allowed, uint256 nextWindowAt) = _takeRegistration(t);
        if (!allowed) {
            if (retry) revert RegistrationCapReached(nextWindowAt);
            return _enqueue(taskId, t, Registration.Deferred, "");
        }
        if (gasleft() < REGISTRATION_GAS) revert NotEnoughGas(REGISTRATION_GAS);
        Submission storage s = _submissions[taskId][t.accepted - 1];
        try registry.registerModel(s.modelCid, s.artifactSha256, t.kind, t.decimals, t.featureCount) returns (
            uint256 modelId
        ) {
            t.modelId = uint32(modelId);
            t.registration = Registration.Registered;
            if (retry) delete _queue[_queueHead++];
            emit ModelRegistered(taskId, modelId);
        } catch (bytes memory reason) {
            if (retry) {
                assembly ("memory-safe") {
                    revert(add(reason, 0x20), mload(reason))
                }
            }
            _windowUsed -= 1;
            _enqueue(taskId, t, Registration.Failed, reason);
        }
    }

    function _enqueue(uint256 taskId, Task storage t, Registration r, bytes memory reason) private {
        _queue[_queueTail++] = taskId;
        t.registration = r;
        emit RegistrationSkipped(taskId, r, reason);
    }

    /// @dev At most `cap` registrations in a window of `period` seconds (a window starts with the first
    /// registration after the last one ended), where the cap and the period are the more generous of the
    /// task's snapshot and the current parameters: the admin cannot slow an open task's registration.
    function _takeRegistration(Task storage t) private returns (bool, uint256) {
        uint256 cap = t.rules.registrationsPerPeriod;
        uint256 period = t.rules.registrationPeriod;
        Parameters storage p = _params;
        if (p.registrationsPerPeriod > cap) cap = p.registrationsPerPeriod;
        if (p.registrationPeriod < period) period = p.registrationPeriod;
        if (block.timestamp >= uint256(_windowStart) + period) {
            _windowStart = uint40(block.timestamp);
            _windowUsed = 0;
        }
        if (_windowUsed >= cap) return (false, uint256(_windowStart) + period);
        _windowUsed += 1;
        return (true, 0);
    }
}
