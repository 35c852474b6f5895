"""Thresholds that turn scores into decisions (pass / defect), measured on a calibration set, carried with the model.

NumPy only (no torch): `predict.py --onnx` and `demo.py` apply a calibration where only a runtime is installed.
The rules, precisely (docs/DEPLOY_DECISIONS.md says the same in prose):

Decision. An image is a defect when its image score is strictly above the image threshold; a pixel is
defective when its map value is strictly above the pixel threshold. A threshold is therefore the highest
value that still passes.

Scale. Thresholds are on the scores and maps the model returns before any set-level step
(`Runner.__call__`'s output). VCP-CLIP min-max normalises over the evaluated set, so its normalised
values have no fixed scale: its thresholds are on the unnormalised (raw) score and map, decisions are
taken on those, and `to_normalised_scale` maps a threshold onto one run's normalised scale for display.

False-alarm rule (`max_false_alarm` r, from normal images only). The n normal scores sorted ascending,
s(1) <= ... <= s(n); m = floor(r * n) alarms are allowed; the threshold is s(n - m), the (n - m)-th order
statistic (numpy.quantile(s, (n - m) / n, method="inverted_cdf")). On the calibration set exactly the
scores above it are flagged: at most m of n (fewer where scores tie), so the measured rate is <= r.

Enough images. The threshold at rate r is the (m + 1)-th highest normal score; with few images it is an
extreme order statistic that says little about new parts. We require n >= ceil(k / r), i.e. at least k
expected alarms in the calibration set (k = `min_exceedances`, default 10: the count of alarms a new
set of n parts would give then has a relative spread of about 1 / sqrt(k), ~30%); fewer is refused,
naming the count needed. With 50 normal images and r = 1% this asks for 1000.

Pixel rule (`max_pixel_false_alarm` r_px): the same rule over all pixels of the normal images pooled
(N * S * S values, streamed: only the top m + 1 are kept). Pixels of one image are correlated, so the
pixel count overstates the evidence: we require ceil(k / r_px) pixels *and* n >= k images, and report
how many calibration images hold a pixel above the threshold.

F1-max rule (a labelled set, as anomalib's F1AdaptiveThreshold): the threshold among the observed
values that maximises F1 of "score > threshold" against the labels (images) or masks (pixels); ties in
F1 go to the higher threshold.

Fingerprint of a calibration set: sha256 over the lines "NAME\\tSHA256(file bytes)\\n", NAME the file's
path relative to the set's root (POSIX separators), lines sorted by NAME.
"""
from __future__ import annotations

import datetime
import hashlib
import math
from pathlib import Path

import numpy as np

CALIBRATION_FORMAT = "zsas-calibration/1"
DEFAULT_MIN_EXCEEDANCES = 10
DECISION_RULE = "defect when value > threshold (strict); thresholds on the scores/maps before any set normalisation"
RULES = ("false_alarm", "f1_max")
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
_EPS = 1e-9  # guards floor/ceil of products such as 0.29 * 100 = 28.999999999999996


class CalibrationError(ValueError):
    """A calibration that cannot be made from what was given; the message says what is needed."""


# ---------------------------------------------------------------- the rules

def allowed_alarms(rate: float, count: int) -> int:
    """m = floor(rate * count): how many calibration values may lie above the threshold."""
    return int(math.floor(rate * count + _EPS))


def required_count(rate: float, min_exceedances: int = DEFAULT_MIN_EXCEEDANCES) -> int:
    """ceil(k / rate): the calibration values needed for `rate` to mean something."""
    return int(math.ceil(min_exceedances / rate - _EPS))


def check_rate(rate: float, flag: str) -> None:
    if not 0 < rate < 1:
        raise CalibrationError(f"{flag} {rate:g}: a rate strictly between 0 and 1 (0.01 = 1%)")


def check_enough_images(count: int, rate: float, min_exceedances: int, flag: str, what: str = "normal images") -> None:
    """Refuse a rate the calibration set is too small for, naming the count needed and the smallest usable rate."""
    needed = required_count(rate, min_exceedances)
    if count < needed:
        smallest = min_exceedances / count if count else float("inf")
        raise CalibrationError(
            f"{flag} {rate:g} needs at least {needed} {what} (ceil(k / rate) with k = {min_exceedances} expected "
            f"false alarms, --min_exceedances); got {count}. Add {what}, or ask for a rate of at least "
            f"{smallest:.3g} with these")


