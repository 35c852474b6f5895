"""One sort per class: the scores grouped by distinct value, with positive/negative counts.

Every ranking metric of a class comes from these groups, so the class's pixels are
sorted once. float32 scores (the usual anomaly map) are sorted as integer keys, which is
several times faster than an argsort followed by a gather.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class ScoreGroups:
    """Distinct scores in ascending order and how many positives/negatives carry each."""

    values: object  # the scores' own dtype (numpy array or torch tensor)
    positives: object  # int64
    negatives: object  # int64


_SIGN_BIT = 0x80000000
_LOW_31_BITS = 0x7FFFFFFF
BLOCK = 1 << 20  # elements per step in block-wise passes: temporaries of a few MB, reused


def float32_order_keys(words: np.ndarray, *, inverse: bool = False) -> None:
    """In place: float32 bit patterns (in an unsigned array) -> keys that sort in the floats'
    order, or back with `inverse`.

    Non-negative floats get the sign bit set, so they sort above every negative one;
    negative floats get all 32 bits flipped, so a larger magnitude sorts lower.
    """
    word = words.dtype.type
    negative = words >> word(31)  # a float's sign bit; a key's top bit means non-negative
    if inverse:
        negative ^= word(1)
    negative *= word(_LOW_31_BITS)
    negative |= word(_SIGN_BIT)
    words ^= negative


def group_sorted_keys(keys: np.ndarray):
    """Distinct score keys with their positive and negative counts, from sorted
    (score key << 1 | label) keys, a block at a time so that no temporary is class-sized."""
    one = keys.dtype.type(1)
    n_groups = 1
    for start in range(0, keys.size - 1, BLOCK):
        stop = min(start + BLOCK, keys.size - 1)
        n_groups += np.count_nonzero((keys[start:stop] ^ keys[start + 1:stop + 1]) > one)
    score_keys = np.empty(n_groups, dtype=np.uint32)
    positives = np.empty(n_groups, dtype=np.int64)
    negatives = np.empty(n_groups, dtype=np.int64)
    filled = 0
    for start in range(0, keys.size, BLOCK):
        block = keys[start:start + BLOCK]
        new_score = np.empty(block.size, dtype=bool)
        new_score[0] = start == 0 or (keys[start - 1] ^ keys[start]) > one
        np.greater(block[1:] ^ block[:-1], one, out=new_score[1:])
        group_starts = np.flatnonzero(new_score)
        # Segment 0 continues the previous block's last score (empty when the block starts a new one).
        bounds = np.concatenate(([0], group_starts, [block.size]))
        positives_so_far = np.zeros(block.size + 1, dtype=np.int64)
        np.cumsum(block & one, out=positives_so_far[1:])
        segment_positives = np.diff(positives_so_far[bounds])
        segment_negatives = np.diff(bounds) - segment_positives
        if filled:
            positives[filled - 1] += segment_positives[0]
            negatives[filled - 1] += segment_negatives[0]
        new = group_starts.size
        positives[filled:filled + new] = segment_positives[1:]
        negatives[filled:filled + new] = segment_negatives[1:]
        score_keys[filled:filled + new] = block[group_starts] >> one
        filled += new
    return score_keys, positives, negatives


def group_float32_scores(scores32: np.ndarray, labels: np.ndarray):
    """Group by sorting one integer array: an order-preserving key of the score, then the label bit.

    Sorting plain integers is several times faster than an argsort followed by a gather.
    Only the keys are class-sized: on a virtual machine, touching fresh memory costs as
    much as the arithmetic. Non-negative scores (the usual anomaly map) fit a 31-bit key,
    so the label bit joins it in uint32: half the memory and a faster sort.
    """
    bits = scores32.view(np.uint32)
    highest = bits.max()
    has_negative = highest > _SIGN_BIT
    if highest < _SIGN_BIT:  # no sign bit anywhere: the bit patterns already sort like the floats
        keys = bits << np.uint32(1)
    else:
        keys = bits.astype(np.uint64)
        np.copyto(keys, 0, where=keys == _SIGN_BIT)  # -0.0 ties with +0.0
        if has_negative:
            float32_order_keys(keys)
        keys <<= np.uint64(1)
    keys |= labels
    keys.sort()
    score_keys, positives, negatives = group_sorted_keys(keys)
    del keys
    if has_negative:
        float32_order_keys(score_keys, inverse=True)
    return score_keys.view(np.float32), positives, negatives


def group_scores_numpy(scores: np.ndarray, labels: np.ndarray) -> ScoreGroups:
    if scores.dtype == np.float32:
        return ScoreGroups(*group_float32_scores(scores, labels))
    as_float32 = scores.astype(np.float32)
    if np.array_equal(as_float32, scores):  # exactly representable: same order, same ties
        values, positives, negatives = group_float32_scores(as_float32, labels)
        return ScoreGroups(values.astype(scores.dtype), positives, negatives)
    del as_float32
    order = np.argsort(scores)
    sorted_scores = scores[order]
    sorted_labels = labels[order].astype(np.int64)
    del order
    starts = np.concatenate(([0], np.flatnonzero(sorted_scores[1:] != sorted_scores[:-1]) + 1))
    positives = np.add.reduceat(sorted_labels, starts)
    sizes = np.diff(np.append(starts, scores.size))
    return ScoreGroups(sorted_scores[starts], positives, sizes - positives)


def group_scores_torch(scores, labels) -> ScoreGroups:
    import torch

    sorted_scores, order = torch.sort(scores + 0.0)  # + 0.0 folds -0.0 into +0.0
    sorted_labels = labels[order].to(torch.int64)
    del order
    values, sizes = torch.unique_consecutive(sorted_scores, return_counts=True)
    del sorted_scores
    positives_so_far = torch.cumsum(sorted_labels, 0)[torch.cumsum(sizes, 0) - 1]
    positives = torch.diff(positives_so_far, prepend=positives_so_far.new_zeros(1))
    return ScoreGroups(values, positives, sizes - positives)


def group_scores(scores, labels, ops) -> ScoreGroups:
    if ops.name == "torch":
        return group_scores_torch(scores, labels)
    return group_scores_numpy(scores, labels)
