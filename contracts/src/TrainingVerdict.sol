// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

/// @title TrainingVerdict: what a panel's votes decide.
/// @notice A panel has an odd number of seats V; a clear majority is M = S / 2 + 1 of the S seats filled
/// (S = V unless too few validators could be drawn), counted against those seats, not against the votes
/// that happened to arrive. A submission's score is the highest
/// value that M votes reach (the M-th highest score): with every seat voting that is the median, and
/// no single vote moves it past the value its neighbours agree on. A vote is outvoted (and its
/// validator slashed) only when at least M votes lie within the tolerance of the decided score and it
/// does not.
library TrainingVerdict {
    function majority(uint256 panel) internal pure returns (uint256) {
        return panel / 2 + 1;
    }

    /// @notice The `m`-th highest of `votes` (0 when there are fewer), and how many votes lie within
    /// `tolerance` of it.
    function decide(uint32[] memory votes, uint256 m, uint256 tolerance)
        internal
        pure
        returns (uint32 score, uint256 agreeing)
    {
        uint256 n = votes.length;
        if (m == 0 || n < m) return (0, 0);
        uint32[] memory sorted = new uint32[](n);
        for (uint256 i; i < n; ++i) {
            uint32 x = votes[i];
            uint256 j = i;
            while (j > 0 && sorted[j - 1] < x) {
                sorted[j] = sorted[j - 1];
                --j;
            }
            sorted[j] = x;
        }
        score = sorted[m - 1];
        for (uint256 i; i < n; ++i) {
            if (!far(votes[i], score, tolerance)) ++agreeing;
        }
    }

    function far(uint256 a, uint256 b, uint256 tolerance) internal pure returns (bool) {
        return a > b ? a - b > tolerance : b - a > tolerance;
    }
}