def false_alarm_threshold(scores, rate: float, min_exceedances: int = DEFAULT_MIN_EXCEEDANCES,
                          flag: str = "--max_false_alarm") -> dict:
    """The image threshold at false-alarm rate `rate` over normal `scores`, with what was measured."""
    scores = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    check_rate(rate, flag)
    if not np.isfinite(scores).all():
        raise CalibrationError(f"{flag}: {int((~np.isfinite(scores)).sum())} normal score(s) are NaN or infinite")
    count = len(scores)
    check_enough_images(count, rate, min_exceedances, flag)
    alarms = allowed_alarms(rate, count)
    threshold = float(scores[count - alarms - 1])
    flagged = int((scores > threshold).sum())
    return {"rule": "false_alarm", "max_false_alarm": rate, "min_exceedances": min_exceedances,
            "normal_images": count, "allowed_alarms": alarms, "order_statistic": count - alarms,
            "quantile": (count - alarms) / count, "threshold": threshold, "flagged": flagged,
            "measured_false_alarm": flagged / count,
            "normal_score_quantiles": _quantiles(scores)}


def _quantiles(values) -> dict:
    qs = (0.5, 0.9, 0.95, 0.99, 0.999, 1.0)
    return {f"q{q:g}": float(np.quantile(values, q)) for q in qs}


class TopValues:
    """The largest `capacity` values seen, over values streamed in batches (pixels of many maps)."""

    def __init__(self, capacity: int):
        self.capacity = max(1, int(capacity))
        self.values = np.empty(0, dtype=np.float32)
        self.count = 0
        self.finite = True

    def add(self, values) -> None:
        values = np.asarray(values, dtype=np.float32).ravel()
        self.finite &= bool(np.isfinite(values).all())
        self.count += values.size
        merged = np.concatenate([self.values, values])
        if merged.size > self.capacity:
            merged = np.partition(merged, merged.size - self.capacity)[merged.size - self.capacity:]
        self.values = merged


class PixelFalseAlarm:
    """The pixel threshold at rate `rate`, streamed over the maps of the normal images."""

    def __init__(self, rate: float, images: int, pixels_per_image: int,
                 min_exceedances: int = DEFAULT_MIN_EXCEEDANCES, flag: str = "--max_pixel_false_alarm"):
        check_rate(rate, flag)
        self.rate, self.min_exceedances, self.flag = rate, min_exceedances, flag
        if images < min_exceedances:
            raise CalibrationError(f"{flag} {rate:g} needs at least {min_exceedances} normal images (k = "
                                   f"{min_exceedances}: pixels of one image are correlated); got {images}")
        check_enough_images(images * pixels_per_image, rate, min_exceedances, flag,
                            what=f"normal pixels ({images} images of {pixels_per_image} pixels)")
        self.top = TopValues(allowed_alarms(rate, images * pixels_per_image) + 1)
        self.image_maxima: list[float] = []

    def add(self, maps) -> None:
        maps = np.asarray(maps, dtype=np.float32)
        self.top.add(maps)
        self.image_maxima.extend(float(m.max()) for m in maps)

    def result(self) -> dict:
        count = self.top.count
        if not self.top.finite:
            raise CalibrationError(f"{self.flag}: some normal map values are NaN or infinite")
        check_enough_images(count, self.rate, self.min_exceedances, self.flag, what="normal pixels")
        alarms = allowed_alarms(self.rate, count)
        top = np.sort(self.top.values)  # ascending: the (alarms + 1)-th largest is at -(alarms + 1)
        threshold = float(top[-(alarms + 1)])
        flagged = int((top > threshold).sum())
        maxima = np.asarray(self.image_maxima)
        return {"rule": "false_alarm", "max_pixel_false_alarm": self.rate, "min_exceedances": self.min_exceedances,
                "normal_images": len(maxima), "normal_pixels": count, "allowed_alarms": alarms,
                "order_statistic": count - alarms, "quantile": (count - alarms) / count, "threshold": threshold,
                "flagged_pixels": flagged, "measured_false_alarm": flagged / count,
                "images_with_flagged_pixels": int((maxima > threshold).sum())}


def f1_max_threshold(values, labels) -> dict:
    """The threshold maximising F1 of `values > threshold` against boolean `labels` (images or pixels)."""
    values = np.asarray(values, dtype=np.float32).ravel()
    labels = np.asarray(labels).ravel().astype(bool)
    positives = int(labels.sum())
    if positives == 0 or positives == labels.size:
        raise CalibrationError(f"the F1-max threshold needs both normal and anomalous "
                               f"{'pixels' if values.size > labels.size else 'examples'}: got {positives} anomalous "
                               f"of {labels.size}")
    if not np.isfinite(values).all():
        raise CalibrationError("F1-max: some scores are NaN or infinite")
    order = np.argsort(values, kind="stable")[::-1]  # descending
    ordered, truth = values[order], labels[order]
    true_pos = np.cumsum(truth, dtype=np.int64)
    false_pos = np.arange(1, len(ordered) + 1, dtype=np.int64) - true_pos
    cut = np.r_[ordered[:-1] != ordered[1:], True]  # flag down to a run of equal values, never half of it
    true_pos, false_pos, lowest_flagged = true_pos[cut], false_pos[cut], ordered[cut]
    f1 = 2 * true_pos / (positives + true_pos + false_pos)
    best = int(np.argmax(f1))  # the first maximum: the highest threshold among equal F1s
    # the threshold is the highest value left unflagged: the next distinct value below the cut
    threshold = float(lowest_flagged[best + 1]) if best + 1 < len(lowest_flagged) else \
        float(np.nextafter(np.float32(lowest_flagged[-1]), np.float32(-np.inf)))
    tp, fp = int(true_pos[best]), int(false_pos[best])
    return {"rule": "f1_max", "threshold": threshold, "f1": float(f1[best]), "precision": tp / (tp + fp),
            "recall": tp / positives, "true_positives": tp, "false_positives": fp, "positives": positives,
            "negatives": int(labels.size - positives),
            "false_alarm_at_threshold": fp / (labels.size - positives)}


