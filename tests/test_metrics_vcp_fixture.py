"""metrics.py reproduces every metric value of VCP-CLIP's reference (tests/fixtures/vcp_tiny):
the seven shared with ViP²-CLIP, the pixel IoU and the F1-max threshold, per class and
their mean, on the numpy and the torch paths."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import metrics  # noqa: E402

FIXTURE = ROOT / "tests" / "fixtures" / "vcp_tiny"
TOLERANCE = 1e-6
# The reference's names (its expected.json) -> ours.
KEY_NAMES = {"iou": "pixel_iou", "threshold": "pixel_threshold"}


def _run(run: str):
    expected = json.loads((FIXTURE / "expected.json").read_text())[run]
    with np.load(FIXTURE / "expected.npz") as arrays:
        maps, scores, masks = arrays[f"{run}_maps"], arrays[f"{run}_scores"], arrays["gt_masks"]
    return expected, maps, masks, scores, np.array(expected["labels"]), expected["cls_names"]


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("run", ["init", "trained"])
def test_every_reference_value_within_tolerance(run, backend):
    expected, maps, masks, scores, labels, cls_names = _run(run)
    if backend == "torch":
        torch = pytest.importorskip("torch")
        maps, masks = torch.from_numpy(maps), torch.from_numpy(masks)
    results = metrics.evaluate(maps, masks, scores, labels, cls_names, backend=backend)
    assert list(results) == ["c01", "c02", "c03", "mean"]
    assert set(KEY_NAMES.get(name, name) for name in expected["metrics"]["mean"]) == set(metrics.METRIC_KEYS)
    for cls_name, values in expected["metrics"].items():
        for name, value in values.items():
            ours = results[cls_name][KEY_NAMES.get(name, name)]
            assert abs(ours - value) <= TOLERANCE, (cls_name, name, ours, value)
            assert math.copysign(1, ours) == math.copysign(1, value), (cls_name, name, "sign of zero")


def test_the_table_prints_the_threshold_as_a_score():
    expected, maps, masks, scores, labels, cls_names = _run("trained")
    results = metrics.evaluate(maps, masks, scores, labels, cls_names)
    lines = metrics.format_table(results).splitlines()
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header[-1] == "F1 threshold" and "pixel IoU" in header
    mean = dict(zip(header, (cell.strip() for cell in lines[-1].strip("|").split("|"))))
    assert mean["F1 threshold"] == f"{expected['metrics']['mean']['threshold']:.3f}"  # 0.551, not 55.1
    assert mean["pixel IoU"] == f"{100 * expected['metrics']['mean']['iou']:.1f}"
