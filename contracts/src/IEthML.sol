// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

/// @notice Receiver of prediction results (see UsingEthML).
interface IEthMLConsumer {
    function ethmlCallback(uint256 requestId, int256 prediction, uint8 status, uint8 agreeing) external;
}

/// @title IEthML: the oracle's types, errors and events.
/// @notice A request names a registered model, the IPFS CID of a data point and a tip in EML. Requests
/// are answered in rounds of up to `requestsPerRound` (K) of them: five proof-of-work-gated commitments
/// to hidden answer vectors (one answer per request of the round), then the reveals, then the close,
/// which decides every request on its own (consensus, quorum, result, callback) as if it were alone.
interface IEthML {
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

    /// @dev Set at deployment; `setParameters` changes take effect when the next round opens. Hard caps
    /// are checked by RoundRules.checkParameters.
    struct Parameters {
        /// @dev EML (wei) a miner earns for a round whose every request it answered with the consensus,
        /// when the round closes `targetSolveTime` or more after the previous rewarded close
        /// (proportionally less for a quicker one, so issuance per hour is capped). Split over the
        /// round's requests: each decided request pays its agreeing miners baseReward / K.
        uint96 baseReward;
        /// @dev Seconds the difficulty retarget steers the commit phase (opening to fifth commitment) toward.
        uint32 targetSolveTime;
        uint64 minDifficulty;
        uint64 maxDifficulty;
        /// @dev Blocks after the opening block within which five commitments must land (at most 240).
        uint32 expiryBlocks;
        /// @dev Blocks after the fifth commitment during which reveals are accepted.
        uint32 revealBlocks;
        /// @dev A queued request older than this many blocks expires (refunded, called back).
        uint32 maxQueueBlocks;
        /// @dev At most 16,777,215 (uint24), and (requestsPerRound + 2) x this at most 10,000,000.
        uint32 maxCallbackGasLimit;
        /// @dev Regression agreement band, in basis points of max(|median|, 1.0).
        uint16 regressionToleranceBps;
        /// @dev Agreeing revealed votes needed for a result (3 or 4: at 5 one slot could veto any request).
        uint8 quorum;
        /// @dev K: requests a round opens with, at most (1 to 16).
        uint8 requestsPerRound;
        /// @dev EML each commitment bonds, besides `bondTipBps` of the round's tips (at most 100 EML).
        uint96 minerBond;
        /// @dev Share of the round's total tip added to the bond, in basis points (at most 20,000).
        uint16 bondTipBps;
        /// @dev Priority fee (wei per gas) above the base fee at which a closer is reimbursed callbacks.
        uint64 maxPriorityFee;
    }

    /// @notice What a miner needs to work on the open round (see `getCurrentRound`).
    struct CurrentRound {
        uint256 roundId;
        bytes32 challenge;
        uint256 difficulty;
        uint256 openBlock;
        uint256 commits;
        uint256 revealedMask;
        uint256 commitDeadline;
        uint256 revealDeadline;
        uint256 bond;
        uint256[] requestIds;
    }

    // ----------------------------------------------------------------- errors

    error ModelInactive(uint256 modelId);
    error EmptyCid();
    error CidTooLong(uint256 length, uint256 maxLength);
    error CallbackGasLimitTooHigh(uint256 requested, uint256 maximum);
    error CallbackDepositTooSmall(uint256 sent, uint256 required);
    error UnexpectedDeposit(uint256 sent);
    error DepositTooLarge(uint256 sent);
    error TipTooLarge(uint256 tip);
    error NoOpenRound();
    error NotCurrentRound(uint256 roundId, uint256 currentRoundId);
    error ChallengeNotYetAvailable(uint256 roundId, uint256 openBlock);
    error CommitPhaseOver(uint256 roundId);
    error CommitWindowClosed(uint256 roundId, uint256 deadline);
    error AlreadyCommitted(uint256 roundId, address miner);
    error InvalidNonce(uint256 roundId, address miner, uint256 nonce);
    error NotRevealPhase(uint256 roundId);
    error RevealWindowClosed(uint256 roundId, uint256 deadline);
    error RevealWindowOpen(uint256 roundId, uint256 deadline);
    error NotCommitted(uint256 roundId, address miner);
    error AlreadyRevealed(uint256 roundId, address miner);
    error CommitmentMismatch(uint256 roundId, address miner);
    error AnswerCount(uint256 expected, uint256 given);
    error RevealMismatch(uint256 roundId, uint256 slot);
    error NotLastReveal(uint256 roundId);
    error CommittersMismatch(uint256 roundId);
    error PredictionOutOfRange(int256 prediction);
    error NotExpired(uint256 roundId, uint256 expiresAtBlock);
    error QueuedNotStale(uint256 requestId, uint256 staleAfterBlock);
    error InsufficientGasForCallback(uint256 required, uint256 available);
    error NotRequester(uint256 requestId, address caller);
    error NotQueued(uint256 requestId);
    error StaleQueueHint(uint256 requestId, uint256 position);
    error NotClosed(uint256 requestId);
    error NothingToWithdraw(uint256 requestId);
    error EthTransferFailed(address to, uint256 amount);
    error NothingToClaim(address miner);
    error ClaimTooLarge(uint256 requested, uint256 balance);
    error InvalidParameters(string reason);
    error TooManyRequests();

