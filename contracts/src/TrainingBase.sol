// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {Pausable} from "@openzeppelin/contracts/utils/Pausable.sol";
import {ReentrancyGuard} from "@openzeppelin/contracts/utils/ReentrancyGuard.sol";
import {DrawTree} from "./DrawTree.sol";
import {ModelRegistry} from "./ModelRegistry.sol";

/// @title TrainingBase: the training market's types, storage, errors and events, and the validator weights.
/// @notice The rules are in docs/training.md (state machine, windows, money). The market is one contract,
/// TrainingTasks, whose code is too large for one account (EIP-170), so it runs in two halves over this one
/// storage layout: TrainingTasks itself (TrainingStakes: stakes and bonds; parameters, signed terms,
/// submissions, the test set) and TrainingValidation (TrainingPanel: validators drawn by lot, scores
/// committed then revealed; TrainingSettlement: the verdict, payments, registration), which TrainingTasks
/// deploys in its constructor and runs by delegatecall for every function it does not have itself.
/// Every state variable of the market is declared here, so both halves see the same slots.
abstract contract TrainingBase is AccessControl, Pausable, ReentrancyGuard {
    enum Role {
        Trainer,
        Validator
    }

    /// @notice Open until settled; then how it ended (docs/training.md has who gets what in each case).
    enum Status {
        None,
        Open,
        Accepted, // a submission passed: its trainer is paid, its model registered
        Rejected, // the test set was usable and no submission passed: the requester is refunded
        Unusable, // a majority of the panel reported the test set unusable: the escrow goes to trainers
        Abandoned, // the test set was never revealed: the escrow goes to trainers
        Empty, // no submission was revealed: the requester is refunded
        Undecided // no clear majority of the panel either way: the requester is refunded
    }

    /// @notice The step a window belongs to, named in TooEarly / TooLate.
    enum Step {
        CommitSubmission,
        RevealSubmission,
        RevealTestSet,
        CommitScores,
        ReplaceNoShows,
        RevealScores,
        Finalize
    }

    /// @notice A term of a task out of its range, named in BadTerm.
    enum Term {
        DatasetCid,
        TestSetCommitment,
        Reward,
        SubmitPeriod,
        ScorePeriod,
        Validations,
        MinScore
    }

    enum SeatState {
        Empty,
        Drawn,
        Committed,
        Revealed
    }

    enum Bond {
        Locked,
        Released,
        Forfeited
    }

    enum Registration {
        None,
        Registered,
        BelowMinimumReward, // the task paid less than the minimum to register a model
        Deferred, // the registration cap of the period was reached; retryRegistration later
        Failed // the registry refused; retryRegistration once it accepts
    }

    /// @notice Set by the admin (a TimelockController on non-development deployments). Stake minimums,
    /// the unstake delay, the shortest period and the registration cap apply from the change on; every
    /// other field is copied into a task's Rules at creation and never changes for it.
    struct Parameters {
        uint128 minTrainerStake;
        uint128 minValidatorStake;
        uint96 minBond; // a submission's bond is bondBps of the reward, but at least this
        uint96 minRegistrationReward; // an accepted model is registered only for tasks paying this much
        uint32 unstakeDelay; // seconds between requestUnstake and withdrawStake
        uint32 minPeriod; // the shortest submitPeriod and scorePeriod a task may ask for
        uint32 revealPeriod; // each reveal window: submissions, test set, scores
        uint32 registrationPeriod; // seconds of a registration window
        uint32 scoreTolerance; // millionths: a vote this close to the decided score agrees with it
        uint32 claimSlack; // millionths: a decided score further below the claim forfeits the bond
        uint16 drawDelayBlocks; // blocks between fixing a draw and the block whose hash draws it
        uint16 validatorShareBps; // of the reward, to the validators that voted with the majority
        uint16 slashBps; // of its stake, from a validator outvoted by a clear majority or never revealing
        uint16 noShowBps; // of its stake, from a drawn validator that never committed
        uint16 bondBps;
        uint16 registrationsPerPeriod; // at most this many registrations per window (0: none)
    }

    /// @notice The parameters a task was created under.
    struct Rules {
        uint96 bond;
        uint32 revealPeriod;
        uint32 scoreTolerance;
        uint32 claimSlack;
        uint16 drawDelayBlocks;
        uint16 validatorShareBps;
        uint16 slashBps;
        uint16 noShowBps;
        bool registers;
    }

    struct Task {
        address requester;
        uint96 reward; // escrowed while Open
        uint40 submitDeadline; // commitments until then
        uint40 revealDeadline; // submission reveals until then
        uint40 testDeadline; // the test set's reveal until then
        uint40 scoreDeadline; // the current panel's score commitments until then
        uint32 minScore;
        uint32 scorePeriod;
        Status status;
        uint8 validations; // the panel's size, odd
        uint8 submissions; // commitments
        uint8 revealed; // revealed submissions
        uint64 drawBlock; // the block whose hash draws the next validators (0: no draw pending)
        uint8 round; // draws made
        uint8 seated;
        uint8 committed;
        uint8 votes; // revealed votes
        bool testRevealed;
        uint8 accepted; // submission index + 1 (0: none)
        Registration registration;
        uint32 modelId;
        ModelRegistry.ModelKind kind;
        uint8 decimals;
        uint16 featureCount;
        bytes32 testSetCommitment;
        Rules rules;
        string datasetCid;
        string specCid;
        string testCid;
    }

    struct Submission {
        address trainer;
        uint32 claim; // the trainer's holdout score, millionths
        uint32 score; // the decided score (set at settlement when the panel scored)
        bool revealed;
        Bond bond;
        bytes32 commitment;
        bytes32 artifactSha256;
        string modelCid;
    }

    struct Seat {
        address validator;
        SeatState state;
        bool unusable;
        bytes32 commitment;
        uint32[16] scores; // by submission index
    }

    struct Stake {
        uint128 amount;
        uint128 locked; // trainer: the bonds of its open submissions
        uint40 unlockAt; // set by requestUnstake (0: staying)
        uint32 openWork; // submissions or seats in open tasks
        uint16 slot; // validator: its place in the draw (0: none)
        bool active; // validator: wants to be drawn
    }

    /// @dev A validator slot freed by a withdrawal, handed out again after SLOT_QUARANTINE blocks.
    struct FreedSlot {
        uint16 slot;
        uint48 freedAt;
    }

    uint32 public constant SCORE_SCALE = 1_000_000;
    uint256 public constant MAX_SUBMISSIONS = 16;
    uint256 public constant MAX_VALIDATIONS = 9;
    /// @notice The first draw and up to two more for the seats of validators that never committed.
    uint256 public constant MAX_ROUNDS = 3;
    uint256 public constant MAX_PERIOD = 365 days;
    uint256 public constant MAX_CID_LENGTH = 64;
    /// @notice A freed validator slot is handed out again only after this many blocks, longer than any
    /// draw looks back (drawDelayBlocks <= 128, plus the 256 blocks a block hash stays readable), so no
    /// draw reads one owner's weight and seats another.
    uint256 public constant SLOT_QUARANTINE = 1024;

    IERC20 public immutable token;
    ModelRegistry public immutable registry;

    Parameters internal _params;
    uint256 public taskCount;
    /// @notice Slashed stakes, no-show slices and forfeited bonds, burned by burnPenalties.
    uint256 public pendingBurn;
    mapping(uint256 => Task) internal _tasks;
    mapping(uint256 => mapping(uint256 => Submission)) internal _submissions;
    mapping(uint256 => mapping(address => uint256)) internal _submissionOf; // index + 1
    mapping(uint256 => mapping(uint256 => Seat)) internal _seats;
    mapping(uint256 => mapping(address => uint256)) internal _seatOf; // seat + 1
    mapping(address => mapping(Role => Stake)) internal _stakes;
    DrawTree.Tree internal _tree;
    mapping(uint256 => address) internal _slotOwner;
    uint16 internal _slotsUsed;
    uint256 internal _freedHead;
    FreedSlot[] internal _freed;
    uint40 internal _windowStart; // the registration window
    uint16 internal _windowUsed;
    mapping(address => uint256) internal _nonces; // of the requesters' signed terms

    error InvalidParameters(string reason);
    error BadTerm(Term term, uint256 value, uint256 min, uint256 max);
    error SignatureExpired(uint256 expiry);
    error InvalidSignature(address requester);
    error EscrowNotApproved(address requester, uint256 allowance, uint256 reward);
    error UnknownTask(uint256 taskId);
    error TaskClosed(uint256 taskId, Status status);
    error TooEarly(uint256 taskId, Step step, uint256 notBefore);
    error TooLate(uint256 taskId, Step step, uint256 closedAt);
    error BadAmount(uint256 amount);
    error NotStaked(address account, Role role);
    error NothingStaked(address account, Role role);
    error UnstakeNotRequested(address account, Role role);
    error StakeLocked(address account, Role role, uint256 unlockAt, uint256 openWork);
    error ValidatorSetFull(uint256 capacity);
    error FreeStakeBelowBond(address trainer, uint256 free, uint256 bond);
    error RequesterCannotSubmit(uint256 taskId);
    error AlreadySubmitted(uint256 taskId, address trainer);
    error TooManySubmissions(uint256 taskId, uint256 max);
    error NoCommitment(uint256 taskId, address account);
    error AlreadyRevealed(uint256 taskId, address account);
    error CommitmentMismatch(uint256 taskId, address account);
    error ClaimBelowMinimum(uint256 taskId, uint256 claim, uint256 minScore);
    error ScoreOutOfRange(uint256 score);
    error NoSubmissions(uint256 taskId);
    error TestSetMismatch(uint256 taskId);
    error NoDrawPending(uint256 taskId);
    error DrawNotReady(uint256 taskId, uint256 drawBlock, uint256 currentBlock);
    error DrawPending(uint256 taskId, uint256 drawBlock);
    error NotOnPanel(uint256 taskId, address account);
    error AlreadyCommitted(uint256 taskId, address validator);
    error ScoreCount(uint256 given, uint256 expected);
    error NothingToReplace(uint256 taskId);
    error NoRoundsLeft(uint256 taskId, uint256 rounds);
    error PanelIncomplete(uint256 taskId, uint256 committed, uint256 validations);
    error NotRetryable(uint256 taskId, Registration registration);
    error RegistrationCapReached(uint256 nextWindowAt);
    error NotEnoughGas(uint256 needed);

    event ParametersUpdated(Parameters parameters);
    event Staked(address indexed account, Role indexed role, uint256 amount, uint256 total);
    event UnstakeRequested(address indexed account, Role indexed role, uint256 unlockAt);
    event Unstaked(address indexed account, Role indexed role, uint256 amount);
    event ValidatorActive(address indexed validator, bool active);
    event TaskCreated(
        uint256 indexed taskId,
        address indexed requester,
        address indexed sender,
        string datasetCid,
        string specCid,
        uint256 reward,
        uint256 bond,
        uint256 submitDeadline,
        uint256 revealDeadline,
        uint256 testDeadline
    );
    event SubmissionCommitted(
        uint256 indexed taskId, uint256 indexed submissionId, address indexed trainer, bytes32 commitment
    );
    event SubmissionRevealed(
        uint256 indexed taskId,
        uint256 indexed submissionId,
        address indexed trainer,
        string modelCid,
        bytes32 artifactSha256,
        uint256 claim
    );
    event TestSetRevealed(uint256 indexed taskId, string testCid);
    event DrawFixed(uint256 indexed taskId, uint256 round, uint256 drawBlock);
    event ValidatorDrawn(uint256 indexed taskId, uint256 seat, address indexed validator, uint256 scoreDeadline);
    event ScoresCommitted(uint256 indexed taskId, uint256 seat, address indexed validator);
    event ScoresRevealed(uint256 indexed taskId, uint256 seat, address indexed validator, bool unusable, uint32[] scores);
    event NoShow(uint256 indexed taskId, address indexed validator, uint256 penalty);
    event Slashed(uint256 indexed taskId, address indexed validator, uint256 amount);
    event BondSettled(uint256 indexed taskId, uint256 indexed submissionId, address indexed trainer, Bond bond, uint256 amount);
    event TaskSettled(
        uint256 indexed taskId,
        Status status,
        uint256 acceptedSubmission,
        uint256 score,
        uint256 toTrainers,
        uint256 toValidators,
        uint256 toRequester
    );
    event ModelRegistered(uint256 indexed taskId, uint256 indexed modelId);
    event RegistrationSkipped(uint256 indexed taskId, Registration registration, bytes reason);
    event PenaltiesBurned(uint256 amount);

    constructor(IERC20 token_, ModelRegistry registry_) {
        token = token_;
        registry = registry_;
    }

    function _openTask(uint256 taskId) internal view returns (Task storage t) {
        t = _tasks[taskId];
        if (t.status != Status.Open) {
            if (t.status == Status.None) revert UnknownTask(taskId);
            revert TaskClosed(taskId, t.status);
        }
    }

    /// @dev Fix the block whose hash draws the next validators: `drawDelayBlocks` after this one.
    function _fixDraw(uint256 taskId, Task storage t) internal {
        uint256 drawBlock = block.number + t.rules.drawDelayBlocks;
        t.drawBlock = uint64(drawBlock);
        emit DrawFixed(taskId, t.round + 1, drawBlock);
    }

    /// @dev The draw weight follows the stake: the whole stake while active, staying and at least the minimum.
    function _syncWeight(address validator, Stake storage s) internal {
        uint256 weight = s.active && s.unlockAt == 0 && s.amount >= _params.minValidatorStake ? s.amount : 0;
        uint256 slot = s.slot;
        if (slot == 0) {
            if (weight == 0) return;
            slot = _takeSlot(validator);
            s.slot = uint16(slot);
        }
        DrawTree.set(_tree, slot, weight);
    }

    function _takeSlot(address validator) private returns (uint256 slot) {
        uint256 head = _freedHead;
        if (head < _freed.length && _freed[head].freedAt + SLOT_QUARANTINE < block.number) {
            slot = _freed[head].slot;
            delete _freed[head];
            _freedHead = head + 1;
        } else if (_slotsUsed < DrawTree.CAPACITY) {
            slot = ++_slotsUsed;
        } else {
            revert ValidatorSetFull(DrawTree.CAPACITY);
        }
        _slotOwner[slot] = validator;
    }
}
