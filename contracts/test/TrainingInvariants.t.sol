// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {EMLToken} from "../src/EMLToken.sol";
import {ModelRegistry} from "../src/ModelRegistry.sol";
import {TrainingBase} from "../src/TrainingBase.sol";
import {TrainingTasks} from "../src/TrainingTasks.sol";
import {TrainingValidation} from "../src/TrainingValidation.sol";
import {vm} from "./Base.sol";
import {TrainingHandler} from "./TrainingHandler.sol";

contract TrainingInvariantsTest {
    TrainingHandler internal handler;
    TrainingTasks internal tasks;
    EMLToken internal token;
    ModelRegistry internal registry;
    uint256 internal supply;

    function setUp() public {
        handler = new TrainingHandler();
        (tasks, token, registry) = handler.system();
        supply = token.totalSupply();
    }

    function targetContracts() public view returns (address[] memory targets) {
        targets = new address[](1);
        targets[0] = address(handler);
    }

    struct FuzzSelector {
        address addr;
        bytes4[] selectors;
    }

    /// @dev The handler's actions weighted like a task's life (each listed as many times as its weight),
    /// so runs carry tasks through to their ends rather than spending the calls on time and stakes.
    function targetSelectors() public view returns (FuzzSelector[] memory targets) {
        bytes4[16] memory actions = [
            TrainingHandler.create.selector,
            TrainingHandler.commit.selector,
            TrainingHandler.revealSubmission.selector,
            TrainingHandler.revealTest.selector,
            TrainingHandler.draw.selector,
            TrainingHandler.commitVotes.selector,
            TrainingHandler.revealVotes.selector,
            TrainingHandler.replaceNoShows.selector,
            TrainingHandler.finalize.selector,
            TrainingHandler.retryRegistration.selector,
            TrainingHandler.stake.selector,
            TrainingHandler.leave.selector,
            TrainingHandler.setActive.selector,
            TrainingHandler.burn.selector,
            TrainingHandler.wait.selector,
            TrainingHandler.advance.selector
        ];
        uint8[16] memory weights = [2, 8, 7, 3, 3, 6, 6, 2, 4, 1, 1, 1, 1, 1, 3, 1];
        bytes4[] memory list = new bytes4[](50);
        uint256 n;
        for (uint256 i; i < 16; ++i) {
            for (uint256 w; w < weights[i]; ++w) {
                list[n++] = actions[i];
            }
        }
        targets = new FuzzSelector[](1);
        targets[0] = FuzzSelector(address(handler), list);
    }

    /// @dev Every EML the market holds is a stake (bonds are locked stake), an open escrow or a penalty
    /// waiting to be burned; the supply shrinks by exactly what was burned.
    /// forge-config: default.invariant.runs = 32
    /// forge-config: default.invariant.depth = 250
    /// forge-config: default.invariant.fail-on-revert = true
    function invariant_escrow_stakes_and_bonds_are_conserved() public view {
        address[] memory all = handler.stakers();
        uint256 held = tasks.pendingBurn();
        for (uint256 i; i < all.length; ++i) {
            held += tasks.stakeOf(all[i], TrainingBase.Role.Trainer).amount;
            held += tasks.stakeOf(all[i], TrainingBase.Role.Validator).amount;
        }
        uint256[] memory ids = handler.taskIds();
        for (uint256 i; i < ids.length; ++i) {
            TrainingBase.Task memory t = TrainingValidation(address(tasks)).getTask(ids[i]);
            if (t.status == TrainingBase.Status.Open) held += t.reward;
        }
        vm.assertEq(token.balanceOf(address(tasks)), held, "held = stakes + open escrows + penalties");
        vm.assertEq(token.totalSupply() + handler.burned(), supply, "only burns shrink the supply");
    }

    /// @dev A trainer's locked stake is exactly the bonds of its submissions to open tasks; a
    /// validator's open work is exactly the open tasks it holds seats on, and its locked stake exactly
    /// what those seats lock.
    /// forge-config: default.invariant.runs = 32
    /// forge-config: default.invariant.depth = 250
    /// forge-config: default.invariant.fail-on-revert = true
    function invariant_bonds_and_seats_match_the_open_work() public view {
        address[] memory all = handler.stakers();
        uint256[] memory ids = handler.taskIds();
        for (uint256 a; a < all.length; ++a) {
            uint256 bonds;
            uint256 submissions;
            uint256 seats;
            uint256 seatLocks;
            for (uint256 i; i < ids.length; ++i) {
                TrainingBase.Task memory t = TrainingValidation(address(tasks)).getTask(ids[i]);
                if (t.status != TrainingBase.Status.Open) continue;
                if (tasks.submissionOf(ids[i], all[a]) != 0) {
                    bonds += t.rules.bond;
                    ++submissions;
                }
                TrainingBase.Member memory m = TrainingValidation(address(tasks)).memberOf(ids[i], all[a]);
                if (m.seat != 0) ++seats;
                seatLocks += m.locked;
            }
            TrainingBase.Stake memory trainer = tasks.stakeOf(all[a], TrainingBase.Role.Trainer);
            vm.assertEq(trainer.locked, bonds, "locked = open bonds");
            vm.assertTrue(trainer.locked <= trainer.amount, "bonds within the stake");
            vm.assertEq(trainer.openWork, submissions, "trainer work");
            TrainingBase.Stake memory validator = tasks.stakeOf(all[a], TrainingBase.Role.Validator);
            vm.assertEq(validator.openWork, seats, "validator work");
            vm.assertEq(validator.locked, seatLocks, "locked = the open seats' locks");
            vm.assertTrue(validator.locked <= validator.amount, "seat locks within the stake");
        }
    }

    /// @dev Each task is settled once; an accepted one names a revealed submission a majority passed, and
    /// is registered at most once, as that submission.
    /// forge-config: default.invariant.runs = 32
    /// forge-config: default.invariant.depth = 250
    /// forge-config: default.invariant.fail-on-revert = true
    function invariant_a_task_is_accepted_at_most_once() public view {
        uint256[] memory ids = handler.taskIds();
        uint256 registered;
        for (uint256 i; i < ids.length; ++i) {
            TrainingBase.Task memory t = TrainingValidation(address(tasks)).getTask(ids[i]);
            uint256 settled = handler.settlements(ids[i]);
            vm.assertEq(settled, t.status == TrainingBase.Status.Open ? 0 : 1, "settled exactly once");
            if (t.status != TrainingBase.Status.Accepted) {
                vm.assertEq(uint256(t.accepted), 0, "no winner unless accepted");
                continue;
            }
            TrainingBase.Submission memory s = tasks.getSubmission(ids[i], t.accepted - 1);
            vm.assertTrue(s.revealed, "revealed");
            vm.assertTrue(s.score >= t.minScore && s.score > 0, "passed");
            if (t.registration == TrainingBase.Registration.Registered) {
                ++registered;
                vm.assertEq(registry.getModel(t.modelId).artifactSha256, s.artifactSha256, "the winner's model");
            }
        }
        vm.assertEq(registry.modelCount(), registered, "one registration per registered task");
    }

    /// forge-config: default.invariant.runs = 32
    /// forge-config: default.invariant.depth = 250
    /// forge-config: default.invariant.fail-on-revert = true
    function invariant_no_slash_without_a_clear_majority() public view {
        vm.assertEq(handler.unexplainedSlashes(), 0, "every lost stake is explained, every owed cut taken");
    }
}

