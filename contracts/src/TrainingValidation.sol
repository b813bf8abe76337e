// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {ModelRegistry} from "./ModelRegistry.sol";
import {TrainingBase} from "./TrainingBase.sol";
import {TrainingSettlement} from "./TrainingSettlement.sol";

/// @dev The two slots AccessControl and Pausable hold at the start of TrainingTasks' storage, declared
/// without their code (which only TrainingTasks runs), so TrainingValidation's layout is TrainingTasks'.
abstract contract TrainingRoleSlots {
    mapping(bytes32 role => AccessControl.RoleData) private _roles;
    bool private _paused;
}

/// @title TrainingValidation: the validation half of TrainingTasks' code (the panel and the settlement).
/// @notice Deployed first, with the token and registry TrainingTasks will use (immutables live in code, so
/// both halves must hold the same; TrainingTasks' constructor checks it), and run by TrainingTasks'
/// fallback through delegatecall, in TrainingTasks' storage: its functions are TrainingTasks' functions
/// (one address, one ABI, events from TrainingTasks). Called directly, it acts on its own storage, which
/// holds no task, no stake, no role and no token, so nothing can be gained or lost that way.
contract TrainingValidation is TrainingRoleSlots, TrainingSettlement {
    constructor(IERC20 token_, ModelRegistry registry_) TrainingBase(token_, registry_) {}
}