    // ----------------------------------------------------------------- events

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
    /// @notice A round opened in this log's block for `requestIds` (in answer-vector order); its challenge
    /// is keccak256(abi.encodePacked(blockhash(this block), address(this), roundId)). Each request's
    /// model and data CID are in its PredictionRequested event. Every commitment bonds `bond` EML.
    event RoundOpened(
        uint256 indexed roundId, uint256[] requestIds, uint256 difficulty, uint256 commitDeadline, uint256 bond
    );
    event Committed(uint256 indexed roundId, address indexed miner, uint256 index);
    /// @notice The fifth commitment: reveals are open until `revealDeadline`; the commit phase just
    /// measured set the difficulty of the next round to `nextDifficulty`.
    event RevealPhaseStarted(uint256 indexed roundId, uint256 revealDeadline, uint256 nextDifficulty);
    /// @notice A miner opened its commitment: one answer per request of the round, in RoundOpened order.
    /// The closing transaction carries these vectors again (checked against their stored hashes).
    event Revealed(uint256 indexed roundId, address indexed miner, int256[] answers);
    /// @notice The round's settlement, per commitment slot: the miners that revealed (zero where none
    /// did), the EML each earned (base reward and tip shares) and the part of its bond it got back
    /// (a slot that did not reveal gets nothing back: its bond is burned, as are the shares lost on
    /// decided requests it answered against the consensus and on requests a quorum of reveals left
    /// undecided where it was outside every largest group). Emitted before the round's
    /// PredictionFinalized events.
    event RoundClosed(
        uint256 indexed roundId, address[5] miners, uint8 revealedMask, uint256[5] rewards, uint256[5] bondsReturned
    );
    /// @notice One request of a closed round: `agreeingMask` has bit i set when slot i's miner agreed.
    /// `prediction` is the result when `status` is Finalized and INVALID_INPUT otherwise; each agreeing
    /// slot earned `tipPerMiner` (a fifth of the tip; the rest of the tip was burned, or refunded when
    /// fewer than a quorum of slots revealed).
    event PredictionFinalized(
        uint256 indexed requestId,
        uint256 indexed roundId,
        int256 prediction,
        Status status,
        uint256 agreeing,
        uint8 agreeingMask,
        uint256 baseRewardPerMiner,
        uint256 tipPerMiner
    );
    /// @notice Fewer than five commitments by the deadline: its first request (the highest tip, which set
    /// most of the bond) expires (RequestExpired), the others go back to the queue, the committed bonds
    /// go back and the difficulty halves.
    event RoundExpired(uint256 indexed roundId, uint256 commits, uint256 nextDifficulty);
    /// @notice `roundId` is 0 for a request that expired in the queue.
    event RequestExpired(uint256 indexed requestId, uint256 indexed roundId, uint256 refundedTip);
    event RequestCancelled(uint256 indexed requestId, uint256 refundedTip);
    event CallbackFailed(uint256 indexed requestId, address indexed consumer);
    /// @notice The deposit left could not pay the callback at this transaction's (bounded) gas price:
    /// no call was made; the result is in `getResult`.
    event CallbackSkipped(uint256 indexed requestId, uint256 deposit, uint256 required);
    event CallbackReimbursed(uint256 indexed requestId, address indexed closer, uint256 amount);
    event MinerFunded(address indexed miner, uint256 amount);
    event RewardsClaimed(address indexed miner, uint256 amount);
}
