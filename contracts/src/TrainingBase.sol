// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {ReentrancyGuard} from "@openzeppelin/contracts/utils/ReentrancyGuard.sol";
import {DrawTree} from "./DrawTree.sol";
import {ModelRegistry} from "./ModelRegistry.sol";

/// @title TrainingBase: the training market's types, storage, errors and events, and the validator weights.
/// @notice The rules are in docs/training.md (state machine, windows, money). The market is one contract,
/// TrainingTasks, whose code is too large for one account (EIP-170), so it runs in two halves over this one
/// storage layout: TrainingTasks itself (AccessControl and Pausable, then TrainingStakes: stakes and
/// bonds; parameters, signed terms, submissions) and TrainingValidation (TrainingPanel: the test set,
/// validators drawn by lot, scores committed then revealed; TrainingSettlement: the verdict, payments,
/// registration), deployed first and passed to TrainingTasks' constructor, which runs it by delegatecall
/// for every function it does not have itself. Every state variable of the market is declared here, after
/// AccessControl's and Pausable's (TrainingValidation declares the same two slots without their code), so
/// both halves see the same slots; tools/compile_contracts.js refuses to build if they do not.
abstract contract TrainingBase is ReentrancyGuard {
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
        Deferred, // waiting in the registration queue (the cap was reached, or others wait before it)
        Failed, // the registry refused; waiting in the queue, retried once the registry accepts
        Closed // registrations were closed (a cap of 0) when the task was created
    }

    /// @notice Set by the admin (a TimelockController on non-development deployments). Stake minimums
    /// and the unstake delay apply from the change on; the periods, the minimum reward and the rest are
    /// checked or copied into a task's Rules at creation and never change for it. Every change moves
    /// `parametersVersion`, which task terms carry (and requesters sign).
    struct Parameters {
        uint128 minTrainerStake;
        uint128 minValidatorStake;
        uint96 minBond; // a submission's bond is bondBps of the reward, but at least this (> 0)
        uint96 minRegistrationReward; // an accepted model is registered only for tasks paying this much
        uint32 unstakeDelay; // seconds between requestUnstake and withdrawStake (MIN_UNSTAKE_DELAY..30 days)
        uint32 minPeriod; // the shortest submitPeriod and scorePeriod a task may ask for
        uint32 revealPeriod; // each reveal window: submissions, test set, scores
        uint32 registrationPeriod; // seconds of a registration window (at most 7 days)
        uint32 scoreTolerance; // millionths: a vote this close to the decided score agrees with it
        uint32 claimSlack; // millionths: how far a score may pass its claim and still count (see docs)
        uint16 drawDelayBlocks; // blocks between fixing a draw and the block whose hash draws it
        uint16 validatorShareBps; // of the reward, to the seats that voted with the majority (> 0)
        uint16 slashBps; // of the weight that drew a seat, locked by the seat; lost when outvoted or silent (>= 1%)
        uint16 noShowBps; // of that weight, lost by a seat's validator that never committed (> 0)
        uint16 bondBps;
        uint16 registrationsPerPeriod; // at most this many registrations per window (0: new tasks register none)
        uint96 minSeatReward; // a task's validators' part must pay at least this per seat (> 0)
        uint32 maxPeriod; // the longest submitPeriod and scorePeriod a task may ask for (at most MAX_PERIOD)
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
        uint16 registrationsPerPeriod; // the cap it registers under (a lower cap set later does not apply)
        uint32 registrationPeriod; // the window it registers under (a longer one set later does not apply)
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

    /// @notice A seat of a task's panel. A validator drawn k times holds k seats and casts one ballot,
    /// kept in its first seat (getSeat shows it on each of its seats); it counts once per seat.
    struct Seat {
        address validator;
        SeatState state;
        bool unusable; // the test set is unusable (or was never revealed): the scores are holdout scores
        bytes32 commitment;
        uint32[16] scores; // by submission index
    }

    /// @notice A validator on a task's panel: its first seat, how many seats it holds, and the stake those
    /// seats lock (slashBps of the weight that drew each seat), all it can lose on the task.
    struct Member {
        uint8 seat; // first seat + 1 (0: not on the panel)
        uint8 seats;
        uint128 locked;
    }

    /// @dev A trainer's submission to a task: its index + 1 and when it was committed.
    struct Entry {
        uint8 index;
        uint40 committedAt;
    }

    /// @dev The first task an artifact was revealed in, and when.
    struct FirstReveal {
        uint64 taskId;
        uint40 revealedAt;
    }

    struct Stake {
        uint128 amount;
        uint128 locked; // what open work can take: a trainer's open bonds, a validator's seats' locks
        uint40 unlockAt; // set by requestUnstake (0: staying)
        uint32 openWork; // submissions, or tasks with a seat, not settled yet
        uint16 slot; // validator: its place in the draw, while its weight is not zero (0: none)
        bool active; // validator: wants to be drawn
    }

    uint32 public constant SCORE_SCALE = 1_000_000;
    uint256 public constant MAX_SUBMISSIONS = 16;
    uint256 public constant MAX_VALIDATIONS = 9;
    /// @notice The first draw and up to two more for the seats of validators that never committed.
    uint256 public constant MAX_ROUNDS = 3;
    /// @notice The ceiling of the admin's maxPeriod (and of revealPeriod and registrationPeriod).
    uint256 public constant MAX_PERIOD = 7 days;
    /// @notice The floor of unstakeDelay: far longer than a draw looks back (at most 384 blocks), so a
    /// validator weighed in a draw is still staked when the draw is made.
    uint256 public constant MIN_UNSTAKE_DELAY = 1 days;
    uint256 public constant MAX_CID_LENGTH = 64;
    /// @notice A validator slot whose weight fell to zero is handed to another validator only after it
    /// stayed zero this many blocks, longer than any draw looks back (drawDelayBlocks <= 128, plus the
    /// 256 blocks a block hash stays readable), so no draw reads one owner's weight and seats another.
    uint256 public constant SLOT_QUARANTINE = 1024;

    IERC20 public immutable token;
    ModelRegistry public immutable registry;

    Parameters internal _params;
    /// @notice Moves with every setParameters; task terms must carry the current value.
    uint32 public parametersVersion;
    uint256 public taskCount;
    /// @notice Slashed stakes, no-show slices and forfeited bonds, burned by burnPenalties.
    uint256 public pendingBurn;
    mapping(uint256 => Task) internal _tasks;
    mapping(uint256 => mapping(uint256 => Submission)) internal _submissions;
    mapping(uint256 => mapping(address => Entry)) internal _submissionOf;
    mapping(uint256 => mapping(uint256 => Seat)) internal _seats;
    mapping(uint256 => mapping(address => Member)) internal _members;
    mapping(address => mapping(Role => Stake)) internal _stakes;
    DrawTree.Tree internal _tree;
    mapping(uint256 => address) internal _slotOwner; // the last validator given the slot
    uint16 internal _slotsUsed;
    uint256 internal _freedHead;
    uint16[] internal _freed; // slots whose weight fell to zero, oldest first
    mapping(uint256 => bool) internal _inFreed;
    uint40 internal _windowStart; // the registration window
    uint16 internal _windowUsed;
    uint64 internal _queueHead; // the registration queue: tasks waiting to register, first in first out
    uint64 internal _queueTail;
    mapping(uint256 => uint256) internal _queue;
    mapping(bytes32 => FirstReveal) internal _firstReveal; // by artifact sha256
    mapping(address => uint256) internal _nonces; // of the requesters' signed terms
    /// @dev By task: bit i set when submission i's artifact had been revealed in another task before
    /// submission i was committed (never paid, never accepted; its bond is settled as any other's).
    mapping(uint256 => uint256) internal _revealedElsewhere;

    error InvalidParameters(string reason);
    error ParametersChanged(uint256 termsVersion, uint256 currentVersion);
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
    error ArtifactRevealedElsewhere(uint256 taskId, bytes32 artifactSha256, uint256 otherTaskId);
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
    error NotFirstInLine(uint256 taskId, uint256 firstTaskId);
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
    /// @notice Submission `submissionId`'s artifact had been revealed in task `otherTaskId` before it was
    /// committed: it is scored, its bond settled as usual, but it is never accepted nor paid.
    event RevealedElsewhereFirst(
        uint256 indexed taskId, uint256 indexed submissionId, bytes32 artifactSha256, uint256 otherTaskId
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

    /// @dev `step`'s window opens after `opensAfter` (0: open since the task's creation) and closes at
    /// `closes` (included): TooEarly names the first second it is open, TooLate the last. One revert path
    /// for every window of TrainingTasks' own half (EIP-170).
    function _checkWindow(uint256 taskId, Step step, uint256 opensAfter, uint256 closes) internal view {
        if (block.timestamp <= opensAfter) revert TooEarly(taskId, step, opensAfter + 1);
        if (block.timestamp > closes) revert TooLate(taskId, step, closes);
    }

    /// @dev Fix the block whose hash draws the next validators: `drawDelayBlocks` after this one.
    function _fixDraw(uint256 taskId, Task storage t) internal {
        uint256 drawBlock = block.number + t.rules.drawDelayBlocks;
        t.drawBlock = uint64(drawBlock);
        emit DrawFixed(taskId, t.round + 1, drawBlock);
    }

    /// @dev A validator's draw weight: its whole stake while active, staying and at least the minimum.
    function _weightOf(Stake storage s) internal view returns (uint256) {
        return s.active && s.unlockAt == 0 && s.amount >= _params.minValidatorStake ? s.amount : 0;
    }

    /// @dev The slot `validator` holds (0: none). A validator holds a slot while its weight is not zero;
    /// a slot whose weight fell to zero stays its own until the slot is given to another validator.
    function _heldSlot(address validator, Stake storage s) internal view returns (uint256 slot) {
        slot = s.slot;
        if (slot != 0 && _slotOwner[slot] != validator) slot = 0;
    }

    /// @dev Set a held slot's weight; a slot whose weight falls to zero joins the freed list (once), to be
    /// given to another validator after SLOT_QUARANTINE blocks at zero, so idle stakes hold no place.
    function _setWeight(uint256 slot, uint256 weight) internal {
        DrawTree.set(_tree, slot, weight);
        if (weight == 0 && !_inFreed[slot]) {
            _inFreed[slot] = true;
            _freed.push(uint16(slot));
        }
    }
}
