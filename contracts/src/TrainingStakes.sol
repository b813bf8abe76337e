// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {Pausable} from "@openzeppelin/contracts/utils/Pausable.sol";
import {DrawTree} from "./DrawTree.sol";
import {TrainingBase} from "./TrainingBase.sol";

/// @title TrainingStakes: trainer and validator stakes, and the bonds trainers lock out of theirs.
/// @notice A role is earned by staking at least its minimum. Each submission locks the task's bond out of
/// the trainer's free stake; each seat locks what its validator can lose on it. A validator's stake is
/// its weight in the draw while it is active, staying and at least the minimum. Unstaking waits
/// `unstakeDelay`; then everything not locked by open work can be withdrawn, the rest once that work is
/// settled. Every penalty (slash, no-show slice, forfeited bond) leaves the stake for `pendingBurn`:
/// nobody is paid with another account's stake, so no majority gains by slashing.
abstract contract TrainingStakes is Pausable, TrainingBase {
    using SafeERC20 for IERC20;

    function stake(Role role, uint256 amount) external whenNotPaused nonReentrant {
        if (amount == 0 || amount > type(uint128).max) revert BadAmount(amount);
        Stake storage s = _stakes[msg.sender][role];
        token.safeTransferFrom(msg.sender, address(this), amount);
        s.amount += uint128(amount);
        s.unlockAt = 0; // staking again cancels a pending unstake
        if (role == Role.Validator) {
            s.active = true;
            _syncWeight(msg.sender, s);
        }
        emit Staked(msg.sender, role, amount, s.amount);
    }

    /// @notice Start leaving: the stake stops counting for new work (a validator leaves the draw at once)
    /// and can be withdrawn after `unstakeDelay`, all but what open work locks. `stake` cancels it.
    function requestUnstake(Role role) external {
        Stake storage s = _stakes[msg.sender][role];
        if (s.amount == 0) revert NothingStaked(msg.sender, role);
        s.unlockAt = uint40(block.timestamp + _params.unstakeDelay);
        if (role == Role.Validator) _syncWeight(msg.sender, s);
        emit UnstakeRequested(msg.sender, role, s.unlockAt);
    }

    /// @notice Withdraw the stake not locked by open work (bonds, seats); call again for the rest once
    /// that work is settled.
    function withdrawStake(Role role) external nonReentrant {
        Stake storage s = _stakes[msg.sender][role];
        uint256 amount = s.amount;
        if (amount == 0) revert NothingStaked(msg.sender, role);
        if (s.unlockAt == 0) revert UnstakeNotRequested(msg.sender, role);
        uint256 free = amount - s.locked;
        if (block.timestamp < s.unlockAt || free == 0) {
            revert StakeLocked(msg.sender, role, s.unlockAt, s.openWork);
        }
        s.amount = uint128(amount - free);
        if (free == amount) s.unlockAt = 0;
        token.safeTransfer(msg.sender, free);
        emit Unstaked(msg.sender, role, free);
    }

    /// @notice A validator steps out of the draw (maintenance, going offline) or back in; seats it already
    /// holds stay its own. A validator that misses a commit window is stepped out for it.
    function setActive(bool active) external {
        Stake storage s = _stakes[msg.sender][Role.Validator];
        if (s.amount == 0) revert NothingStaked(msg.sender, Role.Validator);
        s.active = active;
        _syncWeight(msg.sender, s);
        emit ValidatorActive(msg.sender, active);
    }

    function stakeOf(address account, Role role) external view returns (Stake memory) {
        return _stakes[account][role];
    }

    /// @notice Whether `account` may act in `role` now: at least the minimum staked, not leaving.
    function isStaked(address account, Role role) public view returns (bool) {
        Stake storage s = _stakes[account][role];
        uint256 minimum = role == Role.Trainer ? _params.minTrainerStake : _params.minValidatorStake;
        return s.amount >= minimum && s.unlockAt == 0;
    }

    /// @notice A validator's weight in draws fixed from now on, and the total of all weights.
    function drawWeight(address validator) external view returns (uint256 weight, uint256 total) {
        uint256 slot = _heldSlot(validator, _stakes[validator][Role.Validator]);
        return (slot == 0 ? 0 : DrawTree.latestWeight(_tree, slot), DrawTree.latestTotal(_tree));
    }

    /// @dev The draw weight follows the stake (see _weightOf); a validator whose weight rises from zero
    /// without a slot takes one: its own if nobody was given it meanwhile, else the oldest slot idle for
    /// SLOT_QUARANTINE blocks, else a new one.
    function _syncWeight(address validator, Stake storage s) internal {
        uint256 weight = _weightOf(s);
        uint256 slot = _heldSlot(validator, s);
        if (slot == 0) {
            if (weight == 0) return;
            slot = _takeSlot(validator);
            s.slot = uint16(slot);
        }
        _setWeight(slot, weight);
    }

    /// @dev Entries whose validator came back are dropped on the way (at most 16 a call).
    function _takeSlot(address validator) private returns (uint256 slot) {
        uint256 head = _freedHead;
        for (uint256 k; k < 16 && head < _freed.length; ++k) {
            uint256 candidate = _freed[head];
            bool idle = DrawTree.latestWeight(_tree, candidate) == 0;
            if (idle && DrawTree.lastChange(_tree, candidate) + SLOT_QUARANTINE >= block.number) break;
            delete _inFreed[candidate];
            ++head;
            if (idle) {
                slot = candidate;
                break;
            }
        }
        _freedHead = head;
        if (slot == 0) {
            if (_slotsUsed >= DrawTree.CAPACITY) revert ValidatorSetFull(DrawTree.CAPACITY);
            slot = ++_slotsUsed;
        }
        _slotOwner[slot] = validator;
    }

    function _lockBond(address trainer, uint256 bond) internal {
        Stake storage s = _stakes[trainer][Role.Trainer];
        uint256 free = s.amount - s.locked;
        if (free < bond) revert FreeStakeBelowBond(trainer, free, bond);
        s.locked += uint128(bond);
        s.openWork += 1;
    }
}
