// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {EMLToken} from "../src/EMLToken.sol";
import {ModelRegistry} from "../src/ModelRegistry.sol";
import {TrainingTasks} from "../src/TrainingTasks.sol";
import {vm, EthMLFixture} from "./Base.sol";

/// @dev The oracle's system plus TrainingTasks (holding the registry's registrar role), a requester, three trainers and
/// four validators, all funded and staked.
abstract contract TrainingFixture is EthMLFixture {
    TrainingTasks internal tasks;
    address[3] internal trainers = [address(0x7001), address(0x7002), address(0x7003)];
    address[4] internal validators = [address(0x8001), address(0x8002), address(0x8003), address(0x8004)];
    uint256 internal constant STAKE = 10 ether;
    uint256 internal constant REWARD = 100 ether;
    string internal constant TEST_CID = "bafkreitestsetcid";
    bytes32 internal constant SALT = keccak256("salt");

    function _setUpTraining() internal {
        _deploy(1, 1);
        tasks = new TrainingTasks(token, registry, ADMIN, _trainingParams());
        bytes32 role = registry.REGISTRAR_ROLE();
        vm.prank(ADMIN);
        registry.grantRole(role, address(tasks));
        vm.prank(USER);
        token.approve(address(tasks), type(uint256).max);
        for (uint256 i = 0; i < 3; ++i) {
            _fundAndStake(trainers[i], TrainingTasks.Role.Trainer);
        }
        for (uint256 i = 0; i < 4; ++i) {
            _fundAndStake(validators[i], TrainingTasks.Role.Validator);
        }
    }

    function _trainingParams() internal pure returns (TrainingTasks.Parameters memory) {
        return TrainingTasks.Parameters({
            minTrainerStake: uint128(STAKE),
            minValidatorStake: uint128(STAKE),
            unstakeDelay: 1 days,
            validatorShareBps: 2_000,
            slashBps: 1_000,
            forfeitBps: 2_000,
            scoreTolerance: 20_000
        });
    }

    function _fundAndStake(address who, TrainingTasks.Role role) internal {
        vm.prank(USER);
        token.transfer(who, STAKE);
        vm.prank(who);
        token.approve(address(tasks), type(uint256).max);
        vm.prank(who);
        tasks.stake(role, STAKE);
    }

    function _createTask(uint256 validations, uint256 minScore) internal returns (uint256) {
        vm.prank(USER);
        return tasks.createTask(
            "bafkreidataset",
            "bafkreispec",
            keccak256(abi.encode(TEST_CID, SALT)),
            REWARD,
            validations,
            minScore,
            block.timestamp + 1 days,
            block.timestamp + 2 days,
            TrainingTasks.ModelShape(ModelRegistry.ModelKind.Classification, 0, 13)
        );
    }

    function _submit(uint256 taskId, uint256 trainer, uint256 claimed) internal returns (uint256) {
        vm.prank(trainers[trainer]);
        return tasks.submitModel(taskId, "bafkreimodel", keccak256(abi.encode(trainer)), claimed);
    }

    function _reveal(uint256 taskId) internal {
        vm.warp(block.timestamp + 1 days + 1);
        vm.prank(USER);
        tasks.revealTestSet(taskId, TEST_CID, SALT);
    }

    function _vote(uint256 taskId, uint256 submissionId, uint256 validator, uint256 score) internal {
        vm.prank(validators[validator]);
        tasks.validate(taskId, submissionId, score);
    }
}

