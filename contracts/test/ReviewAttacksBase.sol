// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {EthML} from "../src/EthML.sol";
import {IEthML} from "../src/IEthML.sol";
import {vm, EthMLFixture} from "./Base.sol";

/// @dev Cheatcodes the third review uses beyond those of Base.sol's `Vm` (same address, no forge-std).
interface ReviewVm {
    function chainId(uint256 newChainId) external;
    function load(address target, bytes32 slot) external view returns (bytes32);
}

ReviewVm constant rvm = ReviewVm(address(uint160(uint256(keccak256("hevm cheat code")))));

/// @notice Shared set-up of the third outside review (ReviewAttacks*.t.sol): the parameters
/// `deploy_system` ships, and the bookkeeping an attacker uses to measure what an attack earns.
abstract contract ReviewFixture is EthMLFixture {
    /// @dev The bond `deploy_system` ships: five base rewards, so a lazy miner loses below a 5/6 majority.
    uint96 internal constant SHIPPED_BOND = 5 ether;

    /// @dev What `deploy_system` ships (ethml.chain.deploy.Parameters) except the difficulty, the
    /// windows (short, so tests stay quick) and K, which each test picks.
    function _shipped(uint8 k) internal pure returns (EthML.Parameters memory p) {
        p = _params(1, 1);
        p.requestsPerRound = k;
        p.minerBond = SHIPPED_BOND;
        p.bondTipBps = 10_000;
        p.maxCallbackGasLimit = uint32(10_000_000 / (uint256(k) + 2));
    }

    /// @dev EML an account holds, in its wallet and as its balance in the oracle.
    function _holdings(address who) internal view returns (uint256) {
        return token.balanceOf(who) + ethml.minerBalance(who);
    }

    function _holdings(address[] memory who) internal view returns (uint256 total) {
        for (uint256 i = 0; i < who.length; ++i) {
            total += _holdings(who[i]);
        }
    }

    function _three(address a, address b, address c) internal pure returns (address[] memory who) {
        who = new address[](3);
        (who[0], who[1], who[2]) = (a, b, c);
    }

    function _status(uint256 requestId) internal view returns (IEthML.Status) {
        return ethml.requestStatus(requestId);
    }

    /// @dev Lets the next round start with the full base reward (time-weighted issuance).
    function _waitTarget() internal {
        vm.warp(block.timestamp + 1_000);
    }
}
