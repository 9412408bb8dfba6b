"""Permutations of [0, n) in O(1) memory, for shuffling a corpus of any size by step.

A keyed Feistel network permutes [0, 4^h) (the smallest power of 4 >= n); cycle walking
(apply it again while the result is >= n) restricts it to a permutation of [0, n), with fewer
than 4 applications on average. Row i of a pass is `permute(i, n, key)`, computed for the rows
a step needs only: no O(n) permutation array is ever drawn, whatever the corpus size.
"""

from __future__ import annotations

import numpy as np

ROUNDS = 6


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: a strong 64-bit mixing function (wraps modulo 2^64)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _feistel(x: np.ndarray, h: int, keys: np.ndarray) -> np.ndarray:
    mask = np.uint64((1 << h) - 1)
    left, right = x >> np.uint64(h), x & mask
    for k in keys:
        left, right = right, left ^ (_mix(right ^ k) & mask)
    return (left << np.uint64(h)) | right


def permute(i, n: int, key) -> np.ndarray:
    """The images of indices `i` (in [0, n)) under the permutation of [0, n) named by `key`
    (a sequence of ints, e.g. (seed, shard, epoch))."""
    i = np.atleast_1d(np.asarray(i, np.int64))
    if n < 1 or i.size and (i.min() < 0 or i.max() >= n):
        raise ValueError(f"indices must be in [0, {n})")
    h = 1
    while 4 ** h < n:
        h += 1
    keys = np.random.SeedSequence([int(k) for k in key]).generate_state(ROUNDS, np.uint64)
    y = _feistel(i.astype(np.uint64), h, keys)
    out = y >= np.uint64(n)
    while out.any():
        y[out] = _feistel(y[out], h, keys)
        out = y >= np.uint64(n)
    return y.astype(np.int64)
