// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {DrawTree} from "./DrawTree.sol";
import {TrainingBase} from "./TrainingBase.sol";

/// @title TrainingStakes: trainer and validator stakes, and the bonds trainers lock out of theirs.
/// @notice A role is earned by staking at least its minimum. Each submission locks the task's bond out of
/// the trainer's free stake. A validator's stake is its weight in the draw while it is active, staying
/// and at least the minimum. Unstaking waits `unstakeDelay` and for the account's open work (submissions
/// and seats in unsettled tasks). Every penalty (slash, no-show slice, forfeited bond) leaves the stake
/// for `pendingBurn`: nobody is paid with another account's stake, so no majority gains by slashing.
abstract contract TrainingStakes is TrainingBase {
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
    /// and can be withdrawn after `unstakeDelay` once its open work is settled. `stake` cancels it.
    function requestUnstake(Role role) external {
        Stake storage s = _stakes[msg.sender][role];
        if (s.amount == 0) revert NothingStaked(msg.sender, role);
        s.unlockAt = uint40(block.timestamp + _params.unstakeDelay);
        if (role == Role.Validator) _syncWeight(msg.sender, s);
        emit UnstakeRequested(msg.sender, role, s.unlockAt);
    }

    function withdrawStake(Role role) external nonReentrant {
        Stake storage s = _stakes[msg.sender][role];
        uint256 amount = s.amount;
        if (amount == 0) revert NothingStaked(msg.sender, role);
        if (s.unlockAt == 0) revert UnstakeNotRequested(msg.sender, role);
        if (block.timestamp < s.unlockAt || s.openWork > 0) {
            revert StakeLocked(msg.sender, role, s.unlockAt, s.openWork);
        }
        s.amount = 0;
        s.unlockAt = 0;
        uint256 slot = s.slot;
        if (slot != 0) {
            s.slot = 0;
            delete _slotOwner[slot];
            _freed.push(FreedSlot(uint16(slot), uint48(block.number)));
        }
        token.safeTransfer(msg.sender, amount);
        emit Unstaked(msg.sender, role, amount);
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
        uint256 slot = _stakes[validator][Role.Validator].slot;
        return (slot == 0 ? 0 : DrawTree.latestWeight(_tree, slot), DrawTree.latestTotal(_tree));
    }

    function _lockBond(address trainer, uint256 bond) internal {
        Stake storage s = _stakes[trainer][Role.Trainer];
        uint256 free = s.amount - s.locked;
        if (free < bond) revert FreeStakeBelowBond(trainer, free, bond);
        s.locked += uint128(bond);
        s.openWork += 1;
    }
}
