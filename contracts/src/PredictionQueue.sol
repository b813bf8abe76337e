// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

/// @title PredictionQueue: the pending requests as a 4-ary max-heap, two entries per storage slot.
/// @notice Highest tip first, then the oldest (lowest id). Push, pop and removal at a known position
/// cost O(log4 n); nothing scans the queue in a transaction (`idAt` lets a view find a position).
/// @dev An entry is 128 bits: `tip << 32 | (type(uint32).max - id)`, so comparing entries compares
/// (tip, age) with no extra reads; entries are unique because ids are. Position p lives at index p + 1,
/// in slot (p + 1) / 2, so the four children of p (4p+1 .. 4p+4) fill exactly two slots and one level
/// of a sift costs two slot reads. The caller keeps the length (packed with its own counters).
library PredictionQueue {
    struct Heap {
        mapping(uint256 => uint256) slots;
    }

    uint256 private constant LOW = type(uint128).max;

    function push(Heap storage heap, uint256 length, uint96 tip, uint32 id) internal {
        uint256 key = (uint256(tip) << 32) | (type(uint32).max - id);
        _set(heap, _siftUp(heap, length, key), key);
    }

    /// @dev Moves the parents that `key` outranks one level down, from position `p` up; returns the
    /// position where `key` belongs (the caller writes it there).
    function _siftUp(Heap storage heap, uint256 p, uint256 key) private returns (uint256) {
        unchecked {
            while (p > 0) {
                uint256 parent = (p - 1) >> 2;
                uint256 parentKey = _get(heap, parent);
                if (parentKey > key) break;
                _set(heap, p, parentKey);
                p = parent;
            }
        }
        return p;
    }

    /// @dev Removes and returns the top entry of a heap of `length` > 0 entries.
    function pop(Heap storage heap, uint256 length) internal returns (uint96 tip, uint32 id) {
        return removeAt(heap, length, 0);
    }

    /// @dev The request id at position `p` (0 when `p` is past the end of a heap of `length`).
    function idAt(Heap storage heap, uint256 length, uint256 p) internal view returns (uint32) {
        if (p >= length) return 0;
        return type(uint32).max - uint32(_get(heap, p));
    }

    /// @dev Removes and returns the entry at position `p` < `length`: the last entry takes its place and
    /// sifts up or down, O(log4 n).
    function removeAt(Heap storage heap, uint256 length, uint256 p) internal returns (uint96 tip, uint32 id) {
        uint256 removed = _get(heap, p);
        uint256 n = length - 1;
        uint256 last = _get(heap, n);
        _set(heap, n, 0);
        if (p < n) {
            // Up: the moved entry may outrank the parents of a position deep in the heap.
            p = _siftUp(heap, p, last);
            unchecked {
                while (true) {
                    uint256 first = 4 * p + 1;
                    if (first >= n) break;
                    // Children first..first+3 sit in slots (first+1)/2 and (first+1)/2 + 1.
                    uint256 s = (first + 1) >> 1;
                    uint256 a = heap.slots[s];
                    uint256 b = first + 2 < n ? heap.slots[s + 1] : 0;
                    uint256 best = a & LOW;
                    uint256 bestAt = first;
                    if (first + 1 < n && (a >> 128) > best) (best, bestAt) = (a >> 128, first + 1);
                    if (first + 2 < n && (b & LOW) > best) (best, bestAt) = (b & LOW, first + 2);
                    if (first + 3 < n && (b >> 128) > best) (best, bestAt) = (b >> 128, first + 3);
                    if (best < last) break;
                    _set(heap, p, best);
                    p = bestAt;
                }
            }
            _set(heap, p, last);
        }
        tip = uint96(removed >> 32);
        id = type(uint32).max - uint32(removed);
    }

    function _get(Heap storage heap, uint256 p) private view returns (uint256) {
        unchecked {
            uint256 index = p + 1;
            uint256 word = heap.slots[index >> 1];
            return index & 1 == 0 ? word & LOW : word >> 128;
        }
    }

    function _set(Heap storage heap, uint256 p, uint256 key) private {
        unchecked {
            uint256 index = p + 1;
            uint256 s = index >> 1;
            uint256 word = heap.slots[s];
            heap.slots[s] = index & 1 == 0 ? (word & ~LOW) | key : (word & LOW) | (key << 128);
        }
    }
}
