// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {Consensus} from "../src/Consensus.sol";
import {vm} from "./Base.sol";

contract ConsensusTest {
    /// @dev Small value ranges make ties and repeats common.
    function _bounded(int256[5] memory raw, uint256 spread) internal pure returns (int256[5] memory v) {
        for (uint256 i = 0; i < 5; ++i) {
            v[i] = raw[i] % int256(spread);
        }
    }

    /// @dev Brute force: the value (among those submitted) with the largest count; ties go to the smallest.
    function _refMode(int256[5] memory v) internal pure returns (int256 best) {
        uint256 bestCount;
        bool found;
        for (uint256 i = 0; i < 5; ++i) {
            uint256 count;
            for (uint256 j = 0; j < 5; ++j) {
                if (v[i] == v[j]) ++count;
            }
            bool better = !found || count > bestCount || (count == bestCount && v[i] < best);
            if (better) {
                (best, bestCount, found) = (v[i], count, true);
            }
        }
    }

    /// @dev Brute force: some submitted value with at most two values below and at most two above it.
    function _refMedian(int256[5] memory v) internal pure returns (int256) {
        for (uint256 i = 0; i < 5; ++i) {
            uint256 below;
            uint256 above;
            for (uint256 j = 0; j < 5; ++j) {
                if (v[j] < v[i]) ++below;
                if (v[j] > v[i]) ++above;
            }
            if (below <= 2 && above <= 2) return v[i];
        }
        revert("no median");
    }

    function testFuzz_mode_matches_brute_force(int256[5] memory raw, uint8 spread) public pure {
        int256[5] memory v = _bounded(raw, uint256(spread % 6) + 1);
        vm.assertEq(Consensus.mode(v), _refMode(v), "mode");
    }

    function testFuzz_mode_is_order_independent(int256[5] memory raw, uint8 spread, uint256 seed) public pure {
        int256[5] memory v = _bounded(raw, uint256(spread % 4) + 1);
        int256[5] memory shuffled = v;
        for (uint256 i = 4; i > 0; --i) {
            uint256 j = uint256(keccak256(abi.encode(seed, i))) % (i + 1);
            (shuffled[i], shuffled[j]) = (shuffled[j], shuffled[i]);
        }
        vm.assertEq(Consensus.mode(v), Consensus.mode(shuffled), "order independent");
    }

    function testFuzz_median_matches_brute_force(int256[5] memory raw, bool wide) public pure {
        int256[5] memory v = wide ? raw : _bounded(raw, 4);
        vm.assertEq(Consensus.median(v), _refMedian(v), "median");
    }

    function testFuzz_agreement_masks(int96[5] memory raw, uint16 bps) public pure {
        bps = uint16(bound(bps, 0, 10_000));
        int256[5] memory v;
        for (uint256 i = 0; i < 5; ++i) {
            v[i] = raw[i];
        }
        int256 m = Consensus.median(v);
        uint8 mask = Consensus.agreeWithin(v, m, bps, type(int256).min);
        uint256 tol = (m < 0 ? uint256(-m) : uint256(m)) * bps / 10_000;
        for (uint256 i = 0; i < 5; ++i) {
            int256 d = v[i] - m;
            bool inside = (d < 0 ? uint256(-d) : uint256(d)) <= tol;
            vm.assertEq(mask & (1 << i) != 0, inside, "band");
        }
        vm.assertTrue(mask != 0, "the median agrees with itself");
        vm.assertEq(Consensus.popcount(Consensus.agreeExact(v, v[0])) >= 1, true, "exact");
    }

    function bound(uint256 x, uint256 lo, uint256 hi) internal pure returns (uint256) {
        return lo + x % (hi - lo + 1);
    }
}
