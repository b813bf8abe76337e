// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {EthML, IEthMLConsumer} from "./EthML.sol";

/// @title UsingEthML: base for contracts that consume EthML predictions.
/// @notice Inherit, call `_requestPrediction`, and implement `_onPrediction`. The callback only
/// accepts calls from the EthML contract. The contract must hold the EML it tips.
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

    function _requestPrediction(uint256 modelId, string memory dataCid, uint256 tip, uint256 callbackGasLimit)
        internal
        returns (uint256 requestId)
    {
        if (tip > 0) ethml.approve(address(ethml), tip);
        return ethml.requestPrediction(modelId, dataCid, tip, callbackGasLimit);
    }

    function ethmlCallback(uint256 requestId, int256 prediction, uint8 status) external onlyEthML {
        _onPrediction(requestId, prediction, EthML.Status(status));
    }

    /// @dev Called once per request with the consensus prediction and its final status
    /// (Finalized, InvalidInput or Expired). Keep it within the callback gas limit you asked for.
    function _onPrediction(uint256 requestId, int256 prediction, EthML.Status status) internal virtual;
}

/// @title ExampleConsumer: requests predictions for its users and stores the results.
contract ExampleConsumer is UsingEthML {
    struct Answer {
        address requester;
        int256 prediction;
        EthML.Status status;
        bool received;
    }

    uint256 public constant CALLBACK_GAS = 100_000;
    mapping(uint256 => Answer) public answers;
    uint256[] public requestIds;

    event AnswerReceived(uint256 indexed requestId, int256 prediction, EthML.Status status);

    constructor(EthML ethml_) UsingEthML(ethml_) {}

    /// @notice Request a prediction; `tip` EML is pulled from the caller (approve this contract first).
    function request(uint256 modelId, string calldata dataCid, uint256 tip) external returns (uint256 requestId) {
        if (tip > 0) ethml.transferFrom(msg.sender, address(this), tip);
        requestId = _requestPrediction(modelId, dataCid, tip, CALLBACK_GAS);
        answers[requestId].requester = msg.sender;
        requestIds.push(requestId);
    }

    function requestCount() external view returns (uint256) {
        return requestIds.length;
    }

    function _onPrediction(uint256 requestId, int256 prediction, EthML.Status status) internal override {
        Answer storage a = answers[requestId];
        a.prediction = prediction;
        a.status = status;
        a.received = true;
        emit AnswerReceived(requestId, prediction, status);
    }
}
