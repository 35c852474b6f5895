"""metrics.py against the straightforward implementation (tests/metrics_oracle.py), the
reference fixture's numbers, and the behaviour promised for undefined cases and bad input."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from skimage import measure
from sklearn.metrics import auc as sklearn_auc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import metrics  # noqa: E402
from metric_kernels import arrays, aupro, grouping, regions  # noqa: E402
from metrics_oracle import cal_pro_score, exact_pro_score, f1_threshold_and_iou, oracle_class_metrics  # noqa: E402

TOLERANCE = 1e-6
FIXTURE = ROOT / "tests" / "fixtures" / "vip2_tiny"


def synthetic_class(seed, n_images=6, size=24, quantise=None, normal_every=3):
    """Smooth maps, higher on the defects; several rectangular defects per anomalous image."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n_images, size, size), dtype=np.uint8)
    labels = (np.arange(n_images) % normal_every != 0).astype(np.int64)
    for index in np.flatnonzero(labels):
        for _ in range(rng.integers(1, 4)):
            row, col = rng.integers(-2, size, 2)
            height, width = rng.integers(1, 6, 2)
            masks[index, max(row, 0):row + height, max(col, 0):col + width] = 1
    maps = ndimage.gaussian_filter(rng.random((n_images, size, size)), sigma=(0, 1.5, 1.5))
    maps = (maps + rng.uniform(0.05, 0.3) * ndimage.gaussian_filter(masks.astype(float), (0, 1, 1))).astype(np.float32)
    scores = maps.reshape(n_images, -1).max(axis=1) + 0.02 * rng.standard_normal(n_images)
    if quantise:
        maps = (np.round(maps * quantise) / quantise).astype(np.float32)
        scores = np.round(scores * quantise) / quantise
    return maps, masks, scores, labels


def assert_matches(ours: dict, reference: dict, tolerance: float = TOLERANCE) -> None:
    for key, expected in reference.items():
        assert abs(ours[key] - expected) <= tolerance, f"{key}: ours {ours[key]!r}, reference {expected!r}"


