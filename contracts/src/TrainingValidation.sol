// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {ModelRegistry} from "./ModelRegistry.sol";
import {TrainingBase} from "./TrainingBase.sol";
import {TrainingSettlement} from "./TrainingSettlement.sol";

/// @title TrainingValidation: the validation half of TrainingTasks' code (the panel and the settlement).
/// @notice Deployed by TrainingTasks' constructor with the same token and registry (immutables live in
/// code, so both halves must hold the same), and run by TrainingTasks' fallback through delegatecall, in
/// TrainingTasks' storage: its functions are TrainingTasks' functions (one address, one ABI, events from
/// TrainingTasks). Called directly, it acts on its own storage, which holds no task, no stake, no role and
/// no token, so nothing can be gained or lost that way.
contract TrainingValidation is TrainingSettlement {
    constructor(IERC20 token_, ModelRegistry registry_) TrainingBase(token_, registry_) {}
}