contract TrainingTasksTest is TrainingFixture {
    function setUp() public {
        _setUpTraining();
    }

    function test_honest_model_is_accepted_paid_and_registered() public {
        uint256 id = _createTask(3, 800_000);
        uint256 honest = _submit(id, 0, 950_000);
        uint256 inflated = _submit(id, 1, 990_000); // claims a score it did not reach
        _reveal(id);
        for (uint256 v = 0; v < 3; ++v) {
            _vote(id, honest, v, 950_000);
            _vote(id, inflated, v, 700_000);
        }
        uint256 modelsBefore = registry.modelCount();
        uint256 trainerBefore = token.balanceOf(trainers[0]);
        tasks.finalizeTask(id);
        TrainingTasks.Task memory t = tasks.getTask(id);
        vm.assertEq(uint256(t.status), uint256(TrainingTasks.TaskStatus.Accepted), "accepted");
        vm.assertEq(uint256(t.accepted), honest + 1, "the honest submission");
        vm.assertEq(registry.modelCount(), modelsBefore + 1, "registered");
        vm.assertEq(uint256(t.modelId), modelsBefore + 1, "model id recorded");
        ModelRegistry.Model memory m = registry.getModel(t.modelId);
        vm.assertEq(m.cid, "bafkreimodel", "model cid");
        vm.assertEq(m.artifactSha256, keccak256(abi.encode(uint256(0))), "artifact sha256");
        vm.assertEq(uint256(m.featureCount), 13, "feature count from the spec");
        vm.assertEq(token.balanceOf(trainers[0]) - trainerBefore, 80 ether, "trainer: reward less validator share");
        for (uint256 v = 0; v < 3; ++v) {
            vm.assertTrue(token.balanceOf(validators[v]) >= 6.66 ether, "validators share 20 EML");
        }
        vm.assertEq(token.balanceOf(address(tasks)), 7 * STAKE, "escrow paid out, stakes remain");
        vm.prank(USER);
        vm.expectRevert(abi.encodeWithSelector(TrainingTasks.TaskNotOpen.selector, id));
        tasks.finalizeTask(id);
    }

    function test_a_validator_far_from_the_median_is_slashed() public {
        uint256 id = _createTask(3, 800_000);
        uint256 honest = _submit(id, 0, 950_000);
        uint256 inflated = _submit(id, 1, 990_000);
        _reveal(id);
        for (uint256 v = 0; v < 3; ++v) {
            _vote(id, honest, v, 950_000);
        }
        // Validator 2 colludes with the inflating trainer.
        _vote(id, inflated, 0, 700_000);
        _vote(id, inflated, 1, 700_000);
        _vote(id, inflated, 2, 990_000);
        tasks.finalizeTask(id);
        vm.assertEq(uint256(tasks.stakeOf(validators[2], TrainingTasks.Role.Validator).amount), 9 ether, "10% slashed");
        // The slashed 1 EML goes to the honest validators of the accepted submission (all three, here).
        uint256 paid = token.balanceOf(validators[0]) + token.balanceOf(validators[1]) + token.balanceOf(validators[2]);
        vm.assertEq(paid, 21 ether, "20 EML share + 1 EML slashed");
        vm.assertEq(token.balanceOf(address(tasks)), 7 * STAKE - 1 ether, "conservation");
    }

    function test_no_model_good_enough_refunds_the_requester() public {
        uint256 id = _createTask(3, 900_000);
        uint256 s = _submit(id, 0, 950_000);
        _reveal(id);
        for (uint256 v = 0; v < 3; ++v) {
            _vote(id, s, v, 850_000);
        }
        uint256 before = token.balanceOf(USER);
        tasks.finalizeTask(id);
        vm.assertEq(uint256(tasks.getTask(id).status), uint256(TrainingTasks.TaskStatus.Failed), "failed");
        vm.assertEq(token.balanceOf(USER) - before, REWARD, "escrow back");
    }

    function test_requester_who_never_reveals_forfeits_to_the_trainers() public {
        uint256 id = _createTask(3, 800_000);
        _submit(id, 0, 950_000);
        _submit(id, 1, 950_000);
        vm.warp(block.timestamp + 1 days + 1);
        vm.expectRevert(abi.encodeWithSelector(TrainingTasks.NotFinalizable.selector, id));
        tasks.finalizeTask(id);
        vm.warp(block.timestamp + 1 days);
        uint256 before = token.balanceOf(USER);
        tasks.finalizeTask(id);
        vm.assertEq(token.balanceOf(trainers[0]), 10 ether, "20% of 100 EML shared by two trainers");
        vm.assertEq(token.balanceOf(trainers[1]), 10 ether, "second trainer");
        vm.assertEq(token.balanceOf(USER) - before, 80 ether, "the rest back");
    }

    function test_no_reward_without_a_quorum_of_validations() public {
        uint256 id = _createTask(3, 800_000);
        uint256 s = _submit(id, 0, 950_000);
        _reveal(id);
        _vote(id, s, 0, 950_000);
        _vote(id, s, 1, 950_000);
        vm.expectRevert(abi.encodeWithSelector(TrainingTasks.NotFinalizable.selector, id));
        tasks.finalizeTask(id);
        vm.warp(block.timestamp + 1 days);
        tasks.finalizeTask(id);
        vm.assertEq(uint256(tasks.getTask(id).status), uint256(TrainingTasks.TaskStatus.Failed), "two votes of three");
        vm.assertEq(token.balanceOf(trainers[0]), 0, "trainer unpaid");
    }

    function test_roles_come_from_stakes_and_stakes_wait_for_open_work() public {
        uint256 id = _createTask(1, 0);
        address outsider = address(0x9999);
        vm.prank(outsider);
        vm.expectRevert(abi.encodeWithSelector(TrainingTasks.NotStaked.selector, outsider, TrainingTasks.Role.Trainer));
        tasks.submitModel(id, "bafkreimodel", bytes32(0), 1);
        uint256 s = _submit(id, 0, 500_000);
        vm.prank(trainers[0]);
        tasks.requestUnstake(TrainingTasks.Role.Trainer);
        uint256 unlockAt = block.timestamp + 1 days;
        vm.warp(unlockAt + 1);
        vm.prank(trainers[0]);
        vm.expectRevert(
            abi.encodeWithSelector(
                TrainingTasks.StakeLocked.selector, trainers[0], TrainingTasks.Role.Trainer, unlockAt, 1
            )
        );
        tasks.withdrawStake(TrainingTasks.Role.Trainer);
        vm.prank(USER);
        tasks.revealTestSet(id, TEST_CID, SALT);
        _vote(id, s, 0, 500_000);
        tasks.finalizeTask(id);
        vm.prank(trainers[0]);
        tasks.withdrawStake(TrainingTasks.Role.Trainer);
        vm.assertTrue(token.balanceOf(trainers[0]) >= STAKE, "stake back once the work is settled");
        vm.assertTrue(!tasks.isStaked(trainers[0], TrainingTasks.Role.Trainer), "no longer a trainer");
    }

    function test_validation_rules() public {
        uint256 id = _createTask(2, 0);
        uint256 s = _submit(id, 0, 500_000);
        vm.prank(validators[0]);
        vm.expectRevert(abi.encodeWithSelector(TrainingTasks.TestSetNotRevealed.selector, id));
        tasks.validate(id, s, 1);
        vm.prank(USER);
        vm.expectRevert(abi.encodeWithSelector(TrainingTasks.RevealTooEarly.selector, id, block.timestamp + 1 days));
        tasks.revealTestSet(id, TEST_CID, SALT);
        vm.warp(block.timestamp + 1 days + 1);
        vm.prank(USER);
        vm.expectRevert(abi.encodeWithSelector(TrainingTasks.TestSetMismatch.selector, id));
        tasks.revealTestSet(id, "bafkreiother", SALT);
        vm.prank(trainers[1]);
        vm.expectRevert(abi.encodeWithSelector(TrainingTasks.SubmissionClosed.selector, id, block.timestamp - 1));
        tasks.submitModel(id, "bafkreimodel", bytes32(0), 1);
        vm.prank(USER);
        tasks.revealTestSet(id, TEST_CID, SALT);
        _vote(id, s, 0, 400_000);
        vm.prank(validators[0]);
        vm.expectRevert(abi.encodeWithSelector(TrainingTasks.AlreadyVoted.selector, id, s, validators[0]));
        tasks.validate(id, s, 400_000);
        vm.prank(validators[1]);
        vm.expectRevert(abi.encodeWithSelector(TrainingTasks.ScoreOutOfRange.selector, 1_000_001));
        tasks.validate(id, s, 1_000_001);
        _vote(id, s, 1, 400_000);
        vm.prank(validators[2]);
        vm.expectRevert(abi.encodeWithSelector(TrainingTasks.EnoughVotes.selector, id, s));
        tasks.validate(id, s, 400_000);
    }

    function test_a_trainer_never_validates_its_own_submission() public {
        uint256 id = _createTask(1, 0);
        address both = address(0x7777);
        _fundAndStake(both, TrainingTasks.Role.Trainer);
        _fundAndStake(both, TrainingTasks.Role.Validator);
        vm.prank(both);
        uint256 s = tasks.submitModel(id, "bafkreimodel", bytes32(0), 1);
        _reveal(id);
        vm.prank(both);
        vm.expectRevert(abi.encodeWithSelector(TrainingTasks.OwnSubmission.selector, id, s));
        tasks.validate(id, s, 1);
    }

    function test_task_fields_are_checked() public {
        bytes32 c = keccak256("c");
        TrainingTasks.ModelShape memory shape = TrainingTasks.ModelShape(ModelRegistry.ModelKind.Regression, 2, 10);
        uint256 t0 = block.timestamp;
        vm.startPrank(USER);
        vm.expectRevert(abi.encodeWithSelector(TrainingTasks.InvalidTask.selector, "datasetCid must be 1..64 bytes"));
        tasks.createTask("", "s", c, 1, 1, 0, t0 + 1, t0 + 2, shape);
        vm.expectRevert(abi.encodeWithSelector(TrainingTasks.InvalidTask.selector, "testSetCommitment is zero"));
        tasks.createTask("d", "s", bytes32(0), 1, 1, 0, t0 + 1, t0 + 2, shape);
        vm.expectRevert(abi.encodeWithSelector(TrainingTasks.InvalidTask.selector, "reward outside 1..2^96-1"));
        tasks.createTask("d", "s", c, 0, 1, 0, t0 + 1, t0 + 2, shape);
        vm.expectRevert(abi.encodeWithSelector(TrainingTasks.InvalidTask.selector, "validationsRequired outside 1..9"));
        tasks.createTask("d", "s", c, 1, 10, 0, t0 + 1, t0 + 2, shape);
        vm.expectRevert(abi.encodeWithSelector(TrainingTasks.InvalidTask.selector, "minScore above 1.0"));
        tasks.createTask("d", "s", c, 1, 1, 1_000_001, t0 + 1, t0 + 2, shape);
        vm.expectRevert(
            abi.encodeWithSelector(TrainingTasks.InvalidTask.selector, "submitDeadline not in the next 365 days")
        );
        tasks.createTask("d", "s", c, 1, 1, 0, t0, t0 + 2, shape);
        vm.expectRevert(
            abi.encodeWithSelector(
                TrainingTasks.InvalidTask.selector, "validationDeadline not within 365 days after submitDeadline"
            )
        );
        tasks.createTask("d", "s", c, 1, 1, 0, t0 + 2, t0 + 2, shape);
        vm.stopPrank();
    }

    function testFuzz_settlement_conserves_tokens(uint32[3] memory honestScores, uint32[3] memory otherScores) public {
        uint256 id = _createTask(3, 500_000);
        _submit(id, 0, 900_000);
        _submit(id, 1, 900_000);
        _reveal(id);
        for (uint256 v = 0; v < 3; ++v) {
            _vote(id, 0, v, honestScores[v] % 1_000_001);
            _vote(id, 1, v, otherScores[v] % 1_000_001);
        }
        uint256 held = token.balanceOf(address(tasks));
        tasks.finalizeTask(id);
        uint256 stakes;
        for (uint256 v = 0; v < 4; ++v) {
            stakes += tasks.stakeOf(validators[v], TrainingTasks.Role.Validator).amount;
        }
        for (uint256 i = 0; i < 3; ++i) {
            stakes += tasks.stakeOf(trainers[i], TrainingTasks.Role.Trainer).amount;
        }
        vm.assertEq(token.balanceOf(address(tasks)), stakes, "after settlement the contract holds the stakes alone");
        vm.assertTrue(held - token.balanceOf(address(tasks)) >= REWARD, "the whole escrow left");
    }
}

