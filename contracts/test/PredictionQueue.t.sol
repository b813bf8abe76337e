// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {PredictionQueue} from "../src/PredictionQueue.sol";
import {vm} from "./Base.sol";

contract PredictionQueueTest {
    using PredictionQueue for PredictionQueue.Heap;

    PredictionQueue.Heap internal heap;
    uint256 internal length;
    uint32 internal nextId;
    // Reference: every (tip, id) pushed and not yet popped.
    uint96[] internal refTips;
    uint32[] internal refIds;

    function _push(uint96 tip) internal {
        uint32 id = ++nextId;
        heap.push(length++, tip, id);
        refTips.push(tip);
        refIds.push(id);
    }

    /// @dev Brute force: the highest tip, then the lowest id, among the pending entries.
    function _refPop() internal returns (uint96 tip, uint32 id) {
        uint256 best;
        for (uint256 i = 1; i < refTips.length; ++i) {
            if (refTips[i] > refTips[best] || (refTips[i] == refTips[best] && refIds[i] < refIds[best])) best = i;
        }
        (tip, id) = (refTips[best], refIds[best]);
        refTips[best] = refTips[refTips.length - 1];
        refIds[best] = refIds[refIds.length - 1];
        refTips.pop();
        refIds.pop();
    }

    function _pop() internal {
        (uint96 tip, uint32 id) = heap.pop(length--);
        (uint96 refTip, uint32 refId) = _refPop();
        vm.assertEq(uint256(tip), uint256(refTip), "tip order");
        vm.assertEq(uint256(id), uint256(refId), "age order");
    }

    function testFuzz_interleaved_push_pop_matches_brute_force(uint8[64] memory ops, uint96[64] memory tips) public {
        for (uint256 i = 0; i < 64; ++i) {
            if (ops[i] % 3 == 0 && length > 0) {
                _pop();
            } else {
                // Few distinct tips, so ties on tip (ordered by age) are common.
                _push(tips[i] % 4);
            }
        }
        while (length > 0) {
            _pop();
        }
    }

    function test_large_heap_drains_in_order() public {
        for (uint256 i = 0; i < 300; ++i) {
            _push(uint96(uint256(keccak256(abi.encode(i))) % 50) * 1 ether);
        }
        while (length > 0) {
            _pop();
        }
    }

    function test_extreme_tips() public {
        _push(type(uint96).max);
        _push(0);
        _push(type(uint96).max);
        _push(1);
        while (length > 0) {
            _pop();
        }
    }
}
