// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {TrainingBase} from "../src/TrainingBase.sol";
import {TrainingTasks} from "../src/TrainingTasks.sol";
import {TrainingValidation} from "../src/TrainingValidation.sol";
import {vm} from "./Base.sol";
import {TrainingFixture} from "./TrainingFixture.sol";

/// @dev Cheatcodes this file needs beyond Base.sol's Vm.
interface VmChain {
    function chainId(uint256 newChainId) external;
}

VmChain constant vmChain = VmChain(address(uint160(uint256(keccak256("hevm cheat code")))));

/// @dev Second outside review: relayers and signed terms, the admin, the registration cap, a model
/// copied across tasks, and the delegatecall split. A test named test_attack_* asserts the safe
/// behaviour and fails while the attack succeeds; the others show the contract resisting.
contract TrainingReviewAttacks2TermsTest is TrainingFixture {
    uint256 internal constant SIGNER_KEY = 0x5157;
    address internal constant RELAYER = address(0x9EE1);
    address internal signer;

    function setUp() public {
        _setUpTraining();
        signer = vm.addr(SIGNER_KEY);
        vm.prank(requester);
        token.transfer(signer, 10 * REWARD);
        vm.prank(signer);
        token.approve(address(tasks), type(uint256).max);
    }

    function _sign(bytes32 digest) internal pure returns (bytes memory) {
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(SIGNER_KEY, digest);
        return abi.encodePacked(r, s, v);
    }

    function _noPermit() internal pure returns (TrainingTasks.Permit memory p) {}

    // ---------------------------------------------------------------- relaying signed terms

    /// The requester signs terms under the rules of the day (20 % to validators, bonds of 10 %, its model
    /// registered). The rules change (an admin proposal lands through the timelock, as public as it is)
    /// and a relayer, holding the signature until its expiry, relays it afterwards: the task runs under
    /// rules the requester never signed, 50 % of its reward to validators, a bond equal to the reward
    /// that keeps trainers away, and no registration. Nothing in the signature binds the rules.
    function test_attack_a_relayer_holds_signed_terms_until_the_rules_change() public {
        TrainingTasks.Terms memory terms = _terms(3, 800_000);
        uint256 expiry = block.timestamp + 30 days;
        bytes memory sig = _sign(tasks.termsDigest(terms, signer, 0, expiry));
        TrainingBase.Parameters memory p = _params();
        p.validatorShareBps = 5_000;
        p.bondBps = 10_000;
        p.minRegistrationReward = 1_000 ether;
        vm.prank(ADMIN);
        tasks.setParameters(p);
        vm.warp(block.timestamp + 7 days);
        vm.prank(RELAYER);
        try tasks.createTaskFor(terms, signer, expiry, sig, _noPermit()) returns (uint256 id) {
            TrainingBase.Rules memory r = _task(id).rules;
            vm.assertEq(uint256(r.validatorShareBps), 2_000, "the validators' share the requester signed under");
            vm.assertEq(uint256(r.bond), 10 ether, "the bond it signed under");
            vm.assertTrue(r.registers, "the registration it signed under");
        } catch {
            // refused: terms signed under other rules cannot be relayed
        }
    }

    /// Signed terms replay nowhere: not on another chain (a fork), not on another TrainingTasks, not
    /// twice; they are good up to and including the second of their expiry.
    function test_signed_terms_replay_on_no_other_chain_contract_or_task() public {
        TrainingTasks.Terms memory terms = _terms(3, 800_000);
        uint256 expiry = block.timestamp + 1 hours;
        bytes memory sig = _sign(tasks.termsDigest(terms, signer, 0, expiry));
        TrainingTasks other = _newTasks(ADMIN);
        vm.prank(signer);
        token.approve(address(other), type(uint256).max);
        vm.prank(RELAYER);
        vm.expectRevert(abi.encodeWithSelector(TrainingBase.InvalidSignature.selector, signer));
        other.createTaskFor(terms, signer, expiry, sig, _noPermit());
        uint256 chain = block.chainid;
        vmChain.chainId(chain + 1);
        vm.prank(RELAYER);
        vm.expectRevert(abi.encodeWithSelector(TrainingBase.InvalidSignature.selector, signer));
        tasks.createTaskFor(terms, signer, expiry, sig, _noPermit());
        vmChain.chainId(chain);
        vm.warp(expiry);
        vm.prank(RELAYER);
        uint256 id = tasks.createTaskFor(terms, signer, expiry, sig, _noPermit());
        vm.assertEq(_task(id).requester, signer, "relayed in the last second");
        vm.prank(RELAYER);
        vm.expectRevert(abi.encodeWithSelector(TrainingBase.InvalidSignature.selector, signer));
        tasks.createTaskFor(terms, signer, expiry, sig, _noPermit());
        vm.assertEq(token.balanceOf(signer), 9 * REWARD, "paid once");
    }

    // ---------------------------------------------------------------- the registration cap

    /// @dev Tasks of one seat, created together and run in lockstep to the point where finalizeTask
    /// settles them as Accepted (so a whole batch fits in one registration window).
    function _acceptedBatch(uint256 n) internal returns (uint256[] memory ids) {
        ids = new uint256[](n);
        for (uint256 i; i < n; ++i) {
            ids[i] = _create(1, 800_000);
            _commit(ids[i], trainers[i % 4], MODEL, 950_000);
        }
        _toRevealWindow(ids[0]);
        for (uint256 i; i < n; ++i) {
            _reveal(ids[i], trainers[i % 4], MODEL, 950_000);
        }
        _toTestWindow(ids[0]);
        for (uint256 i; i < n; ++i) {
            _revealTest(ids[i]);
        }
        for (uint256 i; i < n; ++i) {
            _draw(ids[i], keccak256(abi.encode("batch", i)));
            _allVote(ids[i], false, _scores(950_000));
        }
    }

    /// An honest task is accepted after the day's three registrations are taken and is deferred. An
    /// attacker holds three deferred self-dealt tasks settled after it. When the next window opens the
    /// attacker retries its own first and takes every registration again; the honest task, deferred
    /// first, waits for as long as the attacker keeps a stock (each costs it the validators' part of the
    /// minimum registration reward: 2 EML at the defaults).
    function test_attack_a_stock_of_deferred_tasks_starves_an_older_deferred_one() public {
        uint256[] memory ids = _acceptedBatch(7);
        for (uint256 i; i < 7; ++i) {
            panel.finalizeTask(ids[i]); // 0-2 registered, 3 (honest) and 4-6 (attacker) deferred
        }
        uint256 honest = ids[3];
        vm.assertEq(
            uint256(_task(honest).registration), uint256(TrainingBase.Registration.Deferred), "deferred first"
        );
        (uint256 start,) = panel.registrationWindow();
        vm.warp(start + 1 days);
        for (uint256 i = 4; i < 7; ++i) {
            try panel.retryRegistration(ids[i]) {} catch {}
        }
        try panel.retryRegistration(honest) {} catch {}
        vm.assertEq(
            uint256(_task(honest).registration),
            uint256(TrainingBase.Registration.Registered),
            "deferred registrations are served in the order they were deferred"
        );
    }

    /// The admin sets the registration cap to 0 (or a registration period of 136 years once a window is
    /// full) while a task is open: its accepted model is never registered, although the requester paid
    /// for a task that registered under the rules it was created with. docs/training.md: the admin
    /// "cannot touch an open task".
    function test_attack_the_admin_stops_the_registration_of_an_open_task() public {
        uint256[] memory ids = _acceptedBatch(1);
        TrainingBase.Parameters memory p = _params();
        p.registrationsPerPeriod = 0;
        vm.prank(ADMIN);
        tasks.setParameters(p);
        panel.finalizeTask(ids[0]);
        vm.warp(block.timestamp + 2 days);
        try panel.retryRegistration(ids[0]) {} catch {}
        vm.assertEq(
            uint256(_task(ids[0]).registration),
            uint256(TrainingBase.Registration.Registered),
            "an open task registers under the rules it was created with"
        );
    }

    // ---------------------------------------------------------------- copying a model across tasks

    /// Two tasks of one spec overlap (the same requester posting twice, or two requesters of one popular
    /// dataset). The model revealed in task A is public while B still takes commitments: a copier
    /// commits it to B at once, before B's honest trainer has finished training, and its earlier
    /// commitment wins the tie. The commitment binds a submission to its trainer, not the model.
    function test_attack_a_model_revealed_in_one_task_is_copied_into_another() public {
        uint256 a = _create(3, 800_000);
        _commit(a, trainers[0], MODEL, 950_000);
        vm.warp(block.timestamp + 12 hours);
        uint256 b = _create(3, 800_000);
        _toRevealWindow(a);
        _reveal(a, trainers[0], MODEL, 950_000); // public now; B's commitments close in 12 hours
        address copier = trainers[2];
        _commit(b, copier, MODEL, 950_000);
        vm.warp(_task(b).submitDeadline - 60); // the honest trainer of B, done training
        _commit(b, trainers[1], "bafkreimodelforb", 950_000);
        _toRevealWindow(b);
        vm.prank(copier);
        try tasks.revealSubmission(b, MODEL, _sha(MODEL), 950_000, _salt(copier, b)) {} catch {}
        _reveal(b, trainers[1], "bafkreimodelforb", 950_000);
        _toTestWindow(b);
        _revealTest(b);
        _draw(b, keccak256("b"));
        _allVote(b, false, _scores(950_000, 950_000));
        panel.finalizeTask(b);
        vm.assertEq(
            tasks.getSubmission(b, _task(b).accepted - 1).trainer, trainers[1], "B's own trainer is paid, not a copier"
        );
    }

    // ---------------------------------------------------------------- the delegatecall split

    /// Every state-changing function of the validation half called at its own address finds no task,
    /// no seat, no role; the market's task is untouched. A selector neither half has reverts, and so
    /// does ETH sent to the market.
    function test_the_validation_half_called_directly_reaches_nothing() public {
        uint256 id = _create(3, 0);
        _submitAll(id, _one(trainers[0]), _cids(MODEL), _claims(950_000));
        uint256 drawBlock = _task(id).drawBlock;
        TrainingValidation direct = TrainingValidation(tasks.validation());
        vm.roll(drawBlock + 1);
        vm.expectRevert(abi.encodeWithSelector(TrainingBase.UnknownTask.selector, id));
        direct.drawPanel(id);
        // revealTestSet is TrainingTasks' own code now: the validation half has no such function.
        (bool found,) = address(direct).call(abi.encodeCall(tasks.revealTestSet, (id, TEST_CID, TEST_SALT)));
        vm.assertTrue(!found, "revealTestSet is not the validation half's");
        vm.expectRevert(abi.encodeWithSelector(TrainingBase.UnknownTask.selector, id));
        direct.commitScores(id, bytes32(0));
        vm.expectRevert(abi.encodeWithSelector(TrainingBase.UnknownTask.selector, id));
        direct.replaceNoShows(id);
        vm.expectRevert(abi.encodeWithSelector(TrainingBase.UnknownTask.selector, id));
        direct.revealScores(id, true, new uint32[](0), bytes32(0));
        vm.expectRevert(
            abi.encodeWithSelector(TrainingBase.NotRetryable.selector, id, TrainingBase.Registration.None)
        );
        direct.retryRegistration(id);
        // The validation half holds no role code at all (AccessControl is TrainingTasks' half only).
        bytes32 adminRole = tasks.DEFAULT_ADMIN_ROLE();
        vm.prank(spares[0]);
        (bool granted,) = address(direct).call(abi.encodeCall(tasks.grantRole, (adminRole, spares[0])));
        vm.assertTrue(!granted, "no grantRole on the validation half");
        vm.assertTrue(!tasks.hasRole(adminRole, spares[0]), "and none on the market");
        vm.assertEq(_task(id).drawBlock, drawBlock, "the market's task is untouched");
        (bool ok,) = address(tasks).call(abi.encodeWithSignature("sweep(address)", spares[0]));
        vm.assertTrue(!ok, "an unknown selector reverts");
        vm.deal(spares[0], 1 ether);
        vm.prank(spares[0]);
        (ok,) = address(tasks).call{value: 1 ether}("");
        vm.assertTrue(!ok, "no ETH is accepted");
    }
}