/// @dev The handler, driven by a fixed pseudo-random sequence, reaches every way a task can end and
/// real slashes, so the invariants above are not checked on runs that never settle anything.
contract TrainingHandlerReachTest {
    function test_the_handler_reaches_every_outcome() public {
        TrainingHandler h = new TrainingHandler();
        uint256 r = 1;
        for (uint256 step; step < 6_000; ++step) {
            r = uint256(keccak256(abi.encode(r)));
            uint256 a = r % 100;
            uint256 x = r >> 8;
            if (a < 2) h.create(uint8(x), uint32(x >> 8), uint16(x >> 40), uint16(x >> 56));
            else if (a < 20 && a >= 2) h.commit(x, uint8(x >> 64), uint8(x >> 72), uint32(x >> 80));
            else if (a < 34) h.revealSubmission(x, uint8(x >> 64));
            else if (a < 40) h.revealTest(x);
            else if (a < 46) h.draw(x);
            else if (a < 62) h.commitVotes(x, uint32(x >> 64));
            else if (a < 76) h.revealVotes(x);
            else if (a < 79) h.replaceNoShows(x);
            else if (a < 85) h.finalize(x);
            else if (a < 86) h.retryRegistration(x);
            else if (a < 88) h.stake(uint8(x), uint8(x >> 8), uint96(x >> 16));
            else if (a < 89) h.setActive(uint8(x), x % 3 != 0);
            else if (a < 90) h.burn();
            else h.wait(uint32(x), uint8(x >> 32));
        }
        vm.assertTrue(h.settledCount() >= 20, "settles tasks");
        TrainingBase.Status[6] memory ends = [
            TrainingBase.Status.Accepted,
            TrainingBase.Status.Rejected,
            TrainingBase.Status.Unusable,
            TrainingBase.Status.Abandoned,
            TrainingBase.Status.Empty,
            TrainingBase.Status.Undecided
        ];
        for (uint256 i; i < ends.length; ++i) {
            vm.assertTrue(h.outcomes(ends[i]) > 0, string.concat("reaches outcome ", vm.toString(uint256(ends[i]))));
        }
        vm.assertTrue(h.stakesLost() > 0, "slashes happen");
        vm.assertEq(h.unexplainedSlashes(), 0, "all explained");
    }
}
