// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {EMLPermit} from "./EMLPermit.sol";

/// @title EMLToken: the EML token (ERC-20 with EIP-2612 permits).
/// @notice One oracle contract is bound to the token once, by its deployer, and from then on it:
/// - mints the base rewards of agreeing miners (nobody else can mint);
/// - moves EML from the account that calls it (a tip, a miner's bond) without a separate `approve`:
///   the oracle only ever pulls from its own caller, so this is the same trust a requester gave the
///   earlier oracle, which was the token itself, and it saves each requester an approval transaction.
/// EML sent straight to the oracle with `transfer` would be lost, so that reverts; everything the oracle
/// holds came in through its own functions. Any holder may burn its own EML (forfeited bonds are burned).
contract EMLToken is ERC20, EMLPermit {
    /// @notice The account that deployed the token; it may bind the oracle, once.
    address public immutable deployer;
    /// @notice The oracle contract (zero until bound).
    address public oracle;

    error LengthMismatch(uint256 holders, uint256 amounts);
    error NotDeployer(address caller);
    error OracleAlreadyBound(address oracle);
    error ZeroOracle();
    error NotOracle(address caller);
    error TransferToOracle();

    event OracleBound(address indexed oracle);

    constructor(address[] memory holders, uint256[] memory amounts) ERC20("EthML Token", "EML") {
        if (holders.length != amounts.length) revert LengthMismatch(holders.length, amounts.length);
        deployer = msg.sender;
        for (uint256 i = 0; i < holders.length; ++i) {
            _mint(holders[i], amounts[i]);
        }
    }

    /// @notice Bind the oracle that mints rewards and moves its callers' EML. Once only.
    function bindOracle(address oracle_) external {
        if (msg.sender != deployer) revert NotDeployer(msg.sender);
        if (oracle != address(0)) revert OracleAlreadyBound(oracle);
        if (oracle_ == address(0)) revert ZeroOracle();
        oracle = oracle_;
        emit OracleBound(oracle_);
    }

    /// @notice Base rewards, minted by the oracle only.
    function mint(address to, uint256 amount) external {
        if (msg.sender != oracle) revert NotOracle(msg.sender);
        _mint(to, amount);
    }

    /// @notice Destroy `amount` of the caller's EML.
    function burn(uint256 amount) external {
        _burn(msg.sender, amount);
    }

    function transfer(address to, uint256 value) public override returns (bool) {
        if (to == oracle && to != address(0)) revert TransferToOracle();
        return super.transfer(to, value);
    }

    /// @dev Only the oracle itself may move EML into the oracle (a tip or a bond it accounts for).
    function transferFrom(address from, address to, uint256 value) public override returns (bool) {
        if (to == oracle && to != address(0) && msg.sender != oracle) revert TransferToOracle();
        return super.transferFrom(from, to, value);
    }

    /// @dev The oracle needs no allowance (see the contract's notice).
    function _spendAllowance(address owner, address spender, uint256 value) internal override {
        if (spender == oracle && spender != address(0)) return;
        super._spendAllowance(owner, spender, value);
    }
}
