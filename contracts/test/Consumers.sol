// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {EthML} from "../src/EthML.sol";
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

    function _onPrediction(uint256, int256, EthML.Status, uint8) internal pure override {
        revert("consumer is broken");
    }
}

contract GasBurningConsumer is TestConsumer {
    uint256 public sink;

    constructor(EthML e) TestConsumer(e) {}

    function _onPrediction(uint256, int256, EthML.Status, uint8) internal override {
        while (true) {
            sink += 1;
        }
    }
}

/// @dev Burns (almost) all the gas it is given, and returns.
contract HeavyConsumer is TestConsumer {
    uint256 public sink;

    constructor(EthML e) TestConsumer(e) {}

    function _onPrediction(uint256, int256, EthML.Status, uint8) internal override {
        while (gasleft() > 3_000) {
            sink += 1;
        }
    }
}

contract GasMeasuringConsumer is TestConsumer {
    uint256 public gasAtEntry;

    constructor(EthML e) TestConsumer(e) {}

    function _onPrediction(uint256, int256, EthML.Status, uint8) internal override {
        gasAtEntry = gasleft();
    }
}
