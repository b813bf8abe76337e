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
/// settles every bond and seat, pays, and then registers an accepted model. The registration is attempted
/// last and its failure (registry full, role revoked, cap reached) is recorded and emitted, never
/// reverted: escrow and stakes are settled whatever the registry does; `retryRegistration` tries again.
abstract contract TrainingSettlement is TrainingPanel {
    using SafeERC20 for IERC20;

    /// @notice finalizeTask and retryRegistration refuse to start a registration with less gas than this
    /// left, so a caller cannot make it fail by starving it.
    uint256 public constant REGISTRATION_GAS = 300_000;

    /// @dev What finalizeTask decided.
    struct Tally {
        Status status;
        uint256 winner; // submission index + 1
        uint32 score; // the winner's decided score
        uint256 payees;
        bool[9] pays; // the seat gets a share of the validator part
        bool[9] slash; // outvoted by a clear majority
        bool[16] forfeit; // judged: below the minimum or far below the claim
        uint32[16] decided;
    }

    /// @notice Settle a task once its last window has passed (or at once when every seat has revealed).
    /// Reverts TooEarly (with the first second it can succeed), DrawPending or PanelIncomplete otherwise.
    function finalizeTask(uint256 taskId) external nonReentrant {
        Task storage t = _openTask(taskId);
        Tally memory tally;
        tally.status = _readiness(taskId, t);
        if (tally.status == Status.Open) _judge(taskId, t, tally);
        t.status = tally.status;
        t.accepted = uint8(tally.winner);
        _settleBonds(taskId, t, tally);
        _settleSeats(taskId, t, tally);
        _pay(taskId, t, tally);
        if (tally.status != Status.Accepted) return;
        if (t.rules.registers) {
            _register(taskId, t, false);
        } else {
            t.registration = Registration.BelowMinimumReward;
            emit RegistrationSkipped(taskId, Registration.BelowMinimumReward, "");
        }
    }

    /// @notice Register an accepted model whose registration was deferred (cap) or refused (registry);
    /// reverts with the reason when it fails again.
    function retryRegistration(uint256 taskId) external nonReentrant {
        Task storage t = _tasks[taskId];
        Registration r = t.registration;
        if (t.status != Status.Accepted || (r != Registration.Deferred && r != Registration.Failed)) {
            revert NotRetryable(taskId, r);
        }
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

    /// @dev Empty or Abandoned when the task ended before the panel; Open when the panel's votes decide.
    function _readiness(uint256 taskId, Task storage t) private view returns (Status) {
        if (t.revealed == 0) {
            uint256 closes = t.submissions == 0 ? t.submitDeadline : t.revealDeadline;
            if (block.timestamp <= closes) revert TooEarly(taskId, Step.Finalize, closes + 1);
            return Status.Empty;
        }
        if (!t.testRevealed) {
            if (block.timestamp <= t.testDeadline) revert TooEarly(taskId, Step.Finalize, t.testDeadline + 1);
            return Status.Abandoned;
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
        uint256 validations = t.validations;
        uint256 m = TrainingVerdict.majority(t.seated);
        uint8[9] memory kind; // 0: no vote, 1: unusable, 2: scores
        uint32[16][9] memory ballots;
        uint256 unusable;
        uint256 scored;
        for (uint256 seat; seat < validations; ++seat) {
            Seat storage st = _seats[taskId][seat];
            if (st.state != SeatState.Revealed) continue;
            if (st.unusable) {
                kind[seat] = 1;
                ++unusable;
            } else {
                kind[seat] = 2;
                ++scored;
                ballots[seat] = st.scores;
            }
        }
        if (unusable >= m) {
            tally.status = Status.Unusable;
        } else if (scored >= m) {
            _score(taskId, t, tally, kind, ballots, scored, m);
            tally.status = tally.winner != 0 ? Status.Accepted : Status.Rejected;
        } else {
            tally.status = Status.Undecided;
        }
        for (uint256 seat; seat < validations; ++seat) {
            if (kind[seat] == 0) continue;
            if (tally.status == Status.Unusable) {
                tally.slash[seat] = kind[seat] == 2;
            } else if (tally.status != Status.Undecided) {
                tally.slash[seat] = tally.slash[seat] || kind[seat] == 1;
            }
            if (!tally.slash[seat]) {
                tally.pays[seat] = true;
                ++tally.payees;
            }
        }
    }

    /// @dev Each revealed submission's score is what a clear majority reaches; the best eligible one (at
    /// least the minimum, not far below its claim) wins, the earliest commitment among equals.
    function _score(
        uint256 taskId,
        Task storage t,
        Tally memory tally,
        uint8[9] memory kind,
        uint32[16][9] memory ballots,
        uint256 scored,
        uint256 m
    ) private view {
        uint256 validations = t.validations;
        uint256 tolerance = t.rules.scoreTolerance;
        for (uint256 i; i < t.submissions; ++i) {
            Submission storage s = _submissions[taskId][i];
            if (!s.revealed) continue;
            uint32[] memory votes = new uint32[](scored);
            uint256 k;
            for (uint256 seat; seat < validations; ++seat) {
                if (kind[seat] == 2) votes[k++] = ballots[seat][i];
            }
            (uint32 score, uint256 agreeing) = TrainingVerdict.decide(votes, m, tolerance);
            if (agreeing >= m) {
                for (uint256 seat; seat < validations; ++seat) {
                    if (kind[seat] == 2 && TrainingVerdict.far(ballots[seat][i], score, tolerance)) {
                        tally.slash[seat] = true;
                    }
                }
            }
            tally.decided[i] = score;
            if (score < t.minScore || uint256(score) + t.rules.claimSlack < s.claim) {
                tally.forfeit[i] = true;
            } else if (tally.winner == 0 || score > tally.score) {
                tally.winner = i + 1;
                tally.score = score;
            }
        }
    }

    /// @dev A bond is forfeited when its submission was never revealed or was judged ineligible.
    function _settleBonds(uint256 taskId, Task storage t, Tally memory tally) private {
        uint256 bond = t.rules.bond;
        bool judged = tally.status == Status.Accepted || tally.status == Status.Rejected;
        for (uint256 i; i < t.submissions; ++i) {
            Submission storage s = _submissions[taskId][i];
            bool forfeit = !s.revealed || tally.forfeit[i];
            _settleBond(s.trainer, bond, forfeit);
            s.bond = forfeit ? Bond.Forfeited : Bond.Released;
            if (judged && s.revealed) s.score = tally.decided[i];
            emit BondSettled(taskId, i, s.trainer, s.bond, bond);
        }
    }

    /// @dev Seats free their validators; a seat never committed loses the no-show slice, a vote never
    /// revealed or outvoted by a clear majority loses `slashBps`.
    function _settleSeats(uint256 taskId, Task storage t, Tally memory tally) private {
        for (uint256 seat; seat < t.validations; ++seat) {
            Seat storage st = _seats[taskId][seat];
            address validator = st.validator;
            if (validator == address(0)) continue;
            _stakes[validator][Role.Validator].openWork -= 1;
            if (st.state == SeatState.Drawn) {
                _benchNoShow(taskId, validator, t.rules.noShowBps);
            } else if (st.state == SeatState.Committed || tally.slash[seat]) {
                emit Slashed(taskId, validator, _penalize(validator, t.rules.slashBps));
            }
        }
    }

    function _pay(uint256 taskId, Task storage t, Tally memory tally) private {
        uint256 escrow = t.reward;
        Status status = tally.status;
        uint256 toValidators;
        if (status != Status.Empty && status != Status.Abandoned && tally.payees > 0) {
            toValidators = escrow * t.rules.validatorShareBps / 10_000;
        }
        uint256 rest = escrow - toValidators;
        uint256 toTrainers;
        uint256 toRequester;
        if (status == Status.Accepted) {
            toTrainers = rest;
            _send(_submissions[taskId][tally.winner - 1].trainer, rest);
        } else if (status == Status.Unusable || status == Status.Abandoned) {
            toTrainers = rest;
            _splitToTrainers(taskId, t, rest);
        } else {
            toRequester = rest;
            _send(t.requester, rest);
        }
        if (toValidators > 0) _splitToValidators(taskId, t, tally, toValidators);
        emit TaskSettled(taskId, status, tally.winner, tally.score, toTrainers, toValidators, toRequester);
    }

    /// @dev Equal shares to the revealed submissions' trainers, the remainder to the first.
    function _splitToTrainers(uint256 taskId, Task storage t, uint256 amount) private {
        uint256 count = t.revealed;
        uint256 share = amount / count;
        uint256 dust = amount - share * count;
        for (uint256 i; i < t.submissions; ++i) {
            Submission storage s = _submissions[taskId][i];
            if (!s.revealed) continue;
            _send(s.trainer, share + dust);
            dust = 0;
        }
    }

    function _splitToValidators(uint256 taskId, Task storage t, Tally memory tally, uint256 amount) private {
        uint256 share = amount / tally.payees;
        uint256 dust = amount - share * tally.payees;
        for (uint256 seat; seat < t.validations; ++seat) {
            if (!tally.pays[seat]) continue;
            _send(_seats[taskId][seat].validator, share + dust);
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

    function _register(uint256 taskId, Task storage t, bool retry) private {
        if (!_takeRegistration()) {
            if (retry) revert RegistrationCapReached(uint256(_windowStart) + _params.registrationPeriod);
            t.registration = Registration.Deferred;
            emit RegistrationSkipped(taskId, Registration.Deferred, "");
            return;
        }
        if (gasleft() < REGISTRATION_GAS) revert NotEnoughGas(REGISTRATION_GAS);
        Submission storage s = _submissions[taskId][t.accepted - 1];
        try registry.registerModel(s.modelCid, s.artifactSha256, t.kind, t.decimals, t.featureCount) returns (
            uint256 modelId
        ) {
            t.modelId = uint32(modelId);
            t.registration = Registration.Registered;
            emit ModelRegistered(taskId, modelId);
        } catch (bytes memory reason) {
            if (retry) {
                assembly ("memory-safe") {
                    revert(add(reason, 0x20), mload(reason))
                }
            }
            _windowUsed -= 1;
            t.registration = Registration.Failed;
            emit RegistrationSkipped(taskId, Registration.Failed, reason);
        }
    }

    /// @dev At most `registrationsPerPeriod` registrations in a window of `registrationPeriod` seconds
    /// (a window starts with the first registration after the last one ended).
    function _takeRegistration() private returns (bool) {
        if (block.timestamp >= uint256(_windowStart) + _params.registrationPeriod) {
            _windowStart = uint40(block.timestamp);
            _windowUsed = 0;
        }
        if (_windowUsed >= _params.registrationsPerPeriod) return false;
        _windowUsed += 1;
        return true;
    }
}
