// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

/// @title Consensus over the revealed predictions of a round.
/// @notice Only the values whose bit is set in `revealed` take part. Classification: the mode (ties go
/// to the smallest value, though a quorum of at least three of five makes a winning mode unique).
/// Regression: the lower median of the revealed numbers (INVALID_INPUT values excluded); a number
/// agrees when |value - median| <= max(|median|, unit) * toleranceBps / 10000, where `unit` is 1.0
/// in the model's fixed-point scale, so a median of 0 still has a band.
library Consensus {
    /// @notice The decision over one request's revealed values: the consensus value, the mask of the
    /// values that agree with it and their number. Classification: the mode. Regression: `invalid`
    /// (the INVALID_INPUT sentinel) when `quorum` revealed it, otherwise the lower median of the numbers
    /// and the values within the band. The caller compares `agreeing` with the quorum.
    function decide(
        bool regression,
        uint8 decimals,
        int256[5] memory values,
        uint8 revealed,
        uint256 toleranceBps,
        uint256 quorum,
        int256 invalid
    ) internal pure returns (int256 consensus, uint8 mask, uint256 agreeing) {
        if (!regression) {
            (consensus, mask) = mode(values, revealed);
        } else {
            // "Invalid input" needs a quorum of its own; otherwise the numbers decide.
            mask = agreeExact(values, revealed, invalid);
            if (popcount(mask) >= quorum) {
                consensus = invalid;
            } else {
                bool found;
                (consensus, found) = median(values, revealed, invalid);
                if (found) mask = agreeWithin(values, revealed, consensus, 10 ** decimals, toleranceBps, invalid);
                else consensus = invalid;
            }
        }
        agreeing = popcount(mask);
    }

    /// @notice The slots that belong to at least one largest group of agreeing revealed values, for a
    /// request that closed without a quorum. A group is the values equal to one revealed value
    /// (classification, and INVALID_INPUT for both kinds) or, for regression, the numbers within the
    /// band around one revealed number (the band `decide` uses around the median). Every group of the
    /// largest size counts, so two honest slots that agree keep their bond however the others split:
    /// only the slots outside all of them are the ones that kept the quorum from forming.
    function largestGroups(
        bool regression,
        uint8 decimals,
        int256[5] memory values,
        uint8 revealed,
        uint256 toleranceBps,
        int256 invalid
    ) internal pure returns (uint8 kept) {
        uint8[5] memory groups;
        uint256 best = 0;
        for (uint256 c = 0; c < 5; ++c) {
            if (revealed & (1 << c) == 0) continue;
            int256 center = values[c];
            uint8 group = !regression || center == invalid
                ? agreeExact(values, revealed, center)
                : agreeWithin(values, revealed, center, 10 ** decimals, toleranceBps, invalid);
            groups[c] = group;
            uint256 size = popcount(group);
            if (size > best) best = size;
        }
        for (uint256 c = 0; c < 5; ++c) {
            if (popcount(groups[c]) == best) kept |= groups[c];
        }
    }

    function mode(int256[5] memory values, uint8 revealed) internal pure returns (int256 best, uint8 mask) {
        uint256 bestCount = 0;
        for (uint256 i = 0; i < 5; ++i) {
            if (revealed & (1 << i) == 0) continue;
            uint256 count = 0;
            for (uint256 j = 0; j < 5; ++j) {
                if (revealed & (1 << j) != 0 && values[j] == values[i]) ++count;
            }
            if (count > bestCount || (count == bestCount && values[i] < best)) {
                bestCount = count;
                best = values[i];
            }
        }
        mask = agreeExact(values, revealed, best);
    }

    /// @dev The lower median of the revealed values other than `excluded`; `found` is false when there are none.
    function median(int256[5] memory values, uint8 revealed, int256 excluded)
        internal
        pure
        returns (int256 med, bool found)
    {
        int256[5] memory s;
        uint256 n = 0;
        for (uint256 i = 0; i < 5; ++i) {
            if (revealed & (1 << i) == 0 || values[i] == excluded) continue;
            int256 x = values[i];
            uint256 j = n;
            // Insertion sort: five elements at most.
            while (j > 0 && s[j - 1] > x) {
                s[j] = s[j - 1];
                --j;
            }
            s[j] = x;
            ++n;
        }
        if (n == 0) return (0, false);
        return (s[(n - 1) / 2], true);
    }

    function agreeExact(int256[5] memory values, uint8 revealed, int256 consensus) internal pure returns (uint8 mask) {
        for (uint256 i = 0; i < 5; ++i) {
            if (revealed & (1 << i) != 0 && values[i] == consensus) mask |= uint8(1 << i);
        }
    }

    /// @dev Values are int96-range (or `invalid`), so the products below cannot overflow.
    function agreeWithin(
        int256[5] memory values,
        uint8 revealed,
        int256 consensus,
        uint256 unit,
        uint256 toleranceBps,
        int256 invalid
    ) internal pure returns (uint8 mask) {
        uint256 scale = _abs(consensus);
        if (scale < unit) scale = unit;
        uint256 tolerance = scale * toleranceBps / 10_000;
        for (uint256 i = 0; i < 5; ++i) {
            if (revealed & (1 << i) == 0 || values[i] == invalid) continue;
            if (_abs(values[i] - consensus) <= tolerance) mask |= uint8(1 << i);
        }
    }

    function popcount(uint8 mask) internal pure returns (uint256 n) {
        for (; mask != 0; mask &= mask - 1) {
            ++n;
        }
    }

    function _abs(int256 x) private pure returns (uint256) {
        return x < 0 ? uint256(-x) : uint256(x);
    }
}
