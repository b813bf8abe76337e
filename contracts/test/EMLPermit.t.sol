// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {EMLToken} from "../src/EMLToken.sol";
import {vm} from "./Base.sol";

/// @dev EIP-2612 permits on EML (EMLPermit): the standard domain, the nonce, and every signature refused
/// (moved here from the first TrainingTasks tests, now against EMLToken itself).
contract EMLPermitTest {
    EMLToken internal token;
    uint256 internal constant OWNER_KEY = 0xA11CE;
    address internal owner;
    address internal constant SPENDER = address(0x5E11);
    bytes32 internal constant PERMIT_TYPEHASH =
        keccak256("Permit(address owner,address spender,uint256 value,uint256 nonce,uint256 deadline)");

    error ERC2612ExpiredSignature(uint256 deadline);
    error ERC2612InvalidSigner(address signer, address owner);

    function setUp() public {
        owner = vm.addr(OWNER_KEY);
        address[] memory holders = new address[](1);
        uint256[] memory amounts = new uint256[](1);
        (holders[0], amounts[0]) = (owner, 100 ether);
        token = new EMLToken(holders, amounts);
    }

    function _sign(uint256 key, uint256 value, uint256 nonce, uint256 deadline)
        internal
        view
        returns (uint8 v, bytes32 r, bytes32 s)
    {
        bytes32 structHash = keccak256(abi.encode(PERMIT_TYPEHASH, vm.addr(key), SPENDER, value, nonce, deadline));
        return vm.sign(key, keccak256(abi.encodePacked(hex"1901", token.DOMAIN_SEPARATOR(), structHash)));
    }

    function test_the_domain_is_the_standard_eip712_domain() public view {
        bytes32 expected = keccak256(
            abi.encode(
                keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"),
                keccak256("EthML Token"),
                keccak256("1"),
                block.chainid,
                address(token)
            )
        );
        vm.assertEq(token.DOMAIN_SEPARATOR(), expected, "domain separator");
    }

    function test_a_permit_sets_the_allowance_and_spends_the_nonce() public {
        uint256 deadline = block.timestamp + 1 hours;
        (uint8 v, bytes32 r, bytes32 s) = _sign(OWNER_KEY, 5 ether, 0, deadline);
        token.permit(owner, SPENDER, 5 ether, deadline, v, r, s);
        vm.assertEq(token.allowance(owner, SPENDER), 5 ether, "allowance");
        vm.assertEq(token.nonces(owner), 1, "nonce used");
        vm.expectPartialRevert(ERC2612InvalidSigner.selector); // replayed: the nonce moved on
        token.permit(owner, SPENDER, 5 ether, deadline, v, r, s);
    }

    function test_expired_forged_and_malleable_permits_are_refused() public {
        uint256 deadline = block.timestamp + 1 hours;
        (uint8 v, bytes32 r, bytes32 s) = _sign(OWNER_KEY, 5 ether, 0, deadline);
        vm.expectPartialRevert(ERC2612InvalidSigner.selector);
        token.permit(owner, SPENDER, 6 ether, deadline, v, r, s); // another value
        (uint8 v2, bytes32 r2, bytes32 s2) = _sign(0xB0B, 5 ether, 0, deadline);
        vm.expectPartialRevert(ERC2612InvalidSigner.selector);
        token.permit(owner, SPENDER, 5 ether, deadline, v2, r2, s2); // another signer
        bytes32 highS = bytes32(0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141 - uint256(s));
        vm.expectPartialRevert(ERC2612InvalidSigner.selector);
        token.permit(owner, SPENDER, 5 ether, deadline, v == 27 ? 28 : 27, r, highS); // the malleable twin
        vm.warp(deadline + 1);
        vm.expectRevert(abi.encodeWithSelector(ERC2612ExpiredSignature.selector, deadline));
        token.permit(owner, SPENDER, 5 ether, deadline, v, r, s);
        vm.assertEq(token.allowance(owner, SPENDER), 0, "nothing approved");
    }
}
