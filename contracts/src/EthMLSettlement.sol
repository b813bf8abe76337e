// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {EMLToken} from "./EMLToken.sol";
import {ModelRegistry} from "./ModelRegistry.sol";
import {OracleStorage} from "./OracleStorage.sol";
import {RoundRules} from "./RoundRules.sol";
import {RoundSettlement} from "./RoundSettlement.sol";

/// @title EthMLSettlement: the transactions that close requests, run by EthML in its own storage.
/// @notice EthML's constructor creates this contract and EthML's `closeRound`, `revealAndClose`,
/// `expireRound` and `expireQueued` run its code with delegatecall: they are EthML's functions (its
/// storage, its balance, its events, its address), kept in a second code contract because together
/// with the rest they pass the 24,576-byte code size limit. There is no upgrade: the address is an
/// immutable of EthML, and this contract refuses to be called directly.
contract EthMLSettlement is RoundSettlement {
    address private immutable _self;

    error DelegateCallOnly();

    modifier delegated() {
        if (address(this) == _self) revert DelegateCallOnly();
        _;
    }

    constructor(EMLToken token_, ModelRegistry registry_, RoundRules rules_) OracleStorage(token_, registry_, rules_) {
        _self = address(this);
    }

    /// @notice The fifth reveal and the close in one transaction: `answers` is the whole table (slot-major,
    /// K answers per slot, the caller's own at its slot) and `miners` the five revealers, as for closeRound.
    function revealAndClose(uint256 roundId, bytes32 salt, address[5] calldata miners, int256[] calldata answers)
        external
        delegated
    {
        Round memory round = _revealing(roundId);
        Miner memory miner = _miners[msg.sender];
        if (miner.lastRound != roundId) revert NotCommitted(roundId, msg.sender);
        uint256 slot = miner.slot;
        uint256 n = round.count;
        if (answers.length != MINERS_PER_ROUND * n) revert AnswerCount(MINERS_PER_ROUND * n, answers.length);
        if (miners[slot] != msg.sender) revert RevealMismatch(roundId, slot);
        _open(round, answers[slot * n:(slot + 1) * n], salt);
        round.revealedMask |= uint8(1 << slot);
        if (round.revealedMask != ALL_REVEALED) revert NotLastReveal(roundId);
        _settle(round, miners, answers, slot);
    }

    /// @notice Close the open round with the reveals that came in: once all five revealed, or after the
    /// reveal window. `miners[i]` is slot i's revealer and `answers[i * K + j]` its answer for the round's
    /// j-th request (from the `Revealed` events; slots that did not reveal are ignored). Anyone may call.
    function closeRound(uint256 roundId, address[5] calldata miners, int256[] calldata answers) external delegated {
        Round memory round = _current(roundId);
        if (round.revealBlock == 0) revert NotRevealPhase(roundId);
        uint256 deadline = uint256(round.revealBlock) + _params.revealBlocks;
        if (round.revealedMask != ALL_REVEALED && block.number <= deadline) revert RevealWindowOpen(roundId, deadline);
        _settle(round, miners, answers, MINERS_PER_ROUND);
    }

    /// @notice Close a round that did not get five commitments within `expiryBlocks`: its first request
    /// (the highest tip) expires (tip back, `Expired` callback), the others go back to the queue, the
    /// committed miners (`committers`, from the Committed events, in any order) get their bonds back, and
    /// the difficulty halves. Anyone may call.
    function expireRound(uint256 roundId, address[] calldata committers) external delegated {
        Round memory round = _current(roundId);
        uint256 expiresAt = uint256(round.openBlock) + _params.expiryBlocks;
        if (round.revealBlock != 0 || block.number <= expiresAt) revert NotExpired(roundId, expiresAt);
        if (committers.length != round.commits) revert CommittersMismatch(roundId);
        uint256 seen = 0;
        for (uint256 i = 0; i < committers.length; ++i) {
            Miner storage m = _miners[committers[i]];
            uint256 bit = 1 << m.slot;
            if (m.lastRound != roundId || seen & bit != 0) revert CommittersMismatch(roundId);
            seen |= bit;
            _credit(committers[i], round.bond);
        }
        // The round's highest tip, which set most of its bond, expires; the others did nothing to keep
        // miners away and go back to the queue (a whale tip no miner can bond for costs them a delay,
        // not their requests).
        uint256[] memory ids = _roundRequestIds(round.count);
        Notices memory notices = _notices(1 + MAX_STALE_EXPIRIES);
        _expireRequest(ids[0], roundId, notices);
        _requeue(ids);
        // The round may have been too hard to fill in time: ease the next one.
        uint64 eased = _state.difficulty / 2;
        if (eased < _params.minDifficulty) eased = _params.minDifficulty;
        _state.difficulty = eased;
        emit RoundExpired(roundId, round.commits, eased);
        _advance(notices);
        _deliver(notices);
    }

    /// @notice Expire a request that waited in the queue more than `maxQueueBlocks`: its tip goes back and
    /// its consumer is told (`Expired`), as for a request expired in a round. Anyone may call it.
    function expireQueued(uint256 requestId, uint256 position) external delegated {
        uint256 staleAfter = uint256(_requests[requestId].blockNumber) + _params.maxQueueBlocks;
        if (block.number <= staleAfter) revert QueuedNotStale(requestId, staleAfter);
        _removeQueued(requestId, position);
        Notices memory notices = _notices(1);
        _expireRequest(requestId, 0, notices);
        _deliver(notices);
    }
}
