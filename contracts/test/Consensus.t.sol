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
        (int256 m,) = Consensus.mode(v, 0x1f);
        vm.assertEq(m, _refMode(v), "mode");
    }

    function testFuzz_mode_is_order_independent(int256[5] memory raw, uint8 spread, uint256 seed) public pure {
        int256[5] memory v = _bounded(raw, uint256(spread % 4) + 1);
        int256[5] memory shuffled = v;
        for (uint256 i = 4; i > 0; --i) {
            uint256 j = uint256(keccak256(abi.encode(seed, i))) % (i + 1);
            (shuffled[i], shuffled[j]) = (shuffled[j], shuffled[i]);
        }
        (int256 a,) = Consensus.mode(v, 0x1f);
        (int256 b,) = Consensus.mode(shuffled, 0x1f);
        vm.assertEq(a, b, "order independent");
    }

    function testFuzz_unrevealed_values_do_not_count(int256[5] memory raw, uint8 revealed) public pure {
        int256[5] memory v = _bounded(raw, 3);
        revealed = revealed & 0x1f;
        (int256 m, uint8 mask) = Consensus.mode(v, revealed);
        vm.assertEq(mask & ~revealed, 0, "only revealed values agree");
        int256[5] memory scrambled = v;
        for (uint256 i = 0; i < 5; ++i) {
            if (revealed & (1 << i) == 0) scrambled[i] = 7; // outside the bounded range
        }
        (int256 m2, uint8 mask2) = Consensus.mode(scrambled, revealed);
        vm.assertEq(m, m2, "hidden values change nothing");
        vm.assertEq(uint256(mask), uint256(mask2), "same agreement");
    }

    function testFuzz_median_matches_brute_force(int256[5] memory raw, bool wide) public pure {
        int256[5] memory v = wide ? raw : _bounded(raw, 4);
        vm.assume(v[0] != type(int256).min && v[1] != type(int256).min && v[2] != type(int256).min);
        vm.assume(v[3] != type(int256).min && v[4] != type(int256).min);
        (int256 m, bool found) = Consensus.median(v, 0x1f, type(int256).min);
        vm.assertTrue(found, "found");
        vm.assertEq(m, _refMedian(v), "median");
    }

    function test_median_skips_excluded_and_unrevealed() public pure {
        int256 x = type(int256).min;
        (int256 m, bool found) = Consensus.median([int256(5), x, 1, 9, 100], 0x0f, x);
        vm.assertTrue(found, "found");
        vm.assertEq(m, 5, "lower median of 1, 5, 9");
        (, found) = Consensus.median([x, x, 1, 2, 3], 0x03, x);
        vm.assertTrue(!found, "nothing to take the median of");
    }

    function testFuzz_agreement_masks(int96[5] memory raw, uint16 bps, uint64 unit) public pure {
        bps = uint16(bound(bps, 0, 10_000));
        int256[5] memory v;
        for (uint256 i = 0; i < 5; ++i) {
            v[i] = raw[i];
        }
        (int256 m,) = Consensus.median(v, 0x1f, type(int256).min);
        uint8 mask = Consensus.agreeWithin(v, 0x1f, m, unit, bps, type(int256).min);
        uint256 scale = m < 0 ? uint256(-m) : uint256(m);
        if (scale < unit) scale = unit;
        uint256 tol = scale * bps / 10_000;
        for (uint256 i = 0; i < 5; ++i) {
            int256 d = v[i] - m;
            bool inside = (d < 0 ? uint256(-d) : uint256(d)) <= tol;
            vm.assertEq(mask & (1 << i) != 0, inside, "band");
        }
        vm.assertTrue(mask != 0, "the median agrees with itself");
        vm.assertEq(Consensus.popcount(Consensus.agreeExact(v, 0x1f, v[0])) >= 1, true, "exact");
    }

    function bound(uint256 x, uint256 lo, uint256 hi) internal pure returns (uint256) {
        return lo + x % (hi - lo + 1);
    }
}
