// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {ModelRegistry} from "../src/ModelRegistry.sol";
import {TrainingBase} from "../src/TrainingBase.sol";
import {TrainingTasks} from "../src/TrainingTasks.sol";
import {vm} from "./Base.sol";
import {TrainingFixture} from "./TrainingFixture.sol";

/// @dev Issue 18, item 7: a self-dealt 1-wei task registered any model, and a full registry locked every
/// accepted task's escrow and stakes. Registration now needs a minimum reward, stays within a cap per
/// period, and never decides whether a task settles.
contract TrainingRegistrationTest is TrainingFixture {
    function setUp() public {
        _setUpTraining();
    }

    /// An accepted task, ready to finalize, paying `reward`.
    function _acceptedTask(uint96 reward, string memory cid) internal returns (uint256 id) {
        TrainingTasks.Terms memory terms = _terms(1, 800_000);
        terms.reward = reward;
        vm.prank(requester);
        id = tasks.createTask(terms);
        _submitAll(id, _one(trainers[0]), _cids(cid), _claims(950_000));
        _draw(id, keccak256(abi.encode(id)));
        _allVote(id, false, _scores(950_000));
    }

    function _registration(uint256 id) internal view returns (TrainingBase.Registration) {
        return _task(id).registration;
    }

    function _assertSettled(uint256 id) internal view {
        vm.assertEq(uint256(_task(id).status), uint256(TrainingBase.Status.Accepted), "settled as accepted");
        vm.assertEq(_stakeOf(trainers[0], TrainingBase.Role.Trainer).openWork, 0, "the trainer's stake is free");
        vm.assertEq(_stakeOf(trainers[0], TrainingBase.Role.Trainer).locked, 0, "its bond released");
        address seated = panel.getSeat(id, 0).validator;
        vm.assertEq(_stakeOf(seated, TrainingBase.Role.Validator).openWork, 0, "the validator's stake is free");
    }

    /// A self-dealt task below the minimum reward is paid like any other but registers nothing.
    function test_item7_a_task_below_the_minimum_reward_registers_nothing() public {
        uint256 id = _acceptedTask(9 ether, MODEL);
        uint256 models = registry.modelCount();
        _finalize(id);
        _assertSettled(id);
        vm.assertEq(uint256(_registration(id)), uint256(TrainingBase.Registration.BelowMinimumReward), "skipped");
        vm.assertEq(registry.modelCount(), models, "nothing registered");
        vm.expectRevert(
            abi.encodeWithSelector(
                TrainingBase.NotRetryable.selector, id, TrainingBase.Registration.BelowMinimumReward
            )
        );
        panel.retryRegistration(id);
    }

    /// At most three registrations a day here: the fourth accepted task settles and waits for the next
    /// window, when anyone can retry it.
    function test_item7_registrations_stay_within_the_cap_and_deferred_ones_are_retried() public {
        uint256 start = block.timestamp;
        uint256[4] memory ids;
        for (uint256 i; i < 4; ++i) {
            ids[i] = _acceptedTask(REWARD, _model(i));
        }
        for (uint256 i; i < 4; ++i) {
            _finalize(ids[i]);
        }
        for (uint256 i; i < 4; ++i) {
            _assertSettled(ids[i]);
        }
        (uint256 windowStart, uint256 used) = panel.registrationWindow();
        vm.assertEq(used, 3, "three in this window");
        vm.assertEq(uint256(_registration(ids[3])), uint256(TrainingBase.Registration.Deferred), "deferred");
        vm.assertEq(registry.modelCount(), 3, "three registered");
        vm.expectRevert(abi.encodeWithSelector(TrainingBase.RegistrationCapReached.selector, windowStart + 1 days));
        panel.retryRegistration(ids[3]);
        vm.warp(windowStart + 1 days);
        vm.prank(spares[0]);
        panel.retryRegistration(ids[3]);
        vm.assertEq(uint256(_registration(ids[3])), uint256(TrainingBase.Registration.Registered), "registered");
        vm.assertEq(uint256(_task(ids[3]).modelId), 4, "the fourth model");
        vm.assertTrue(block.timestamp > start, "a later window");
        vm.expectRevert(
            abi.encodeWithSelector(TrainingBase.NotRetryable.selector, ids[3], TrainingBase.Registration.Registered)
        );
        panel.retryRegistration(ids[3]);
    }

    /// The registry is full (every 32-bit id used): the accepted task settles (trainer paid, stakes free),
    /// the failure is recorded with the registry's own error, and the window's slot is given back.
    function test_item7_a_full_registry_never_locks_escrow_or_stakes() public {
        uint256 id = _acceptedTask(REWARD, MODEL);
        vm.store(address(registry), bytes32(uint256(1)), bytes32(uint256(type(uint32).max))); // modelCount
        uint256 before = token.balanceOf(trainers[0]);
        _finalize(id);
        _assertSettled(id);
        vm.assertEq(token.balanceOf(trainers[0]) - before, 80 ether, "the trainer is paid");
        vm.assertEq(uint256(_registration(id)), uint256(TrainingBase.Registration.Failed), "recorded");
        (, uint256 used) = panel.registrationWindow();
        vm.assertEq(used, 0, "the failed attempt does not count");
        vm.expectRevert(abi.encodeWithSelector(ModelRegistry.RegistryFull.selector, uint256(type(uint32).max)));
        panel.retryRegistration(id);
    }

    /// The registrar role is revoked: same; once granted again, a retry registers the model.
    function test_item7_a_refusing_registry_is_retried_once_it_accepts() public {
        uint256 id = _acceptedTask(REWARD, MODEL);
        bytes32 registrar = registry.REGISTRAR_ROLE();
        vm.prank(ADMIN);
        registry.revokeRole(registrar, address(tasks));
        _finalize(id);
        _assertSettled(id);
        vm.assertEq(uint256(_registration(id)), uint256(TrainingBase.Registration.Failed), "recorded");
        vm.expectRevert(abi.encodeWithSelector(ModelRegistry.NotRegistrar.selector, address(tasks)));
        panel.retryRegistration(id);
        vm.prank(ADMIN);
        registry.grantRole(registrar, address(tasks));
        panel.retryRegistration(id);
        vm.assertEq(uint256(_registration(id)), uint256(TrainingBase.Registration.Registered), "registered");
        vm.assertEq(registry.getModel(_task(id).modelId).cid, MODEL, "the accepted model");
        (uint256 first, uint256 waiting) = panel.registrationQueue();
        vm.assertEq(first, 0, "the queue is empty");
        vm.assertEq(waiting, 0, "nobody waits");
    }

    /// A caller cannot make the registration fail by sending too little gas: at every gas limit the
    /// settlement either reverts as a whole or registers the model.
    function test_item7_a_starved_registration_reverts_the_whole_settlement() public {
        uint256 id = _acceptedTask(REWARD, MODEL);
        bool settled;
        for (uint256 gasLimit = 150_000; gasLimit <= 1_500_000; gasLimit += 25_000) {
            uint256 snap = vm.snapshotState();
            (bool ok,) = address(tasks).call{gas: gasLimit}(abi.encodeCall(panel.finalizeTask, (id)));
            if (ok) {
                settled = true;
                vm.assertEq(uint256(_registration(id)), uint256(TrainingBase.Registration.Registered), "registered");
            } else {
                vm.assertEq(uint256(_task(id).status), uint256(TrainingBase.Status.Open), "all or nothing");
            }
            vm.revertToState(snap);
        }
        vm.assertTrue(settled, "enough gas settles");
    }
}