/// @dev Random staking, task creation, submissions, reveals, votes, settlements and time passing.
contract TrainingHandler is TrainingFixture {
    uint256[] public taskIds;
    uint256 public accepted;

    constructor() {
        _setUpTraining();
    }

    function create(uint8 validations, uint32 minScore) external {
        taskIds.push(_createTask(uint256(validations) % 3 + 1, uint256(minScore) % 1_000_001));
    }

    function submit(uint256 seed, uint256 trainer, uint32 claimed) external {
        if (taskIds.length == 0) return;
        uint256 id = taskIds[seed % taskIds.length];
        vm.prank(trainers[trainer % 3]);
        try tasks.submitModel(id, "bafkreimodel", bytes32(seed), uint256(claimed) % 1_000_001) {} catch {}
    }

    function reveal(uint256 seed) external {
        if (taskIds.length == 0) return;
        vm.prank(USER);
        try tasks.revealTestSet(taskIds[seed % taskIds.length], TEST_CID, SALT) {} catch {}
    }

    function vote(uint256 seed, uint256 submission, uint256 validator, uint32 score) external {
        if (taskIds.length == 0) return;
        vm.prank(validators[validator % 4]);
        try tasks.validate(taskIds[seed % taskIds.length], submission % 3, uint256(score) % 1_000_001) {} catch {}
    }

    function settle(uint256 seed) external {
        if (taskIds.length == 0) return;
        uint256 id = taskIds[seed % taskIds.length];
        try tasks.finalizeTask(id) {
            if (tasks.getTask(id).status == TrainingTasks.TaskStatus.Accepted) ++accepted;
        } catch {}
    }

    function wait(uint32 secondsToWait) external {
        vm.warp(block.timestamp + uint256(secondsToWait) % 2 days);
    }

    function taskCountHeld() external view returns (uint256) {
        return taskIds.length;
    }

    function system() external view returns (TrainingTasks, EMLToken) {
        return (tasks, token);
    }

    function stakers() external view returns (address[7] memory all) {
        for (uint256 i = 0; i < 3; ++i) {
            all[i] = trainers[i];
        }
        for (uint256 i = 0; i < 4; ++i) {
            all[3 + i] = validators[i];
        }
    }
}

