// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {PredictionQueue} from "./PredictionQueue.sol";
import {Consensus} from "./Consensus.sol";
import {ProofOfWork} from "./ProofOfWork.sol";

/// @notice Receiver of prediction results (see UsingEthML).
interface IEthMLConsumer {
    function ethmlCallback(uint256 requestId, int256 prediction, uint8 status) external;
}

/// @title EthML: a proof-of-work oracle for machine-learning predictions.
/// @notice EML token, model registry, prioritised request queue, mining rounds of five
/// submissions, consensus, rewards, consumer callbacks and request expiry.
/// @dev The proof of work (shared bit for bit with the C core and the Python reference):
/// `uint256(keccak256(abi.encodePacked(challenge, miner, nonce))) < type(uint256).max / difficulty`.
contract EthML is ERC20, AccessControl {
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
        Expired
    }

    struct Model {
        string cid;
        bytes32 artifactSha256;
        ModelKind kind;
        uint8 decimals;
        uint16 featureCount;
        bool active;
    }

    /// @dev Two slots. Set at deployment and by the admin with `setParameters`.
    struct Parameters {
        /// @dev EML (wei) minted to each agreeing miner per finalized request.
        uint96 baseReward;
        /// @dev Solve time (seconds) the difficulty retarget steers toward.
        uint32 targetSolveTime;
        uint128 minDifficulty;
        uint128 maxDifficulty;
        /// @dev Blocks after which the current request can be expired by anyone.
        uint64 expiryBlocks;
        /// @dev At most 16,777,215 (uint24).
        uint32 maxCallbackGasLimit;
        /// @dev Regression agreement band around the median, in basis points of |median|.
        uint16 regressionToleranceBps;
    }

    /// @dev One slot per request (the tip lives in the queue entry, then in the round).
    /// `status` is written only when the request closes (Finalized, InvalidInput, Expired) together
    /// with `closedBlock`; before that the status is derived (Current if it is the round's, else Queued).
    struct Request {
        address requester;
        uint16 modelId;
        uint24 callbackGasLimit;
        uint8 cidLength;
        Status status;
        uint40 closedBlock;
    }

    /// @dev Counters packed in one slot: ids handed out and entries waiting in the queue.
    struct Counters {
        uint32 requests;
        uint32 pending;
    }

    /// @dev The round being mined, packed into one slot.
    struct Round {
        uint64 requestId;
        uint8 submissions;
        uint40 startTime;
        uint40 startBlock;
        uint96 tip;
    }

    // -------------------------------------------------------------- constants

    bytes32 public constant MODEL_ADMIN_ROLE = keccak256("MODEL_ADMIN_ROLE");
    /// @notice The value miners submit when a data point cannot be used as model input.
    int256 public constant INVALID_INPUT = type(int256).min;
    uint256 public constant SUBMISSIONS_PER_REQUEST = 5;
    uint256 public constant MAX_CID_LENGTH = 64;
    uint8 public constant MAX_DECIMALS = 18;
    /// @dev Gas kept back after the callback so finalization can always complete.
    uint256 public constant CALLBACK_GAS_RESERVE = 10_000;

    // ----------------------------------------------------------------- errors

    error UnknownModel(uint256 modelId);
    error ModelInactive(uint256 modelId);
    error EmptyCid();
    error CidTooLong(uint256 length, uint256 maxLength);
    error CallbackGasLimitTooHigh(uint256 requested, uint256 maximum);
    error TipTooLarge(uint256 tip);
    error NoCurrentRequest();
    error NotCurrentRequest(uint256 requestId, uint256 currentRequestId);
    error AlreadySubmitted(uint256 requestId, address miner);
    error InvalidNonce(uint256 requestId, address miner, uint256 nonce);
    error PredictionOutOfRange(int256 prediction);
    error NotExpired(uint256 requestId, uint256 expiresAtBlock);
    error InsufficientGasForCallback(uint256 required, uint256 available);
    error InvalidParameters(string reason);
    error LengthMismatch(uint256 holders, uint256 amounts);
    error TooManyModels();
    error TooManyRequests();

    // ----------------------------------------------------------------- events

    event ModelRegistered(
        uint256 indexed modelId,
        string cid,
        bytes32 artifactSha256,
        ModelKind kind,
        uint8 decimals,
        uint16 featureCount
    );
    event ModelDeactivated(uint256 indexed modelId);
    event ParametersUpdated(Parameters parameters);
    event PredictionRequested(
        uint256 indexed requestId,
        address indexed requester,
        uint256 indexed modelId,
        string dataCid,
        uint256 tip,
        uint256 callbackGasLimit
    );
    event NewChallenge(
        bytes32 challenge,
        uint256 indexed requestId,
        uint256 difficulty,
        uint256 indexed modelId,
        string dataCid,
        uint256 expiresAtBlock
    );
    event SolutionSubmitted(uint256 indexed requestId, address indexed miner, int256 prediction, uint256 index);
    event PredictionFinalized(
        uint256 indexed requestId,
        int256 prediction,
        Status status,
        address[5] miners,
        uint8 agreeingMask,
        uint256 rewardPerMiner,
        uint256 nextDifficulty
    );
    event RequestExpired(uint256 indexed requestId, uint256 refundedTip, uint256 submissions);
    event CallbackFailed(uint256 indexed requestId, address indexed consumer);

    // ------------------------------------------------------------------ state

    Parameters private _params;
    uint256 public modelCount;
    mapping(uint256 => Model) private _models;

    Counters private _counters;
    mapping(uint256 => Request) private _requests;
    /// @dev The data CID as raw bytes in two words (CIDs are at most 64 bytes).
    mapping(uint256 => bytes32[2]) private _cids;
    /// @dev Per request, the five submissions in order: miner address (high 160 bits) | int96 prediction.
    /// The consensus is a pure function of these and the model kind, so it is not stored twice.
    mapping(uint256 => uint256[5]) private _entries;

    PredictionQueue.Heap private _queue;
    Round private _round;
    /// @dev The current round's challenge; while idle, the last challenge mixed with the last nonce.
    bytes32 private _challenge;
    /// @notice Current proof-of-work difficulty (expected hashes per valid nonce).
    uint128 public difficulty;
    /// @notice EML minted as mining rewards since deployment.
    uint128 public totalRewardsMinted;

    constructor(address admin, address[] memory holders, uint256[] memory amounts, Parameters memory params)
        ERC20("EthML Token", "EML")
    {
        if (holders.length != amounts.length) revert LengthMismatch(holders.length, amounts.length);
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _grantRole(MODEL_ADMIN_ROLE, admin);
        for (uint256 i = 0; i < holders.length; ++i) {
            _mint(holders[i], amounts[i]);
        }
        _setParameters(params);
        difficulty = params.minDifficulty;
        _challenge = keccak256(abi.encodePacked(block.chainid, address(this), _previousBlockhash()));
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

    function setParameters(Parameters calldata params) external onlyRole(DEFAULT_ADMIN_ROLE) {
        _setParameters(params);
        if (difficulty < params.minDifficulty) difficulty = params.minDifficulty;
        if (difficulty > params.maxDifficulty) difficulty = params.maxDifficulty;
    }

    function parameters() external view returns (Parameters memory) {
        return _params;
    }

    function _setParameters(Parameters memory params) private {
        if (params.minDifficulty == 0) revert InvalidParameters("minDifficulty is zero");
        if (params.maxDifficulty < params.minDifficulty) revert InvalidParameters("maxDifficulty below minDifficulty");
        if (params.targetSolveTime == 0) revert InvalidParameters("targetSolveTime is zero");
        if (params.expiryBlocks == 0) revert InvalidParameters("expiryBlocks is zero");
        if (params.regressionToleranceBps > 10_000) revert InvalidParameters("regressionToleranceBps above 10000");
        if (params.maxCallbackGasLimit > type(uint24).max) revert InvalidParameters("maxCallbackGasLimit above 2^24-1");
        _params = params;
        emit ParametersUpdated(params);
    }

    // -------------------------------------------------------------- requests

    /// @notice Ask for a prediction of `modelId` on the data point at IPFS `dataCid`.
    /// @param tip EML pulled from the caller (approve this contract first), shared by the agreeing miners.
    /// @param callbackGasLimit Gas for `ethmlCallback` on the caller; 0 for no callback (pull the result).
    function requestPrediction(uint256 modelId, string calldata dataCid, uint256 tip, uint256 callbackGasLimit)
        external
        returns (uint256 requestId)
    {
        Model storage m = _existingModel(modelId);
        if (!m.active) revert ModelInactive(modelId);
        uint256 len = bytes(dataCid).length;
        if (len == 0) revert EmptyCid();
        if (len > MAX_CID_LENGTH) revert CidTooLong(len, MAX_CID_LENGTH);
        if (callbackGasLimit > _params.maxCallbackGasLimit) {
            revert CallbackGasLimitTooHigh(callbackGasLimit, _params.maxCallbackGasLimit);
        }
        if (tip > type(uint96).max) revert TipTooLarge(tip);
        if (tip > 0) {
            _spendAllowance(msg.sender, address(this), tip);
            _transfer(msg.sender, address(this), tip);
        }

        Counters memory counters = _counters;
        if (counters.requests == type(uint32).max) revert TooManyRequests();
        requestId = counters.requests + 1;
        _requests[requestId] =
            Request(msg.sender, uint16(modelId), uint24(callbackGasLimit), uint8(len), Status.Queued, 0);
        bytes32 lo;
        bytes32 hi;
        assembly ("memory-safe") {
            lo := calldataload(dataCid.offset)
            hi := calldataload(add(dataCid.offset, 32))
        }
        // Zero the bytes past the end so stored words never carry calldata that follows the CID.
        if (len < 32) {
            lo &= ~bytes32(type(uint256).max >> (len * 8));
            hi = 0;
        } else if (len < 64) {
            hi &= ~bytes32(type(uint256).max >> ((len - 32) * 8));
        }
        _cids[requestId][0] = lo;
        if (hi != 0) _cids[requestId][1] = hi;
        emit PredictionRequested(requestId, msg.sender, modelId, dataCid, tip, callbackGasLimit);

        if (_round.requestId == 0) {
            _counters = Counters(uint32(requestId), counters.pending);
            _startRound(requestId, uint96(tip), 0);
        } else {
            _queue.push(counters.pending, uint96(tip), uint32(requestId));
            _counters = Counters(uint32(requestId), counters.pending + 1);
        }
    }

    /// @notice Number of requests ever made (ids run from 1 to requestCount).
    function requestCount() external view returns (uint256) {
        return _counters.requests;
    }

    /// @notice Submit a prediction for the current request with a proof-of-work nonce.
    function submitMiningSolution(uint256 requestId, int256 prediction, uint256 nonce) external {
        Round memory round = _round;
        if (round.requestId == 0) revert NoCurrentRequest();
        if (requestId != round.requestId) revert NotCurrentRequest(requestId, round.requestId);
        uint256 packed = _packEntry(msg.sender, prediction);
        if (!ProofOfWork.isValid(_challenge, msg.sender, nonce, difficulty)) {
            revert InvalidNonce(requestId, msg.sender, nonce);
        }

        uint256[5] storage entries = _entries[requestId];
        uint256 n = round.submissions;
        for (uint256 i = 0; i < n; ++i) {
            if (address(uint160(entries[i] >> 96)) == msg.sender) revert AlreadySubmitted(requestId, msg.sender);
        }
        entries[n] = packed;
        emit SolutionSubmitted(requestId, msg.sender, prediction, n);

        if (n + 1 < SUBMISSIONS_PER_REQUEST) {
            _round.submissions = uint8(n + 1);
        } else {
            _finalize(round, entries, nonce);
        }
    }

    /// @notice Close the current request when it has not finalized in time; its tip goes back to the requester.
    function expireRequest(uint256 requestId) external {
        Round memory round = _round;
        if (round.requestId == 0) revert NoCurrentRequest();
        if (requestId != round.requestId) revert NotCurrentRequest(requestId, round.requestId);
        uint256 expiresAt = uint256(round.startBlock) + _params.expiryBlocks;
        if (block.number <= expiresAt) revert NotExpired(requestId, expiresAt);

        Request memory req = _close(requestId, Status.Expired);
        if (round.tip > 0) _transfer(address(this), req.requester, round.tip);
        // The request may have been too hard to finish in time: ease the next one.
        uint128 eased = difficulty / 2;
        difficulty = eased < _params.minDifficulty ? _params.minDifficulty : eased;
        emit RequestExpired(requestId, round.tip, round.submissions);
        _advance(0);
        if (req.callbackGasLimit > 0) _callback(requestId, req, INVALID_INPUT, Status.Expired);
    }

    // ---------------------------------------------------------------- views

    /// @notice Everything a miner needs to work on the current request (requestId 0 when idle).
    function getCurrentVariables()
        external
        view
        returns (
            bytes32 challenge,
            uint256 requestId,
            uint256 currentDifficulty,
            uint256 modelId,
            string memory dataCid,
            uint256 submissions,
            uint256 expiresAtBlock
        )
    {
        Round memory round = _round;
        requestId = round.requestId;
        challenge = _challenge;
        currentDifficulty = difficulty;
        if (requestId != 0) {
            modelId = _requests[requestId].modelId;
            dataCid = _cid(requestId);
            submissions = round.submissions;
            expiresAtBlock = uint256(round.startBlock) + _params.expiryBlocks;
        }
    }

    function getRequest(uint256 requestId)
        external
        view
        returns (address requester, uint256 modelId, string memory dataCid, uint256 callbackGasLimit, Status status)
    {
        Request memory req = _requests[requestId];
        return (req.requester, req.modelId, _cid(requestId), req.callbackGasLimit, requestStatus(requestId));
    }

    /// @notice The stored outcome of a closed request (pull-style read).
    function getResult(uint256 requestId)
        external
        view
        returns (int256 prediction, Status status, address[5] memory miners, int256[5] memory values, uint256 closedBlock)
    {
        Request memory req = _requests[requestId];
        status = requestStatus(requestId);
        closedBlock = req.closedBlock;
        (miners, values) = _submissions(_entries[requestId]);
        if (status == Status.Finalized || status == Status.InvalidInput) {
            (prediction,) = _consensus(_models[req.modelId].kind, values);
        }
    }

    function requestStatus(uint256 requestId) public view returns (Status) {
        Request memory req = _requests[requestId];
        if (req.status != Status.Queued) return req.status; // None, or closed
        if (requestId == _round.requestId) return Status.Current;
        return Status.Queued;
    }

    /// @notice Whether `miner` already has a submission on the current request.
    function hasSubmitted(address miner) external view returns (bool) {
        Round memory round = _round;
        for (uint256 i = 0; i < round.submissions; ++i) {
            if (address(uint160(_entries[round.requestId][i] >> 96)) == miner) return true;
        }
        return false;
    }

    function pendingCount() external view returns (uint256) {
        return _counters.pending;
    }

    // ------------------------------------------------------------- internals

    function _finalize(Round memory round, uint256[5] storage entries, uint256 nonce) private {
        (address[5] memory miners, int256[5] memory values) = _submissions(entries);
        (int256 consensus, uint8 mask) = _consensus(_models[_requests[round.requestId].modelId].kind, values);
        Status status = _settle(round, miners, consensus, mask);
        Request memory req = _close(round.requestId, status);
        _advance(nonce);
        if (req.callbackGasLimit > 0) _callback(round.requestId, req, consensus, status);
    }

    /// @dev Pays the miners, retargets the difficulty and announces the result.
    function _settle(Round memory round, address[5] memory miners, int256 consensus, uint8 mask)
        private
        returns (Status status)
    {
        status = consensus == INVALID_INPUT ? Status.InvalidInput : Status.Finalized;
        uint256 base = _reward(miners, mask, round.tip);
        uint128 next = _retarget(round.startTime);
        emit PredictionFinalized(round.requestId, consensus, status, miners, mask, base, next);
    }

    /// @dev Pays the agreeing miners: the base reward is minted and the tip shared equally (the remainder
    /// to the first of them). The escrowed tip is burned and re-minted with the reward, so each miner
    /// gets one transfer and the supply still grows only by the base rewards.
    function _reward(address[5] memory miners, uint8 mask, uint256 tip) private returns (uint256 base) {
        uint256 agreeing = Consensus.popcount(mask);
        uint256 share = tip / agreeing;
        uint256 dust = tip - share * agreeing;
        base = _params.baseReward;
        if (tip > 0) _burn(address(this), tip);
        for (uint256 i = 0; i < SUBMISSIONS_PER_REQUEST; ++i) {
            if (mask & (1 << i) == 0) continue;
            uint256 pay = base + share + dust;
            dust = 0;
            if (pay > 0) _mint(miners[i], pay);
        }
        totalRewardsMinted += uint128(base * agreeing);
    }

    function _submissions(uint256[5] storage entries)
        private
        view
        returns (address[5] memory miners, int256[5] memory values)
    {
        for (uint256 i = 0; i < SUBMISSIONS_PER_REQUEST; ++i) {
            uint256 e = entries[i];
            miners[i] = address(uint160(e >> 96));
            values[i] = _unpackPrediction(int96(uint96(e)));
        }
    }

    function _consensus(ModelKind kind, int256[5] memory values) private view returns (int256 consensus, uint8 mask) {
        if (kind == ModelKind.Classification) {
            consensus = Consensus.mode(values);
            mask = Consensus.agreeExact(values, consensus);
        } else {
            consensus = Consensus.median(values);
            mask = consensus == INVALID_INPUT
                ? Consensus.agreeExact(values, consensus)
                : Consensus.agreeWithin(values, consensus, _params.regressionToleranceBps, INVALID_INPUT);
        }
    }

    /// @dev Records the final status and block in the request's own slot and returns the request.
    function _close(uint256 requestId, Status status) private returns (Request memory req) {
        Request storage stored = _requests[requestId];
        req = stored;
        stored.status = status;
        stored.closedBlock = uint40(block.number);
    }

    /// @dev Bounded retarget: at most x2 or /2 per request, within [minDifficulty, maxDifficulty].
    function _retarget(uint256 startTime) private returns (uint128) {
        uint256 elapsed = block.timestamp - startTime;
        if (elapsed == 0) elapsed = 1;
        uint256 d = difficulty;
        Parameters memory p = _params;
        uint256 next = d * p.targetSolveTime / elapsed;
        if (next > d * 2) next = d * 2;
        if (next < d / 2) next = d / 2;
        if (next < p.minDifficulty) next = p.minDifficulty;
        if (next > p.maxDifficulty) next = p.maxDifficulty;
        return difficulty = uint128(next);
    }

    /// @dev Close the current round and open the next queued request, if any.
    function _advance(uint256 nonce) private {
        uint32 pending = _counters.pending;
        if (pending == 0) {
            // Idle: keep the last nonce in the seed of the next challenge.
            _challenge = keccak256(abi.encodePacked(_challenge, nonce));
            delete _round;
            return;
        }
        (uint96 tip, uint32 nextId) = _queue.pop(pending);
        _counters.pending = pending - 1;
        _startRound(nextId, tip, nonce);
    }

    /// @dev The challenge is derived from the previous challenge, the last nonce, the previous block
    /// hash and the request id, so nobody can start grinding before the request becomes current.
    function _startRound(uint256 requestId, uint96 tip, uint256 lastNonce) private {
        bytes32 challenge = keccak256(abi.encodePacked(_challenge, lastNonce, _previousBlockhash(), requestId));
        _challenge = challenge;
        _round = Round(uint64(requestId), 0, uint40(block.timestamp), uint40(block.number), tip);
        emit NewChallenge(
            challenge,
            requestId,
            difficulty,
            _requests[requestId].modelId,
            _cid(requestId),
            block.number + _params.expiryBlocks
        );
    }

    /// @dev Calls the consumer with exactly `callbackGasLimit` gas and never reverts because of it.
    function _callback(uint256 requestId, Request memory req, int256 prediction, Status status) private {
        if (req.requester.code.length == 0) return;
        uint256 limit = req.callbackGasLimit;
        // EIP-150 forwards at most 63/64 of the remaining gas: make sure the consumer gets all of `limit`.
        uint256 required = limit + limit / 63 + CALLBACK_GAS_RESERVE;
        if (gasleft() < required) revert InsufficientGasForCallback(required, gasleft());
        bytes memory data = abi.encodeCall(IEthMLConsumer.ethmlCallback, (requestId, prediction, uint8(status)));
        address target = req.requester;
        bool ok;
        assembly ("memory-safe") {
            // No return data is copied, so a consumer cannot grief with a huge revert reason.
            ok := call(limit, target, 0, add(data, 32), mload(data), 0, 0)
        }
        if (!ok) emit CallbackFailed(requestId, target);
    }

    function _previousBlockhash() private view returns (bytes32) {
        return block.number == 0 ? bytes32(0) : blockhash(block.number - 1);
    }

    function _cid(uint256 requestId) private view returns (string memory cid) {
        uint256 len = _requests[requestId].cidLength;
        bytes32[2] storage words = _cids[requestId];
        bytes32 lo = words[0];
        bytes32 hi = len > 32 ? words[1] : bytes32(0);
        cid = new string(len);
        assembly ("memory-safe") {
            mstore(add(cid, 32), lo)
            if gt(len, 32) { mstore(add(cid, 64), hi) }
        }
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
