// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {EMLPermit} from "./EMLPermit.sol";
import {PredictionQueue} from "./PredictionQueue.sol";
import {ProofOfWork} from "./ProofOfWork.sol";
import {RoundRules} from "./RoundRules.sol";

/// @notice Receiver of prediction results (see UsingEthML).
interface IEthMLConsumer {
    function ethmlCallback(uint256 requestId, int256 prediction, uint8 status, uint8 agreeing) external;
}

/// @title EthML: a proof-of-work oracle for machine-learning predictions.
/// @notice EML token (with EIP-2612 permits), model registry, prioritised request queue and mining rounds in two phases:
/// five proof-of-work-gated commitments to hidden predictions, then reveals; consensus needs a quorum
/// of agreeing reveals; rewards accrue to the agreeing miners and are claimed with `claimRewards`.
/// @dev The proof of work (shared bit for bit with the C core and the Python reference):
/// `uint256(keccak256(abi.encodePacked(challenge, miner, nonce))) < type(uint256).max / difficulty`, where
/// `challenge = keccak256(abi.encodePacked(blockhash(openBlock), address(this), requestId))` and
/// `openBlock` is the block that opened the round: nobody knows it before that block is sealed, and no
/// commitment is accepted in the opening block itself.
contract EthML is ERC20, EMLPermit, AccessControl {
    using PredictionQueue for PredictionQueue.Heap;

    // ------------------------------------------------------------------ types

    enum ModelKind {
        Classification,
        Regression
    }

    enum Status {
        None,
        Queued,
        Current,
        Finalized,
        InvalidInput,
        Expired,
        NoConsensus,
        Cancelled
    }

    struct Model {
        string cid;
        bytes32 artifactSha256;
        ModelKind kind;
        uint8 decimals;
        uint16 featureCount;
        bool active;
    }

    /// @dev Set at deployment; `setParameters` changes take effect when the next round opens.
    struct Parameters {
        /// @dev EML (wei) per agreeing miner for a round that closes `targetSolveTime` or more after the
        /// previous rewarded close; proportionally less for a quicker one (issuance per hour is capped).
        uint96 baseReward;
        /// @dev Seconds the difficulty retarget steers the commit phase toward.
        uint32 targetSolveTime;
        uint64 minDifficulty;
        uint64 maxDifficulty;
        /// @dev Blocks after the opening block within which five commitments must land (at most 240).
        uint32 expiryBlocks;
        /// @dev Blocks after the fifth commitment during which reveals are accepted.
        uint32 revealBlocks;
        /// @dev A queued request older than this many blocks expires (refunded) when it would be opened.
        uint32 maxQueueBlocks;
        /// @dev At most 16,777,215 (uint24).
        uint32 maxCallbackGasLimit;
        /// @dev Regression agreement band, in basis points of max(|median|, 1.0).
        uint16 regressionToleranceBps;
        /// @dev Agreeing revealed votes needed for a result (3 to 5).
        uint8 quorum;
    }

    /// @dev One slot per request (the tip lives in the queue entry, then in the round). `blockNumber` is
    /// the request's block while it is open and its closing block after; `status` is written only when
    /// it closes (before that it is Current if it is the round's request, else Queued). The data CID is
    /// not stored: it is in the request's `PredictionRequested` event, which is where nodes read it.
    struct Request {
        address requester;
        uint16 modelId;
        uint24 callbackGasLimit;
        Status status;
        uint40 blockNumber;
    }

    /// @dev The outcome of a closed round, one slot.
    struct Result {
        int96 prediction;
        uint8 agreeing;
        uint8 revealedMask;
        uint8 agreeingMask;
    }

    /// @dev Read by every request: ids handed out, entries in the queue, whether a round is open.
    struct Counters {
        uint32 requests;
        uint32 pending;
        bool roundOpen;
    }

    /// @dev The round being mined, one slot.
    struct Round {
        uint32 requestId;
        uint8 commits;
        uint8 revealedMask;
        uint32 openBlock;
        /// @dev Block of the fifth commitment (0 while committing).
        uint32 revealBlock;
        uint40 openTime;
        uint96 tip;
    }

    /// @dev Global state written when rounds close, one slot.
    struct State {
        uint64 difficulty;
        uint40 lastRewardTime;
        uint128 totalIssued;
        bool parametersPending;
    }

    /// @dev Per miner, one slot: its latest commitment and the rewards it has not claimed.
    struct Miner {
        uint32 lastRequest;
        uint8 slot;
        uint96 owedBase;
        uint96 owedTip;
    }

    /// @notice What a miner needs to work on the current round (see `getCurrentRound`).
    struct CurrentRound {
        uint256 requestId;
        bytes32 challenge;
        uint256 difficulty;
        uint256 modelId;
        uint256 openBlock;
        uint256 commits;
        uint256 revealedMask;
        uint256 commitDeadline;
        uint256 revealDeadline;
    }

    // -------------------------------------------------------------- constants

    bytes32 public constant MODEL_ADMIN_ROLE = keccak256("MODEL_ADMIN_ROLE");
    /// @notice The value miners reveal when a data point cannot be used as model input.
    int256 public constant INVALID_INPUT = type(int256).min;
    uint256 public constant SUBMISSIONS_PER_REQUEST = 5;
    uint256 public constant MAX_CID_LENGTH = 64;
    uint8 public constant MAX_DECIMALS = 18;
    /// @dev Gas kept back after the callback so finalization can always complete.
    uint256 public constant CALLBACK_GAS_RESERVE = 10_000;
    /// @notice Gas of the callback machinery (call set-up, reimbursement transfer, deposit update) that
    /// is reimbursed on top of the gas the consumer used.
    uint256 public constant CALLBACK_OVERHEAD = 30_000;
    /// @dev Expired queue entries skipped per round opening; past that the next one is served as it is.
    uint256 public constant MAX_STALE_SKIPS = 2;

    // ----------------------------------------------------------------- errors

    error UnknownModel(uint256 modelId);
    error ModelInactive(uint256 modelId);
    error EmptyCid();
    error CidTooLong(uint256 length, uint256 maxLength);
    error CallbackGasLimitTooHigh(uint256 requested, uint256 maximum);
    error CallbackDepositTooSmall(uint256 sent, uint256 required);
    error UnexpectedDeposit(uint256 sent);
    error TipTooLarge(uint256 tip);
    error NoCurrentRequest();
    error NotCurrentRequest(uint256 requestId, uint256 currentRequestId);
    error ChallengeNotYetAvailable(uint256 requestId, uint256 openBlock);
    error CommitPhaseOver(uint256 requestId);
    error CommitWindowClosed(uint256 requestId, uint256 deadline);
    error AlreadyCommitted(uint256 requestId, address miner);
    error InvalidNonce(uint256 requestId, address miner, uint256 nonce);
    error NotRevealPhase(uint256 requestId);
    error RevealWindowClosed(uint256 requestId, uint256 deadline);
    error RevealWindowOpen(uint256 requestId, uint256 deadline);
    error NotCommitted(uint256 requestId, address miner);
    error AlreadyRevealed(uint256 requestId, address miner);
    error CommitmentMismatch(uint256 requestId, address miner);
    error PredictionOutOfRange(int256 prediction);
    error NotExpired(uint256 requestId, uint256 expiresAtBlock);
    error InsufficientGasForCallback(uint256 required, uint256 available);
    error NotRequester(uint256 requestId, address caller);
    error NotQueued(uint256 requestId);
    error StaleQueueHint(uint256 requestId, uint256 position);
    error NotClosed(uint256 requestId);
    error NothingToWithdraw(uint256 requestId);
    error EthTransferFailed(address to, uint256 amount);
    error NothingToClaim(address miner);
    error TransferToOracle();
    error InvalidParameters(string reason);
    error LengthMismatch(uint256 holders, uint256 amounts);
    error TooManyModels();
    error TooManyRequests();

    // ----------------------------------------------------------------- events

    event ModelRegistered(
        uint256 indexed modelId, string cid, bytes32 artifactSha256, ModelKind kind, uint8 decimals, uint16 featureCount
    );
    event ModelDeactivated(uint256 indexed modelId);
    /// @notice `effective` is false while the change waits for the next round.
    event ParametersUpdated(Parameters parameters, bool effective);
    event PredictionRequested(
        uint256 indexed requestId,
        address indexed requester,
        uint256 indexed modelId,
        string dataCid,
        uint256 tip,
        uint256 callbackGasLimit,
        uint256 callbackDeposit
    );
    /// @notice A round opened in this log's block; its challenge is
    /// keccak256(abi.encodePacked(blockhash(this block), address(this), requestId)). The data CID is in
    /// the request's PredictionRequested event.
    event RoundOpened(uint256 indexed requestId, uint256 indexed modelId, uint256 difficulty, uint256 commitDeadline);
    event Committed(uint256 indexed requestId, address indexed miner, uint256 index);
    event RevealPhaseStarted(uint256 indexed requestId, uint256 revealDeadline);
    event Revealed(uint256 indexed requestId, address indexed miner, int256 prediction);
    event PredictionFinalized(
        uint256 indexed requestId,
        int256 prediction,
        Status status,
        uint256 agreeing,
        address[5] miners,
        uint8 revealedMask,
        uint8 agreeingMask,
        uint256 baseRewardPerMiner,
        uint256 tipPerMiner
    );
    event RequestExpired(uint256 indexed requestId, uint256 refundedTip, uint256 commits, uint256 nextDifficulty);
    event RequestCancelled(uint256 indexed requestId, uint256 refundedTip);
    event CallbackFailed(uint256 indexed requestId, address indexed consumer);
    event CallbackReimbursed(uint256 indexed requestId, address indexed closer, uint256 amount);
    event RewardsClaimed(address indexed miner, uint256 base, uint256 tips);

    // ------------------------------------------------------------------ state

    /// @notice The consensus rules and the hard caps on parameters (see RoundRules).
    RoundRules public immutable rules;
    Parameters private _params;
    Parameters private _nextParams;
    uint256 public modelCount;
    mapping(uint256 => Model) private _models;

    Counters private _counters;
    mapping(uint256 => Request) private _requests;
    mapping(uint256 => Result) private _results;
    /// @dev ETH deposited for a request's callback; after the close, what is left for the requester.
    mapping(uint256 => uint256) private _deposits;

    PredictionQueue.Heap private _queue;
    Round private _round;
    /// @dev The current round's five commitments: miner (high 160 bits) | int96 revealed prediction.
    /// Reused round after round, so a commitment overwrites a non-zero slot.
    uint256[5] private _entries;
    bytes32[5] private _commitments;
    State private _state;
    mapping(address => Miner) private _miners;

    constructor(address admin, address[] memory holders, uint256[] memory amounts, Parameters memory params)
        ERC20("EthML Token", "EML")
    {
        if (holders.length != amounts.length) revert LengthMismatch(holders.length, amounts.length);
        rules = new RoundRules();
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _grantRole(MODEL_ADMIN_ROLE, admin);
        for (uint256 i = 0; i < holders.length; ++i) {
            _mint(holders[i], amounts[i]);
        }
        _checkParameters(params);
        _params = params;
        emit ParametersUpdated(params, true);
        _state = State(params.minDifficulty, uint40(block.timestamp), 0, false);
        for (uint256 i = 0; i < SUBMISSIONS_PER_REQUEST; ++i) {
            // Non-zero from the start, so a commitment always overwrites (5,000 gas, not 22,100).
            _entries[i] = 1;
            _commitments[i] = bytes32(uint256(1));
        }
    }

    // ------------------------------------------------------------- the token

    /// @dev Tokens sent straight to the oracle would be lost: tips go through `requestPrediction`.
    function transfer(address to, uint256 value) public override returns (bool) {
        if (to == address(this)) revert TransferToOracle();
        return super.transfer(to, value);
    }

    function transferFrom(address from, address to, uint256 value) public override returns (bool) {
        if (to == address(this)) revert TransferToOracle();
        return super.transferFrom(from, to, value);
    }

    // ------------------------------------------------------------- registry

    function registerModel(
        string calldata cid,
        bytes32 artifactSha256,
        ModelKind kind,
        uint8 decimals,
        uint16 featureCount
    ) external onlyRole(MODEL_ADMIN_ROLE) returns (uint256 modelId) {
        if (bytes(cid).length == 0) revert EmptyCid();
        if (bytes(cid).length > MAX_CID_LENGTH) revert CidTooLong(bytes(cid).length, MAX_CID_LENGTH);
        if (decimals > MAX_DECIMALS) revert InvalidParameters("decimals above 18");
        if (kind == ModelKind.Classification && decimals != 0) {
            revert InvalidParameters("classification models have no decimals");
        }
        if (featureCount == 0) revert InvalidParameters("featureCount is zero");
        if (modelCount == type(uint16).max) revert TooManyModels();
        modelId = ++modelCount;
        _models[modelId] = Model(cid, artifactSha256, kind, decimals, featureCount, true);
        emit ModelRegistered(modelId, cid, artifactSha256, kind, decimals, featureCount);
    }

    function deactivateModel(uint256 modelId) external onlyRole(MODEL_ADMIN_ROLE) {
        Model storage m = _existingModel(modelId);
        m.active = false;
        emit ModelDeactivated(modelId);
    }

    function getModel(uint256 modelId) external view returns (Model memory) {
        return _existingModel(modelId);
    }

    /// @dev Registered models have featureCount > 0, so one read tells unknown from known.
    function _existingModel(uint256 modelId) private view returns (Model storage m) {
        m = _models[modelId];
        if (m.featureCount == 0) revert UnknownModel(modelId);
    }

    // ----------------------------------------------------------- parameters

    /// @notice New parameters, checked against the hard caps; they take effect when the next round
    /// opens (at once when no round is open), never in the middle of one.
    function setParameters(Parameters calldata params) external onlyRole(DEFAULT_ADMIN_ROLE) {
        _checkParameters(params);
        if (_round.requestId == 0) {
            _params = params;
            _state.parametersPending = false;
            _clampDifficulty(params);
            emit ParametersUpdated(params, true);
        } else {
            _nextParams = params;
            _state.parametersPending = true;
            emit ParametersUpdated(params, false);
        }
    }

    function parameters() external view returns (Parameters memory) {
        return _params;
    }

    /// @notice Parameters waiting for the next round, and whether there are any.
    function pendingParameters() external view returns (Parameters memory, bool) {
        return (_nextParams, _state.parametersPending);
    }

    function _checkParameters(Parameters memory p) private view {
        rules.checkParameters(p);
    }

    function _clampDifficulty(Parameters memory p) private {
        uint64 d = _state.difficulty;
        if (d < p.minDifficulty) _state.difficulty = p.minDifficulty;
        if (d > p.maxDifficulty) _state.difficulty = p.maxDifficulty;
    }

    // -------------------------------------------------------------- requests

    /// @notice Ask for a prediction of `modelId` on the data point at IPFS `dataCid`.
    /// @param tip EML taken from the caller's balance (no approval needed: this contract is the token),
    /// shared by the agreeing miners, refunded if the request closes without a result.
    /// @param callbackGasLimit Gas for `ethmlCallback` on the caller; 0 for no callback (pull the result).
    /// A callback needs an ETH deposit of at least (callbackGasLimit + CALLBACK_OVERHEAD) * basefee
    /// (`msg.value`): the closing miner is reimbursed the callback's gas at its gas price from it, and the
    /// rest is the requester's (`withdrawDeposit`).
    function requestPrediction(uint256 modelId, string calldata dataCid, uint256 tip, uint256 callbackGasLimit)
        external
        payable
        returns (uint256 requestId)
    {
        Model storage m = _existingModel(modelId);
        if (!m.active) revert ModelInactive(modelId);
        uint256 len = bytes(dataCid).length;
        if (len == 0) revert EmptyCid();
        if (len > MAX_CID_LENGTH) revert CidTooLong(len, MAX_CID_LENGTH);
        if (tip > type(uint96).max) revert TipTooLarge(tip);
        Counters memory counters = _counters;
        if (counters.requests == type(uint32).max) revert TooManyRequests();
        requestId = counters.requests + 1;
        if (callbackGasLimit > 0) {
            if (callbackGasLimit > _params.maxCallbackGasLimit) {
                revert CallbackGasLimitTooHigh(callbackGasLimit, _params.maxCallbackGasLimit);
            }
            uint256 required = minimumDeposit(callbackGasLimit);
            if (msg.value < required) revert CallbackDepositTooSmall(msg.value, required);
            _deposits[requestId] = msg.value;
        } else if (msg.value > 0) {
            revert UnexpectedDeposit(msg.value);
        }
        if (tip > 0) _transfer(msg.sender, address(this), tip);

        _requests[requestId] =
            Request(msg.sender, uint16(modelId), uint24(callbackGasLimit), Status.Queued, uint40(block.number));
        // The requester pays for the slot its result will be written to (the closing miner then
        // overwrites a non-zero slot).
        _results[requestId] = Result(0, 0, 0x80, 0);
        emit PredictionRequested(requestId, msg.sender, modelId, dataCid, tip, callbackGasLimit, msg.value);

        if (!counters.roundOpen) {
            _counters = Counters(uint32(requestId), counters.pending, true);
            _startRound(requestId, uint96(tip));
        } else {
            _queue.push(counters.pending, uint96(tip), uint32(requestId));
            _counters = Counters(uint32(requestId), counters.pending + 1, true);
        }
    }

    /// @notice The smallest ETH deposit `requestPrediction` accepts for a callback of `callbackGasLimit` gas.
    function minimumDeposit(uint256 callbackGasLimit) public view returns (uint256) {
        uint256 price = block.basefee == 0 ? 1 : block.basefee;
        return (callbackGasLimit + CALLBACK_OVERHEAD) * price;
    }

    /// @notice Number of requests ever made (ids run from 1 to requestCount).
    function requestCount() external view returns (uint256) {
        return _counters.requests;
    }

    /// @notice Take a queued request back: its tip and deposit are refunded. `position` is its place
    /// in the queue, from `queuePosition` (it may move when others join or leave: then this reverts
    /// with StaleQueueHint and the caller asks again). O(log n).
    function cancelRequest(uint256 requestId, uint256 position) external {
        Request storage req = _requests[requestId];
        if (req.requester != msg.sender) revert NotRequester(requestId, msg.sender);
        if (req.status != Status.Queued || requestId == _round.requestId) revert NotQueued(requestId);
        uint32 pending = _counters.pending;
        if (_queue.idAt(pending, position) != requestId) revert StaleQueueHint(requestId, position);
        (uint96 tip,) = _queue.removeAt(pending, position);
        _counters.pending = pending - 1;
        req.status = Status.Cancelled;
        req.blockNumber = uint40(block.number);
        if (tip > 0) _transfer(address(this), msg.sender, tip);
        emit RequestCancelled(requestId, tip);
    }

    /// @notice The queue position of a queued request (a view: it scans the queue, for off-chain use).
    function queuePosition(uint256 requestId) external view returns (uint256) {
        uint32 pending = _counters.pending;
        for (uint256 p = 0; p < pending; ++p) {
            if (_queue.idAt(pending, p) == requestId) return p;
        }
        revert NotQueued(requestId);
    }

    /// @notice Send what is left of a closed request's callback deposit to `to`.
    function withdrawDeposit(uint256 requestId, address payable to) external {
        Request memory req = _requests[requestId];
        if (req.requester != msg.sender) revert NotRequester(requestId, msg.sender);
        if (uint8(req.status) < uint8(Status.Finalized)) revert NotClosed(requestId);
        uint256 amount = _deposits[requestId];
        if (amount == 0) revert NothingToWithdraw(requestId);
        _deposits[requestId] = 0;
        _sendEth(to, amount);
    }

    function depositOf(uint256 requestId) external view returns (uint256) {
        return _deposits[requestId];
    }

    // ------------------------------------------------------------------ rounds

    /// @notice Phase one: commit to a hidden prediction with a proof-of-work nonce.
    /// @param commitment keccak256(abi.encode(requestId, msg.sender, prediction, salt)) with a secret salt.
    function commit(uint256 requestId, uint256 nonce, bytes32 commitment) external {
        Round memory round = _currentRound(requestId);
        if (block.number <= round.openBlock) revert ChallengeNotYetAvailable(requestId, round.openBlock);
        if (round.commits == SUBMISSIONS_PER_REQUEST) revert CommitPhaseOver(requestId);
        uint256 deadline = uint256(round.openBlock) + _params.expiryBlocks;
        if (block.number > deadline) revert CommitWindowClosed(requestId, deadline);
        Miner memory miner = _miners[msg.sender];
        if (miner.lastRequest == requestId) revert AlreadyCommitted(requestId, msg.sender);
        if (!ProofOfWork.isValid(_challengeOf(round), msg.sender, nonce, _state.difficulty)) {
            revert InvalidNonce(requestId, msg.sender, nonce);
        }
        uint256 index = round.commits;
        _entries[index] = uint256(uint160(msg.sender)) << 96;
        _commitments[index] = commitment;
        _miners[msg.sender] = Miner(uint32(requestId), uint8(index), miner.owedBase, miner.owedTip);
        emit Committed(requestId, msg.sender, index);
        if (index + 1 < SUBMISSIONS_PER_REQUEST) {
            _round.commits = uint8(index + 1);
        } else {
            (_round.commits, _round.revealBlock) = (uint8(index + 1), uint32(block.number));
            emit RevealPhaseStarted(requestId, block.number + _params.revealBlocks);
        }
    }

    /// @notice Phase two: reveal the committed prediction and salt. The fifth reveal closes the round.
    function reveal(uint256 requestId, int256 prediction, bytes32 salt) external {
        Round memory round = _currentRound(requestId);
        if (round.revealBlock == 0) revert NotRevealPhase(requestId);
        uint256 deadline = uint256(round.revealBlock) + _params.revealBlocks;
        if (block.number > deadline) revert RevealWindowClosed(requestId, deadline);
        Miner memory miner = _miners[msg.sender];
        if (miner.lastRequest != requestId) revert NotCommitted(requestId, msg.sender);
        uint8 bit = uint8(1 << miner.slot);
        if (round.revealedMask & bit != 0) revert AlreadyRevealed(requestId, msg.sender);
        if (keccak256(abi.encode(requestId, msg.sender, prediction, salt)) != _commitments[miner.slot]) {
            revert CommitmentMismatch(requestId, msg.sender);
        }
        _entries[miner.slot] = _packEntry(msg.sender, prediction);
        emit Revealed(requestId, msg.sender, prediction);
        round.revealedMask |= bit;
        if (round.revealedMask == 0x1f) {
            _finalize(round);
        } else {
            _round.revealedMask = round.revealedMask;
        }
    }

    /// @notice Close a round whose reveal window has passed, with the reveals that came in.
    function closeRound(uint256 requestId) external {
        Round memory round = _currentRound(requestId);
        if (round.revealBlock == 0) revert NotRevealPhase(requestId);
        uint256 deadline = uint256(round.revealBlock) + _params.revealBlocks;
        if (block.number <= deadline) revert RevealWindowOpen(requestId, deadline);
        _finalize(round);
    }

    /// @notice Close the current request when five commitments did not come in time; its tip goes back
    /// to the requester and the difficulty eases.
    function expireRequest(uint256 requestId) external {
        Round memory round = _currentRound(requestId);
        uint256 expiresAt = uint256(round.openBlock) + _params.expiryBlocks;
        if (round.revealBlock != 0 || block.number <= expiresAt) revert NotExpired(requestId, expiresAt);

        Request memory req = _close(requestId, Status.Expired);
        if (round.tip > 0) _transfer(address(this), req.requester, round.tip);
        // The request may have been too hard to finish in time: ease the next one.
        uint64 eased = _state.difficulty / 2;
        if (eased < _params.minDifficulty) eased = _params.minDifficulty;
        _state.difficulty = eased;
        emit RequestExpired(requestId, round.tip, round.commits, eased);
        _advance();
        _callback(requestId, req, INVALID_INPUT, Status.Expired, 0);
    }

    /// @notice Mint and transfer the caller's accrued rewards.
    function claimRewards() external returns (uint256 base, uint256 tips) {
        Miner storage miner = _miners[msg.sender];
        (base, tips) = (miner.owedBase, miner.owedTip);
        if (base == 0 && tips == 0) revert NothingToClaim(msg.sender);
        (miner.owedBase, miner.owedTip) = (0, 0);
        if (base > 0) _mint(msg.sender, base);
        if (tips > 0) _transfer(address(this), msg.sender, tips);
        emit RewardsClaimed(msg.sender, base, tips);
    }

    // ---------------------------------------------------------------- views

    /// @notice Everything a miner needs for the current round (requestId 0 when idle). The challenge is
    /// zero in the opening block, where it cannot be known yet.
    function getCurrentRound() external view returns (CurrentRound memory r) {
        Round memory round = _round;
        r.requestId = round.requestId;
        r.difficulty = _state.difficulty;
        if (round.requestId == 0) return r;
        if (block.number > round.openBlock) r.challenge = _challengeOf(round);
        r.modelId = _requests[round.requestId].modelId;
        r.openBlock = round.openBlock;
        r.commits = round.commits;
        r.revealedMask = round.revealedMask;
        r.commitDeadline = uint256(round.openBlock) + _params.expiryBlocks;
        if (round.revealBlock != 0) r.revealDeadline = uint256(round.revealBlock) + _params.revealBlocks;
    }

    /// @notice The challenge of a round opened in block `openBlock` (whose hash is `openBlockHash`).
    function challengeFor(bytes32 openBlockHash, uint256 requestId) public view returns (bytes32) {
        return keccak256(abi.encodePacked(openBlockHash, address(this), requestId));
    }

    function getRequest(uint256 requestId)
        external
        view
        returns (address requester, uint256 modelId, uint256 callbackGasLimit, Status status)
    {
        Request memory req = _requests[requestId];
        return (req.requester, req.modelId, req.callbackGasLimit, requestStatus(requestId));
    }

    /// @notice The stored outcome of a closed request (pull-style read). `prediction` is meaningful for
    /// Finalized only; `agreeing` is the number of revealed votes that agreed with it.
    function getResult(uint256 requestId)
        external
        view
        returns (int256 prediction, Status status, uint256 agreeing, uint256 closedBlock)
    {
        status = requestStatus(requestId);
        if (uint8(status) >= uint8(Status.Finalized)) closedBlock = _requests[requestId].blockNumber;
        Result memory result = _results[requestId];
        agreeing = result.agreeing;
        if (status == Status.Finalized) prediction = result.prediction;
        else if (status == Status.InvalidInput) prediction = INVALID_INPUT;
    }

    function requestStatus(uint256 requestId) public view returns (Status) {
        Request memory req = _requests[requestId];
        if (req.status != Status.Queued) return req.status; // None, or closed
        if (requestId == _round.requestId) return Status.Current;
        return Status.Queued;
    }

    /// @notice Whether `miner` has a commitment in the current round.
    function hasCommitted(address miner) external view returns (bool) {
        uint256 current = _round.requestId;
        return current != 0 && _miners[miner].lastRequest == current;
    }

    /// @notice Rewards `miner` has earned and not yet claimed: (base reward, tip shares).
    function owedRewards(address miner) external view returns (uint256 base, uint256 tips) {
        Miner memory m = _miners[miner];
        return (m.owedBase, m.owedTip);
    }

    function pendingCount() external view returns (uint256) {
        return _counters.pending;
    }

    /// @notice Current proof-of-work difficulty (expected hashes per valid nonce).
    function difficulty() external view returns (uint256) {
        return _state.difficulty;
    }

    /// @notice EML issued as base rewards since deployment (claimed or not).
    function totalRewardsIssued() external view returns (uint256) {
        return _state.totalIssued;
    }

    // ------------------------------------------------------------- internals

    function _currentRound(uint256 requestId) private view returns (Round memory round) {
        round = _round;
        if (round.requestId == 0) revert NoCurrentRequest();
        if (requestId != round.requestId) revert NotCurrentRequest(requestId, round.requestId);
    }

    function _challengeOf(Round memory round) private view returns (bytes32) {
        return challengeFor(blockhash(round.openBlock), round.requestId);
    }

    /// @dev What a closing round decided.
    struct Outcome {
        int256 prediction;
        Status status;
        uint8 agreeingMask;
        uint256 agreeing;
        uint256 base;
        uint256 tipShare;
    }

    function _finalize(Round memory round) private {
        uint256 requestId = round.requestId;
        Request memory req = _requests[requestId];
        address[5] memory miners;
        int256[5] memory values;
        for (uint256 i = 0; i < SUBMISSIONS_PER_REQUEST; ++i) {
            uint256 e = _entries[i];
            miners[i] = address(uint160(e >> 96));
            values[i] = _unpackPrediction(int96(uint96(e)));
        }
        Outcome memory o = _decide(req.modelId, values, round.revealedMask);
        if (o.status == Status.NoConsensus) {
            if (round.tip > 0) _transfer(address(this), req.requester, round.tip);
        } else {
            (o.base, o.tipShare) = _reward(miners, o.agreeingMask, o.agreeing, round.tip);
        }
        _results[requestId] = Result(
            o.status == Status.Finalized ? int96(o.prediction) : int96(0),
            uint8(o.agreeing),
            round.revealedMask,
            o.agreeingMask
        );
        _close(requestId, o.status);
        _retarget(_state.difficulty, round.openTime);
        emit PredictionFinalized(
            requestId,
            o.prediction,
            o.status,
            o.agreeing,
            miners,
            round.revealedMask,
            o.agreeingMask,
            o.base,
            o.tipShare
        );
        _advance();
        _callback(requestId, req, o.prediction, o.status, uint8(o.agreeing));
    }

    /// @dev Consensus over the revealed values and the status it gives: a result only with a quorum.
    function _decide(uint256 modelId, int256[5] memory values, uint8 revealed) private view returns (Outcome memory o) {
        Model storage model = _models[modelId];
        Parameters memory p = _params;
        uint8 agreeing;
        (o.prediction, o.status, o.agreeingMask, agreeing) =
            rules.decide(model.kind, model.decimals, values, revealed, p.regressionToleranceBps, p.quorum);
        o.agreeing = agreeing;
    }

    /// @dev Accrues to each agreeing miner the base reward (time-weighted, so issuance per hour is capped
    /// whatever the number of rounds) and an equal share of the tip (the remainder to the first of them).
    function _reward(address[5] memory miners, uint8 mask, uint256 agreeing, uint256 tip)
        private
        returns (uint256 base, uint256 tipShare)
    {
        Parameters memory p = _params;
        State memory state = _state;
        uint256 elapsed = block.timestamp - state.lastRewardTime;
        base = elapsed >= p.targetSolveTime ? p.baseReward : uint256(p.baseReward) * elapsed / p.targetSolveTime;
        state.lastRewardTime = uint40(block.timestamp);
        state.totalIssued += uint128(base * agreeing);
        _state = state;
        tipShare = tip / agreeing;
        uint256 dust = tip - tipShare * agreeing;
        for (uint256 i = 0; i < SUBMISSIONS_PER_REQUEST; ++i) {
            if (mask & (1 << i) == 0) continue;
            Miner storage m = _miners[miners[i]];
            (m.owedBase, m.owedTip) = (m.owedBase + uint96(base), m.owedTip + uint96(tipShare + dust));
            dust = 0;
        }
    }

    /// @dev Records the final status and block in the request's own slot and returns the request.
    function _close(uint256 requestId, Status status) private returns (Request memory req) {
        Request storage stored = _requests[requestId];
        req = stored;
        stored.status = status;
        stored.blockNumber = uint40(block.number);
    }

    /// @dev Bounded retarget of a round's duration (opening to close): at most x2 or /2 per round.
    function _retarget(uint64 d, uint256 openTime) private returns (uint64) {
        uint256 elapsed = block.timestamp - openTime;
        if (elapsed == 0) elapsed = 1;
        Parameters memory p = _params;
        uint256 next = uint256(d) * p.targetSolveTime / elapsed;
        if (next > uint256(d) * 2) next = uint256(d) * 2;
        if (next < d / 2) next = d / 2;
        if (next < p.minDifficulty) next = p.minDifficulty;
        if (next > p.maxDifficulty) next = p.maxDifficulty;
        _state.difficulty = uint64(next);
        return uint64(next);
    }

    /// @dev Open the next queued request, if any. Requests that waited longer than maxQueueBlocks are
    /// expired and refunded on the way, at most MAX_STALE_SKIPS per call so the work stays bounded.
    function _advance() private {
        uint32 pending = _counters.pending;
        uint256 skipped = 0;
        while (pending > 0) {
            (uint96 tip, uint32 nextId) = _queue.pop(pending);
            --pending;
            Request storage next = _requests[nextId];
            if (skipped < MAX_STALE_SKIPS && block.number > uint256(next.blockNumber) + _params.maxQueueBlocks) {
                ++skipped;
                next.status = Status.Expired;
                next.blockNumber = uint40(block.number);
                if (tip > 0) _transfer(address(this), next.requester, tip);
                emit RequestExpired(nextId, tip, 0, _state.difficulty);
                continue;
            }
            _counters.pending = pending;
            _startRound(nextId, tip);
            return;
        }
        _counters = Counters(_counters.requests, pending, false);
        delete _round;
    }

    /// @dev Opens a round in this block; its challenge needs this block's hash, so it exists from the
    /// next block on. Parameters changed during the previous round apply from here.
    function _startRound(uint256 requestId, uint96 tip) private {
        if (_state.parametersPending) {
            Parameters memory p = _nextParams;
            _params = p;
            _state.parametersPending = false;
            _clampDifficulty(p);
            emit ParametersUpdated(p, true);
        }
        _round = Round(uint32(requestId), 0, 0, uint32(block.number), 0, uint40(block.timestamp), tip);
        emit RoundOpened(
            requestId, _requests[requestId].modelId, _state.difficulty, block.number + _params.expiryBlocks
        );
    }

    /// @dev Calls the consumer with exactly `callbackGasLimit` gas and never reverts because of it. The
    /// closing transaction's sender is reimbursed, from the request's deposit, the gas the callback used
    /// plus CALLBACK_OVERHEAD at this transaction's gas price.
    function _callback(uint256 requestId, Request memory req, int256 prediction, Status status, uint8 agreeing)
        private
    {
        uint256 limit = req.callbackGasLimit;
        if (limit == 0 || req.requester.code.length == 0) return;
        // EIP-150 forwards at most 63/64 of the remaining gas: make sure the consumer gets all of `limit`.
        uint256 required = limit + limit / 63 + CALLBACK_GAS_RESERVE;
        if (gasleft() < required) revert InsufficientGasForCallback(required, gasleft());
        bytes memory data =
            abi.encodeCall(IEthMLConsumer.ethmlCallback, (requestId, prediction, uint8(status), agreeing));
        address target = req.requester;
        bool ok;
        uint256 before = gasleft();
        assembly ("memory-safe") {
            // No return data is copied, so a consumer cannot grief with a huge revert reason.
            ok := call(limit, target, 0, add(data, 32), mload(data), 0, 0)
        }
        uint256 used = before - gasleft();
        if (!ok) emit CallbackFailed(requestId, target);
        _reimburse(requestId, used + CALLBACK_OVERHEAD);
    }

    /// @dev Pays the closing transaction's sender `gasUsed` at its gas price, at most the deposit.
    function _reimburse(uint256 requestId, uint256 gasUsed) private {
        uint256 deposit = _deposits[requestId];
        uint256 pay = gasUsed * tx.gasprice;
        if (pay > deposit) pay = deposit;
        if (pay == 0) return;
        _deposits[requestId] = deposit - pay;
        emit CallbackReimbursed(requestId, msg.sender, pay);
        _sendEth(msg.sender, pay);
    }

    function _sendEth(address to, uint256 amount) private {
        (bool sent,) = payable(to).call{value: amount}("");
        if (!sent) revert EthTransferFailed(to, amount);
    }

    /// @dev Predictions are kept as int96 (INVALID_INPUT maps to type(int96).min).
    function _packEntry(address miner, int256 prediction) private pure returns (uint256) {
        int96 p;
        if (prediction == INVALID_INPUT) {
            p = type(int96).min;
        } else {
            if (prediction <= type(int96).min || prediction > type(int96).max) revert PredictionOutOfRange(prediction);
            p = int96(prediction);
        }
        return (uint256(uint160(miner)) << 96) | uint256(uint96(p));
    }

    function _unpackPrediction(int96 p) private pure returns (int256) {
        return p == type(int96).min ? INVALID_INPUT : int256(p);
    }
}
