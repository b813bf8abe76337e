// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {TimelockController} from "@openzeppelin/contracts/governance/TimelockController.sol";

/// @title EthMLTimelock: the admin of a production EthML deployment.
/// @notice OpenZeppelin's TimelockController unchanged: parameter changes and model registrations are
/// scheduled by a proposer and can be executed only after `minDelay` seconds, so miners and requesters
/// see every change coming.
contract EthMLTimelock is TimelockController {
    constructor(uint256 minDelay, address[] memory proposers, address[] memory executors)
        TimelockController(minDelay, proposers, executors, address(0))
    {}
}
