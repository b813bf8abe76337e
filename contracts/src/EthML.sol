// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";
import {EMLToken} from "./EMLToken.sol";
import {EthMLSettlement} from "./EthMLSettlement.sol";
import {ModelRegistry} from "./ModelRegistry.sol";
import {OracleStorage} from "./OracleStorage.sol";
import {ProofOfWork} from "./ProofOfWork.sol";
import {RequestBook} from "./RequestBook.sol";
import {RoundRules} from "./RoundRules.sol";

/// @title EthML: a proof-of-work oracle for machine-learning predictions, in rounds of up to K requests.
/// @notice A round opens for up to K queued requests (RequestBook). Five miners each commit, with one
/// proof-of-work nonce and a bond, to a hidden vector of answers, one per request; then they reveal; then
/// the round closes and every request is decided on its own (RoundSettlement, run from EthMLSettlement
/// by delegatecall in this contract's storage).
/// @dev The proof of work (shared bit for bit with the C core and the Python reference):
/// `uint256(keccak256(abi.encodePacked(challenge, miner, nonce))) < type(uint256).max / difficulty`, where
/// `challenge = keccak256(abi.encodePacked(blockhash(openBlock), address(this), roundId))` and
/// `openBlock` is the block that opened the round: nobody knows it before that block is sealed, and no
/// commitment is accepted in the opening block itself.
contract EthML is RequestBook {
    /// @notice The code of the closing transactions (see EthMLSettlement), created with this contract.
    EthMLSettlement public immutable settlement;

    constructor(EMLToken token_, ModelRegistry registry_, address admin, Parameters memory params)
        OracleStorage(token_, registry_, new RoundRules())
    {
        settlement = new EthMLSettlement(token_, registry_, rules);
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        rules.checkParameters(params);
        _params = params;
        emit ParametersUpdated(params, true);
        _state = State(params.minDifficulty, uint40(block.timestamp), false);
        for (uint256 i = 0; i < MINERS_PER_ROUND; ++i) {
            _hashes[i] = bytes32(uint256(1));
        }
        _roundIds[0] = 1;
        _roundIds[1] = 1;
    }

    // -------------------------------------------------------------------- parameters

    /// @notice New parameters, checked against the hard caps; they take effect when the next round
    /// opens (at once when no round is open), never in the middle of one.
    function setParameters(Parameters calldata params) external onlyRole(DEFAULT_ADMIN_ROLE) {
        rules.checkParameters(params);
        if (!_counters.roundOpen) {
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

    // ------------------------------------------------------------------------ rounds

    /// @notice Phase one: commit to a hidden answer vector with a proof-of-work nonce, bonding the
    /// round's bond (taken from the miner's balance here first, the rest from its EML: no approval).
    /// @param commitment keccak256(abi.encode(roundId, msg.sender, answers, salt)), where `answers`
    /// (int256[]) has one answer per request of the round, in RoundOpened order, and `salt` is secret.
    function commit(uint256 roundId, uint256 nonce, bytes32 commitment) external {
        Round memory round = _current(roundId);
        if (block.number <= round.openBlock) revert ChallengeNotYetAvailable(roundId, round.openBlock);
        if (round.commits == MINERS_PER_ROUND) revert CommitPhaseOver(roundId);
        uint256 deadline = uint256(round.openBlock) + _params.expiryBlocks;
        if (block.number > deadline) revert CommitWindowClosed(roundId, deadline);
        Miner memory miner = _miners[msg.sender];
        if (miner.lastRound == roundId) revert AlreadyCommitted(roundId, msg.sender);
        uint64 current = _state.difficulty;
        if (!ProofOfWork.isValid(_challengeOf(round), msg.sender, nonce, current)) {
            revert InvalidNonce(roundId, msg.sender, nonce);
        }
        uint256 index = round.commits;
        _hashes[index] = commitment;
        uint96 balance = miner.balance;
        if (balance >= round.bond) {
            balance -= round.bond;
        } else {
            uint256 short = round.bond - balance;
            balance = 0;
            token.transferFrom(msg.sender, address(this), short);
        }
        _miners[msg.sender] = Miner(uint32(roundId), uint8(index), balance);
        emit Committed(roundId, msg.sender, index);
        if (index + 1 < MINERS_PER_ROUND) {
            _round.commits = uint8(index + 1);
        } else {
            (_round.commits, _round.revealBlock) = (uint8(index + 1), uint32(block.number));
            uint64 next = _retarget(current, round.openTime);
            emit RevealPhaseStarted(roundId, block.number + _params.revealBlocks, next);
        }
    }

    /// @notice Phase two: open the commitment. Only a hash of (miner, answers) is kept; the vector is in
    /// the `Revealed` event, from which the closing transaction carries it.
    function reveal(uint256 roundId, int256[] calldata answers, bytes32 salt) external {
        Round memory round = _revealing(roundId);
        uint256 slot = _open(round, answers, salt);
        _hashes[slot] = keccak256(abi.encodePacked(msg.sender, answers));
        _round.revealedMask = round.revealedMask | uint8(1 << slot);
    }

    /// @notice The fifth reveal and the close in one transaction: `answers` is the whole table (slot-major,
    /// K answers per slot, the caller's own at its slot) and `miners` the five revealers, as for closeRound.
    function revealAndClose(uint256 roundId, bytes32 salt, address[5] calldata miners, int256[] calldata answers)
        external
    {
        (roundId, salt, miners, answers); // the arguments travel in msg.data
        _delegate();
    }

    /// @notice Close the open round with the reveals that came in: once all five revealed, or after the
    /// reveal window. `miners[i]` is slot i's revealer and `answers[i * K + j]` its answer for the round's
    /// j-th request (from the `Revealed` events; slots that did not reveal are ignored). Anyone may call.
    function closeRound(uint256 roundId, address[5] calldata miners, int256[] calldata answers) external {
        (roundId, miners, answers);
        _delegate();
    }

    /// @notice Close a round that did not get five commitments within `expiryBlocks`: its first request
    /// (the highest tip) expires (tip back, `Expired` callback), the others go back to the queue, the
    /// committed miners (`committers`, from the Committed events, in any order) get their bonds back, and
    /// the difficulty halves. Anyone may call.
    function expireRound(uint256 roundId, address[] calldata committers) external {
        (roundId, committers);
        _delegate();
    }

    /// @notice Expire a request that waited in the queue more than `maxQueueBlocks`: its tip goes back and
    /// its consumer is told (`Expired`), as for a request expired in a round. Anyone may call it.
    function expireQueued(uint256 requestId, uint256 position) external {
        (requestId, position);
        _delegate();
    }

    // ------------------------------------------------------------------ miner balances

    /// @notice Take the caller's whole balance here (rewards, bonds back, funds) as EML.
    function claimRewards() external returns (uint256 amount) {
        amount = _miners[msg.sender].balance;
        if (amount == 0) revert NothingToClaim(msg.sender);
        _claim(amount);
    }

    /// @notice Take `amount` of the caller's balance here, leaving the rest to bond future commitments.
    function claim(uint256 amount) external {
        uint256 balance = _miners[msg.sender].balance;
        if (amount == 0 || amount > balance) revert ClaimTooLarge(amount, balance);
        _claim(amount);
    }

    /// @notice Move `amount` of the caller's EML into its balance here, from which commitments take their
    /// bonds without a token transfer each (no approval needed).
    /// A miner's first commitment costs about 22,000 gas more than the next ones (it creates the miner's
    /// storage slot and pulls the bond from its EML): funding once before it creates the slot.
    /// Reverts with SafeCastOverflowedUintDowncast when the balance would pass 2^96 - 1 wei.
    function fund(uint256 amount) external {
        Miner storage miner = _miners[msg.sender];
        miner.balance = SafeCast.toUint96(uint256(miner.balance) + amount);
        token.transferFrom(msg.sender, address(this), amount);
        emit MinerFunded(msg.sender, amount);
    }

    function _claim(uint256 amount) private {
        _miners[msg.sender].balance -= uint96(amount);
        token.transfer(msg.sender, amount);
        emit RewardsClaimed(msg.sender, amount);
    }

    // -------------------------------------------------------------------------- views

    /// @notice Everything a miner needs for the open round (roundId 0 when idle). The challenge is zero
    /// in the opening block, where it cannot be known yet.
    function getCurrentRound() external view returns (CurrentRound memory r) {
        Round memory round = _round;
        r.difficulty = _state.difficulty;
        if (round.count == 0) return r;
        r.roundId = round.id;
        if (block.number > round.openBlock) r.challenge = _challengeOf(round);
        r.openBlock = round.openBlock;
        r.commits = round.commits;
        r.revealedMask = round.revealedMask;
        r.commitDeadline = uint256(round.openBlock) + _params.expiryBlocks;
        if (round.revealBlock != 0) r.revealDeadline = uint256(round.revealBlock) + _params.revealBlocks;
        r.bond = round.bond;
        r.requestIds = _roundRequestIds(round.count);
    }

    function getRequest(uint256 requestId)
        external
        view
        returns (address requester, uint256 modelId, uint256 callbackGasLimit, Status status)
    {
        Request memory req = _requests[requestId];
        return (req.requester, req.modelId, req.callbackGasLimit, requestStatus(requestId));
    }

    /// @notice The stored outcome of a closed request (pull-style read). `prediction` is the result when
    /// `status` is Finalized and INVALID_INPUT for every other closed status (InvalidInput, NoConsensus,
    /// Expired, Cancelled), as in the callback and PredictionFinalized; 0 while the request is open.
    /// `agreeing` is the number of revealed votes that agreed with the consensus.
    function getResult(uint256 requestId)
        external
        view
        returns (int256 prediction, Status status, uint256 agreeing, uint256 closedBlock)
    {
        status = requestStatus(requestId);
        if (uint8(status) >= uint8(Status.Finalized)) closedBlock = _requests[requestId].blockNumber;
        Ledger memory ledger = _ledgers[requestId];
        if (status == Status.Finalized) prediction = int96(ledger.value);
        else if (uint8(status) > uint8(Status.Finalized)) prediction = INVALID_INPUT;
        if (uint8(status) >= uint8(Status.Finalized)) agreeing = ledger.agreeing;
    }

    /// @notice The round that closed a request and the slots that agreed with its result (0, 0 while
    /// it is open, or when it closed in the queue).
    function closingRound(uint256 requestId) external view returns (uint256 roundId, uint8 agreeingMask) {
        if (uint8(_requests[requestId].status) < uint8(Status.Finalized)) return (0, 0);
        Ledger memory ledger = _ledgers[requestId];
        return (ledger.roundId, ledger.agreeingMask);
    }

    function requestStatus(uint256 requestId) public view returns (Status) {
        Status status = _requests[requestId].status;
        if (status != Status.Queued) return status; // None, or closed
        return _inOpenRound(requestId) ? Status.Current : Status.Queued;
    }

    /// @notice Whether `miner` has a commitment in the open round.
    function hasCommitted(address miner) external view returns (bool) {
        return _round.count != 0 && _miners[miner].lastRound == _round.id;
    }

    /// @notice The EML `miner` holds here: rewards and bonds returned, not yet claimed, and funds.
    function minerBalance(address miner) external view returns (uint256) {
        return _miners[miner].balance;
    }

    /// @notice Current proof-of-work difficulty (expected hashes per valid nonce); during a reveal phase,
    /// the next round's.
    function difficulty() external view returns (uint256) {
        return _state.difficulty;
    }

    /// @notice EML minted as base rewards since deployment.
    function totalRewardsIssued() external view returns (uint256) {
        return _totals.issued;
    }

    /// @notice EML burned since deployment: forfeited bonds and the tip shares no agreeing slot earned.
    function totalBurned() external view returns (uint256) {
        return _totals.burned;
    }

    // ---------------------------------------------------------------------- internals

    /// @dev Runs this call's code from EthMLSettlement in this contract's storage (the same function
    /// there: same selector, same arguments) and returns or reverts as it did.
    function _delegate() private {
        address target = address(settlement);
        assembly ("memory-safe") {
            let ptr := mload(0x40)
            calldatacopy(ptr, 0, calldatasize())
            let ok := delegatecall(gas(), target, ptr, calldatasize(), 0, 0)
            returndatacopy(ptr, 0, returndatasize())
            if iszero(ok) { revert(ptr, returndatasize()) }
            return(ptr, returndatasize())
        }
    }

    /// @dev Bounded retarget on the commit phase alone (opening to fifth commitment): at most x2 or /2
    /// per round. The reveal phase does not count, so a miner withholding its reveal cannot drive the
    /// difficulty down.
    function _retarget(uint64 d, uint256 openTime) private returns (uint64) {
        uint256 elapsed = block.timestamp - openTime;
        if (elapsed == 0) elapsed = 1;
        uint256 next = uint256(d) * _params.targetSolveTime / elapsed;
        if (next > uint256(d) * 2) next = uint256(d) * 2;
        if (next < d / 2) next = d / 2;
        if (next < _params.minDifficulty) next = _params.minDifficulty;
        if (next > _params.maxDifficulty) next = _params.maxDifficulty;
        _state.difficulty = uint64(next);
        return uint64(next);
    }
}
