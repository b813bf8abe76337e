// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {EthML} from "../src/EthML.sol";
import {IEthML} from "../src/IEthML.sol";
import {UsingEthML} from "../src/UsingEthML.sol";

/// @dev Consumers with a callback gas limit of the test's choice; each shows one callback behaviour.
abstract contract TestConsumer is UsingEthML {
    constructor(EthML e) UsingEthML(e) {}

    function request(uint256 modelId, string calldata cid, uint256 gasLimit) external payable returns (uint256) {
        return _requestPrediction(modelId, cid, 0, gasLimit, msg.value);
    }
}

contract RevertingConsumer is TestConsumer {
    constructor(EthML e) TestConsumer(e) {}

    function _onPrediction(uint256, int256, IEthML.Status, uint8) internal pure override {
        revert("consumer is broken");
    }
}

contract GasBurningConsumer is TestConsumer {
    uint256 public sink;

    constructor(EthML e) TestConsumer(e) {}

    function _onPrediction(uint256, int256, IEthML.Status, uint8) internal override {
        while (true) {
            sink += 1;
        }
    }
}

/// @dev Burns (almost) all the gas it is given, and returns.
contract HeavyConsumer is TestConsumer {
    uint256 public sink;

    constructor(EthML e) TestConsumer(e) {}

    function _onPrediction(uint256, int256, IEthML.Status, uint8) internal override {
        while (gasleft() > 3_000) {
            sink += 1;
        }
    }
}

contract GasMeasuringConsumer is TestConsumer {
    uint256 public gasAtEntry;

    constructor(EthML e) TestConsumer(e) {}

    function _onPrediction(uint256, int256, IEthML.Status, uint8) internal override {
        gasAtEntry = gasleft();
    }
}

/// @dev Withdraws its own deposit from inside its callback: the reimbursement was reserved before the
/// call, so what it takes is what the closer is not owed.
contract DepositWithdrawingConsumer is TestConsumer {
    uint256 public taken;

    constructor(EthML e) TestConsumer(e) {}

    function _onPrediction(uint256 requestId, int256, IEthML.Status, uint8) internal override {
        uint256 before = address(this).balance;
        ethml.withdrawDeposit(requestId, payable(address(this)));
        taken += address(this).balance - before;
    }

    receive() external payable {}
}

/// @dev Holds several requests of one round; the first callback withdraws every other request's deposit
/// before their callbacks run (each reserve was taken before any callback ran).
contract DepositRaidingConsumer is TestConsumer {
    uint256[] public ids;
    uint256 public taken;

    constructor(EthML e) TestConsumer(e) {}

    function requestMany(uint256 modelId, string calldata cid, uint256 gasLimit, uint256 count, uint256 deposit)
        external
        payable
    {
        for (uint256 i = 0; i < count; ++i) {
            ids.push(_requestPrediction(modelId, cid, 0, gasLimit, deposit));
        }
    }

    function _onPrediction(uint256, int256, IEthML.Status, uint8) internal override {
        for (uint256 i = 0; i < ids.length; ++i) {
            if (ethml.depositOf(ids[i]) == 0 || uint8(ethml.requestStatus(ids[i])) < 3) continue;
            uint256 before = address(this).balance;
            ethml.withdrawDeposit(ids[i], payable(address(this)));
            taken += address(this).balance - before;
        }
    }

    receive() external payable {}
}

/// @dev Records every callback it gets, to check that each request is told once, alone.
contract RecordingConsumer is TestConsumer {
    mapping(uint256 => uint256) public calls;
    mapping(uint256 => int256) public predictions;
    mapping(uint256 => IEthML.Status) public statuses;
    mapping(uint256 => uint256) public gasAtEntry;

    constructor(EthML e) TestConsumer(e) {}

    function _onPrediction(uint256 requestId, int256 prediction, IEthML.Status status, uint8) internal override {
        gasAtEntry[requestId] = gasleft();
        ++calls[requestId];
        predictions[requestId] = prediction;
        statuses[requestId] = status;
    }
}