# ---------------------------------------------------------------- the calibration set

def list_images(folder) -> list[Path]:
    """Image files below `folder` (recursive, sorted, extensions case-insensitive, hidden files skipped)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CalibrationError(f"{folder}: not a folder")
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def set_fingerprint(paths, root) -> str:
    """sha256 over sorted 'name relative to `root`, tab, sha256 of the bytes' lines (module docstring)."""
    root = Path(root).resolve()
    lines = []
    for path in paths:
        full = Path(path).resolve()
        lines.append(f"{full.relative_to(root).as_posix()}\t{hashlib.sha256(full.read_bytes()).hexdigest()}\n")
    return hashlib.sha256("".join(sorted(lines)).encode()).hexdigest()


# ---------------------------------------------------------------- the record a model carries

def make_record(*, rule: str, image: dict | None, pixel: dict | None, f1_image: dict | None = None,
                f1_pixel: dict | None = None, calibration_set: dict, model: dict) -> dict:
    """The calibration a checkpoint / exported file carries: plain JSON types (torch.load weights_only reads it)."""
    if rule not in RULES:
        raise CalibrationError(f"--rule {rule}: one of {', '.join(RULES)}")
    chosen_image, chosen_pixel = (image, pixel) if rule == "false_alarm" else (f1_image, f1_pixel)
    if chosen_image is None and chosen_pixel is None:
        needs = ("--max_false_alarm / --max_pixel_false_alarm" if rule == "false_alarm"
                 else "a labelled set (--data_path)")
        raise CalibrationError(f"--rule {rule} gives no threshold here: it needs {needs}")
    return {"format": CALIBRATION_FORMAT, "decision": DECISION_RULE, "rule": rule,
            "image_threshold": None if chosen_image is None else chosen_image["threshold"],
            "pixel_threshold": None if chosen_pixel is None else chosen_pixel["threshold"],
            "score_scale": "raw (before any set normalisation)",
            "measured": {"false_alarm_image": image, "false_alarm_pixel": pixel, "f1_max_image": f1_image,
                         "f1_max_pixel": f1_pixel},
            "calibration_set": calibration_set, "model": model,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def check_record(record) -> dict | None:
    """A carried calibration, or None when the model carries none; an unknown format is refused."""
    if not record:
        return None
    if not isinstance(record, dict) or record.get("format") != CALIBRATION_FORMAT:
        found = record.get("format") if isinstance(record, dict) else type(record).__name__
        raise CalibrationError(f"the model carries a calibration of format {found!r}, not {CALIBRATION_FORMAT}: "
                               "calibrate it again with calibrate.py")
    return record


def decide(record: dict, raw_scores, raw_maps=None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(defect per image, defect mask per image) from the raw (not set-normalised) scores and maps; None where
    the record has no threshold of that kind."""
    image_threshold, pixel_threshold = record.get("image_threshold"), record.get("pixel_threshold")
    defects = None if image_threshold is None else np.asarray(raw_scores, dtype=np.float32) > image_threshold
    masks = None if pixel_threshold is None or raw_maps is None else \
        np.asarray(raw_maps, dtype=np.float32) > pixel_threshold
    return defects, masks


def to_normalised_scale(threshold: float, low: float, high: float) -> float:
    """A raw threshold on the scale of one run's min-max normalisation (VCP-CLIP's set normalisation)."""
    return (threshold - low) / (high - low) if high > low else float("nan")


def image_decision(record: dict | None, raw_score: float, raw_map=None) -> tuple[dict, np.ndarray | None]:
    """One image's decision fields (`decision` pass/defect, `threshold`, `pixel_threshold`; empty without a
    calibration) and its boolean defect mask (None without a pixel threshold)."""
    if not record:
        return {"decision": "", "threshold": "", "pixel_threshold": ""}, None
    defects, masks = decide(record, [raw_score], None if raw_map is None else np.asarray(raw_map)[None])
    image_threshold, pixel_threshold = record.get("image_threshold"), record.get("pixel_threshold")
    return {"decision": "" if defects is None else ("defect" if defects[0] else "pass"),
            "threshold": "" if image_threshold is None else f"{image_threshold:.6g}",
            "pixel_threshold": "" if pixel_threshold is None else f"{pixel_threshold:.6g}"}, \
        None if masks is None else masks[0]
