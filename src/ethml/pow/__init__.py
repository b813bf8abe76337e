"""Proof of work: keccak256(challenge | miner | nonce) < type(uint256).max / difficulty."""

from ethml.pow.core import (
    HAS_NATIVE,
    MAX_UINT256,
    SearchResult,
    StopFlag,
    available_paths,
    find_nonce,
    hash_message,
    keccak256,
    random_base,
    resolve_path,
    target_for,
    verify,
    window_counter,
    window_nonce,
)
from ethml.pow.parallel import default_threads, parallel_search

__all__ = [
    "HAS_NATIVE",
    "MAX_UINT256",
    "SearchResult",
    "StopFlag",
    "available_paths",
    "default_threads",
    "find_nonce",
    "hash_message",
    "keccak256",
    "parallel_search",
    "random_base",
    "resolve_path",
    "target_for",
    "verify",
    "window_counter",
    "window_nonce",
]
