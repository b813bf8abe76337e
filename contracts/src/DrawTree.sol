// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {Math} from "@openzeppelin/contracts/utils/math/Math.sol";

/// @title DrawTree: weights to draw lots by, with their history.
/// @notice A Fenwick (binary indexed) tree over CAPACITY slots: node i holds the sum of the weights of the
/// slots (i - lowbit(i), i], so changing one weight rewrites at most 13 nodes and finding the slot at a
/// position of the laid-end-to-end weights reads 12. Every node, and every slot's own weight, keeps one
/// point per block in which it changed, so a draw reads the weights as they stood at the end of a past
/// block: weights changed after a draw's randomness became known cannot move that draw.
library DrawTree {
    uint256 internal constant CAPACITY = 4096;

    /// @dev A value from `blockNumber` on (until the next point).
    struct Point {
        uint48 blockNumber;
        uint208 value;
    }

    struct Tree {
        mapping(uint256 => Point[]) nodes;
        mapping(uint256 => Point[]) weights;
    }

    /// @notice Set the weight of `slot` (1..CAPACITY) from this block on.
    function set(Tree storage tree, uint256 slot, uint256 weight) internal {
        Point[] storage own = tree.weights[slot];
        uint256 old = _latest(own);
        if (weight == old) return;
        _record(own, weight);
        for (uint256 i = slot; i <= CAPACITY; i += i & (~i + 1)) {
            Point[] storage node = tree.nodes[i];
            uint256 sum = _latest(node);
            _record(node, weight > old ? sum + (weight - old) : sum - (old - weight));
        }
    }

    function latestWeight(Tree storage tree, uint256 slot) internal view returns (uint256) {
        return _latest(tree.weights[slot]);
    }

    /// @notice The block in which the weight of `slot` last changed (0: never set).
    function lastChange(Tree storage tree, uint256 slot) internal view returns (uint256) {
        Point[] storage own = tree.weights[slot];
        uint256 n = own.length;
        return n == 0 ? 0 : own[n - 1].blockNumber;
    }

    function latestTotal(Tree storage tree) internal view returns (uint256) {
        return _latest(tree.nodes[CAPACITY]);
    }

    /// @notice The weight of `slot` at the end of block `blockNumber`.
    function weightAt(Tree storage tree, uint256 slot, uint256 blockNumber) internal view returns (uint256) {
        return _at(tree.weights[slot], blockNumber);
    }

    /// @notice The sum of all weights at the end of block `blockNumber`.
    function totalAt(Tree storage tree, uint256 blockNumber) internal view returns (uint256) {
        return _at(tree.nodes[CAPACITY], blockNumber);
    }

    /// @notice The slot whose weight covers position `target` when the weights at the end of block
    /// `blockNumber` are laid end to end in slot order, the first `excludedCount` slots of `excluded`
    /// (distinct, with their weights at that block in `excludedWeights`) left out. `target` must be below
    /// the total less the excluded weights; the slot found then has a weight and is not excluded.
    function find(
        Tree storage tree,
        uint256 target,
        uint256 blockNumber,
        uint256[] memory excluded,
        uint256[] memory excludedWeights,
        uint256 excludedCount
    ) internal view returns (uint256) {
        uint256 pos;
        for (uint256 step = CAPACITY >> 1; step > 0; step >>= 1) {
            uint256 next = pos + step; // node `next` covers the slots (pos, next]
            uint256 sum = _at(tree.nodes[next], blockNumber);
            for (uint256 k; k < excludedCount; ++k) {
                uint256 slot = excluded[k];
                if (slot > pos && slot <= next) sum -= excludedWeights[k];
            }
            if (sum <= target) {
                pos = next;
                target -= sum;
            }
        }
        return pos + 1;
    }

    function _latest(Point[] storage points) private view returns (uint256) {
        uint256 n = points.length;
        return n == 0 ? 0 : points[n - 1].value;
    }

    function _record(Point[] storage points, uint256 value) private {
        uint256 n = points.length;
        if (n > 0 && points[n - 1].blockNumber == block.number) {
            points[n - 1].value = uint208(value);
        } else {
            points.push(Point(uint48(block.number), uint208(value)));
        }
    }

    /// @dev The value of the last point at or before `blockNumber` (0 before the first). Draws read recent
    /// blocks, so the last point is tried first, then the last sqrt(n) points, then the rest (as
    /// OpenZeppelin's `Checkpoints.upperLookupRecent`).
    function _at(Point[] storage points, uint256 blockNumber) private view returns (uint256) {
        uint256 n = points.length;
        if (n == 0) return 0;
        Point storage last = points[n - 1];
        if (last.blockNumber <= blockNumber) return last.value;
        uint256 low;
        uint256 high = n - 1; // points[high] is after blockNumber
        if (n > 5) {
            uint256 mid = n - Math.sqrt(n);
            if (points[mid].blockNumber > blockNumber) high = mid;
            else low = mid + 1;
        }
        while (low < high) {
            uint256 mid = (low + high) / 2;
            if (points[mid].blockNumber > blockNumber) high = mid;
            else low = mid + 1;
        }
        return low == 0 ? 0 : points[low - 1].value;
    }
}
