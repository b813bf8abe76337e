// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {EMLToken} from "./EMLToken.sol";
import {IEthML} from "./IEthML.sol";
import {ModelRegistry} from "./ModelRegistry.sol";
import {PredictionQueue} from "./PredictionQueue.sol";
import {RoundRules} from "./RoundRules.sol";

/// @title OracleStorage: the oracle's storage layout and what both of its code contracts share.
/// @notice EthML (requests, commitments, reveals, views, parameters) and EthMLSettlement (closing and
/// expiring rounds, run by EthML with delegatecall) both inherit this contract and nothing else with
/// state, so they agree on every slot. The EML token (tips, bonds, rewards), the model registry (what a
/// request may ask for) and the rules (hard caps on parameters) are separate contracts.
abstract contract OracleStorage is IEthML, AccessControl {
    using PredictionQueue for PredictionQueue.Heap;

    // ------------------------------------------------------------------ storage types

    /// @dev One slot per request. `blockNumber` is the request's block while it is open and its closing
    /// block after; `status` is written only when it closes (before that it is Current if the request is
    /// in the open round, else Queued). The data CID is not stored: it is in the request's
    /// `PredictionRequested` event, which is where nodes read it.
    struct Request {
        address requester;
        uint32 modelId;
        uint24 callbackGasLimit;
        Status status;
        uint32 blockNumber;
    }

    /// @dev The request's second slot, written by the requester (so the close overwrites a non-zero slot).
    /// `value` is the tip while the request is open and the result (an int96) once it closed; `deposit`
    /// is the ETH left for its callback, then the requester's to withdraw.
    struct Ledger {
        uint96 deposit;
        uint96 value;
        uint32 roundId;
        uint8 agreeing;
        uint8 agreeingMask;
        bool exists;
    }

    /// @dev Read by every request: ids handed out, entries in the queue, whether a round is open.
    struct Counters {
        uint32 requests;
        uint32 pending;
        bool roundOpen;
    }

    /// @dev The open round, one slot (its request ids are in `_roundIds`). `id` stays the last round's id
    /// when the oracle is idle (`count` 0), so opening the next round overwrites a non-zero slot.
    struct Round {
        uint32 id;
        uint8 count;
        uint8 commits;
        uint8 revealedMask;
        uint32 openBlock;
        /// @dev Block of the fifth commitment (0 while committing).
        uint32 revealBlock;
        uint40 openTime;
        uint96 bond;
    }

    struct State {
        uint64 difficulty;
        uint40 lastRewardTime;
        bool parametersPending;
    }

    /// @dev Base rewards minted, and EML burned (forfeited bonds, unearned tip shares), since deployment.
    struct Totals {
        uint128 issued;
        uint128 burned;
    }

    /// @dev Per miner, one slot: its latest commitment and the EML it holds here (rewards, bonds back,
    /// funds), from which the next commitment's bond is taken first.
    struct Miner {
        uint32 lastRound;
        uint8 slot;
        uint96 balance;
    }

    // ---------------------------------------------------------------------- constants

    /// @notice The value miners reveal when a data point cannot be used as model input.
    int256 public constant INVALID_INPUT = type(int256).min;
    /// @notice Commitments per round.
    uint256 public constant MINERS_PER_ROUND = 5;
    /// @notice The hard cap on `requestsPerRound` (K).
    uint256 public constant MAX_REQUESTS_PER_ROUND = 16;
    uint256 public constant MAX_CID_LENGTH = 64;
    /// @dev Gas kept back after each callback so the close can always complete.
    uint256 public constant CALLBACK_GAS_RESERVE = 10_000;
    /// @notice Gas of one callback's machinery (the consumer's code check, the reserve, the call set-up,
    /// the deposit refund, the event) reimbursed on top of the gas the consumer used. Measured: 5,100
    /// with every callback to one consumer, 7,600 with a cold consumer each (Rounds.t.sol).
    uint256 public constant CALLBACK_OVERHEAD = 8_000;
    /// @notice Gas of the one ETH transfer that pays the closer (measured 7,350); the callbacks of a
    /// transaction share it.
    uint256 public constant REIMBURSEMENT_TRANSFER_GAS = 7_500;
    /// @notice Expired queue entries handled (refunded, called back) per round opening; past that the
    /// next ones are served as they are, so no transaction does unbounded work.
    uint256 public constant MAX_STALE_EXPIRIES = 2;
    /// @notice The callback gas one closing transaction forwards, at most, whatever the parameters were
    /// when its requests were queued: a round opens with requests whose callback gas limits, plus
    /// MAX_STALE_EXPIRIES x maxCallbackGasLimit for the stale expiries of the opening its close makes,
    /// fit in it (a request over that alone opens alone), and that opening expires a stale request with
    /// a callback only while the close's callbacks still fit (see RoundClosing._advance).
    uint256 public constant MAX_CALLBACK_GAS_PER_CLOSE = 10_000_000;
    /// @notice The most a commitment ever bonds, whatever the round's tips (also the cap on `minerBond`):
    /// it bounds the capital a miner needs, so a huge tip cannot price every miner out of a round.
    uint256 public constant MAX_BOND = 100 ether;
    uint8 internal constant ALL_REVEALED = 0x1f;

    // -------------------------------------------------------------------------- state

    EMLToken public immutable token;
    ModelRegistry public immutable registry;
    /// @notice The hard caps on parameters (see RoundRules).
    RoundRules public immutable rules;

    Parameters internal _params;
    Parameters internal _nextParams;
    Counters internal _counters;
    mapping(uint256 => Request) internal _requests;
    mapping(uint256 => Ledger) internal _ledgers;
    PredictionQueue.Heap internal _queue;
    Round internal _round;
    /// @dev The open round's request ids, eight uint32 per slot, in answer-vector order.
    uint256[2] internal _roundIds;
    /// @dev Per commitment slot: the commitment, then, once revealed, keccak256(abi.encodePacked(miner,
    /// answers)). Reused round after round (never zero), so every write overwrites a non-zero slot.
    bytes32[5] internal _hashes;
    State internal _state;
    Totals internal _totals;
    mapping(address => Miner) internal _miners;

    constructor(EMLToken token_, ModelRegistry registry_, RoundRules rules_) {
        token = token_;
        registry = registry_;
        rules = rules_;
    }

    // ------------------------------------------------------------------------ helpers

    /// @notice The challenge of round `roundId` opened in a block whose hash is `openBlockHash`.
    function challengeFor(bytes32 openBlockHash, uint256 roundId) public view returns (bytes32) {
        return keccak256(abi.encodePacked(openBlockHash, address(this), roundId));
    }

    function _challengeOf(Round memory round) internal view returns (bytes32) {
        return challengeFor(blockhash(round.openBlock), round.id);
    }

    function _current(uint256 roundId) internal view returns (Round memory round) {
        round = _round;
        if (round.count == 0) revert NoOpenRound();
        if (roundId != round.id) revert NotCurrentRound(roundId, round.id);
    }

    function _revealing(uint256 roundId) internal view returns (Round memory round) {
        round = _current(roundId);
        if (round.revealBlock == 0) revert NotRevealPhase(roundId);
        uint256 deadline = uint256(round.revealBlock) + _params.revealBlocks;
        if (block.number > deadline) revert RevealWindowClosed(roundId, deadline);
    }

    /// @dev Checks the caller's opening of its commitment (answer count, range, commitment) and emits it;
    /// returns its slot.
    function _open(Round memory round, int256[] calldata answers, bytes32 salt) internal returns (uint256 slot) {
        uint256 roundId = round.id;
        Miner memory miner = _miners[msg.sender];
        if (miner.lastRound != roundId) revert NotCommitted(roundId, msg.sender);
        slot = miner.slot;
        if (round.revealedMask & (1 << slot) != 0) revert AlreadyRevealed(roundId, msg.sender);
        if (answers.length != round.count) revert AnswerCount(round.count, answers.length);
        for (uint256 j = 0; j < answers.length; ++j) {
            int256 a = answers[j];
            if (a != INVALID_INPUT && (a <= type(int96).min || a > type(int96).max)) revert PredictionOutOfRange(a);
        }
        if (keccak256(abi.encode(roundId, msg.sender, answers, salt)) != _hashes[slot]) {
            revert CommitmentMismatch(roundId, msg.sender);
        }
        emit Revealed(roundId, msg.sender, answers);
    }

    /// @dev A round for `ids` opens in this block; its challenge needs this block's hash, so it exists
    /// from the next block on. Every commitment bonds minerBond plus bondTipBps of the round's tips, at
    /// most MAX_BOND.
    function _openRound(uint256[] memory ids, uint256 totalTip) internal {
        uint256 bond = _params.minerBond + totalTip * _params.bondTipBps / 10_000;
        if (bond > MAX_BOND) bond = MAX_BOND;
        uint32 id = _round.id + 1;
        _round = Round(id, uint8(ids.length), 0, 0, uint32(block.number), 0, uint40(block.timestamp), uint96(bond));
        uint256[2] memory words;
        for (uint256 j = 0; j < ids.length; ++j) {
            words[j / 8] |= ids[j] << (32 * (j % 8));
        }
        _roundIds[0] = words[0];
        if (ids.length > 8) _roundIds[1] = words[1];
        emit RoundOpened(id, ids, _state.difficulty, block.number + _params.expiryBlocks, bond);
    }

    /// @dev The open round's request ids, in answer-vector order.
    function _roundRequestIds(uint256 count) internal view returns (uint256[] memory ids) {
        ids = new uint256[](count);
        uint256 word;
        for (uint256 j = 0; j < count; ++j) {
            if (j % 8 == 0) word = _roundIds[j / 8];
            ids[j] = uint32(word >> (32 * (j % 8)));
        }
    }

    /// @dev Whether `requestId` is one of the open round's requests.
    function _inOpenRound(uint256 requestId) internal view returns (bool) {
        uint256 count = _round.count;
        uint256 word;
        for (uint256 j = 0; j < count; ++j) {
            if (j % 8 == 0) word = _roundIds[j / 8];
            if (uint32(word >> (32 * (j % 8))) == requestId) return true;
        }
        return false;
    }

    /// @dev Removes a queued request at `position` from the heap; returns its tip.
    function _removeQueued(uint256 requestId, uint256 position) internal returns (uint96 tip) {
        if (_requests[requestId].status != Status.Queued || _inOpenRound(requestId)) revert NotQueued(requestId);
        uint32 pending = _counters.pending;
        if (_queue.idAt(pending, position) != requestId) revert StaleQueueHint(requestId, position);
        (tip,) = _queue.removeAt(pending, position);
        _counters.pending = pending - 1;
    }

    /// @dev Parameters set during the last round apply from its close on.
    function _applyPendingParameters() internal {
        if (!_state.parametersPending) return;
        Parameters memory p = _nextParams;
        _params = p;
        _state.parametersPending = false;
        _clampDifficulty(p);
        emit ParametersUpdated(p, true);
    }

    function _clampDifficulty(Parameters memory p) internal {
        uint64 d = _state.difficulty;
        if (d < p.minDifficulty) _state.difficulty = p.minDifficulty;
        if (d > p.maxDifficulty) _state.difficulty = p.maxDifficulty;
    }

    /// @dev The gas price callbacks are reimbursed at: this transaction's, at most base fee + maxPriorityFee
    /// (a closer that builds its own block cannot drain deposits with a huge price).
    function _callbackPrice() internal view returns (uint256 price) {
        price = tx.gasprice;
        uint256 cap = block.basefee + _params.maxPriorityFee;
        if (price > cap) price = cap;
    }

    /// @dev Adds `amount` EML to `who`'s balance here; a balance cannot pass 2^96 - 1 wei (79 billion
    /// EML), so a credit that would is paid out to `who` as EML instead: nothing is truncated and no
    /// close or expiry can be blocked by one miner's balance.
    function _credit(address who, uint256 amount) internal {
        Miner storage miner = _miners[who];
        uint256 total = uint256(miner.balance) + amount;
        if (total > type(uint96).max) token.transfer(who, amount);
        else miner.balance = uint96(total);
    }

    function _sendEth(address to, uint256 amount) internal {
        (bool sent,) = payable(to).call{value: amount}("");
        if (!sent) revert EthTransferFailed(to, amount);
    }
}