contract TrainingInvariantsTest {
    TrainingHandler internal handler;
    TrainingTasks internal tasks;
    EMLToken internal token;

    function setUp() public {
        handler = new TrainingHandler();
        (tasks, token) = handler.system();
    }

    function targetContracts() public view returns (address[] memory targets) {
        targets = new address[](1);
        targets[0] = address(handler);
    }

    /// @dev Escrowed = paid + refunded + held: the contract holds exactly the stakes and open escrows.
    function invariant_escrow_and_stakes_are_conserved() public view {
        address[7] memory all = handler.stakers();
        uint256 held;
        for (uint256 i = 0; i < 7; ++i) {
            held += tasks.stakeOf(all[i], i < 3 ? TrainingTasks.Role.Trainer : TrainingTasks.Role.Validator).amount;
        }
        uint256 n = tasks.taskCount();
        for (uint256 id = 1; id <= n; ++id) {
            held += tasks.getTask(id).escrow;
        }
        vm.assertEq(token.balanceOf(address(tasks)), held, "conservation");
    }

    /// @dev A task is accepted at most once, and only a submission with all its validations is.
    function invariant_accepted_once_and_only_with_quorum() public view {
        uint256 n = tasks.taskCount();
        uint256 acceptedTasks;
        for (uint256 id = 1; id <= n; ++id) {
            TrainingTasks.Task memory t = tasks.getTask(id);
            if (t.status != TrainingTasks.TaskStatus.Accepted) {
                vm.assertEq(uint256(t.accepted), 0, "no accepted submission unless accepted");
                continue;
            }
            ++acceptedTasks;
            TrainingTasks.Submission memory s = tasks.getSubmission(id, t.accepted - 1);
            vm.assertEq(uint256(s.votes), uint256(t.validationsRequired), "quorum");
            vm.assertTrue(s.median >= t.minScore, "passed");
        }
        vm.assertEq(acceptedTasks, handler.accepted(), "accepted at most once");
    }
}

