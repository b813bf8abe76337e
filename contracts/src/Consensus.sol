// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

/// @title Consensus over the five submitted predictions.
/// @notice Classification: the mode; among equally frequent values the smallest wins, so the result
/// does not depend on submission order. Regression: the median. A value agrees with a regression
/// consensus when |value - median| <= |median| * toleranceBps / 10000 (an INVALID_INPUT value never does).
library Consensus {
    function mode(int256[5] memory values) internal pure returns (int256 best) {
        uint256 bestCount = 0;
        for (uint256 i = 0; i < 5; ++i) {
            uint256 count = 0;
            for (uint256 j = 0; j < 5; ++j) {
                if (values[j] == values[i]) ++count;
            }
            if (count > bestCount || (count == bestCount && values[i] < best)) {
                bestCount = count;
                best = values[i];
            }
        }
    }

    function median(int256[5] memory values) internal pure returns (int256) {
        int256[5] memory v = values;
        // Insertion sort on a copy: five elements, at most ten swaps.
        int256[5] memory s;
        for (uint256 i = 0; i < 5; ++i) {
            int256 x = v[i];
            uint256 j = i;
            while (j > 0 && s[j - 1] > x) {
                s[j] = s[j - 1];
                --j;
            }
            s[j] = x;
        }
        return s[2];
    }

    function agreeExact(int256[5] memory values, int256 consensus) internal pure returns (uint8 mask) {
        for (uint256 i = 0; i < 5; ++i) {
            if (values[i] == consensus) mask |= uint8(1 << i);
        }
    }

    /// @dev Values are int96-range (or `invalid`), so the products below cannot overflow.
    function agreeWithin(int256[5] memory values, int256 consensus, uint256 toleranceBps, int256 invalid)
        internal
        pure
        returns (uint8 mask)
    {
        uint256 tolerance = _abs(consensus) * toleranceBps / 10_000;
        for (uint256 i = 0; i < 5; ++i) {
            if (values[i] == invalid) continue;
            if (_abs(values[i] - consensus) <= tolerance) mask |= uint8(1 << i);
        }
    }

    function popcount(uint8 mask) internal pure returns (uint256 n) {
        for (; mask != 0; mask &= mask - 1) ++n;
    }

    function _abs(int256 x) private pure returns (uint256) {
        return x < 0 ? uint256(-x) : uint256(x);
    }
}
