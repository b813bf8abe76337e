// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {DrawTree} from "../src/DrawTree.sol";
import {TrainingVerdict} from "../src/TrainingVerdict.sol";
import {vm} from "./Base.sol";

/// @dev The tree, checked against a plain list of weights kept beside it.
contract DrawTreeTest {
    using DrawTree for DrawTree.Tree;

    DrawTree.Tree internal tree;
    uint256[] internal slots;
    mapping(uint256 => uint256) internal plain;

    function _set(uint256 slot, uint256 weight) internal {
        if (plain[slot] == 0 && weight != 0) slots.push(slot);
        plain[slot] = weight;
        tree.set(slot, weight);
    }

    /// @dev The slot covering `target` by walking the used slots in order, skipping the excluded.
    function _naive(uint256 target, uint256[] memory excluded) internal view returns (uint256) {
        uint256[] memory sorted = new uint256[](slots.length);
        for (uint256 i; i < slots.length; ++i) {
            uint256 j = i;
            while (j > 0 && sorted[j - 1] > slots[i]) {
                sorted[j] = sorted[j - 1];
                --j;
            }
            sorted[j] = slots[i];
        }
        for (uint256 i; i < sorted.length; ++i) {
            uint256 slot = sorted[i];
            uint256 w = plain[slot];
            if (w == 0) continue;
            bool skip;
            for (uint256 k; k < excluded.length; ++k) {
                if (excluded[k] == slot) skip = true;
            }
            if (skip) continue;
            if (target < w) return slot;
            target -= w;
        }
        revert("target beyond the total");
    }

    function testFuzz_find_matches_a_walk_over_the_slots(uint256 seed, uint8 count, uint8 excludedCount) public {
        uint256 n = uint256(count) % 24 + 1;
        for (uint256 i; i < n; ++i) {
            uint256 slot = uint256(keccak256(abi.encode(seed, "slot", i))) % DrawTree.CAPACITY + 1;
            if (i == 0) slot = DrawTree.CAPACITY; // the edges are slots too
            if (i == 1) slot = 1;
            _set(slot, uint256(keccak256(abi.encode(seed, "w", i))) % 1_000 ether + 1);
        }
        uint256 total = tree.latestTotal();
        uint256 e = uint256(excludedCount) % slots.length;
        uint256[] memory excluded = new uint256[](e + 1);
        uint256[] memory weights = new uint256[](e + 1);
        uint256 left = total;
        for (uint256 k; k < e; ++k) {
            excluded[k] = slots[k];
            weights[k] = plain[slots[k]];
            left -= weights[k];
        }
        uint256[] memory exact = new uint256[](e);
        for (uint256 k; k < e; ++k) {
            exact[k] = excluded[k];
        }
        for (uint256 j; j < 8; ++j) {
            uint256 target = uint256(keccak256(abi.encode(seed, "t", j))) % left;
            vm.assertEq(tree.find(target, block.number, excluded, weights, e), _naive(target, exact), "same slot");
        }
        vm.assertEq(tree.find(0, block.number, excluded, weights, e), _naive(0, exact), "first");
        vm.assertEq(tree.find(left - 1, block.number, excluded, weights, e), _naive(left - 1, exact), "last");
    }

    function test_weights_are_read_as_they_stood_at_a_past_block() public {
        uint256 start = block.number;
        for (uint256 b; b < 40; ++b) {
            vm.roll(start + b);
            tree.set(7, 100 + b); // one point per block, enough to reach the binary search
            tree.set(4096, 1_000 * b);
            tree.set(7, 200 + b); // twice in a block: the later value stands for the block
        }
        for (uint256 b; b < 40; ++b) {
            vm.assertEq(tree.weightAt(7, start + b), 200 + b, "slot 7 at that block");
            vm.assertEq(tree.totalAt(start + b), 200 + b + 1_000 * b, "total at that block");
        }
        vm.assertEq(tree.weightAt(7, start - 1), 0, "before the first point");
        vm.assertEq(tree.weightAt(7, start + 100), 239, "after the last");
        uint256[] memory none = new uint256[](0);
        // At block start + 3: slot 7 holds 203, slot 4096 holds 3,000.
        vm.assertEq(tree.find(202, start + 3, none, none, 0), 7, "inside slot 7");
        vm.assertEq(tree.find(203, start + 3, none, none, 0), 4096, "past it");
    }
}

/// @dev The verdict rule: the m-th highest vote, and who agrees with it.
contract TrainingVerdictTest {
    function _votes(uint256 n, uint32 honest, uint32 odd, uint256 at) internal pure returns (uint32[] memory v) {
        v = new uint32[](n);
        for (uint256 i; i < n; ++i) {
            v[i] = i == at ? odd : honest;
        }
    }

    /// One vote, anywhere and of any value, cannot move a panel of 3, 5, 7 or 9 off the others' score.
    function testFuzz_one_vote_cannot_swing_the_score(uint8 size, uint32 honest, uint32 odd, uint8 at) public pure {
        uint256 n = 3 + 2 * (uint256(size) % 4);
        honest %= 1_000_001;
        odd %= 1_000_001;
        uint256 m = TrainingVerdict.majority(n);
        (uint32 score, uint256 agreeing) = TrainingVerdict.decide(_votes(n, honest, odd, uint256(at) % n), m, 20_000);
        vm.assertEq(uint256(score), uint256(honest), "the honest score");
        vm.assertTrue(agreeing >= n - 1, "the others agree");
    }

    /// Whatever the votes: at least m reach the score, fewer than m are above it.
    function testFuzz_the_score_is_what_a_majority_reaches(uint32[9] memory raw, uint8 size) public pure {
        uint256 n = 1 + 2 * (uint256(size) % 5);
        uint32[] memory votes = new uint32[](n);
        for (uint256 i; i < n; ++i) {
            votes[i] = raw[i] % 1_000_001;
        }
        uint256 m = TrainingVerdict.majority(n);
        (uint32 score,) = TrainingVerdict.decide(votes, m, 0);
        uint256 reach;
        uint256 above;
        for (uint256 i; i < n; ++i) {
            if (votes[i] >= score) ++reach;
            if (votes[i] > score) ++above;
        }
        vm.assertTrue(reach >= m, "a majority reaches it");
        vm.assertTrue(above < m, "no majority above it");
    }

    function test_too_few_votes_decide_nothing() public pure {
        (uint32 score, uint256 agreeing) = TrainingVerdict.decide(_votes(2, 900_000, 900_000, 0), 3, 0);
        vm.assertEq(uint256(score), 0, "no score");
        vm.assertEq(agreeing, 0, "nobody");
    }
}
