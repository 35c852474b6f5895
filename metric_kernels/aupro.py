"""AUPRO two ways, from the grouped scores and the regions' pixels, without thresholding a map.

official: the reference's `cal_pro_score` (200 thresholds, FPR < 0.3, FPRs min-max
rescaled), its undefined cases NaN with a warning; exact: MVTec AD's definition.
"""

from __future__ import annotations

import math

import numpy as np

from .ranking import descending_curve
from .undefined import warn_undefined

OFFICIAL_PRO_STEPS = 200  # the reference's `max_step`
PRO_FPR_LIMIT = 0.3  # the reference's `expect_fpr`, and the MVTec AD integration limit


def official_thresholds(lowest, highest):
    """The reference's thresholds, from the same numpy calls on the same numpy scalars
    (None when the maps are constant, where the reference's np.arange fails)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        step = (highest - lowest) / OFFICIAL_PRO_STEPS
    if not step > 0:
        return None
    return np.arange(lowest, highest, step)


def at_or_below_in(thresholds: np.ndarray, scalar_type) -> np.ndarray:
    """For each threshold, the largest value of the scores' type that is <= it, so that
    `score <= threshold` can be decided in the scores' own type (no class-sized cast)."""
    rounded = thresholds.astype(scalar_type)
    too_high = rounded.astype(thresholds.dtype) > thresholds
    rounded[too_high] = np.nextafter(rounded[too_high], scalar_type(-np.inf))
    return rounded


def auc_like_sklearn(x: np.ndarray, y: np.ndarray) -> float:
    """sklearn.metrics.auc: trapezoids, sign flipped when x decreases (hence the reference's -0.0)."""
    dx = np.diff(x)
    direction = 1
    if np.any(dx < 0):
        if np.all(dx <= 0):
            direction = -1
        else:
            raise ValueError(f"x is neither increasing nor decreasing: {x}")
    return float(direction * np.add.reduce(dx * (y[1:] + y[:-1]) / 2.0))


def official_aupro(groups, positive_scores, positive_regions, n_regions, ops, cls_name,
                   fpr_limit: float = PRO_FPR_LIMIT) -> float:
    """The reference's 200-threshold AUPRO (thresholds with FPR < `fpr_limit`), without thresholding any map."""
    numpy_scalar = ops.to_numpy(groups.values[:1]).dtype.type
    thresholds_np = official_thresholds(numpy_scalar(groups.values[0].item()),
                                         numpy_scalar(groups.values[-1].item()))
    if thresholds_np is None:
        warn_undefined(cls_name, ["pixel_aupro"], "official mode: every map score is equal, no thresholds")
        return math.nan
    thresholds = ops.asarray(thresholds_np)
    n_thresholds = len(thresholds_np)

    # False positives at each threshold: negatives scoring strictly above it. Summed slice by
    # slice between consecutive thresholds, so that no class-sized cumulative array is made.
    at_or_below = ops.to_numpy(ops.searchsorted(
        groups.values, ops.asarray(at_or_below_in(thresholds_np, numpy_scalar)), side="right"))
    n_negative = int(groups.negatives.sum())
    slice_sums = ops.stack([groups.negatives[start:stop].sum()
                            for start, stop in zip(np.r_[0, at_or_below[:-1]], at_or_below)])
    negatives_at_or_below = np.cumsum(ops.to_numpy(slice_sums).astype(np.int64))  # one device sync, not 200
    false_positives = n_negative - negatives_at_or_below

    # Pixel p is predicted positive at threshold k exactly when k < bin[p].
    bins = ops.searchsorted(thresholds, ops.cast_like(positive_scores, thresholds), side="left")
    n_bins = n_thresholds + 1
    counts = ops.bincount(positive_regions * n_bins + bins, minlength=(n_regions + 1) * n_bins)
    counts = counts.reshape(n_regions + 1, n_bins)[1:]
    at_least_bin = ops.flip(ops.flip(counts, 1).cumsum(1), 1)
    true_positives = ops.to_numpy(at_least_bin[:, 1:])  # [R, K]: region pixels above threshold k
    areas = ops.to_numpy(at_least_bin[:, 0])

    fprs = false_positives / n_negative
    # Region fractions laid out [K, R] so that each mean sums contiguously, as the reference's does.
    pros = np.ascontiguousarray((true_positives / areas[:, None]).T).mean(axis=1)
    kept = fprs < fpr_limit
    if kept.sum() < 2:
        warn_undefined(cls_name, ["pixel_aupro"],
                        f"official mode: {int(kept.sum())} threshold(s) with FPR < {fpr_limit}, need 2")
        return math.nan
    kept_fprs = fprs[kept]
    if kept_fprs.max() == kept_fprs.min():
        warn_undefined(cls_name, ["pixel_aupro"],
                        f"official mode: every threshold with FPR < {fpr_limit} has the same FPR, "
                        "so the min-max rescaling divides by zero")
        return math.nan
    kept_fprs = (kept_fprs - kept_fprs.min()) / (kept_fprs.max() - kept_fprs.min())
    return auc_like_sklearn(kept_fprs, pros[kept])


def exact_aupro(groups, positive_scores, positive_regions, n_regions, ops, fpr_limit: float = PRO_FPR_LIMIT) -> float:
    """MVTec AD's AUPRO: the PRO-vs-FPR polyline through every distinct score, from (0, 0),
    integrated up to FPR `fpr_limit` (0.3; the point there interpolated), divided by it."""
    n_negative = int(groups.negatives.sum())
    areas = ops.bincount(positive_regions, minlength=n_regions + 1)
    weights = 1.0 / ops.float64(areas[positive_regions])  # each region weighs 1 in total
    order = ops.flip(ops.argsort(positive_scores))
    covered = weights[order].cumsum(0)
    del order, weights
    area = 0.0
    x_before = y_before = 0.0
    for _, _, tps, fps in descending_curve(groups, ops):
        # The tps best-scoring anomalous pixels are exactly those at or above the threshold.
        pro = ops.where(tps > 0, covered[ops.clip_min(tps - 1, 0)], 0.0)
        pro /= n_regions
        pro = ops.minimum(pro, 1.0)
        fpr = ops.float64(fps)
        fpr /= n_negative
        x = ops.concat([ops.asarray(np.array([x_before])), fpr])
        y = ops.concat([ops.asarray(np.array([y_before])), pro])
        inside = int(ops.searchsorted(x, ops.asarray(np.array([fpr_limit])), side="right")[0])
        area += float(((x[1:inside] - x[:inside - 1]) * (y[1:inside] + y[:inside - 1]) / 2).sum())
        if inside < x.shape[0]:  # the curve crosses the FPR limit in this chunk
            x0, y0, x1, y1 = float(x[inside - 1]), float(y[inside - 1]), float(x[inside]), float(y[inside])
            if x0 < fpr_limit:
                y_at_limit = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
                area += (fpr_limit - x0) * (y0 + y_at_limit) / 2
            return area / fpr_limit
        x_before, y_before = float(x[-1]), float(y[-1])
    raise AssertionError("the FPR reaches 1 at the lowest score, so the curve always crosses a limit below 1")
