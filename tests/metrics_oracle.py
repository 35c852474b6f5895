"""The straightforward metric implementations that `metrics.py` must agree with.

Slow on purpose: scikit-learn on every pixel, the reference's AUPRO loop verbatim, an
independent loop over every distinct threshold for MVTec AD's exact AUPRO, and VCP-CLIP's
F1-max threshold and IoU as its `test.py` computes them. Used by
the tests and by `benchmarks/metrics_bench.py`; never by the project itself.
"""

from __future__ import annotations

from bisect import bisect_right

import numpy as np
from skimage import measure
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_auc_score


def cal_pro_score(masks, amaps, max_step=200, expect_fpr=0.3):
    """The reference's AUPRO (AnomalyCLIP lineage), verbatim."""
    binary_amaps = np.zeros_like(amaps, dtype=bool)
    min_th, max_th = amaps.min(), amaps.max()
    delta = (max_th - min_th) / max_step
    pros, fprs, ths = [], [], []
    for th in np.arange(min_th, max_th, delta):
        binary_amaps[amaps <= th], binary_amaps[amaps > th] = 0, 1
        pro = []
        for binary_amap, mask in zip(binary_amaps, masks):
            for region in measure.regionprops(measure.label(mask)):
                tp_pixels = binary_amap[region.coords[:, 0], region.coords[:, 1]].sum()
                pro.append(tp_pixels / region.area)
        inverse_masks = 1 - masks
        fp_pixels = np.logical_and(inverse_masks, binary_amaps).sum()
        fpr = fp_pixels / inverse_masks.sum()
        pros.append(np.array(pro).mean())
        fprs.append(fpr)
        ths.append(th)
    pros, fprs, ths = np.array(pros), np.array(fprs), np.array(ths)
    idxes = fprs < expect_fpr
    fprs = fprs[idxes]
    fprs = (fprs - fprs.min()) / (fprs.max() - fprs.min())
    return auc(fprs, pros[idxes])


def exact_pro_score(masks, amaps, fpr_limit=0.3):
    """MVTec AD's AUPRO by brute force: threshold at every distinct score (`score >= t`),
    PRO and FPR there, the curve from (0, 0) to (1, 1), integrated to `fpr_limit` with the
    point at the limit interpolated, divided by `fpr_limit`."""
    masks = np.asarray(masks).astype(bool)
    regions = []
    for index, mask in enumerate(masks):
        labelled = measure.label(mask)
        for region_number in range(1, labelled.max() + 1):
            regions.append((index, labelled == region_number))
    negatives = ~masks
    xs, ys = [0.0], [0.0]
    for threshold in np.unique(amaps)[::-1]:
        predicted = amaps >= threshold
        overlaps = [predicted[index][region].sum() / region.sum() for index, region in regions]
        xs.append(np.logical_and(predicted, negatives).sum() / negatives.sum())
        ys.append(float(np.mean(overlaps)))
    xs.append(1.0)
    ys.append(1.0)
    area = 0.0
    for i in range(1, len(xs)):
        x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
        if x1 <= fpr_limit:
            area += (x1 - x0) * (y0 + y1) / 2
    last = bisect_right(xs, fpr_limit) - 1
    if xs[last] < fpr_limit:
        x0, x1, y0, y1 = xs[last], xs[last + 1], ys[last], ys[last + 1]
        y_limit = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
        area += (fpr_limit - x0) * (y0 + y_limit) / 2
    return area / fpr_limit


def f1_max(y_true, y_score, epsilon=0.0):
    """Max of 2PR/(P+R+epsilon) over scikit-learn's precision-recall curve, non-finite dropped."""
    precisions, recalls, _ = precision_recall_curve(y_true, y_score)
    with np.errstate(invalid="ignore"):
        f1_scores = (2 * precisions * recalls) / (precisions + recalls + epsilon)
    return float(np.max(f1_scores[np.isfinite(f1_scores)]))


def f1_threshold_and_iou(gt_masks, anomaly_maps, epsilon=1e-8):
    """VCP-CLIP's reference, verbatim in substance: the curve threshold at np.argmax of the pixel
    F1 (the first maximum, thresholds increasing), and the IoU of `maps > threshold` with the masks."""
    gt, maps = np.asarray(gt_masks).ravel(), np.asarray(anomaly_maps).ravel()
    precisions, recalls, thresholds = precision_recall_curve(gt, maps)
    f1_scores = (2 * precisions * recalls) / (precisions + recalls + epsilon)
    best_threshold = thresholds[np.argmax(f1_scores)]
    prediction = maps > best_threshold
    iou = np.sum(np.logical_and(prediction, gt)) / np.sum(np.logical_or(prediction, gt))
    return float(best_threshold), float(iou)


def oracle_class_metrics(anomaly_maps, gt_masks, image_scores, labels, pro_mode="official"):
    """Every metric of one class, the slow way (all classes of labels must be present)."""
    gt, maps = gt_masks.ravel(), anomaly_maps.ravel()
    if pro_mode == "official":
        aupro = cal_pro_score(gt_masks, anomaly_maps)
    else:
        aupro = exact_pro_score(gt_masks, anomaly_maps)
    threshold, iou = f1_threshold_and_iou(gt_masks, anomaly_maps)
    return {
        "pixel_auroc": roc_auc_score(gt, maps),
        "pixel_ap": average_precision_score(gt, maps),
        "pixel_f1": f1_max(gt, maps, epsilon=1e-8),
        "pixel_aupro": aupro,
        "image_auroc": roc_auc_score(labels, image_scores),
        "image_ap": average_precision_score(labels, image_scores),
        "image_f1": f1_max(labels, image_scores),
        "pixel_iou": iou,
        "pixel_threshold": threshold,
    }