/// @dev EIP-2612 permits on EML, and tasks created by a relayer from a requester's permit.
contract PermitTest is TrainingFixture {
    uint256 internal constant OWNER_KEY = 0xA11CE;
    address internal owner;
    address internal constant RELAYER = address(0x9001);
    bytes32 internal constant PERMIT_TYPEHASH =
        keccak256("Permit(address owner,address spender,uint256 value,uint256 nonce,uint256 deadline)");

    function setUp() public {
        _setUpTraining();
        owner = vm.addr(OWNER_KEY);
        vm.prank(USER);
        token.transfer(owner, 3 * REWARD);
        bytes32 role = tasks.RELAYER_ROLE();
        vm.prank(ADMIN);
        tasks.grantRole(role, RELAYER);
    }

    function _sign(uint256 key, address spender, uint256 value, uint256 nonce, uint256 deadline)
        internal
        view
        returns (TrainingTasks.PermitSignature memory p)
    {
        bytes32 structHash = keccak256(abi.encode(PERMIT_TYPEHASH, vm.addr(key), spender, value, nonce, deadline));
        bytes32 digest = keccak256(abi.encodePacked(hex"1901", token.DOMAIN_SEPARATOR(), structHash));
        (p.v, p.r, p.s) = vm.sign(key, digest);
        p.owner = vm.addr(key);
        p.deadline = deadline;
    }

    function _relay(address caller, TrainingTasks.PermitSignature memory p) internal returns (uint256) {
        vm.prank(caller);
        return tasks.createTaskWithPermit(
            "bafkreidataset",
            "bafkreispec",
            keccak256(abi.encode(TEST_CID, SALT)),
            REWARD,
            3,
            800_000,
            block.timestamp + 1 days,
            block.timestamp + 2 days,
            TrainingTasks.ModelShape(ModelRegistry.ModelKind.Classification, 0, 13),
            p
        );
    }

    function test_domain_is_the_standard_eip712_domain() public view {
        bytes32 expected = keccak256(
            abi.encode(
                keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"),
                keccak256("EthML Token"),
                keccak256("1"),
                block.chainid,
                address(token)
            )
        );
        vm.assertEq(token.DOMAIN_SEPARATOR(), expected, "domain separator");
    }

    function test_permit_sets_the_allowance_and_spends_the_nonce() public {
        TrainingTasks.PermitSignature memory p = _sign(OWNER_KEY, address(tasks), 5 ether, 0, block.timestamp + 1 hours);
        token.permit(owner, address(tasks), 5 ether, p.deadline, p.v, p.r, p.s);
        vm.assertEq(token.allowance(owner, address(tasks)), 5 ether, "allowance");
        vm.assertEq(token.nonces(owner), 1, "nonce used");
        // The same signature again: the nonce moved on, so it recovers another signer.
        vm.expectPartialRevert(EMLPermitErrors.ERC2612InvalidSigner.selector);
        token.permit(owner, address(tasks), 5 ether, p.deadline, p.v, p.r, p.s);
    }

    function test_permit_refuses_expired_forged_and_malleable_signatures() public {
        uint256 deadline = block.timestamp + 1 hours;
        TrainingTasks.PermitSignature memory p = _sign(OWNER_KEY, address(tasks), 5 ether, 0, deadline);
        vm.expectPartialRevert(EMLPermitErrors.ERC2612InvalidSigner.selector);
        token.permit(owner, address(tasks), 6 ether, deadline, p.v, p.r, p.s); // another value
        TrainingTasks.PermitSignature memory other = _sign(0xB0B, address(tasks), 5 ether, 0, deadline);
        vm.expectPartialRevert(EMLPermitErrors.ERC2612InvalidSigner.selector);
        token.permit(owner, address(tasks), 5 ether, deadline, other.v, other.r, other.s); // another signer
        bytes32 highS = bytes32(0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141 - uint256(p.s));
        vm.expectPartialRevert(EMLPermitErrors.ERC2612InvalidSigner.selector);
        token.permit(owner, address(tasks), 5 ether, deadline, p.v == 27 ? 28 : 27, p.r, highS); // the twin
        vm.warp(deadline + 1);
        vm.expectRevert(abi.encodeWithSelector(EMLPermitErrors.ERC2612ExpiredSignature.selector, deadline));
        token.permit(owner, address(tasks), 5 ether, deadline, p.v, p.r, p.s);
        vm.assertEq(token.allowance(owner, address(tasks)), 0, "nothing approved");
    }

    function test_a_relayer_creates_a_task_paid_by_the_permit_and_may_reveal() public {
        uint256 before = token.balanceOf(owner);
        uint256 id = _relay(RELAYER, _sign(OWNER_KEY, address(tasks), REWARD, 0, block.timestamp + 1 hours));
        TrainingTasks.Task memory t = tasks.getTask(id);
        vm.assertEq(t.requester, owner, "the signer is the requester");
        vm.assertEq(before - token.balanceOf(owner), REWARD, "escrow from the signer");
        vm.assertEq(tasks.relayerOf(id), RELAYER, "relayer recorded");
        vm.warp(block.timestamp + 1 days + 1);
        vm.prank(RELAYER);
        tasks.revealTestSet(id, TEST_CID, SALT);
        vm.assertTrue(tasks.getTask(id).revealed, "revealed by the relayer");
    }

    function test_only_relayers_may_spend_a_permit_and_a_stranger_cannot_reveal() public {
        TrainingTasks.PermitSignature memory p = _sign(OWNER_KEY, address(tasks), REWARD, 0, block.timestamp + 1 hours);
        vm.expectPartialRevert(bytes4(keccak256("AccessControlUnauthorizedAccount(address,bytes32)")));
        _relay(address(0xBAD), p);
        uint256 id = _relay(RELAYER, p);
        vm.warp(block.timestamp + 1 days + 1);
        vm.prank(address(0xBAD));
        vm.expectRevert(abi.encodeWithSelector(TrainingTasks.NotRequester.selector, id, address(0xBAD)));
        tasks.revealTestSet(id, TEST_CID, SALT);
    }

    function test_a_front_run_permit_still_creates_the_task_and_a_bad_one_reverts() public {
        TrainingTasks.PermitSignature memory p = _sign(OWNER_KEY, address(tasks), REWARD, 0, block.timestamp + 1 hours);
        token.permit(owner, address(tasks), REWARD, p.deadline, p.v, p.r, p.s); // someone submits it first
        uint256 id = _relay(RELAYER, p);
        vm.assertEq(tasks.getTask(id).requester, owner, "created from the existing allowance");
        // A signature for a smaller value: the permit fails and so does the escrow transfer.
        TrainingTasks.PermitSignature memory small = _sign(OWNER_KEY, address(tasks), 1 ether, 1, block.timestamp + 1 hours);
        vm.expectRevert();
        _relay(RELAYER, small);
    }
}

/// @dev The permit errors, for their selectors.
interface EMLPermitErrors {
    error ERC2612ExpiredSignature(uint256 deadline);
    error ERC2612InvalidSigner(address signer, address owner);
}
