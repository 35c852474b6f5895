"""Per-class anomaly-detection metrics (SPEC §9), fast on a CPU and on a GPU.

The usual evaluation code calls scikit-learn on tens of millions of pixels and computes
AUPRO by thresholding every map 200 times and looping over every ground-truth region.
Here one sort of a class's pixel scores gives the whole ranking curve (AUROC, AP,
F1-max, VCP-CLIP's F1-max threshold and the IoU there, and the false positives at every
AUPRO threshold), and the true positives of every region at every threshold come from
one `bincount` over (region, threshold bin).
The numbers equal scikit-learn's and the reference's to floating-point rounding
(`tests/test_metrics.py` checks them against the straightforward implementation).

When the maps are a torch tensor on a CUDA device the same steps run there with torch
(counts in int64, sums in float64); only the ground-truth masks go to the CPU to have
their connected regions labelled.

This module is the public face (keys, `class_metrics`, `evaluate`, the table, the saved
maps file, the command line); the kernels live in `metric_kernels/`, one concern per file.

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

import numpy as np

from metric_kernels.arrays import NumpyOps, as_bool, choose_ops, float_maps, is_torch_tensor, to_numpy
from metric_kernels.aupro import OFFICIAL_PRO_STEPS, PRO_FPR_LIMIT, exact_aupro, official_aupro
from metric_kernels.device import on_cpu_if_out_of_memory
from metric_kernels.grouping import group_scores, group_scores_numpy
from metric_kernels.inputs import check_shapes
from metric_kernels.ranking import ranking_metrics
from metric_kernels.regions import positive_regions
from metric_kernels.undefined import UndefinedMetricWarning, warn_undefined
from utils import atomic_write_json, check_output_file, nan_to_none, one_line_warning, run_cli

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

# VCP-CLIP's two pixel metrics (SPEC_VCP §10) come last, so that the first seven keep their places:
# pixel_iou is the IoU of `map > pixel_threshold`, the score where the pixel F1 is largest.
METRIC_KEYS = ("pixel_auroc", "pixel_ap", "pixel_f1", "pixel_aupro", "image_auroc", "image_ap", "image_f1",
               "pixel_iou", "pixel_threshold")
PIXEL_KEYS = tuple(key for key in METRIC_KEYS if key.startswith("pixel_"))
IMAGE_KEYS = tuple(key for key in METRIC_KEYS if key.startswith("image_"))
SCORE_KEYS = ("pixel_threshold",)  # a map score, not a fraction: printed as it is
PRO_MODES = ("official", "exact")
# The values of the reference's `--metrics` flag, and what each one reports.
LEVELS = {
    "image-level": IMAGE_KEYS,
    "pixel-level": PIXEL_KEYS,
    "image-pixel-level": METRIC_KEYS,
}

PIXEL_F1_EPSILON = 1e-8  # added to the pixel F1 denominator by the reference

# Column order of the reference's table (VCP-CLIP's IoU with the pixel metrics, its threshold last), and headers.
TABLE_COLUMNS = ("pixel_auroc", "pixel_aupro", "pixel_f1", "pixel_ap", "pixel_iou", "image_auroc", "image_ap",
                 "image_f1", "pixel_threshold")
HEADERS = {
    "pixel_auroc": "pixel AUROC",
    "pixel_aupro": "pixel AUPRO",
    "pixel_f1": "pixel F1-max",
    "pixel_ap": "pixel AP",
    "pixel_iou": "pixel IoU",
    "image_auroc": "image AUROC",
    "image_ap": "image AP",
    "image_f1": "image F1-max",
    "pixel_threshold": "F1 threshold",
}
MEAN_ROW = "mean"

# Keys of the file `test.py --save_maps` writes; `img_paths` is optional for scoring.
MAPS_FILE_KEYS = ("anomaly_maps", "image_scores", "gt_masks", "labels", "cls_names", "img_paths")
MAPS_FILE_REQUIRED = MAPS_FILE_KEYS[:5]


def _check_keys(keys) -> tuple:
    keys = tuple(keys)
    unknown = [key for key in keys if key not in METRIC_KEYS]
    if unknown:
        raise ValueError(f"unknown metric key(s) {unknown}; valid keys: {list(METRIC_KEYS)}")
    return keys


def check_fpr_limit(limit: float) -> None:
    if not (isinstance(limit, (int, float)) and 0 < limit < 1):
        raise ValueError(f"the AUPRO FPR limit must lie strictly between 0 and 1 (the papers use {PRO_FPR_LIMIT}), "
                         f"got {limit!r}")


def pro_fpr_limit_flag(text: str) -> float:
    """argparse type of --pro_fpr_limit."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    try:
        check_fpr_limit(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return value


def add_pro_flags(parser) -> None:
    """--pro_mode and --pro_fpr_limit, as test.py and metrics.py take them."""
    parser.add_argument("--pro_mode", choices=PRO_MODES, default="official",
                        help=f"AUPRO: 'official' (the papers' protocol: {OFFICIAL_PRO_STEPS} thresholds between the "
                             "class's min and max score, FPR below the limit, FPRs min-max rescaled; default) or "
                             "'exact' (MVTec AD's definition: every distinct score, integrated up to the limit, "
                             "divided by it)")
    parser.add_argument("--pro_fpr_limit", type=pro_fpr_limit_flag, default=PRO_FPR_LIMIT, metavar="FPR",
                        help=f"the false-positive rate up to which AUPRO integrates (default {PRO_FPR_LIMIT}, the "
                             "references' and MVTec AD's; other values are not comparable with the papers)")


def _check_pro_mode(pro_mode: str) -> None:
    if pro_mode not in PRO_MODES:
        raise ValueError(f"pro_mode must be one of {PRO_MODES}, got {pro_mode!r}")


def _pixel_metrics(anomaly_maps, gt_masks, wanted_keys, pro_mode, cls_name, backend, fpr_limit) -> dict:
    result = {key: math.nan for key in wanted_keys}
    ops = choose_ops(anomaly_maps, backend)
    masks = as_bool(to_numpy(gt_masks))
    if ops.name == "torch":
        import torch

        maps = anomaly_maps if is_torch_tensor(anomaly_maps) else torch.from_numpy(np.asarray(anomaly_maps))
        scores = float_maps(maps).reshape(-1)
        labels = torch.from_numpy(masks.reshape(-1)).to(scores.device)
        finite = bool(torch.isfinite(scores.min()) and torch.isfinite(scores.max()))  # NaN propagates
    else:
        scores = float_maps(to_numpy(anomaly_maps)).reshape(-1)
        labels = masks.reshape(-1)
        finite = bool(np.isfinite(scores.min()) and np.isfinite(scores.max()))  # NaN propagates
    if not finite:
        warn_undefined(cls_name, wanted_keys, "anomaly maps contain NaN or infinite values")
        return result
    n_positive = int(np.count_nonzero(masks))
    if n_positive == 0 or n_positive == masks.size:
        warn_undefined(cls_name, wanted_keys,
                       "the masks have no anomalous pixel" if n_positive == 0 else "the masks have no normal pixel")
        return result

    groups = group_scores(scores, labels, ops)
    ranking = ranking_metrics(groups, ops, PIXEL_F1_EPSILON,
                              {key[len("pixel_"):] for key in wanted_keys if key != "pixel_aupro"})
    for name, value in ranking.items():
        result["pixel_" + name] = value

    if "pixel_aupro" in wanted_keys:
        # Region numbers and scores of the anomalous pixels, both in flat pixel order.
        regions, n_regions = positive_regions(masks)
        regions = ops.asarray(regions)
        positive_scores = scores[labels]
        if pro_mode == "official":
            result["pixel_aupro"] = official_aupro(groups, positive_scores, regions, n_regions, ops, cls_name,
                                                   fpr_limit)
        else:
            result["pixel_aupro"] = exact_aupro(groups, positive_scores, regions, n_regions, ops, fpr_limit)
    return result


def _image_metrics(image_scores, labels, wanted_keys, cls_name) -> dict:
    result = {key: math.nan for key in wanted_keys}
    scores = float_maps(to_numpy(image_scores)).reshape(-1)
    labels = as_bool(to_numpy(labels).reshape(-1))
    if not np.isfinite(scores).all():
        warn_undefined(cls_name, wanted_keys, "image scores contain NaN or infinite values")
        return result
    n_anomalous = int(labels.sum())
    if n_anomalous == 0 or n_anomalous == labels.size:
        warn_undefined(cls_name, wanted_keys,
                       "no anomalous image" if n_anomalous == 0 else "no normal image")
        return result
    groups = group_scores_numpy(scores, labels)
    ranking = ranking_metrics(groups, NumpyOps(), 0.0, {key[len("image_"):] for key in wanted_keys})
    for name, value in ranking.items():
        result["image_" + name] = value
    return result


def class_metrics(anomaly_maps, gt_masks, image_scores, labels, *, pro_mode="official",
                  keys=METRIC_KEYS, cls_name="", backend="auto", pro_fpr_limit=PRO_FPR_LIMIT) -> dict:
    """Metrics of one class as fractions in [0, 1] (pixel_threshold: a map score); NaN (with a
    warning) where undefined.

    anomaly_maps: [N, H, W] float, numpy or torch (a CUDA tensor is scored on its device);
    gt_masks: [N, H, W] in {0, 1}; image_scores, labels: [N]. Maps and masks may be None
    when no pixel metric is asked for, scores and labels when no image metric is.
    backend: "auto" (torch for CUDA tensors, numpy otherwise), "numpy" or "torch".
    pro_fpr_limit: the FPR up to which AUPRO integrates (0.3, the reference's and MVTec AD's).
    """
    keys = _check_keys(keys)
    _check_pro_mode(pro_mode)
    check_fpr_limit(pro_fpr_limit)
    pixel_keys = [key for key in keys if key in PIXEL_KEYS]
    image_keys = [key for key in keys if key in IMAGE_KEYS]
    check_shapes(anomaly_maps, gt_masks, image_scores, labels, None, pixel_keys, image_keys)
    result = {}
    if pixel_keys:
        result.update(_pixel_metrics(anomaly_maps, gt_masks, pixel_keys, pro_mode, cls_name, backend,
                                     pro_fpr_limit))
    if image_keys:
        result.update(_image_metrics(image_scores, labels, image_keys, cls_name))
    return {key: result[key] for key in keys}


def _class_index(cls_names: np.ndarray, cls_name: str):
    """A slice when the class's images are contiguous (no copy), else an index array."""
    where = np.flatnonzero(cls_names == cls_name)
    if where[-1] - where[0] + 1 == where.size:
        return slice(int(where[0]), int(where[-1]) + 1)
    return where


def _take(values, index):
    if values is None:
        return None
    if isinstance(index, slice) or not is_torch_tensor(values):
        return values[index]
    import torch

    return values[torch.as_tensor(index, device=values.device)]


def evaluate(anomaly_maps, gt_masks, image_scores, labels, cls_names, *, pro_mode="official",
             keys=METRIC_KEYS, progress=False, backend="auto", pro_fpr_limit=PRO_FPR_LIMIT) -> dict:
    """Metrics per class (in order of first appearance) and their mean.

    Returns {class: {key: value}, ..., "mean": {key: value}}. A class whose metric is
    undefined gets NaN (and a warning); the mean leaves NaN out, and `classes_left_out`
    says which classes it left out. One failing class never stops the others.
    """
    keys = _check_keys(keys)
    _check_pro_mode(pro_mode)
    check_fpr_limit(pro_fpr_limit)
    anomaly_maps, gt_masks, image_scores, labels = (
        value if value is None or is_torch_tensor(value) else np.asarray(value)
        for value in (anomaly_maps, gt_masks, image_scores, labels))
    cls_names = np.asarray(to_numpy(cls_names)).astype(str).reshape(-1)
    pixel_keys = [key for key in keys if key in PIXEL_KEYS]
    image_keys = [key for key in keys if key in IMAGE_KEYS]
    check_shapes(anomaly_maps, gt_masks, image_scores, labels, cls_names, pixel_keys, image_keys)
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
            results[cls_name] = on_cpu_if_out_of_memory(
                lambda chosen: class_metrics(*arguments, pro_mode=pro_mode, keys=keys, cls_name=cls_name,
                                             backend=chosen, pro_fpr_limit=pro_fpr_limit),
                backend, cls_name)
        except (ValueError, RuntimeError, MemoryError) as error:
            warnings.warn(f"class {cls_name!r}: metrics failed ({type(error).__name__}: {error}); "
                          "reported as NaN", UndefinedMetricWarning, stacklevel=2)
            results[cls_name] = {key: math.nan for key in keys}
    results[MEAN_ROW] = {key: _nanmean([results[cls][key] for cls in classes]) for key in keys}
    return results


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
    """The reference's table (classes, then the mean; percentages with one decimal, the
    F1 threshold as a score with three, as VCP-CLIP's reference prints it)."""
    from tabulate import tabulate

    rows_present = [cls for cls in results if cls != MEAN_ROW] + ([MEAN_ROW] if MEAN_ROW in results else [])
    columns = [key for key in TABLE_COLUMNS
               if key in keys and any(key in results[cls] for cls in rows_present)]

    def cell(key, value):
        if value is None or math.isnan(value):
            return "n/a"
        if key in SCORE_KEYS:
            return f"{value + 0.0:.3f}"
        return f"{100 * value + 0.0:.1f}"  # + 0.0 prints the reference's -0.0 as 0.0

    rows = [[cls] + [cell(key, results[cls].get(key, math.nan)) for key in columns] for cls in rows_present]
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
                    "pixel AUROC / AP / F1-max / AUPRO / IoU at the F1-max threshold (SPEC_VCP §10) and "
                    "image AUROC / AP / F1-max, plus their mean over classes. Prints the table; values are "
                    "percentages there and fractions in the JSON (the F1 threshold is a map score in both).",
        epilog="Undefined values (a class without anomalous or without normal images, for example) "
               "are reported as n/a (null in the JSON) with a warning and left out of the mean.",
    )
    parser.add_argument("maps", metavar="MAPS.npz",
                        help="file written by `test.py --save_maps` (anomaly_maps, image_scores, gt_masks, "
                             "labels, cls_names, img_paths)")
    add_pro_flags(parser)
    parser.add_argument("--metrics", choices=list(LEVELS), default="image-pixel-level",
                        help="which metrics to compute, as the reference's --metrics flag (default: both levels)")
    parser.add_argument("--json", metavar="OUT.json",
                        help="also write {class: {metric: fraction}, 'mean': {...}} here (NaN as null)")
    parser.add_argument("--progress", action="store_true", help="show a progress bar over classes")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --json file (refused otherwise)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = _parse_args(argv)
    warnings.formatwarning = one_line_warning
    keys = LEVELS[args.metrics]
    if args.json:  # before the scoring: an existing file is never replaced unasked
        check_output_file(args.json, "--json", overwrite=args.overwrite)
    try:
        data = load_maps(args.maps)
    except (OSError, KeyError, ValueError) as error:
        message = error.args[0] if isinstance(error, KeyError) else error
        print(f"metrics.py: error: {message}", file=sys.stderr)
        return 2
    try:
        results = evaluate(data["anomaly_maps"], data["gt_masks"], data["image_scores"], data["labels"],
                           data["cls_names"], pro_mode=args.pro_mode, keys=keys, progress=args.progress,
                           pro_fpr_limit=args.pro_fpr_limit)
    except ValueError as error:  # input the metrics cannot take (e.g. masks not in {0, 1}): say so in one line
        print(f"metrics.py: error: {args.maps}: {error}", file=sys.stderr)
        return 2
    print(format_table(results, keys))
    if args.json:
        atomic_write_json(nan_to_none(results), args.json)
    return 0


def cli():
    return run_cli(main, "metrics.py", exit_status=lambda status: status)


if __name__ == "__main__":
    cli()