@pytest.fixture(autouse=True)
def undefined_metrics_are_errors():
    """A test that expects an UndefinedMetricWarning says so with pytest.warns."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", metrics.UndefinedMetricWarning)
        yield


# --- equality with the oracle ----------------------------------------------------------

@pytest.mark.parametrize("pro_mode", metrics.PRO_MODES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_classes_match_the_oracle(seed, pro_mode):
    maps, masks, scores, labels = synthetic_class(seed)
    assert_matches(metrics.class_metrics(maps, masks, scores, labels, pro_mode=pro_mode),
                   oracle_class_metrics(maps, masks, scores, labels, pro_mode=pro_mode))


@pytest.mark.parametrize("pro_mode", metrics.PRO_MODES)
@pytest.mark.parametrize("levels", [8, 40])
def test_heavy_ties_match_the_oracle(levels, pro_mode):
    maps, masks, scores, labels = synthetic_class(5, n_images=8, quantise=levels)
    assert np.unique(maps).size <= 3 * levels and np.unique(scores).size < scores.size
    assert_matches(metrics.class_metrics(maps, masks, scores, labels, pro_mode=pro_mode),
                   oracle_class_metrics(maps, masks, scores, labels, pro_mode=pro_mode))


@pytest.mark.parametrize("pro_mode", metrics.PRO_MODES)
def test_sorts_and_curves_streamed_in_small_blocks_give_the_same_numbers(monkeypatch, pro_mode):
    maps, masks, scores, labels = synthetic_class(7, quantise=50)
    whole = metrics.class_metrics(maps, masks, scores, labels, pro_mode=pro_mode)
    monkeypatch.setattr(arrays.NumpyOps, "chunk", 7)
    monkeypatch.setattr(grouping, "BLOCK", 5)  # runs of tied scores cross block boundaries
    chunked = metrics.class_metrics(maps, masks, scores, labels, pro_mode=pro_mode)
    assert_matches(chunked, whole, tolerance=1e-12)


def test_tiny_border_and_diagonal_regions_are_8_connected_regions():
    size = 12
    masks = np.zeros((3, size, size), dtype=np.uint8)
    masks[0, 0, 0] = masks[0, 5, 5] = masks[0, size - 1, size - 1] = 1  # 1-pixel regions, two in corners
    masks[1, [2, 3, 4], [2, 3, 4]] = 1  # one region connected only diagonally
    masks[1, [2, 3], [8, 7]] = 1  # another, anti-diagonal
    masks[1, :, 0] = 1  # a region along the border
    masks[2, size - 2:, 3:9] = 1  # a region cut by the border
    with_empty = np.concatenate([masks[:1], np.zeros_like(masks[:1]), masks[1:]]).astype(bool)
    positive_regions, n_regions = regions.positive_regions(with_empty)
    assert n_regions == sum(measure.label(mask).max() for mask in masks) == 7
    expected, offset = [], 0
    for mask in with_empty:  # skimage numbers each image's regions in raster order, as the reference saw them
        labelled = measure.label(mask)
        expected.append(labelled[mask] + offset)
        offset += labelled.max()
    np.testing.assert_array_equal(positive_regions, np.concatenate(expected))

    rng = np.random.default_rng(3)
    maps = (ndimage.gaussian_filter(rng.random(masks.shape), (0, 1, 1)) + 0.1 * masks).astype(np.float32)
    scores, labels = np.array([0.9, 0.4, 0.7]), np.array([1, 0, 1])
    for pro_mode in metrics.PRO_MODES:
        assert_matches(metrics.class_metrics(maps, masks, scores, labels, pro_mode=pro_mode),
                       oracle_class_metrics(maps, masks, scores, labels, pro_mode=pro_mode))


@pytest.mark.parametrize("pro_mode", metrics.PRO_MODES)
def test_a_class_with_one_anomalous_image(pro_mode):
    maps, masks, scores, labels = synthetic_class(11, n_images=5, normal_every=1)
    masks[2, 3:9, 4:7] = 1
    labels[2] = 1
    assert labels.sum() == 1
    assert_matches(metrics.class_metrics(maps, masks, scores, labels, pro_mode=pro_mode),
                   oracle_class_metrics(maps, masks, scores, labels, pro_mode=pro_mode))


def test_one_image_has_pixel_metrics_but_no_image_metrics():
    maps, masks, scores, labels = synthetic_class(13, n_images=2)
    maps, masks, scores, labels = maps[1:], masks[1:], scores[1:], labels[1:]
    with pytest.warns(metrics.UndefinedMetricWarning, match="'one': image_auroc, image_ap, image_f1.*no normal"):
        ours = metrics.class_metrics(maps, masks, scores, labels, cls_name="one")
    reference = oracle_class_metrics(maps, masks, np.array([0.0, 1.0]), np.array([0, 1]))
    assert_matches(ours, {key: reference[key] for key in metrics.PIXEL_KEYS})
    assert all(math.isnan(ours[key]) for key in metrics.IMAGE_KEYS)


def test_scores_that_are_float64_negative_or_signed_zero_match_the_oracle():
    maps, masks, scores, labels = synthetic_class(17)
    centred = maps - np.median(maps)
    centred.flat[::7] = np.float32(0.0)  # ties between +0.0 and -0.0
    centred.flat[3::7] = np.float32(-0.0)
    assert (centred < 0).any() and (centred > 0).any()
    widened = maps.astype(np.float64) + 1e-12  # not representable in float32
    low = maps < np.quantile(maps, 0.2)
    signed_zeros = np.where(low, np.float32(-0.0), maps)  # no negative value, but sign bits set
    signed_zeros[low & (np.indices(maps.shape).sum(axis=0) % 2 == 0)] = np.float32(0.0)
    for variant in (centred, widened, centred.astype(np.float64), signed_zeros):
        for pro_mode in metrics.PRO_MODES:
            assert_matches(metrics.class_metrics(variant, masks, scores, labels, pro_mode=pro_mode),
                           oracle_class_metrics(variant, masks, scores, labels, pro_mode=pro_mode))


def test_exact_aupro_counts_a_threshold_landing_on_fpr_limit():
    # 10 negative pixels: FPR steps of 0.1, so a threshold lands exactly on 0.3.
    maps = np.array([[[0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.95, 0.65]]], dtype=np.float32)
    masks = np.array([[[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1]]], dtype=np.uint8)
    ours = metrics.class_metrics(maps, masks, None, None, keys=["pixel_aupro"], pro_mode="exact")
    assert ours["pixel_aupro"] == pytest.approx(exact_pro_score(masks, maps), abs=1e-12)


def test_exact_aupro_of_a_constant_map_is_the_diagonal():
    maps = np.full((2, 5, 5), 0.25, dtype=np.float32)
    masks = np.zeros((2, 5, 5), dtype=np.uint8)
    masks[1, 1:3, 1:3] = 1
    ours = metrics.class_metrics(maps, masks, None, None, keys=metrics.PIXEL_KEYS, pro_mode="exact")
    assert ours["pixel_aupro"] == pytest.approx(0.15) == exact_pro_score(masks, maps)
    assert ours["pixel_auroc"] == 0.5


# --- the reference's AUPRO where it is undefined ------------------------------------------

def test_constant_maps_have_no_official_aupro():
    maps = np.full((2, 5, 5), 0.25, dtype=np.float32)
    masks = np.zeros((2, 5, 5), dtype=np.uint8)
    masks[1, 1:3, 1:3] = 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises((ValueError, ZeroDivisionError)):
            cal_pro_score(masks, maps)  # the reference crashes
    with pytest.warns(metrics.UndefinedMetricWarning, match="pixel_aupro.*every map score is equal"):
        ours = metrics.class_metrics(maps, masks, None, None, keys=metrics.PIXEL_KEYS)
    assert math.isnan(ours["pixel_aupro"]) and ours["pixel_auroc"] == 0.5


def _one_row(negatives, positives):
    maps = np.array([[list(negatives) + list(positives)]], dtype=np.float32)
    masks = np.array([[[0] * len(negatives) + [1] * len(positives)]], dtype=np.uint8)
    return maps, masks


@pytest.mark.parametrize("case, negatives, reason", [
    # More than 30% of the negatives at the top score: no threshold has FPR < 0.3.
    ("none kept", [1.0] * 4 + [0.0] * 6, "0 threshold"),
    # 20% at the top, 20% between the last two thresholds: only the last one is kept.
    ("one kept", [1.0] * 2 + [0.993] * 2 + [0.0] * 6, "1 threshold"),
    # Every negative at the lowest score: every kept FPR is 0, the rescaling divides by zero.
    ("same fpr", [0.0] * 10, "same FPR"),
])
def test_official_aupro_where_the_reference_has_no_value(case, negatives, reason):
    maps, masks = _one_row(negatives, [0.5, 0.6])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            reference = cal_pro_score(masks, maps)
        except ValueError:
            reference = math.nan
    assert math.isnan(reference)
    with pytest.warns(metrics.UndefinedMetricWarning, match=reason):
        ours = metrics.class_metrics(maps, masks, None, None, keys=["pixel_aupro"])
    assert math.isnan(ours["pixel_aupro"])


def test_threshold_comparisons_in_float32_equal_those_in_float64():
    rng = np.random.default_rng(2)
    values = np.sort(rng.random(2000).astype(np.float32))
    thresholds = np.concatenate([
        values[::50].astype(np.float64),  # exactly on a value
        (values[:-1:37].astype(np.float64) + values[1::37]) / 2,  # between two floats
        np.nextafter(values[::41].astype(np.float64), 2.0),  # just above one
        np.nextafter(values[::43].astype(np.float64), -1.0),  # just below one
    ])
    rounded = aupro.at_or_below_in(thresholds, np.float32)
    assert rounded.dtype == np.float32
    expected = (values[:, None].astype(np.float64) <= thresholds).sum(axis=0)
    assert np.array_equal(np.searchsorted(values, rounded, side="right"), expected)


def test_sklearn_auc_semantics_including_negative_zero():
    rng = np.random.default_rng(0)
    for _ in range(20):
        x = np.sort(rng.random(rng.integers(2, 30)))
        y = rng.random(x.size)
        for xs in (x, x[::-1].copy()):
            assert aupro.auc_like_sklearn(xs, y) == sklearn_auc(xs, y)
    decreasing, zeros = np.array([1.0, 0.5, 0.0]), np.zeros(3)
    assert math.copysign(1, aupro.auc_like_sklearn(decreasing, zeros)) == -1
    assert math.copysign(1, sklearn_auc(decreasing, zeros)) == -1


# --- VCP-CLIP's F1-max threshold and IoU ----------------------------------------------------

def _threshold_and_iou(maps, masks, backend, chunk, monkeypatch):
    ops_class = arrays.TorchOps if backend == "torch" else arrays.NumpyOps
    monkeypatch.setattr(ops_class, "chunk", chunk)
    if backend == "torch":
        torch = pytest.importorskip("torch")
        maps, masks = torch.from_numpy(maps), torch.from_numpy(masks)
    ours = metrics.class_metrics(maps, masks, None, None, keys=["pixel_threshold", "pixel_iou"], backend=backend)
    return ours["pixel_threshold"], ours["pixel_iou"]


@pytest.mark.parametrize("chunk", [1 << 20, 3])
@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("seed, levels", [(0, None), (1, None), (2, 8), (3, 40), (4, 3)])
def test_f1_threshold_and_iou_equal_the_reference_exactly(monkeypatch, seed, levels, backend, chunk):
    """The same threshold (not merely a close one) and the same IoU, on distinct and on heavily tied scores."""
    maps, masks, _, _ = synthetic_class(seed, n_images=5, quantise=levels)
    assert _threshold_and_iou(maps, masks, backend, chunk, monkeypatch) == f1_threshold_and_iou(masks, maps)


@pytest.mark.parametrize("chunk", [1 << 20, 1, 2])
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_equal_f1_maxima_pick_the_lowest_threshold_as_np_argmax_does(monkeypatch, backend, chunk):
    # Scores 0.9 (defect), 0.8, 0.7 (normal), 0.6 (defect): at 0.9 P = 1, R = 1/2 and at 0.6 P = 1/2,
    # R = 1, the same F1 to the last bit. np.argmax over increasing thresholds takes 0.6; `> 0.6` then
    # predicts 0.9, 0.8 and 0.7: IoU 1/4 (at 0.9 it would have been 0).
    maps = np.array([[[0.9, 0.8, 0.7, 0.6]]], dtype=np.float32)
    masks = np.array([[[1, 0, 0, 1]]], dtype=np.uint8)
    assert f1_threshold_and_iou(masks, maps) == (float(np.float32(0.6)), 0.25)
    assert _threshold_and_iou(maps, masks, backend, chunk, monkeypatch) == (float(np.float32(0.6)), 0.25)


def test_installed_scikit_learn_keeps_the_curve_below_full_recall():
    """The reference's argmax runs over scikit-learn's thresholds: 1.9 keeps every distinct score
    (older releases cut the curve at the first full-recall point, which changes no argmax: below
    it recall stays 1 and precision only falls)."""
    from sklearn.metrics import precision_recall_curve

    _, recalls, thresholds = precision_recall_curve([1, 0, 1, 0], [0.9, 0.8, 0.6, 0.1])
    assert thresholds.tolist() == [0.1, 0.6, 0.8, 0.9] and recalls.tolist() == [1.0, 1.0, 0.5, 0.5, 0.0]


def test_f1_threshold_and_iou_are_pixel_level_and_undefined_without_normal_pixels():
    assert {"pixel_iou", "pixel_threshold"} <= set(metrics.LEVELS["pixel-level"]) - set(metrics.IMAGE_KEYS)
    maps, _, _, _ = synthetic_class(59, n_images=2)
    with pytest.warns(metrics.UndefinedMetricWarning, match="'full':.*pixel_iou, pixel_threshold.*no normal pixel"):
        ours = metrics.class_metrics(maps, np.ones(maps.shape, np.uint8), None, None, keys=metrics.PIXEL_KEYS,
                                     cls_name="full")
    assert all(math.isnan(value) for value in ours.values())


# --- the reference fixture ----------------------------------------------------------------

@pytest.mark.parametrize("run", ["init", "trained"])
def test_reference_fixture_metrics(run):
    expected = json.loads((FIXTURE / "expected.json").read_text())[run]
    with np.load(FIXTURE / "expected.npz") as arrays:
        maps, scores, masks = arrays[f"{run}_maps"], arrays[f"{run}_scores"], arrays["gt_masks"]
    paths = expected["image_paths"]
    cls_names = [path.split("/")[0] for path in paths]
    labels = np.array(["/ko/" in path for path in paths], dtype=np.int64)
    results = metrics.evaluate(maps, masks, scores, labels, cls_names)
    assert list(results) == ["01", "02", "03", "mean"]
    for cls_name, values in expected["metrics"].items():
        for name, value in values.items():
            ours = results[cls_name][name.replace("-", "_")]
            assert abs(ours - value) <= TOLERANCE, (cls_name, name, ours, value)
            assert math.copysign(1, ours) == math.copysign(1, value), (cls_name, name, "sign of zero")


# --- torch --------------------------------------------------------------------------------

@pytest.mark.parametrize("pro_mode", metrics.PRO_MODES)
def test_torch_path_gives_the_oracle_and_numpy_numbers(monkeypatch, pro_mode):
    """Each path against the oracle (so a bug shared by both fails), and torch against numpy to rounding."""
    torch = pytest.importorskip("torch")
    maps, masks, scores, labels = synthetic_class(19, n_images=7, quantise=40)
    oracle = oracle_class_metrics(maps, masks, scores, labels, pro_mode=pro_mode)
    through_numpy = metrics.class_metrics(maps, masks, scores, labels, pro_mode=pro_mode)
    assert_matches(through_numpy, oracle)
    tensors = (torch.from_numpy(maps), torch.from_numpy(masks), torch.from_numpy(scores), torch.from_numpy(labels))
    for chunk in (arrays.TorchOps.chunk, 5):
        monkeypatch.setattr(arrays.TorchOps, "chunk", chunk)
        through_torch = metrics.class_metrics(*tensors, pro_mode=pro_mode, backend="torch")
        assert_matches(through_torch, oracle)
        assert_matches(through_torch, through_numpy, 1e-12)
    assert arrays.choose_ops(tensors[0], "auto").name == "numpy"  # a CPU tensor is scored with numpy
    assert_matches(metrics.class_metrics(*tensors, pro_mode=pro_mode), oracle)


def test_evaluate_takes_torch_tensors_and_non_contiguous_classes():
    torch = pytest.importorskip("torch")
    first, second = synthetic_class(23), synthetic_class(29)
    order = np.arange(12).reshape(2, 6).T.reshape(-1)  # the classes interleaved
    stacked = [np.concatenate(parts)[order] for parts in zip(first, second)]
    cls_names = np.array(["a"] * 6 + ["b"] * 6)[order]
    as_tensors = [torch.from_numpy(array) for array in stacked]
    results = metrics.evaluate(*as_tensors, list(cls_names), backend="torch")
    assert list(results) == ["a", "b", "mean"]
    assert_matches(results["a"], oracle_class_metrics(*first))
    assert_matches(results["b"], oracle_class_metrics(*second))


# --- undefined metrics, the mean, the table -----------------------------------------------

def test_a_class_without_anomalies_is_nan_and_left_out_of_the_mean():
    maps, masks, scores, labels = synthetic_class(31)
    normal_maps = maps[:3].copy()
    all_maps = np.concatenate([maps, normal_maps])
    all_masks = np.concatenate([masks, np.zeros_like(masks[:3])])
    all_scores = np.concatenate([scores, scores[:3]])
    all_labels = np.concatenate([labels, np.zeros(3, dtype=np.int64)])
    cls_names = ["good"] * 6 + ["empty"] * 3
    with pytest.warns(metrics.UndefinedMetricWarning) as caught:
        results = metrics.evaluate(all_maps, all_masks, all_scores, all_labels, cls_names)
    messages = [str(warning.message) for warning in caught]
    assert any("'empty'" in message and "pixel_auroc" in message and "no anomalous pixel" in message
               for message in messages)
    assert any("'empty'" in message and "image_auroc" in message and "no anomalous image" in message
               for message in messages)
    assert all(math.isnan(value) for value in results["empty"].values())
    assert results["mean"] == results["good"]
    assert metrics.classes_left_out(results) == {key: ["empty"] for key in metrics.METRIC_KEYS}
    table = metrics.format_table(results)
    assert "n/a" in table and "left out of the mean" in table and "empty" in table.splitlines()[-1]


def test_non_finite_maps_make_that_class_nan_not_the_run_crash():
    maps, masks, scores, labels = synthetic_class(37)
    maps[1, 2, 3] = np.nan
    with pytest.warns(metrics.UndefinedMetricWarning, match="NaN or infinite"):
        ours = metrics.class_metrics(maps, masks, scores, labels)
    assert all(math.isnan(ours[key]) for key in metrics.PIXEL_KEYS)
    assert not any(math.isnan(ours[key]) for key in metrics.IMAGE_KEYS)


def test_a_class_out_of_gpu_memory_is_scored_on_the_cpu(monkeypatch):
    torch = pytest.importorskip("torch")
    real, backends = metrics.class_metrics, []

    def out_of_memory_off_the_cpu(*arguments, backend, **options):
        backends.append(backend)
        if backend != "numpy":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")
        return real(*arguments, backend=backend, **options)

    monkeypatch.setattr(metrics, "class_metrics", out_of_memory_off_the_cpu)
    maps, masks, scores, labels = synthetic_class(41)
    with pytest.warns(RuntimeWarning, match="out of GPU memory"):
        results = metrics.evaluate(torch.from_numpy(maps), masks, scores, labels, ["c"] * len(maps), backend="torch")
    assert backends == ["torch", "numpy"]
    assert_matches(results["c"], real(maps, masks, scores, labels), tolerance=0)


def test_a_class_that_cannot_even_be_gathered_is_nan_and_the_others_are_scored(monkeypatch):
    maps, masks, scores, labels = synthetic_class(43, n_images=6)
    cls_names = ["a", "b", "a", "b", "a", "b"]
    real_take = metrics._take

    def take(values, index):
        if index.tolist() == [1, 3, 5]:
            raise MemoryError("no room to gather class b")
        return real_take(values, index)

    monkeypatch.setattr(metrics, "_take", take)
    with pytest.warns(metrics.UndefinedMetricWarning, match="class 'b': metrics failed .*no room"):
        results = metrics.evaluate(maps, masks, scores, labels, cls_names)
    assert all(math.isnan(value) for value in results["b"].values())
    assert not any(math.isnan(value) for value in results["a"].values())


def test_table_layout():
    results = {"bottle": dict(zip(metrics.METRIC_KEYS, [0.9, 0.5, 0.4, 0.8, 0.95, 0.97, -0.0]))}
    results["mean"] = dict(results["bottle"])
    lines = metrics.format_table(results).splitlines()
    assert [cell.strip() for cell in lines[0].strip("|").split("|")] == [
        "objects", "pixel AUROC", "pixel AUPRO", "pixel F1-max", "pixel AP", "image AUROC", "image AP",
        "image F1-max"]
    assert [cell.strip() for cell in lines[2].strip("|").split("|")] == [
        "bottle", "90.0", "80.0", "40.0", "50.0", "95.0", "97.0", "0.0"]
    assert lines[3].startswith("| mean") and len(lines) == 4
    image_only = metrics.format_table(results, keys=metrics.LEVELS["image-level"]).splitlines()[0]
    assert "pixel" not in image_only


def test_levels_and_key_subsets():
    assert metrics.LEVELS["image-pixel-level"] == metrics.METRIC_KEYS
    assert set(metrics.LEVELS["image-level"]) | set(metrics.LEVELS["pixel-level"]) == set(metrics.METRIC_KEYS)
    maps, masks, scores, labels = synthetic_class(41)
    image_only = metrics.class_metrics(None, None, scores, labels, keys=metrics.LEVELS["image-level"])
    assert list(image_only) == list(metrics.LEVELS["image-level"])
    full = metrics.class_metrics(maps, masks, scores, labels)
    assert_matches(image_only, {key: full[key] for key in image_only}, 0)
    results = metrics.evaluate(None, None, scores, labels, ["x"] * 6, keys=["image_auroc"])
    assert results == {"x": {"image_auroc": full["image_auroc"]}, "mean": {"image_auroc": full["image_auroc"]}}


# --- input errors ---------------------------------------------------------------------------

@pytest.mark.parametrize("change, message", [
    (lambda a: {**a, "gt_masks": a["gt_masks"][:, :-1]}, "differs from gt_masks shape"),
    (lambda a: {**a, "anomaly_maps": a["anomaly_maps"][0], "gt_masks": a["gt_masks"][0]}, r"\[N, H, W\]"),
    (lambda a: {**a, "labels": a["labels"][:-1]}, "labels has 5"),
    (lambda a: {**a, "cls_names": a["cls_names"][:-2]}, "cls_names has 4"),
    (lambda a: {**a, "gt_masks": a["gt_masks"] * 255}, "only 0 and 1"),
    (lambda a: {**a, "labels": a["labels"] + 1}, "only 0 and 1"),
])
def test_input_errors_say_what_is_wrong(change, message):
    maps, masks, scores, labels = synthetic_class(43)
    arguments = change({"anomaly_maps": maps, "gt_masks": masks, "image_scores": scores, "labels": labels,
                        "cls_names": ["c"] * 6})
    with pytest.raises(ValueError, match=message):
        metrics.evaluate(**arguments)
    if "cls_names" in message:
        return
    del arguments["cls_names"]
    with pytest.raises(ValueError, match=message):
        metrics.class_metrics(**arguments)


def test_bad_options_are_rejected():
    maps, masks, scores, labels = synthetic_class(47)
    with pytest.raises(ValueError, match="unknown metric"):
        metrics.class_metrics(maps, masks, scores, labels, keys=["pixel_pro"])
    with pytest.raises(ValueError, match="pro_mode"):
        metrics.class_metrics(maps, masks, scores, labels, pro_mode="fast")
    with pytest.raises(ValueError, match="'mean'"):
        metrics.evaluate(maps, masks, scores, labels, ["mean"] * 6)


# --- the saved-maps file and the command line ----------------------------------------------

def _save_maps(path, with_empty_class=True):
    maps, masks, scores, labels = synthetic_class(53, n_images=6)
    cls_names = ["screw"] * 6
    if with_empty_class:
        maps = np.concatenate([maps, maps[:2]])
        masks = np.concatenate([masks, np.zeros_like(masks[:2])])
        scores, labels = np.concatenate([scores, scores[:2]]), np.concatenate([labels, [0, 0]])
        cls_names += ["plain"] * 2
    np.savez_compressed(path, anomaly_maps=maps, image_scores=scores, gt_masks=masks, labels=labels,
                        cls_names=np.array(cls_names),
                        img_paths=np.array([f"{name}/test/{i}.png" for i, name in enumerate(cls_names)]))
    return maps, masks, scores, labels, cls_names


@pytest.mark.slow
@pytest.mark.parametrize("pro_mode", metrics.PRO_MODES)
def test_command_line_prints_the_table_and_writes_json(tmp_path, pro_mode):
    arrays = _save_maps(tmp_path / "maps.npz")
    out = tmp_path / "out" / "metrics.json"
    out.parent.mkdir()
    process = subprocess.run([sys.executable, str(ROOT / "metrics.py"), str(tmp_path / "maps.npz"),
                              "--json", str(out), "--pro_mode", pro_mode],
                             capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert process.returncode == 0, process.stderr
    assert "| screw" in process.stdout and "| mean" in process.stdout and "left out of the mean" in process.stdout
    assert "'plain'" in process.stderr  # the warning names the class
    written = json.loads(out.read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", metrics.UndefinedMetricWarning)
        expected = metrics.evaluate(*arrays, pro_mode=pro_mode)
    assert list(written) == ["screw", "plain", "mean"]
    assert written["plain"] == {key: None for key in metrics.METRIC_KEYS}
    assert_matches(written["screw"], expected["screw"], 0)
    assert_matches(written["mean"], expected["mean"], 0)
    assert [path.name for path in out.parent.iterdir()] == ["metrics.json"]  # no temporary left behind


@pytest.mark.slow
def test_command_line_metric_level_and_errors(tmp_path):
    _save_maps(tmp_path / "maps.npz", with_empty_class=False)
    run = [sys.executable, str(ROOT / "metrics.py")]
    process = subprocess.run(run + [str(tmp_path / "maps.npz"), "--metrics", "image-level",
                                    "--json", str(tmp_path / "image.json")], capture_output=True, text=True)
    assert process.returncode == 0, process.stderr
    assert list(json.loads((tmp_path / "image.json").read_text())["screw"]) == list(metrics.IMAGE_KEYS)

    np.savez(tmp_path / "broken.npz", anomaly_maps=np.zeros((1, 2, 2), np.float32))
    process = subprocess.run(run + [str(tmp_path / "broken.npz")], capture_output=True, text=True)
    assert process.returncode == 2 and "broken.npz" in process.stderr and "gt_masks" in process.stderr
    process = subprocess.run(run + [str(tmp_path / "absent.npz")], capture_output=True, text=True)
    assert process.returncode == 2 and "absent.npz" in process.stderr
    process = subprocess.run(run + ["--help"], capture_output=True, text=True)
    assert process.returncode == 0 and "--pro_mode" in process.stdout and "exact" in process.stdout


def test_load_maps_names_the_file_and_the_missing_key(tmp_path):
    _save_maps(tmp_path / "maps.npz")
    data = metrics.load_maps(tmp_path / "maps.npz")
    assert set(data) == set(metrics.MAPS_FILE_KEYS) and data["cls_names"].dtype.kind == "U"
    np.savez(tmp_path / "partial.npz", anomaly_maps=data["anomaly_maps"], gt_masks=data["gt_masks"])
    with pytest.raises(KeyError, match=r"partial\.npz.*image_scores"):
        metrics.load_maps(tmp_path / "partial.npz")
    np.savez(tmp_path / "pickled.npz", **{**data, "cls_names": data["cls_names"].astype(object)})
    with pytest.raises(ValueError, match=r"pickled\.npz.*cls_names"):
        metrics.load_maps(tmp_path / "pickled.npz")


def test_torch_path_accepts_inference_mode_tensors():
    """test.py makes its maps under torch.inference_mode; on a GPU they reach the torch path as they are."""
    import torch

    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        maps = torch.rand(6, 32, 32, generator=generator)
        masks = (torch.rand(6, 32, 32, generator=generator) > 0.9).to(torch.uint8)
        scores = torch.rand(6, generator=generator)
        labels = torch.tensor([0, 1, 1, 0, 1, 0])
    names = ["a"] * 3 + ["b"] * 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        through_torch = metrics.evaluate(maps, masks, scores, labels, names, backend="torch")
        through_numpy = metrics.evaluate(maps.numpy(), masks.numpy(), scores.numpy(), labels.numpy(), names)
    for cls_name, values in through_numpy.items():
        for key, value in values.items():
            assert through_torch[cls_name][key] == pytest.approx(value, abs=1e-12, nan_ok=True)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["masks_0_255", "class_named_mean", "text", "empty", "truncated"])
def test_cli_reports_bad_files_in_one_line(tmp_path, case):
    rng = np.random.default_rng(0)
    masks = np.zeros((4, 16, 16), dtype=np.uint8)
    masks[1, 3:6, 3:6] = 1
    arrays = dict(anomaly_maps=rng.random((4, 16, 16), dtype=np.float32), image_scores=rng.random(4),
                  gt_masks=masks, labels=np.array([0, 1, 0, 1]), cls_names=np.array(["a"] * 4),
                  img_paths=np.array(["x"] * 4))
    path = tmp_path / "maps.npz"
    if case == "masks_0_255":
        arrays["gt_masks"] = masks * 255
    if case == "class_named_mean":
        arrays["cls_names"] = np.array(["mean"] * 4)
    np.savez(path, **arrays)
    if case == "text":
        path.write_text("hello")
    if case == "empty":
        path.write_bytes(b"")
    if case == "truncated":
        path.write_bytes(path.read_bytes()[:1000])
    result = subprocess.run([sys.executable, str(ROOT / "metrics.py"), str(path)], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.startswith(f"metrics.py: error: {path}") and "Traceback" not in result.stderr


@pytest.mark.parametrize("limit", [0.05, 0.3, 0.6])
def test_aupro_fpr_limit_is_a_parameter_of_both_modes(limit):
    """--pro_fpr_limit: each mode against its oracle at that limit (the reference's loop takes `expect_fpr`)."""
    maps, masks, _, _ = synthetic_class(seed=3)
    exact = metrics.evaluate(maps, masks, None, None, ["c"] * len(maps), keys=["pixel_aupro"], pro_mode="exact",
                             pro_fpr_limit=limit)["c"]["pixel_aupro"]
    assert exact == pytest.approx(exact_pro_score(masks, maps, fpr_limit=limit), abs=1e-12)
    official = metrics.class_metrics(maps, masks, None, None, keys=["pixel_aupro"], pro_fpr_limit=limit)
    assert official["pixel_aupro"] == pytest.approx(cal_pro_score(masks, maps, expect_fpr=limit), abs=1e-12)


@pytest.mark.parametrize("bad", [0, 1, 1.5, -0.1])
def test_aupro_fpr_limit_outside_0_1_is_refused(bad):
    maps, masks, _, _ = synthetic_class(seed=3)
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        metrics.class_metrics(maps, masks, None, None, keys=["pixel_aupro"], pro_fpr_limit=bad)


@pytest.mark.slow
@pytest.mark.parametrize("bad", ["0", "1", "nan", "x"])
def test_metrics_command_refuses_a_bad_fpr_limit_in_one_line(bad):
    result = subprocess.run([sys.executable, str(ROOT / "metrics.py"), "x.npz", "--pro_fpr_limit", bad],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "--pro_fpr_limit" in result.stderr and "Traceback" not in result.stderr
