"""The ranking curve of a class, from its grouped scores: AUROC, AP, F1-max, and the
F1-max threshold with the IoU of the map thresholded there (VCP-CLIP's two extra metrics).

Every value comes from one pass down the same cumulative counts that scikit-learn's
curve holds, with the same floating-point operations, so the numbers (and which of
several equal F1 values wins) are scikit-learn's.
"""

from __future__ import annotations

import numpy as np

from .grouping import ScoreGroups

# Names of `ranking_metrics` that need the F1 curve, and those that need its best point.
_NEEDS_F1_CURVE = {"f1", "iou", "threshold"}
_NEEDS_BEST_F1_POINT = {"iou", "threshold"}


def descending_curve(groups: ScoreGroups, ops):
    """scikit-learn's curve, a chunk at a time: at each distinct score from the highest down,
    (positives, negatives) with that score and (tps, fps), those at or above it.

    Chunks keep the temporaries small: a few MB each instead of a few GB for a large class.
    """
    positives = ops.flip(groups.positives)
    negatives = ops.flip(groups.negatives)
    tp_before = fp_before = 0
    for start in range(0, positives.shape[0], ops.chunk):
        chunk_positives = positives[start:start + ops.chunk]
        chunk_negatives = negatives[start:start + ops.chunk]
        tps = chunk_positives.cumsum(0)
        tps += tp_before
        fps = chunk_negatives.cumsum(0)
        fps += fp_before
        yield chunk_positives, chunk_negatives, tps, fps
        tp_before, fp_before = int(tps[-1]), int(fps[-1])


def ranking_metrics(groups: ScoreGroups, ops, f1_epsilon: float, wanted) -> dict:
    """AUROC, AP and F1-max exactly as scikit-learn computes them on the same curve.

    "threshold" is the score at the F1 maximum as VCP-CLIP's reference picks it,
    `thresholds[np.argmax(f1)]` on scikit-learn's curve: thresholds increase there, so of
    several equal maxima the lowest score wins. "iou" is |pred ∧ gt| / |pred ∨ gt| for
    pred = score > that threshold: every score strictly above it, read off the same counts.
    """
    wanted = set(wanted)
    n_positive, n_negative = int(groups.positives.sum()), int(groups.negatives.sum())
    twice_auc = 0
    ap_sum = 0.0
    best_f1 = 0.0  # scikit-learn's curve also ends in (precision 1, recall 0), whose F1 is 0
    best_point = None  # (curve index, positives above, negatives above) of the last best F1
    curve_start = 0
    for positives, negatives, tps, fps in descending_curve(groups, ops):
        if "auroc" in wanted:
            # ROC trapezoids, Δfps · (tps + previous tps), summed exactly in int64.
            twice_auc += int((negatives * (2 * tps - positives)).sum())
        if "ap" in wanted or wanted & _NEEDS_F1_CURVE:
            tps_f = ops.float64(tps)
            predicted = ops.float64(fps)
            predicted += tps_f
            precision = tps_f / predicted
            if "ap" in wanted:
                ap_sum += float((ops.float64(positives) * precision).sum())
            if wanted & _NEEDS_F1_CURVE:
                recall = tps_f
                recall /= n_positive
                # The same operations as the reference's 2PR/(P+R+eps), for the same rounding.
                f1 = precision * 2
                f1 *= recall
                denominator = precision + recall
                denominator += f1_epsilon
                with np.errstate(invalid="ignore"):  # 0/0 where nothing is predicted positive: dropped
                    f1 /= denominator
                finite_f1 = ops.where(ops.isfinite(f1), f1, 0.0)
                chunk_best = float(finite_f1.max())
                if wanted & _NEEDS_BEST_F1_POINT and chunk_best >= best_f1:
                    # `>=` and the last index: on this descending curve the lowest score comes last.
                    at = ops.last_index_of_max(finite_f1)
                    best_point = (curve_start + at, int(tps[at] - positives[at]), int(fps[at] - negatives[at]))
                best_f1 = max(best_f1, chunk_best)
        curve_start += positives.shape[0]
    result = {}
    if "auroc" in wanted:
        result["auroc"] = twice_auc / (2.0 * n_positive * n_negative)
    if "ap" in wanted:
        result["ap"] = ap_sum / n_positive
    if "f1" in wanted:
        result["f1"] = best_f1
    if best_point is not None:
        curve_index, positives_above, negatives_above = best_point
        if "threshold" in wanted:
            result["threshold"] = float(groups.values[groups.values.shape[0] - 1 - curve_index])
        if "iou" in wanted:
            # pred ∨ gt = every predicted pixel plus the anomalous ones it misses.
            result["iou"] = positives_above / (negatives_above + n_positive)
    return result
