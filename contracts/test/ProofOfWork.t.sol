// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {ProofOfWork} from "../src/ProofOfWork.sol";
import {IEthML} from "../src/IEthML.sol";
import {vm, EthMLFixture} from "./Base.sol";

contract ProofOfWorkTest is EthMLFixture {
    /// @dev The reference written out by hand: 84 bytes, nonce big-endian in bytes 52..83.
    function _referenceHash(bytes32 challenge, address miner, uint256 nonce) internal pure returns (bytes32) {
        bytes memory m = new bytes(84);
        for (uint256 i = 0; i < 32; ++i) {
            m[i] = challenge[i];
        }
        bytes20 a = bytes20(miner);
        for (uint256 i = 0; i < 20; ++i) {
            m[32 + i] = a[i];
        }
        for (uint256 i = 0; i < 32; ++i) {
            m[52 + i] = bytes1(uint8(nonce >> (8 * (31 - i))));
        }
        return keccak256(m);
    }

    function testFuzz_hash_matches_reference(bytes32 challenge, address miner, uint256 nonce) public pure {
        vm.assertEq(ProofOfWork.hash(challenge, miner, nonce), _referenceHash(challenge, miner, nonce), "hash");
    }

    function testFuzz_validity_matches_reference(bytes32 challenge, address miner, uint256 nonce, uint256 difficulty)
        public
        pure
    {
        vm.assume(difficulty > 0);
        bool expected = uint256(_referenceHash(challenge, miner, nonce)) < type(uint256).max / difficulty;
        vm.assertEq(ProofOfWork.isValid(challenge, miner, nonce, difficulty), expected, "validity");
    }

    function test_shared_vectors() public view {
        string memory json = vm.readFile("tests/vectors/pow.json");
        uint256 n = 0;
        uint256 valid = 0;
        for (;; ++n) {
            string memory p = string.concat(".vectors[", vm.toString(n), "]");
            bytes32 challenge;
            try vm.parseJsonBytes32(json, string.concat(p, ".challenge")) returns (bytes32 c) {
                challenge = c;
            } catch {
                break;
            }
            address miner = vm.parseJsonAddress(json, string.concat(p, ".miner"));
            uint256 nonce = vm.parseJsonUint(json, string.concat(p, ".nonce"));
            bytes32 hash = vm.parseJsonBytes32(json, string.concat(p, ".hash"));
            uint256 difficulty = vm.parseJsonUint(json, string.concat(p, ".difficulty"));
            bool isValid = vm.parseJsonBool(json, string.concat(p, ".valid"));
            vm.assertEq(ProofOfWork.hash(challenge, miner, nonce), hash, string.concat("hash of vector ", p));
            vm.assertEq(
                ProofOfWork.isValid(challenge, miner, nonce, difficulty), isValid, string.concat("validity of ", p)
            );
            if (isValid) ++valid;
        }
        vm.assertTrue(n >= 200, "at least 200 vectors");
        vm.assertTrue(valid > 0 && valid < n, "both outcomes covered");
    }

    /// @dev The deployed contract accepts exactly the nonces the reference accepts.
    function testFuzz_contract_accepts_iff_reference_valid(uint256 nonce) public {
        _deploy(3, 3);
        _request(classifier, 0);
        uint256 id = _currentRound();
        _afterOpening();
        (bytes32 challenge, uint256 difficulty) = _challenge();
        bool expected = uint256(_referenceHash(challenge, miners[0], nonce)) < type(uint256).max / difficulty;
        if (!expected) vm.expectRevert(abi.encodeWithSelector(IEthML.InvalidNonce.selector, id, miners[0], nonce));
        vm.prank(miners[0]);
        ethml.commit(id, nonce, bytes32(0));
    }
}
