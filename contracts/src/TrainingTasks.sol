// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Permit.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {Pausable} from "@openzeppelin/contracts/utils/Pausable.sol";
import {ReentrancyGuard} from "@openzeppelin/contracts/utils/ReentrancyGuard.sol";
import {ModelRegistry} from "./ModelRegistry.sol";

/// @title TrainingTasks: requesters post training tasks, staked trainers submit models, staked
/// validators score them on a test set that stays hidden until the submission deadline; the best model
/// whose median score passes is registered in the ModelRegistry and served by the miners.
/// @notice Rules, all enforced here (the admin can only pause new work and change parameters for future
/// tasks within hard caps; it can neither move escrow nor slash by hand):
/// - Roles are earned by staking EML: a trainer or validator stake of at least the minimum, not being
///   withdrawn. Unstaking waits `unstakeDelay` and is refused while the account has open work.
/// - A task escrows its reward. The requester commits to the test set (keccak256(abi.encode(testCid,
///   salt))) at creation and reveals it after the submission deadline.
/// - The median of a submission's `validationsRequired` scores decides; the best submission whose median
///   reaches `minScore` is accepted. Scores are in millionths (1,000,000 = 1.0).
/// - Accepted: the trainer gets the reward less the validator share; the validators whose score on the
///   accepted submission is within `scoreTolerance` of its median share the validator part.
///   Any validator further than that from a submission's median loses `slashBps` of its validator stake,
///   which goes to the honest validators of the accepted submission (or back to the requester when
///   nothing is accepted).
/// - Not accepted by the validation deadline: the requester gets the escrow back, less `forfeitBps` of it
///   shared by the trainers who submitted when the requester never revealed the test set.
contract TrainingTasks is AccessControl, Pausable, ReentrancyGuard {
    using SafeERC20 for IERC20;

    enum Role {
        Trainer,
        Validator
    }

    enum TaskStatus {
        None,
        Open,
        Accepted,
        Failed
    }

    struct Stake {
        uint128 amount;
        uint64 unlockAt;
        uint32 openWork;
    }

    /// @notice What the accepted model is registered as in the ModelRegistry (from the task's spec).
    struct ModelShape {
        ModelRegistry.ModelKind kind;
        uint8 decimals;
        uint16 featureCount;
    }

    struct Task {
        address requester;
        uint96 escrow;
        uint40 submitDeadline;
        uint40 validationDeadline;
        uint32 minScore;
        uint8 validationsRequired;
        uint8 submissionCount;
        TaskStatus status;
        bool revealed;
        uint8 accepted; // submission index + 1; 0 when none
        uint32 modelId;
        ModelShape shape;
        bytes32 testSetCommitment;
        string datasetCid;
        string specCid;
        string testCid;
    }

    struct Submission {
        address trainer;
        uint32 claimedScore;
        uint32 median;
        uint8 votes;
        bytes32 artifactSha256;
        string modelCid;
    }

    /// @notice A requester's EIP-2612 permit of the escrow to this contract, relayed by a RELAYER_ROLE account.
    struct PermitSignature {
        address owner;
        uint256 deadline;
        uint8 v;
        bytes32 r;
        bytes32 s;
    }

    struct Vote {
        address validator;
        uint32 score;
    }

    struct Parameters {
        uint128 minTrainerStake;
        uint128 minValidatorStake;
        uint64 unstakeDelay;
        uint16 validatorShareBps;
        uint16 slashBps;
        uint16 forfeitBps;
        uint32 scoreTolerance;
    }

    bytes32 public constant PAUSER_ROLE = keccak256("PAUSER_ROLE");
    /// @notice Accounts that create tasks for requesters from their signed permits (a coordinator's relayer).
    bytes32 public constant RELAYER_ROLE = keccak256("RELAYER_ROLE");
    uint32 public constant SCORE_SCALE = 1_000_000;
    uint256 public constant MAX_SUBMISSIONS = 8;
    uint256 public constant MAX_VALIDATIONS = 9;
    uint256 public constant MAX_CID_LENGTH = 64;
    uint256 public constant MAX_DURATION = 365 days;
    uint256 public constant MAX_SHARE_BPS = 5_000;

    ModelRegistry public immutable registry;
    IERC20 public immutable token;
    Parameters private _params;
    uint256 public taskCount;
    mapping(uint256 => Task) private _tasks;
    mapping(uint256 => Submission[]) private _submissions;
    mapping(uint256 => mapping(uint256 => Vote[])) private _votes;
    mapping(uint256 => mapping(address => bool)) public hasSubmitted;
    mapping(uint256 => mapping(uint256 => mapping(address => bool))) public hasVoted;
    mapping(address => mapping(Role => Stake)) private _stakes;
    /// @notice The relayer that created a task for its requester; it may reveal the test set for them.
    mapping(uint256 => address) public relayerOf;

    error InvalidParameters(string reason);
    error InvalidTask(string reason);
    error UnknownTask(uint256 taskId);
    error TaskNotOpen(uint256 taskId);
    error NotStaked(address account, Role role);
    error NothingStaked(address account, Role role);
    error UnstakeNotRequested(address account, Role role);
    error StakeLocked(address account, Role role, uint256 unlockAt, uint256 openWork);
    error SubmissionClosed(uint256 taskId, uint256 deadline);
    error AlreadySubmitted(uint256 taskId, address trainer);
    error TooManySubmissions(uint256 taskId);
    error NotRequester(uint256 taskId, address caller);
    error RevealTooEarly(uint256 taskId, uint256 submitDeadline);
    error ValidationClosed(uint256 taskId, uint256 deadline);
    error AlreadyRevealed(uint256 taskId);
    error TestSetMismatch(uint256 taskId);
    error TestSetNotRevealed(uint256 taskId);
    error UnknownSubmission(uint256 taskId, uint256 submissionId);
    error OwnSubmission(uint256 taskId, uint256 submissionId);
    error AlreadyVoted(uint256 taskId, uint256 submissionId, address validator);
    error EnoughVotes(uint256 taskId, uint256 submissionId);
    error ScoreOutOfRange(uint256 score);
    error NotFinalizable(uint256 taskId);

    event ParametersUpdated(Parameters parameters);
    event Staked(address indexed account, Role indexed role, uint256 amount, uint256 total);
    event UnstakeRequested(address indexed account, Role indexed role, uint256 unlockAt);
    event Unstaked(address indexed account, Role indexed role, uint256 amount);
    event TaskCreated(
        uint256 indexed taskId,
        address indexed requester,
        string datasetCid,
        string specCid,
        uint256 reward,
        uint256 validationsRequired,
        uint256 minScore,
        uint256 submitDeadline,
        uint256 validationDeadline
    );
    event TestSetRevealed(uint256 indexed taskId, string testCid);
    event ModelSubmitted(
        uint256 indexed taskId,
        uint256 indexed submissionId,
        address indexed trainer,
        string modelCid,
        bytes32 artifactSha256,
        uint256 claimedScore
    );
    event Validated(uint256 indexed taskId, uint256 indexed submissionId, address indexed validator, uint256 score);
    event Slashed(uint256 indexed taskId, address indexed validator, uint256 amount);
    event TaskAccepted(
        uint256 indexed taskId,
        uint256 indexed submissionId,
        address indexed trainer,
        uint256 median,
        uint256 modelId,
        uint256 trainerReward,
        uint256 validatorReward
    );
    event TaskFailed(uint256 indexed taskId, uint256 refunded, uint256 forfeited);

    /// @dev `registry` must grant this contract its REGISTRAR_ROLE so accepted models get registered.
    constructor(IERC20 token_, ModelRegistry registry_, address admin, Parameters memory params) {
        registry = registry_;
        token = token_;
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _grantRole(PAUSER_ROLE, admin);
        _setParameters(params);
    }

    // ------------------------------------------------------------- admin

    /// @notice Parameters for tasks from now on (stakes and shares are read when a task is settled).
    function setParameters(Parameters calldata params) external onlyRole(DEFAULT_ADMIN_ROLE) {
        _setParameters(params);
    }

    function parameters() external view returns (Parameters memory) {
        return _params;
    }

    function pause() external onlyRole(PAUSER_ROLE) {
        _pause();
    }

    function unpause() external onlyRole(PAUSER_ROLE) {
        _unpause();
    }

    function _setParameters(Parameters memory p) private {
        if (p.minTrainerStake == 0 || p.minValidatorStake == 0) revert InvalidParameters("minimum stake is zero");
        if (p.unstakeDelay > 30 days) revert InvalidParameters("unstakeDelay above 30 days");
        if (p.validatorShareBps > MAX_SHARE_BPS) revert InvalidParameters("validatorShareBps above 5000");
        if (p.slashBps > MAX_SHARE_BPS) revert InvalidParameters("slashBps above 5000");
        if (p.forfeitBps > MAX_SHARE_BPS) revert InvalidParameters("forfeitBps above 5000");
        if (p.scoreTolerance > SCORE_SCALE) revert InvalidParameters("scoreTolerance above 1.0");
        _params = p;
        emit ParametersUpdated(p);
    }

    // ------------------------------------------------------------- stakes

    function stake(Role role, uint256 amount) external whenNotPaused nonReentrant {
        if (amount == 0 || amount > type(uint128).max) revert InvalidParameters("stake amount");
        Stake storage s = _stakes[msg.sender][role];
        token.safeTransferFrom(msg.sender, address(this), amount);
        s.amount += uint128(amount);
        s.unlockAt = 0; // staking again cancels a pending unstake
        emit Staked(msg.sender, role, amount, s.amount);
    }

    function requestUnstake(Role role) external {
        Stake storage s = _stakes[msg.sender][role];
        if (s.amount == 0) revert NothingStaked(msg.sender, role);
        s.unlockAt = uint64(block.timestamp + _params.unstakeDelay);
        emit UnstakeRequested(msg.sender, role, s.unlockAt);
    }

    function withdrawStake(Role role) external nonReentrant {
        Stake storage s = _stakes[msg.sender][role];
        if (s.amount == 0) revert NothingStaked(msg.sender, role);
        if (s.unlockAt == 0) revert UnstakeNotRequested(msg.sender, role);
        if (block.timestamp < s.unlockAt || s.openWork > 0) {
            revert StakeLocked(msg.sender, role, s.unlockAt, s.openWork);
        }
        uint256 amount = s.amount;
        s.amount = 0;
        s.unlockAt = 0;
        token.safeTransfer(msg.sender, amount);
        emit Unstaked(msg.sender, role, amount);
    }

    function stakeOf(address account, Role role) external view returns (Stake memory) {
        return _stakes[account][role];
    }

    /// @notice Whether `account` may act in `role` now: enough stake, not being withdrawn.
    function isStaked(address account, Role role) public view returns (bool) {
        Stake memory s = _stakes[account][role];
        uint256 minimum = role == Role.Trainer ? _params.minTrainerStake : _params.minValidatorStake;
        return s.amount >= minimum && s.unlockAt == 0;
    }

    // ------------------------------------------------------------- tasks

    function createTask(
        string calldata datasetCid,
        string calldata specCid,
        bytes32 testSetCommitment,
        uint256 reward,
        uint256 validationsRequired,
        uint256 minScore,
        uint256 submitDeadline,
        uint256 validationDeadline,
        ModelShape calldata shape
    ) external whenNotPaused nonReentrant returns (uint256 taskId) {
        return _createTask(
            msg.sender,
            datasetCid,
            specCid,
            testSetCommitment,
            reward,
            validationsRequired,
            minScore,
            submitDeadline,
            validationDeadline,
            shape
        );
    }

    /// @notice Create a task for `permit.owner`, who pays the escrow through an EIP-2612 permit
    /// (signed off chain, so the requester needs no transaction of its own). Only relayers may use it:
    /// a permit does not name the task, so an untrusted caller could spend it on different terms.
    /// A permit that was already submitted by someone else is fine as long as the allowance covers
    /// the reward (the usual guard against permit front-running).
    function createTaskWithPermit(
        string calldata datasetCid,
        string calldata specCid,
        bytes32 testSetCommitment,
        uint256 reward,
        uint256 validationsRequired,
        uint256 minScore,
        uint256 submitDeadline,
        uint256 validationDeadline,
        ModelShape calldata shape,
        PermitSignature calldata permit
    ) external whenNotPaused nonReentrant onlyRole(RELAYER_ROLE) returns (uint256 taskId) {
        try IERC20Permit(address(token)).permit(
            permit.owner, address(this), reward, permit.deadline, permit.v, permit.r, permit.s
        ) {} catch {}
        taskId = _createTask(
            permit.owner,
            datasetCid,
            specCid,
            testSetCommitment,
            reward,
            validationsRequired,
            minScore,
            submitDeadline,
            validationDeadline,
            shape
        );
        relayerOf[taskId] = msg.sender;
    }

    function _createTask(
        address requester,
        string calldata datasetCid,
        string calldata specCid,
        bytes32 testSetCommitment,
        uint256 reward,
        uint256 validationsRequired,
        uint256 minScore,
        uint256 submitDeadline,
        uint256 validationDeadline,
        ModelShape calldata shape
    ) private returns (uint256 taskId) {
        _checkCid(datasetCid, "datasetCid");
        _checkCid(specCid, "specCid");
        if (testSetCommitment == bytes32(0)) revert InvalidTask("testSetCommitment is zero");
        if (reward == 0 || reward > type(uint96).max) revert InvalidTask("reward outside 1..2^96-1");
        if (validationsRequired == 0 || validationsRequired > MAX_VALIDATIONS) {
            revert InvalidTask("validationsRequired outside 1..9");
        }
        if (minScore > SCORE_SCALE) revert InvalidTask("minScore above 1.0");
        if (submitDeadline <= block.timestamp || submitDeadline > block.timestamp + MAX_DURATION) {
            revert InvalidTask("submitDeadline not in the next 365 days");
        }
        if (validationDeadline <= submitDeadline || validationDeadline > submitDeadline + MAX_DURATION) {
            revert InvalidTask("validationDeadline not within 365 days after submitDeadline");
        }
        if (shape.featureCount == 0) revert InvalidTask("featureCount is zero");
        if (shape.decimals > 18 || (shape.kind == ModelRegistry.ModelKind.Classification && shape.decimals != 0)) {
            revert InvalidTask("decimals");
        }
        token.safeTransferFrom(requester, address(this), reward);
        taskId = ++taskCount;
        Task storage t = _tasks[taskId];
        t.requester = requester;
        t.escrow = uint96(reward);
        t.submitDeadline = uint40(submitDeadline);
        t.validationDeadline = uint40(validationDeadline);
        t.minScore = uint32(minScore);
        t.validationsRequired = uint8(validationsRequired);
        t.status = TaskStatus.Open;
        t.shape = shape;
        t.testSetCommitment = testSetCommitment;
        t.datasetCid = datasetCid;
        t.specCid = specCid;
        emit TaskCreated(
            taskId,
            requester,
            datasetCid,
            specCid,
            reward,
            validationsRequired,
            minScore,
            submitDeadline,
            validationDeadline
        );
    }

    /// @notice The requester (or the relayer that created the task for it) reveals the test set after
    /// the submission deadline.
    function revealTestSet(uint256 taskId, string calldata testCid, bytes32 salt) external {
        Task storage t = _open(taskId);
        if (msg.sender != t.requester && msg.sender != relayerOf[taskId]) revert NotRequester(taskId, msg.sender);
        if (block.timestamp <= t.submitDeadline) revert RevealTooEarly(taskId, t.submitDeadline);
        if (block.timestamp > t.validationDeadline) revert ValidationClosed(taskId, t.validationDeadline);
        if (t.revealed) revert AlreadyRevealed(taskId);
        if (keccak256(abi.encode(testCid, salt)) != t.testSetCommitment) revert TestSetMismatch(taskId);
        t.revealed = true;
        t.testCid = testCid;
        emit TestSetRevealed(taskId, testCid);
    }

    function submitModel(uint256 taskId, string calldata modelCid, bytes32 artifactSha256, uint256 claimedScore)
        external
        whenNotPaused
        returns (uint256 submissionId)
    {
        Task storage t = _open(taskId);
        if (!isStaked(msg.sender, Role.Trainer)) revert NotStaked(msg.sender, Role.Trainer);
        if (block.timestamp > t.submitDeadline) revert SubmissionClosed(taskId, t.submitDeadline);
        if (hasSubmitted[taskId][msg.sender]) revert AlreadySubmitted(taskId, msg.sender);
        if (t.submissionCount >= MAX_SUBMISSIONS) revert TooManySubmissions(taskId);
        if (claimedScore > SCORE_SCALE) revert ScoreOutOfRange(claimedScore);
        _checkCid(modelCid, "modelCid");
        submissionId = t.submissionCount++;
        hasSubmitted[taskId][msg.sender] = true;
        _submissions[taskId].push(Submission(msg.sender, uint32(claimedScore), 0, 0, artifactSha256, modelCid));
        _stakes[msg.sender][Role.Trainer].openWork += 1;
        emit ModelSubmitted(taskId, submissionId, msg.sender, modelCid, artifactSha256, claimedScore);
    }

    function validate(uint256 taskId, uint256 submissionId, uint256 score) external whenNotPaused {
        Task storage t = _open(taskId);
        if (!isStaked(msg.sender, Role.Validator)) revert NotStaked(msg.sender, Role.Validator);
        if (!t.revealed) revert TestSetNotRevealed(taskId);
        if (block.timestamp > t.validationDeadline) revert ValidationClosed(taskId, t.validationDeadline);
        if (submissionId >= t.submissionCount) revert UnknownSubmission(taskId, submissionId);
        Submission storage s = _submissions[taskId][submissionId];
        if (s.trainer == msg.sender) revert OwnSubmission(taskId, submissionId);
        if (hasVoted[taskId][submissionId][msg.sender]) revert AlreadyVoted(taskId, submissionId, msg.sender);
        if (s.votes >= t.validationsRequired) revert EnoughVotes(taskId, submissionId);
        if (score > SCORE_SCALE) revert ScoreOutOfRange(score);
        hasVoted[taskId][submissionId][msg.sender] = true;
        _votes[taskId][submissionId].push(Vote(msg.sender, uint32(score)));
        s.votes += 1;
        _stakes[msg.sender][Role.Validator].openWork += 1;
        emit Validated(taskId, submissionId, msg.sender, score);
    }

    /// @notice Settle a task: at once when every submission has its validations, or after the
    /// validation deadline (and after the submission deadline when nobody submitted).
    function finalizeTask(uint256 taskId) external nonReentrant {
        Task storage t = _open(taskId);
        if (!_finalizable(taskId, t)) revert NotFinalizable(taskId);
        uint256 count = t.submissionCount;
        uint256 best;
        uint256 slashed;
        for (uint256 i = 0; i < count; ++i) {
            Submission storage s = _submissions[taskId][i];
            if (s.votes < t.validationsRequired) continue; // no quorum: never accepted, nobody slashed
            s.median = _median(_votes[taskId][i]);
            slashed += _slashOutliers(taskId, _votes[taskId][i], s.median);
            if (s.median >= t.minScore && (best == 0 || s.median > _submissions[taskId][best - 1].median)) {
                best = i + 1;
            }
        }
        uint256 escrow = t.escrow;
        t.escrow = 0;
        if (best != 0) {
            t.status = TaskStatus.Accepted;
            t.accepted = uint8(best);
            _accept(taskId, t, best - 1, escrow, slashed);
        } else {
            t.status = TaskStatus.Failed;
            _refund(taskId, t, escrow, slashed);
        }
        _closeWork(taskId, count);
    }

    // ------------------------------------------------------------- views

    function getTask(uint256 taskId) external view returns (Task memory) {
        Task memory t = _tasks[taskId];
        if (t.status == TaskStatus.None) revert UnknownTask(taskId);
        return t;
    }

    function getSubmission(uint256 taskId, uint256 submissionId) external view returns (Submission memory) {
        if (submissionId >= _submissions[taskId].length) revert UnknownSubmission(taskId, submissionId);
        return _submissions[taskId][submissionId];
    }

    function getVotes(uint256 taskId, uint256 submissionId) external view returns (Vote[] memory) {
        return _votes[taskId][submissionId];
    }

    /// @notice keccak256(abi.encode(testCid, salt)), what createTask takes as the test-set commitment.
    function commitmentFor(string calldata testCid, bytes32 salt) external pure returns (bytes32) {
        return keccak256(abi.encode(testCid, salt));
    }

    // ------------------------------------------------------------- internals

    function _open(uint256 taskId) private view returns (Task storage t) {
        t = _tasks[taskId];
        if (t.status == TaskStatus.None) revert UnknownTask(taskId);
        if (t.status != TaskStatus.Open) revert TaskNotOpen(taskId);
    }

    function _finalizable(uint256 taskId, Task storage t) private view returns (bool) {
        if (block.timestamp > t.validationDeadline) return true;
        if (t.submissionCount == 0) return block.timestamp > t.submitDeadline;
        if (!t.revealed) return false;
        for (uint256 i = 0; i < t.submissionCount; ++i) {
            if (_submissions[taskId][i].votes < t.validationsRequired) return false;
        }
        return true;
    }

    /// @dev Lower median of at most MAX_VALIDATIONS scores (insertion sort on a copy).
    function _median(Vote[] storage votes) private view returns (uint32) {
        uint256 n = votes.length;
        uint32[] memory s = new uint32[](n);
        for (uint256 i = 0; i < n; ++i) {
            uint32 x = votes[i].score;
            uint256 j = i;
            while (j > 0 && s[j - 1] > x) {
                s[j] = s[j - 1];
                --j;
            }
            s[j] = x;
        }
        return s[(n - 1) / 2];
    }

    function _slashOutliers(uint256 taskId, Vote[] storage votes, uint32 median) private returns (uint256 total) {
        Parameters memory p = _params;
        for (uint256 i = 0; i < votes.length; ++i) {
            if (!_far(votes[i].score, median, p.scoreTolerance)) continue;
            Stake storage st = _stakes[votes[i].validator][Role.Validator];
            uint256 cut = uint256(st.amount) * p.slashBps / 10_000;
            st.amount -= uint128(cut);
            total += cut;
            emit Slashed(taskId, votes[i].validator, cut);
        }
    }

    function _far(uint32 score, uint32 median, uint32 tolerance) private pure returns (bool) {
        return score > median ? score - median > tolerance : median - score > tolerance;
    }

    function _accept(uint256 taskId, Task storage t, uint256 index, uint256 escrow, uint256 slashed) private {
        Submission storage s = _submissions[taskId][index];
        Vote[] storage votes = _votes[taskId][index];
        uint256 validatorPart = escrow * _params.validatorShareBps / 10_000 + slashed;
        uint256 honest = 0;
        for (uint256 i = 0; i < votes.length; ++i) {
            if (!_far(votes[i].score, s.median, _params.scoreTolerance)) ++honest;
        }
        uint256 trainerPart = escrow + slashed - validatorPart;
        if (honest == 0) (trainerPart, validatorPart) = (escrow + slashed, 0);
        token.safeTransfer(s.trainer, trainerPart);
        if (validatorPart > 0) {
            uint256 share = validatorPart / honest;
            uint256 dust = validatorPart - share * honest;
            for (uint256 i = 0; i < votes.length; ++i) {
                if (_far(votes[i].score, s.median, _params.scoreTolerance)) continue;
                token.safeTransfer(votes[i].validator, share + dust);
                dust = 0;
            }
        }
        uint256 modelId =
            registry.registerModel(s.modelCid, s.artifactSha256, t.shape.kind, t.shape.decimals, t.shape.featureCount);
        t.modelId = uint32(modelId);
        emit TaskAccepted(taskId, index, s.trainer, s.median, modelId, trainerPart, validatorPart);
    }

    function _refund(uint256 taskId, Task storage t, uint256 escrow, uint256 slashed) private {
        uint256 count = t.submissionCount;
        uint256 forfeit = (!t.revealed && count > 0) ? escrow * _params.forfeitBps / 10_000 : 0;
        if (forfeit > 0) {
            uint256 share = forfeit / count;
            uint256 dust = forfeit - share * count;
            for (uint256 i = 0; i < count; ++i) {
                token.safeTransfer(_submissions[taskId][i].trainer, share + dust);
                dust = 0;
            }
        }
        uint256 refund = escrow - forfeit + slashed;
        if (refund > 0) token.safeTransfer(t.requester, refund);
        emit TaskFailed(taskId, refund, forfeit);
    }

    /// @dev The task no longer holds anyone's stake.
    function _closeWork(uint256 taskId, uint256 count) private {
        for (uint256 i = 0; i < count; ++i) {
            _stakes[_submissions[taskId][i].trainer][Role.Trainer].openWork -= 1;
            Vote[] storage votes = _votes[taskId][i];
            for (uint256 j = 0; j < votes.length; ++j) {
                _stakes[votes[j].validator][Role.Validator].openWork -= 1;
            }
        }
    }

    function _checkCid(string calldata cid, string memory field) private pure {
        uint256 len = bytes(cid).length;
        if (len == 0 || len > MAX_CID_LENGTH) revert InvalidTask(string.concat(field, " must be 1..64 bytes"));
    }
}
