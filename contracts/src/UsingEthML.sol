// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {EMLToken} from "./EMLToken.sol";
import {EthML} from "./EthML.sol";
import {IEthML, IEthMLConsumer} from "./IEthML.sol";

/// @title UsingEthML: base for contracts that consume EthML predictions.
/// @notice Inherit, call `_requestPrediction`, and implement `_onPrediction`. The callback only
/// accepts calls from the EthML contract. The contract must hold the EML it tips (the oracle takes it
/// without an approval), and send the ETH deposit that pays for its callback (see
/// `EthML.minimumDeposit`).
abstract contract UsingEthML is IEthMLConsumer {
    EthML public immutable ethml;

    error OnlyEthML(address caller);

    modifier onlyEthML() {
        if (msg.sender != address(ethml)) revert OnlyEthML(msg.sender);
        _;
    }

    constructor(EthML ethml_) {
        ethml = ethml_;
    }

    function _requestPrediction(
        uint256 modelId,
        string memory dataCid,
        uint256 tip,
        uint256 callbackGasLimit,
        uint256 deposit
    ) internal returns (uint256 requestId) {
        return ethml.requestPrediction{value: deposit}(modelId, dataCid, tip, callbackGasLimit);
    }

    function ethmlCallback(uint256 requestId, int256 prediction, uint8 status, uint8 agreeing) external onlyEthML {
        _onPrediction(requestId, prediction, IEthML.Status(status), agreeing);
    }

    /// @dev Called once per request with the consensus prediction, its final status (Finalized,
    /// InvalidInput, NoConsensus or Expired) and the number of miners that agreed. Keep it within the
    /// callback gas limit you asked for. A request answered in a round with others is called back on
    /// its own, with its own gas limit.
    function _onPrediction(uint256 requestId, int256 prediction, IEthML.Status status, uint8 agreeing)
        internal
        virtual;
}

/// @title ExampleConsumer: requests predictions for its users and stores the results.
/// @notice What EthML refunds (a tip when the request closes without a result, what is left of the
/// callback deposit) belongs to the user who made the request, who takes it back with `reclaim`.
contract ExampleConsumer is UsingEthML {
    struct Answer {
        address requester;
        int256 prediction;
        IEthML.Status status;
        uint8 agreeing;
        bool received;
        bool reclaimed;
        uint96 tip;
    }

    uint256 public constant CALLBACK_GAS = 100_000;
    EMLToken public immutable token;
    mapping(uint256 => Answer) public answers;
    uint256[] public requestIds;

    error NotYourRequest(uint256 requestId, address caller);
    error AlreadyReclaimed(uint256 requestId);

    event AnswerReceived(uint256 indexed requestId, int256 prediction, IEthML.Status status, uint8 agreeing);
    event Reclaimed(uint256 indexed requestId, address indexed user, uint256 tip, uint256 deposit);

    constructor(EthML ethml_) UsingEthML(ethml_) {
        token = ethml_.token();
    }

    /// @notice Request a prediction; `tip` EML is pulled from the caller (approve this contract first)
    /// and `msg.value` is the callback deposit.
    function request(uint256 modelId, string calldata dataCid, uint256 tip)
        external
        payable
        returns (uint256 requestId)
    {
        if (tip > 0) token.transferFrom(msg.sender, address(this), tip);
        requestId = _requestPrediction(modelId, dataCid, tip, CALLBACK_GAS, msg.value);
        Answer storage a = answers[requestId];
        a.requester = msg.sender;
        a.tip = uint96(tip);
        requestIds.push(requestId);
    }

    /// @notice Take back a queued request: the tip comes back to its user; the deposit with `reclaim`.
    /// `position` is its place in EthML's queue, found off chain with the view `EthML.queuePosition`
    /// (nothing scans the queue in a transaction; a stale position reverts with StaleQueueHint).
    function cancel(uint256 requestId, uint256 position) external {
        Answer storage a = answers[requestId];
        if (a.requester != msg.sender) revert NotYourRequest(requestId, msg.sender);
        ethml.cancelRequest(requestId, position);
        uint256 tip = a.tip;
        a.tip = 0;
        if (tip > 0) token.transfer(msg.sender, tip);
        _onPrediction(requestId, 0, IEthML.Status.Cancelled, 0);
    }

    /// @notice Send the user what EthML refunded for their request: the tip when it closed without a
    /// result (expired, no consensus) and what is left of the callback deposit.
    function reclaim(uint256 requestId) external {
        Answer storage a = answers[requestId];
        if (a.requester != msg.sender) revert NotYourRequest(requestId, msg.sender);
        if (a.reclaimed) revert AlreadyReclaimed(requestId);
        IEthML.Status status = ethml.requestStatus(requestId);
        if (uint8(status) < uint8(IEthML.Status.Finalized)) revert IEthML.NotClosed(requestId);
        a.reclaimed = true;
        bool refunded = status == IEthML.Status.Expired || status == IEthML.Status.NoConsensus;
        uint256 tip = refunded ? a.tip : 0;
        if (tip > 0) token.transfer(msg.sender, tip);
        uint256 deposit = ethml.depositOf(requestId);
        if (deposit > 0) ethml.withdrawDeposit(requestId, payable(msg.sender));
        emit Reclaimed(requestId, msg.sender, tip, deposit);
    }

    function requestCount() external view returns (uint256) {
        return requestIds.length;
    }

    function _onPrediction(uint256 requestId, int256 prediction, IEthML.Status status, uint8 agreeing)
        internal
        override
    {
        Answer storage a = answers[requestId];
        a.prediction = prediction;
        a.status = status;
        a.agreeing = agreeing;
        a.received = true;
        emit AnswerReceived(requestId, prediction, status, agreeing);
    }
}
