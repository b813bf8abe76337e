// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {IERC20Errors} from "@openzeppelin/contracts/interfaces/draft-IERC6093.sol";
import {EMLPermit} from "../src/EMLPermit.sol";
import {EMLToken} from "../src/EMLToken.sol";
import {EthML} from "../src/EthML.sol";
import {IEthML} from "../src/IEthML.sol";
import {ModelRegistry} from "../src/ModelRegistry.sol";
import {ExampleConsumer} from "../src/UsingEthML.sol";
import {vm} from "./Base.sol";
import {ReviewFixture, rvm} from "./ReviewAttacksBase.sol";

/// @dev Calls the oracle's pulling functions hoping it takes someone else's EML.
contract Puller {
    function tip(EthML ethml, uint256 amount) external {
        ethml.requestPrediction(1, "QmPullerCid", amount, 0);
    }

    function fund(EthML ethml, uint256 amount) external {
        ethml.fund(amount);
    }
}

/// @notice Third outside review, the EML token: the oracle's allowance bypass, permits, and the oracle's
/// own EML ledger. `test_attack_*` tests assert the safe behaviour of an attack that worked at the review's snapshot.
contract ReviewAttacksTokenTest is ReviewFixture {
    bytes32 internal constant PERMIT_TYPEHASH =
        keccak256("Permit(address owner,address spender,uint256 value,uint256 nonce,uint256 deadline)");
    uint256 internal constant KEY = 0xB0B5EC12E7;

    function setUp() public {
        _deployWith(_shipped(1));
    }

    // ------------------------------------------------------------------------------------------
    // The allowance bypass: the oracle only ever pulls from its own caller
    // ------------------------------------------------------------------------------------------

    function test_nobody_can_make_the_oracle_pull_someone_elses_eml() public {
        _request(classifier, 0); // round 1: commit is reachable too
        Puller puller = new Puller();
        address attacker = miners[6];
        uint256 victim = token.balanceOf(USER);
        // The token itself: no allowance, no transferFrom, whoever asks.
        vm.prank(attacker);
        vm.expectRevert(abi.encodeWithSelector(IERC20Errors.ERC20InsufficientAllowance.selector, attacker, 0, 1 ether));
        token.transferFrom(USER, attacker, 1 ether);
        // Through the oracle: a tip or a fund is taken from the calling contract, which holds nothing.
        vm.expectRevert(
            abi.encodeWithSelector(IERC20Errors.ERC20InsufficientBalance.selector, address(puller), 0, 1 ether)
        );
        puller.tip(ethml, 1 ether);
        vm.expectRevert(
            abi.encodeWithSelector(IERC20Errors.ERC20InsufficientBalance.selector, address(puller), 0, 1 ether)
        );
        puller.fund(ethml, 1 ether);
        // A commitment's bond comes from the committer, even one whose transaction another account pays
        // for (tx.origin is not used anywhere).
        _afterOpening();
        address poor = address(0xDEAD);
        uint256 nonce;
        {
            (bytes32 challenge, uint256 difficulty) = _challenge();
            uint256 target = type(uint256).max / difficulty;
            while (uint256(keccak256(abi.encodePacked(challenge, poor, nonce))) >= target) {
                ++nonce;
            }
        }
        vm.prank(poor, USER);
        vm.expectRevert(abi.encodeWithSelector(IERC20Errors.ERC20InsufficientBalance.selector, poor, 0, SHIPPED_BOND));
        ethml.commit(1, nonce, bytes32(uint256(1)));
        // A consumer that holds many users' EML tips with what the calling user hands it, not the pool's.
        ExampleConsumer consumer = new ExampleConsumer(ethml);
        vm.prank(USER);
        token.transfer(address(consumer), 50 ether); // other users' refunds waiting to be reclaimed
        vm.prank(attacker);
        vm.expectRevert(
            abi.encodeWithSelector(IERC20Errors.ERC20InsufficientAllowance.selector, address(consumer), 0, 50 ether)
        );
        consumer.request(classifier, CID, 50 ether);
        vm.assertEq(token.balanceOf(USER), victim - 50 ether, "only what the victim sent itself left it");
        vm.assertEq(token.balanceOf(address(consumer)), 50 ether, "the pool is intact");
    }

    /// A direct transfer or a third party's transferFrom into the oracle is refused (it could not be
    /// accounted for); only the oracle's own pulls and mints add to its balance.
    function test_eml_cannot_be_pushed_into_the_oracle_or_minted_by_anyone_else() public {
        vm.prank(USER);
        vm.expectRevert(EMLToken.TransferToOracle.selector);
        token.transfer(address(ethml), 1 ether);
        vm.prank(USER);
        token.approve(miners[6], 1 ether);
        vm.prank(miners[6]);
        vm.expectRevert(EMLToken.TransferToOracle.selector);
        token.transferFrom(USER, address(ethml), 1 ether);
        address settlement = address(ethml.settlement());
        vm.prank(settlement);
        vm.expectRevert(abi.encodeWithSelector(EMLToken.NotOracle.selector, settlement));
        token.mint(USER, 1 ether);
        vm.expectRevert(abi.encodeWithSelector(EMLToken.OracleAlreadyBound.selector, address(ethml)));
        token.bindOracle(address(this));
    }

    // ------------------------------------------------------------------------------------------
    // EIP-2612 permits
    // ------------------------------------------------------------------------------------------

    function _sign(address owner, address spender, uint256 value, uint256 nonce, uint256 deadline)
        internal
        view
        returns (uint8 v, bytes32 r, bytes32 s)
    {
        bytes32 structHash = keccak256(abi.encode(PERMIT_TYPEHASH, owner, spender, value, nonce, deadline));
        bytes32 digest = keccak256(abi.encodePacked(hex"1901", token.DOMAIN_SEPARATOR(), structHash));
        return vm.sign(KEY, digest);
    }

    function test_permits_cannot_be_replayed_forged_stretched_or_carried_to_another_chain() public {
        address owner = vm.addr(KEY);
        address spender = miners[6];
        uint256 deadline = block.timestamp + 1 hours;
        (uint8 v, bytes32 r, bytes32 s) = _sign(owner, spender, 5 ether, 0, deadline);
        // Malleable twin (high s, flipped v): refused like OpenZeppelin's ECDSA.recover.
        bytes32 highS = bytes32(0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141 - uint256(s));
        vm.expectRevert(abi.encodeWithSelector(EMLPermit.ERC2612InvalidSigner.selector, address(0), owner));
        token.permit(owner, spender, 5 ether, deadline, v == 27 ? 28 : 27, r, highS);
        // A different value than signed.
        vm.expectRevert();
        token.permit(owner, spender, 6 ether, deadline, v, r, s);
        // The real one, once.
        token.permit(owner, spender, 5 ether, deadline, v, r, s);
        vm.assertEq(token.allowance(owner, spender), 5 ether, "approved");
        vm.assertEq(token.nonces(owner), 1, "nonce used");
        vm.expectRevert(); // the nonce moved on: the same signature recovers someone else
        token.permit(owner, spender, 5 ether, deadline, v, r, s);
        // Past its deadline.
        (v, r, s) = _sign(owner, spender, 1 ether, 1, deadline);
        vm.warp(deadline + 1);
        vm.expectRevert(abi.encodeWithSelector(EMLPermit.ERC2612ExpiredSignature.selector, deadline));
        token.permit(owner, spender, 1 ether, deadline, v, r, s);
        // Signed here, sent on a fork with another chain id: the domain separator differs.
        deadline = block.timestamp + 1 hours;
        (v, r, s) = _sign(owner, spender, 1 ether, 1, deadline);
        bytes32 here = token.DOMAIN_SEPARATOR();
        rvm.chainId(block.chainid + 1);
        vm.assertTrue(token.DOMAIN_SEPARATOR() != here, "the domain follows the chain id");
        vm.expectRevert();
        token.permit(owner, spender, 1 ether, deadline, v, r, s);
    }

    // ------------------------------------------------------------------------------------------
    // The oracle's own ledger of miner balances
    // ------------------------------------------------------------------------------------------

    /// `fund(amount)` moves `amount` EML into the oracle and credits `uint96(amount)`: above
    /// type(uint96).max (7.9e28 wei, 79 billion EML) the difference is kept by the oracle, credited to
    /// nobody and never recoverable, and EML conservation (escrow = balances + open tips) breaks. Only a
    /// holder of that much can do it, to itself; the same silent truncation sits in the close
    /// (`uint96(back + rewards)`).
    function test_attack_funding_more_than_uint96_credits_less_than_it_takes() public {
        address rich = address(0xF00D);
        uint256 amount = uint256(type(uint96).max) + 5 ether;
        address[] memory holders = new address[](1);
        uint256[] memory amounts = new uint256[](1);
        (holders[0], amounts[0]) = (rich, amount);
        EMLToken t = new EMLToken(holders, amounts);
        EthML oracle = new EthML(t, new ModelRegistry(ADMIN), ADMIN, _shipped(1));
        t.bindOracle(address(oracle));
        vm.prank(rich);
        (bool ok,) = address(oracle).call(abi.encodeCall(EthML.fund, (amount)));
        vm.assertTrue(
            !ok || oracle.minerBalance(rich) == t.balanceOf(address(oracle)),
            "fund must credit what it takes, or refuse"
        );
    }

    /// A request's status never moves the tip twice: a request closed by expiry cannot be cancelled or
    /// expired again for a second refund.
    function test_a_refunded_request_cannot_be_refunded_again() public {
        EthML.Parameters memory p = _shipped(1);
        p.maxQueueBlocks = 20;
        _deployWith(p);
        _request(classifier, 0); // round 1
        uint256 id = _request(classifier, 3 ether);
        vm.roll(block.number + 21);
        uint256 before = token.balanceOf(USER);
        ethml.expireQueued(id, ethml.queuePosition(id));
        vm.assertEq(token.balanceOf(USER), before + 3 ether, "refunded once");
        vm.expectRevert(); // its block is now its closing block: QueuedNotStale, and NotQueued after that
        ethml.expireQueued(id, 0);
        vm.roll(block.number + 21);
        vm.expectRevert(abi.encodeWithSelector(IEthML.NotQueued.selector, id));
        ethml.expireQueued(id, 0);
        vm.prank(USER);
        vm.expectRevert(abi.encodeWithSelector(IEthML.NotQueued.selector, id));
        ethml.cancelRequest(id, 0);
        vm.assertEq(token.balanceOf(USER), before + 3 ether, "and only once");
    }
}
