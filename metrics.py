"""Per-class anomaly-detection metrics (SPEC §9), fast on a CPU and on a GPU.

The usual evaluation code calls scikit-learn on tens of millions of pixels and computes
AUPRO by thresholding every map 200 times and looping over every ground-truth region.
Here one sort of a class's pixel scores gives the whole ranking curve (AUROC, AP,
F1-max and the false positives at every AUPRO threshold), and the true positives of
every region at every threshold come from one `bincount` over (region, threshold bin).
The numbers equal scikit-learn's and the reference's to floating-point rounding
(`tests/test_metrics.py` checks them against the straightforward implementation).

When the maps are a torch tensor on a CUDA device the same steps run there with torch
(counts in int64, sums in float64); only the ground-truth masks go to the CPU to have
their connected regions labelled.

Where a metric has no value it is NaN, with an `UndefinedMetricWarning` naming the class:
the image metrics of a class without anomalous or without normal images; the pixel
metrics when its masks have no anomalous or no normal pixel; and the official AUPRO
where the reference's own code fails or returns NaN (constant maps; fewer than two
thresholds with FPR < 0.3; every kept threshold at the same FPR, where its min-max
rescaling divides by zero).

Command line: `python metrics.py MAPS.npz [--pro_mode official|exact] [--json OUT.json]`
re-scores the maps that `test.py --save_maps` wrote, without re-running the model.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import warnings
import zipfile
from dataclasses import dataclass

import numpy as np

from utils import atomic_write_json, nan_to_none, one_line_warning

__all__ = [
    "METRIC_KEYS",
    "PIXEL_KEYS",
    "IMAGE_KEYS",
    "PRO_MODES",
    "LEVELS",
    "OFFICIAL_PRO_STEPS",
    "PRO_FPR_LIMIT",
    "PIXEL_F1_EPSILON",
    "UndefinedMetricWarning",
    "class_metrics",
    "evaluate",
    "classes_left_out",
    "format_table",
    "load_maps",
    "main",
]

METRIC_KEYS = ("pixel_auroc", "pixel_ap", "pixel_f1", "pixel_aupro", "image_auroc", "image_ap", "image_f1")
PIXEL_KEYS = METRIC_KEYS[:4]
IMAGE_KEYS = METRIC_KEYS[4:]
PRO_MODES = ("official", "exact")
# The values of the reference's `--metrics` flag, and what each one reports.
LEVELS = {
    "image-level": IMAGE_KEYS,
    "pixel-level": PIXEL_KEYS,
    "image-pixel-level": METRIC_KEYS,
}

OFFICIAL_PRO_STEPS = 200  # the reference's `max_step`
PRO_FPR_LIMIT = 0.3  # the reference's `expect_fpr`, and the MVTec AD integration limit
PIXEL_F1_EPSILON = 1e-8  # added to the pixel F1 denominator by the reference

# Column order of the reference's table, and readable headers.
TABLE_COLUMNS = ("pixel_auroc", "pixel_aupro", "pixel_f1", "pixel_ap", "image_auroc", "image_ap", "image_f1")
HEADERS = {
    "pixel_auroc": "pixel AUROC",
    "pixel_aupro": "pixel AUPRO",
    "pixel_f1": "pixel F1-max",
    "pixel_ap": "pixel AP",
    "image_auroc": "image AUROC",
    "image_ap": "image AP",
    "image_f1": "image F1-max",
}
MEAN_ROW = "mean"

# Keys of the file `test.py --save_maps` writes; `img_paths` is optional for scoring.
MAPS_FILE_KEYS = ("anomaly_maps", "image_scores", "gt_masks", "labels", "cls_names", "img_paths")
MAPS_FILE_REQUIRED = MAPS_FILE_KEYS[:5]

# 8-connectivity inside each 2-D mask: skimage.measure.label's default, as in the reference.
_EIGHT_CONNECTIVITY = np.ones((3, 3), dtype=bool)


class UndefinedMetricWarning(UserWarning):
    """A metric has no value for a class (for example no anomalous image); it is reported as NaN."""


def _warn_undefined(cls_name: str, keys, reason: str) -> None:
    who = f"class {cls_name!r}" if cls_name else "class"
    warnings.warn(f"{who}: {', '.join(keys)} undefined ({reason}); reported as NaN",
                  UndefinedMetricWarning, stacklevel=3)


# ---------------------------------------------------------------------------------------
# Array backends: the metric formulas are written once and run on numpy or torch arrays.
# ---------------------------------------------------------------------------------------

class _NumpyOps:
    name = "numpy"
    chunk = 1 << 20  # curve points per step: temporaries stay in the allocator's reuse range

    def asarray(self, values):
        return np.asarray(values)

    def to_numpy(self, values):
        return np.asarray(values)

    def flip(self, values, axis=0):
        return np.flip(values, axis)

    def concat(self, parts):
        return np.concatenate(parts)

    def stack(self, parts):
        return np.stack(parts)

    def float64(self, values):
        return values.astype(np.float64, copy=False)

    def cast_like(self, values, other):
        return values.astype(other.dtype, copy=False)

    def searchsorted(self, sorted_values, query, side):
        return np.searchsorted(sorted_values, query, side=side)

    def bincount(self, values, minlength):
        return np.bincount(values, minlength=minlength)

    def argsort(self, values):
        return np.argsort(values)

    def isfinite(self, values):
        return np.isfinite(values)

    def where(self, condition, if_true, if_false):
        return np.where(condition, if_true, if_false)

    def clip_min(self, values, minimum):
        return np.maximum(values, minimum)

    def minimum(self, values, bound):
        return np.minimum(values, bound)


class _TorchOps:
    name = "torch"
    chunk = 1 << 24  # fewer, larger steps: every step waits for the device

    def __init__(self, device):
        import torch

        self.torch = torch
        self.device = device

    def asarray(self, values):
        return self.torch.as_tensor(values, device=self.device)

    def to_numpy(self, values):
        return values.detach().cpu().numpy()

    def flip(self, values, axis=0):
        return self.torch.flip(values, (axis,))

    def concat(self, parts):
        return self.torch.cat(parts)

    def stack(self, parts):
        return self.torch.stack(parts)

    def float64(self, values):
        return values.to(self.torch.float64)

    def cast_like(self, values, other):
        return values.to(other.dtype)

    def searchsorted(self, sorted_values, query, side):
        return self.torch.searchsorted(sorted_values.contiguous(), query.contiguous(), side=side)

    def bincount(self, values, minlength):
        return self.torch.bincount(values, minlength=minlength)

    def argsort(self, values):
        return self.torch.argsort(values)

    def isfinite(self, values):
        return self.torch.isfinite(values)

    def where(self, condition, if_true, if_false):
        return self.torch.where(condition, if_true, if_false)

    def clip_min(self, values, minimum):
        return self.torch.clamp(values, min=minimum)

    def minimum(self, values, bound):
        return self.torch.clamp(values, max=bound)


def _is_torch_tensor(value) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def _to_numpy(value):
    if value is None:
        return None
    if _is_torch_tensor(value):
        value = value.detach().cpu()
        return (value.float() if str(value.dtype) == "torch.bfloat16" else value).numpy()
    return np.asarray(value)


# ---------------------------------------------------------------------------------------
# One sort per class: scores grouped by distinct value, with positive/negative counts.
# ---------------------------------------------------------------------------------------

@dataclass
class _ScoreGroups:
    """Distinct scores in ascending order and how many positives/negatives carry each."""

    values: object  # the scores' own dtype (numpy array or torch tensor)
    positives: object  # int64
    negatives: object  # int64


_SIGN_BIT = 0x80000000
_LOW_31_BITS = 0x7FFFFFFF
_BLOCK = 1 << 20  # elements per step in block-wise passes: temporaries of a few MB, reused


def _float32_order_keys(words: np.ndarray, *, inverse: bool = False) -> None:
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


def _group_sorted_keys(keys: np.ndarray):
    """Distinct score keys with their positive and negative counts, from sorted
    (score key << 1 | label) keys, a block at a time so that no temporary is class-sized."""
    one = keys.dtype.type(1)
    n_groups = 1
    for start in range(0, keys.size - 1, _BLOCK):
        stop = min(start + _BLOCK, keys.size - 1)
        n_groups += np.count_nonzero((keys[start:stop] ^ keys[start + 1:stop + 1]) > one)
    score_keys = np.empty(n_groups, dtype=np.uint32)
    positives = np.empty(n_groups, dtype=np.int64)
    negatives = np.empty(n_groups, dtype=np.int64)
    filled = 0
    for start in range(0, keys.size, _BLOCK):
        block = keys[start:start + _BLOCK]
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


def _group_float32_scores(scores32: np.ndarray, labels: np.ndarray):
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
            _float32_order_keys(keys)
        keys <<= np.uint64(1)
    keys |= labels
    keys.sort()
    score_keys, positives, negatives = _group_sorted_keys(keys)
    del keys
    if has_negative:
        _float32_order_keys(score_keys, inverse=True)
    return score_keys.view(np.float32), positives, negatives


def _group_scores_numpy(scores: np.ndarray, labels: np.ndarray) -> _ScoreGroups:
    if scores.dtype == np.float32:
        return _ScoreGroups(*_group_float32_scores(scores, labels))
    as_float32 = scores.astype(np.float32)
    if np.array_equal(as_float32, scores):  # exactly representable: same order, same ties
        values, positives, negatives = _group_float32_scores(as_float32, labels)
        return _ScoreGroups(values.astype(scores.dtype), positives, negatives)
    del as_float32
    order = np.argsort(scores)
    sorted_scores = scores[order]
    sorted_labels = labels[order].astype(np.int64)
    del order
    starts = np.concatenate(([0], np.flatnonzero(sorted_scores[1:] != sorted_scores[:-1]) + 1))
    positives = np.add.reduceat(sorted_labels, starts)
    sizes = np.diff(np.append(starts, scores.size))
    return _ScoreGroups(sorted_scores[starts], positives, sizes - positives)


def _group_scores_torch(scores, labels) -> _ScoreGroups:
    import torch

    sorted_scores, order = torch.sort(scores + 0.0)  # + 0.0 folds -0.0 into +0.0
    sorted_labels = labels[order].to(torch.int64)
    del order
    values, sizes = torch.unique_consecutive(sorted_scores, return_counts=True)
    del sorted_scores
    positives_so_far = torch.cumsum(sorted_labels, 0)[torch.cumsum(sizes, 0) - 1]
    positives = torch.diff(positives_so_far, prepend=positives_so_far.new_zeros(1))
    return _ScoreGroups(values, positives, sizes - positives)


def _group_scores(scores, labels, ops) -> _ScoreGroups:
    if ops.name == "torch":
        return _group_scores_torch(scores, labels)
    return _group_scores_numpy(scores, labels)


# ---------------------------------------------------------------------------------------
# Metrics from the grouped scores.
# ---------------------------------------------------------------------------------------

def _descending_curve(groups: _ScoreGroups, ops):
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


def _ranking_metrics(groups: _ScoreGroups, ops, f1_epsilon: float, wanted) -> dict:
    """AUROC, AP and F1-max exactly as scikit-learn computes them on the same curve."""
    n_positive, n_negative = int(groups.positives.sum()), int(groups.negatives.sum())
    twice_auc = 0
    ap_sum = 0.0
    best_f1 = 0.0  # scikit-learn's curve also ends in (precision 1, recall 0), whose F1 is 0
    for positives, negatives, tps, fps in _descending_curve(groups, ops):
        if "auroc" in wanted:
            # ROC trapezoids, Δfps · (tps + previous tps), summed exactly in int64.
            twice_auc += int((negatives * (2 * tps - positives)).sum())
        if "ap" in wanted or "f1" in wanted:
            tps_f = ops.float64(tps)
            predicted = ops.float64(fps)
            predicted += tps_f
            precision = tps_f / predicted
            if "ap" in wanted:
                ap_sum += float((ops.float64(positives) * precision).sum())
            if "f1" in wanted:
                recall = tps_f
                recall /= n_positive
                # The same operations as the reference's 2PR/(P+R+eps), for the same rounding.
                f1 = precision * 2
                f1 *= recall
                denominator = precision + recall
                denominator += f1_epsilon
                with np.errstate(invalid="ignore"):  # 0/0 where nothing is predicted positive: dropped
                    f1 /= denominator
                best_f1 = max(best_f1, float(ops.where(ops.isfinite(f1), f1, 0.0).max()))
    result = {}
    if "auroc" in wanted:
        result["auroc"] = twice_auc / (2.0 * n_positive * n_negative)
    if "ap" in wanted:
        result["ap"] = ap_sum / n_positive
    if "f1" in wanted:
        result["f1"] = best_f1
    return result


def _positive_regions(masks: np.ndarray) -> tuple[np.ndarray, int]:
    """The region number (1..R) of every anomalous pixel, in flat pixel order, and R.

    Regions are 8-connected within each mask, numbered in raster order image after image
    (as labelling the whole stack with a planar structure would); masks with no anomalous
    pixel, most of a dataset, are skipped."""
    from scipy import ndimage

    parts, n_regions = [], 0
    for mask in masks:
        if not mask.any():
            continue
        labelled, count = ndimage.label(mask, structure=_EIGHT_CONNECTIVITY)
        parts.append(labelled[mask].astype(np.int64) + n_regions)
        n_regions += count
    return (np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)), n_regions


def _official_thresholds(lowest, highest):
    """The reference's thresholds, from the same numpy calls on the same numpy scalars
    (None when the maps are constant, where the reference's np.arange fails)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        step = (highest - lowest) / OFFICIAL_PRO_STEPS
    if not step > 0:
        return None
    return np.arange(lowest, highest, step)


def _at_or_below_in(thresholds: np.ndarray, scalar_type) -> np.ndarray:
    """For each threshold, the largest value of the scores' type that is <= it, so that
    `score <= threshold` can be decided in the scores' own type (no class-sized cast)."""
    rounded = thresholds.astype(scalar_type)
    too_high = rounded.astype(thresholds.dtype) > thresholds
    rounded[too_high] = np.nextafter(rounded[too_high], scalar_type(-np.inf))
    return rounded


def _auc_like_sklearn(x: np.ndarray, y: np.ndarray) -> float:
    """sklearn.metrics.auc: trapezoids, sign flipped when x decreases (hence the reference's -0.0)."""
    dx = np.diff(x)
    direction = 1
    if np.any(dx < 0):
        if np.all(dx <= 0):
            direction = -1
        else:
            raise ValueError(f"x is neither increasing nor decreasing: {x}")
    return float(direction * np.add.reduce(dx * (y[1:] + y[:-1]) / 2.0))


def _official_aupro(groups, positive_scores, positive_regions, n_regions, ops, cls_name) -> float:
    """The reference's 200-threshold AUPRO, without thresholding any map."""
    numpy_scalar = ops.to_numpy(groups.values[:1]).dtype.type
    thresholds_np = _official_thresholds(numpy_scalar(groups.values[0].item()),
                                         numpy_scalar(groups.values[-1].item()))
    if thresholds_np is None:
        _warn_undefined(cls_name, ["pixel_aupro"], "official mode: every map score is equal, no thresholds")
        return math.nan
    thresholds = ops.asarray(thresholds_np)
    n_thresholds = len(thresholds_np)

    # False positives at each threshold: negatives scoring strictly above it. Summed slice by
    # slice between consecutive thresholds, so that no class-sized cumulative array is made.
    at_or_below = ops.to_numpy(ops.searchsorted(
        groups.values, ops.asarray(_at_or_below_in(thresholds_np, numpy_scalar)), side="right"))
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
    kept = fprs < PRO_FPR_LIMIT
    if kept.sum() < 2:
        _warn_undefined(cls_name, ["pixel_aupro"],
                        f"official mode: {int(kept.sum())} threshold(s) with FPR < {PRO_FPR_LIMIT}, need 2")
        return math.nan
    kept_fprs = fprs[kept]
    if kept_fprs.max() == kept_fprs.min():
        _warn_undefined(cls_name, ["pixel_aupro"],
                        f"official mode: every threshold with FPR < {PRO_FPR_LIMIT} has the same FPR, "
                        "so the min-max rescaling divides by zero")
        return math.nan
    kept_fprs = (kept_fprs - kept_fprs.min()) / (kept_fprs.max() - kept_fprs.min())
    return _auc_like_sklearn(kept_fprs, pros[kept])


def _exact_aupro(groups, positive_scores, positive_regions, n_regions, ops) -> float:
    """MVTec AD's AUPRO: the PRO-vs-FPR polyline through every distinct score, from (0, 0),
    integrated up to FPR 0.3 (the point there interpolated), divided by 0.3."""
    n_negative = int(groups.negatives.sum())
    areas = ops.bincount(positive_regions, minlength=n_regions + 1)
    weights = 1.0 / ops.float64(areas[positive_regions])  # each region weighs 1 in total
    order = ops.flip(ops.argsort(positive_scores))
    covered = weights[order].cumsum(0)
    del order, weights
    area = 0.0
    x_before = y_before = 0.0
    for _, _, tps, fps in _descending_curve(groups, ops):
        # The tps best-scoring anomalous pixels are exactly those at or above the threshold.
        pro = ops.where(tps > 0, covered[ops.clip_min(tps - 1, 0)], 0.0)
        pro /= n_regions
        pro = ops.minimum(pro, 1.0)
        fpr = ops.float64(fps)
        fpr /= n_negative
        x = ops.concat([ops.asarray(np.array([x_before])), fpr])
        y = ops.concat([ops.asarray(np.array([y_before])), pro])
        inside = int(ops.searchsorted(x, ops.asarray(np.array([PRO_FPR_LIMIT])), side="right")[0])
        area += float(((x[1:inside] - x[:inside - 1]) * (y[1:inside] + y[:inside - 1]) / 2).sum())
        if inside < x.shape[0]:  # the curve crosses FPR 0.3 in this chunk
            x0, y0, x1, y1 = float(x[inside - 1]), float(y[inside - 1]), float(x[inside]), float(y[inside])
            if x0 < PRO_FPR_LIMIT:
                y_at_limit = y0 + (y1 - y0) * (PRO_FPR_LIMIT - x0) / (x1 - x0)
                area += (PRO_FPR_LIMIT - x0) * (y0 + y_at_limit) / 2
            return area / PRO_FPR_LIMIT
        x_before, y_before = float(x[-1]), float(y[-1])
    raise AssertionError("the FPR reaches 1 at the lowest score, so the curve always crosses 0.3")


# ---------------------------------------------------------------------------------------
# Public API.
# ---------------------------------------------------------------------------------------

def _check_keys(keys) -> tuple:
    keys = tuple(keys)
    unknown = [key for key in keys if key not in METRIC_KEYS]
    if unknown:
        raise ValueError(f"unknown metric key(s) {unknown}; valid keys: {list(METRIC_KEYS)}")
    return keys


def _check_pro_mode(pro_mode: str) -> None:
    if pro_mode not in PRO_MODES:
        raise ValueError(f"pro_mode must be one of {PRO_MODES}, got {pro_mode!r}")


def _shape(value):
    return tuple(value.shape) if hasattr(value, "shape") else np.shape(value)


def _is_binary(values) -> bool:
    """Whether a numpy array or torch tensor holds only 0 and 1 (one cheap pass, on its device)."""
    if not (_is_torch_tensor(values) or isinstance(values, np.ndarray)):
        values = np.asarray(values)
    if (values.numel() if _is_torch_tensor(values) else values.size) == 0:
        return True
    if str(values.dtype).replace("torch.", "") in ("bool", "uint8"):
        return bool(values.max() <= 1)
    return bool(((values == 0) | (values == 1)).all())


def _check_binary(name: str, values) -> None:
    if not _is_binary(values):
        found = np.unique(_to_numpy(values))[:6].tolist()
        raise ValueError(f"{name} must hold only 0 and 1 (or booleans); found values {found}")


def _as_bool(values: np.ndarray) -> np.ndarray:
    """0/1 values as booleans, without a copy for uint8."""
    if values.dtype == bool:
        return values
    if values.dtype in (np.uint8, np.int8):
        return values.view(bool)
    return values != 0


def _float_maps(maps):
    """Maps as float32/float64 (numpy or torch); other dtypes are widened."""
    if _is_torch_tensor(maps):
        import torch

        if maps.dtype in (torch.float32, torch.float64):
            return maps
        return maps.to(torch.float32 if maps.is_floating_point() else torch.float64)
    maps = np.asarray(maps)
    if maps.dtype in (np.float32, np.float64):
        return maps
    return maps.astype(np.float32 if np.issubdtype(maps.dtype, np.floating) else np.float64)


def _choose_ops(anomaly_maps, backend: str):
    if backend not in ("auto", "numpy", "torch"):
        raise ValueError(f"backend must be 'auto', 'numpy' or 'torch', got {backend!r}")
    if backend == "numpy":
        return _NumpyOps()
    if backend == "torch":
        device = anomaly_maps.device if _is_torch_tensor(anomaly_maps) else "cpu"
        return _TorchOps(device)
    if _is_torch_tensor(anomaly_maps) and anomaly_maps.device.type != "cpu":
        return _TorchOps(anomaly_maps.device)
    return _NumpyOps()


def _pixel_metrics(anomaly_maps, gt_masks, wanted_keys, pro_mode, cls_name, backend) -> dict:
    result = {key: math.nan for key in wanted_keys}
    ops = _choose_ops(anomaly_maps, backend)
    masks = _as_bool(_to_numpy(gt_masks))
    if ops.name == "torch":
        import torch

        maps = anomaly_maps if _is_torch_tensor(anomaly_maps) else torch.from_numpy(np.asarray(anomaly_maps))
        scores = _float_maps(maps).reshape(-1)
        labels = torch.from_numpy(masks.reshape(-1)).to(scores.device)
        finite = bool(torch.isfinite(scores.min()) and torch.isfinite(scores.max()))  # NaN propagates
    else:
        scores = _float_maps(_to_numpy(anomaly_maps)).reshape(-1)
        labels = masks.reshape(-1)
        finite = bool(np.isfinite(scores.min()) and np.isfinite(scores.max()))  # NaN propagates
    if not finite:
        _warn_undefined(cls_name, wanted_keys, "anomaly maps contain NaN or infinite values")
        return result
    n_positive = int(np.count_nonzero(masks))
    if n_positive == 0 or n_positive == masks.size:
        _warn_undefined(cls_name, wanted_keys,
                        "the masks have no anomalous pixel" if n_positive == 0 else "the masks have no normal pixel")
        return result

    groups = _group_scores(scores, labels, ops)
    ranking = _ranking_metrics(groups, ops, PIXEL_F1_EPSILON,
                               {key[len("pixel_"):] for key in wanted_keys if key != "pixel_aupro"})
    for name, value in ranking.items():
        result["pixel_" + name] = value

    if "pixel_aupro" in wanted_keys:
        # Region numbers and scores of the anomalous pixels, both in flat pixel order.
        positive_regions, n_regions = _positive_regions(masks)
        positive_regions = ops.asarray(positive_regions)
        positive_scores = scores[labels]
        if pro_mode == "official":
            result["pixel_aupro"] = _official_aupro(groups, positive_scores, positive_regions, n_regions, ops, cls_name)
        else:
            result["pixel_aupro"] = _exact_aupro(groups, positive_scores, positive_regions, n_regions, ops)
    return result


def _image_metrics(image_scores, labels, wanted_keys, cls_name) -> dict:
    result = {key: math.nan for key in wanted_keys}
    scores = _float_maps(_to_numpy(image_scores)).reshape(-1)
    labels = _as_bool(_to_numpy(labels).reshape(-1))
    if not np.isfinite(scores).all():
        _warn_undefined(cls_name, wanted_keys, "image scores contain NaN or infinite values")
        return result
    n_anomalous = int(labels.sum())
    if n_anomalous == 0 or n_anomalous == labels.size:
        _warn_undefined(cls_name, wanted_keys,
                        "no anomalous image" if n_anomalous == 0 else "no normal image")
        return result
    groups = _group_scores_numpy(scores, labels)
    ranking = _ranking_metrics(groups, _NumpyOps(), 0.0, {key[len("image_"):] for key in wanted_keys})
    for name, value in ranking.items():
        result["image_" + name] = value
    return result


def class_metrics(anomaly_maps, gt_masks, image_scores, labels, *, pro_mode="official",
                  keys=METRIC_KEYS, cls_name="", backend="auto") -> dict:
    """Metrics of one class as fractions in [0, 1]; NaN (with a warning) where undefined.

    anomaly_maps: [N, H, W] float, numpy or torch (a CUDA tensor is scored on its device);
    gt_masks: [N, H, W] in {0, 1}; image_scores, labels: [N]. Maps and masks may be None
    when no pixel metric is asked for, scores and labels when no image metric is.
    backend: "auto" (torch for CUDA tensors, numpy otherwise), "numpy" or "torch".
    """
    keys = _check_keys(keys)
    _check_pro_mode(pro_mode)
    pixel_keys = [key for key in keys if key in PIXEL_KEYS]
    image_keys = [key for key in keys if key in IMAGE_KEYS]
    _check_shapes(anomaly_maps, gt_masks, image_scores, labels, None, pixel_keys, image_keys)
    result = {}
    if pixel_keys:
        result.update(_pixel_metrics(anomaly_maps, gt_masks, pixel_keys, pro_mode, cls_name, backend))
    if image_keys:
        result.update(_image_metrics(image_scores, labels, image_keys, cls_name))
    return {key: result[key] for key in keys}


def _check_shapes(anomaly_maps, gt_masks, image_scores, labels, cls_names, pixel_keys, image_keys) -> None:
    """Errors that say which input is wrong, before any work is done."""
    lengths = {}
    if pixel_keys:
        if anomaly_maps is None or gt_masks is None:
            raise ValueError(f"pixel metrics {pixel_keys} need anomaly_maps and gt_masks")
        map_shape, mask_shape = _shape(anomaly_maps), _shape(gt_masks)
        if len(map_shape) != 3:
            raise ValueError(f"anomaly_maps must be [N, H, W], got shape {map_shape}")
        if map_shape != mask_shape:
            raise ValueError(f"anomaly_maps shape {map_shape} differs from gt_masks shape {mask_shape}")
        lengths["anomaly_maps"] = map_shape[0]
    if image_keys:
        if image_scores is None or labels is None:
            raise ValueError(f"image metrics {image_keys} need image_scores and labels")
        score_shape, label_shape = _shape(image_scores), _shape(labels)
        if len(score_shape) != 1 or len(label_shape) != 1:
            raise ValueError(f"image_scores and labels must be [N], got shapes {score_shape} and {label_shape}")
        lengths["image_scores"], lengths["labels"] = score_shape[0], label_shape[0]
    if cls_names is not None:
        lengths["cls_names"] = len(cls_names)
    if len(set(lengths.values())) > 1:
        raise ValueError("inputs disagree on the number of images: "
                         + ", ".join(f"{name} has {n}" for name, n in lengths.items()))
    if pixel_keys:
        _check_binary("gt_masks", gt_masks)
    if image_keys:
        _check_binary("labels", labels)


def _class_index(cls_names: np.ndarray, cls_name: str):
    """A slice when the class's images are contiguous (no copy), else an index array."""
    where = np.flatnonzero(cls_names == cls_name)
    if where[-1] - where[0] + 1 == where.size:
        return slice(int(where[0]), int(where[-1]) + 1)
    return where


def _take(values, index):
    if values is None:
        return None
    if isinstance(index, slice) or not _is_torch_tensor(values):
        return values[index]
    import torch

    return values[torch.as_tensor(index, device=values.device)]


def evaluate(anomaly_maps, gt_masks, image_scores, labels, cls_names, *, pro_mode="official",
             keys=METRIC_KEYS, progress=False, backend="auto") -> dict:
    """Metrics per class (in order of first appearance) and their mean.

    Returns {class: {key: value}, ..., "mean": {key: value}}. A class whose metric is
    undefined gets NaN (and a warning); the mean leaves NaN out, and `classes_left_out`
    says which classes it left out. One failing class never stops the others.
    """
    keys = _check_keys(keys)
    _check_pro_mode(pro_mode)
    anomaly_maps, gt_masks, image_scores, labels = (
        value if value is None or _is_torch_tensor(value) else np.asarray(value)
        for value in (anomaly_maps, gt_masks, image_scores, labels))
    cls_names = np.asarray(_to_numpy(cls_names)).astype(str).reshape(-1)
    pixel_keys = [key for key in keys if key in PIXEL_KEYS]
    image_keys = [key for key in keys if key in IMAGE_KEYS]
    _check_shapes(anomaly_maps, gt_masks, image_scores, labels, cls_names, pixel_keys, image_keys)
    classes = list(dict.fromkeys(cls_names.tolist()))
    if MEAN_ROW in classes:
        raise ValueError(f"a class may not be named {MEAN_ROW!r}: that name holds the mean")
    iterator = classes
    if progress:
        from tqdm import tqdm

        iterator = tqdm(classes, desc="metrics", unit="class")
    results = {}
    for cls_name in iterator:
        index = _class_index(cls_names, cls_name)
        try:
            arguments = (_take(anomaly_maps, index) if pixel_keys else None,
                         _take(gt_masks, index) if pixel_keys else None,
                         _take(image_scores, index) if image_keys else None,
                         _take(labels, index) if image_keys else None)
            results[cls_name] = _class_metrics_on_cpu_if_needed(arguments, pro_mode, keys, cls_name, backend)
        except (ValueError, RuntimeError, MemoryError) as error:
            warnings.warn(f"class {cls_name!r}: metrics failed ({type(error).__name__}: {error}); "
                          "reported as NaN", UndefinedMetricWarning, stacklevel=2)
            results[cls_name] = {key: math.nan for key in keys}
    results[MEAN_ROW] = {key: _nanmean([results[cls][key] for cls in classes]) for key in keys}
    return results


def _class_metrics_on_cpu_if_needed(arguments, pro_mode, keys, cls_name, backend) -> dict:
    """`class_metrics`, computed again with numpy when the device runs out of memory."""
    try:
        return class_metrics(*arguments, pro_mode=pro_mode, keys=keys, cls_name=cls_name, backend=backend)
    except RuntimeError as error:
        if backend == "numpy" or not _is_device_out_of_memory(error):
            raise
    # Outside the except block, so that the failed attempt's tensors are freed before the cache is released.
    _release_device_cache()
    warnings.warn(f"class {cls_name!r}: out of GPU memory for its metrics; computing them on the CPU",
                  RuntimeWarning, stacklevel=3)
    return class_metrics(*arguments, pro_mode=pro_mode, keys=keys, cls_name=cls_name, backend="numpy")


def _is_device_out_of_memory(error: BaseException) -> bool:
    return type(error).__name__ == "OutOfMemoryError" or "out of memory" in str(error).lower()


def _release_device_cache() -> None:
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _nanmean(values) -> float:
    finite = [value for value in values if not math.isnan(value)]
    return float(np.mean(finite)) if finite else math.nan


def classes_left_out(results: dict, keys=METRIC_KEYS) -> dict:
    """{key: [classes whose value is NaN]} for the keys where the mean left some class out."""
    classes = [cls for cls in results if cls != MEAN_ROW]
    left_out = {}
    for key in keys:
        missing = [cls for cls in classes if key in results[cls] and math.isnan(results[cls][key])]
        if missing:
            left_out[key] = missing
    return left_out


def format_table(results: dict, keys=METRIC_KEYS) -> str:
    """The reference's table (classes, then the mean; percentages with one decimal)."""
    from tabulate import tabulate

    rows_present = [cls for cls in results if cls != MEAN_ROW] + ([MEAN_ROW] if MEAN_ROW in results else [])
    columns = [key for key in TABLE_COLUMNS
               if key in keys and any(key in results[cls] for cls in rows_present)]

    def cell(value):
        if value is None or math.isnan(value):
            return "n/a"
        return f"{100 * value + 0.0:.1f}"  # + 0.0 prints the reference's -0.0 as 0.0

    rows = [[cls] + [cell(results[cls].get(key, math.nan)) for key in columns] for cls in rows_present]
    table = tabulate(rows, headers=["objects"] + [HEADERS[key] for key in columns], tablefmt="pipe",
                     disable_numparse=True, colalign=("left",) + ("right",) * len(columns))
    undefined = {}  # class -> the columns where it is n/a
    for key, classes in classes_left_out(results, columns).items():
        for cls in classes:
            undefined.setdefault(cls, []).append(HEADERS[key])
    if undefined:
        notes = "; ".join(f"{cls} ({', '.join(headers)})" for cls, headers in undefined.items())
        table += f"\nn/a = undefined, left out of the mean: {notes}"
    return table


def load_maps(path) -> dict:
    """Read the .npz that `test.py --save_maps` writes; errors name the file and what is wrong."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file (write one with `test.py --save_maps`)")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: not an .npz (zip) archive; write one with `test.py --save_maps`")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(f"{path}: not a readable .npz file ({error})") from None
    if not hasattr(archive, "files"):
        raise ValueError(f"{path}: holds a single array, expected an .npz archive with keys {list(MAPS_FILE_KEYS)}")
    with archive:
        missing = [key for key in MAPS_FILE_REQUIRED if key not in archive.files]
        if missing:
            raise KeyError(f"{path}: missing key(s) {missing}; found {sorted(archive.files)}, "
                           f"expected {list(MAPS_FILE_KEYS)} as `test.py --save_maps` writes them")
        data = {}
        for key in MAPS_FILE_KEYS:
            if key not in archive.files:
                continue
            try:
                data[key] = archive[key]
            except (OSError, EOFError, zipfile.BadZipFile) as error:
                raise ValueError(f"{path}: key {key!r} is damaged ({error}); write the file again") from None
            except ValueError as error:
                raise ValueError(f"{path}: key {key!r} cannot be read without pickle ({error}); "
                                 "save class names and paths as str arrays") from None
    for key in ("cls_names", "img_paths"):
        if key in data:
            data[key] = data[key].astype(str)
    n_images = {key: len(data[key]) for key in data}
    if len(set(n_images.values())) > 1:
        raise ValueError(f"{path}: arrays disagree on the number of images: {n_images}")
    if data["anomaly_maps"].ndim != 3 or data["anomaly_maps"].shape != data["gt_masks"].shape:
        raise ValueError(f"{path}: anomaly_maps {data['anomaly_maps'].shape} and gt_masks "
                         f"{data['gt_masks'].shape} must both be [N, S, S]")
    return data


def _parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="metrics.py",
        description="Score saved anomaly maps per class (SPEC §9) without re-running the model: "
                    "pixel AUROC / AP / F1-max / AUPRO and image AUROC / AP / F1-max, plus their mean "
                    "over classes. Prints the table; values are percentages there and fractions in the JSON.",
        epilog="Undefined values (a class without anomalous or without normal images, for example) "
               "are reported as n/a (null in the JSON) with a warning and left out of the mean.",
    )
    parser.add_argument("maps", metavar="MAPS.npz",
                        help="file written by `test.py --save_maps` (anomaly_maps, image_scores, gt_masks, "
                             "labels, cls_names, img_paths)")
    parser.add_argument("--pro_mode", choices=PRO_MODES, default="official",
                        help="AUPRO protocol: 'official' = the paper's (200 thresholds between the class's "
                             f"min and max score, FPR < {PRO_FPR_LIMIT}, FPRs min-max rescaled; default); "
                             "'exact' = MVTec AD's (every distinct score, integrated to FPR "
                             f"{PRO_FPR_LIMIT}, divided by {PRO_FPR_LIMIT})")
    parser.add_argument("--metrics", choices=list(LEVELS), default="image-pixel-level",
                        help="which metrics to compute, as the reference's --metrics flag (default: both levels)")
    parser.add_argument("--json", metavar="OUT.json",
                        help="also write {class: {metric: fraction}, 'mean': {...}} here (NaN as null)")
    parser.add_argument("--progress", action="store_true", help="show a progress bar over classes")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = _parse_args(argv)
    warnings.formatwarning = one_line_warning
    keys = LEVELS[args.metrics]
    try:
        data = load_maps(args.maps)
    except (OSError, KeyError, ValueError) as error:
        message = error.args[0] if isinstance(error, KeyError) else error
        print(f"metrics.py: error: {message}", file=sys.stderr)
        return 2
    try:
        results = evaluate(data["anomaly_maps"], data["gt_masks"], data["image_scores"], data["labels"],
                           data["cls_names"], pro_mode=args.pro_mode, keys=keys, progress=args.progress)
    except ValueError as error:  # input the metrics cannot take (e.g. masks not in {0, 1}): say so in one line
        print(f"metrics.py: error: {args.maps}: {error}", file=sys.stderr)
        return 2
    print(format_table(results, keys))
    if args.json:
        atomic_write_json(nan_to_none(results), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
