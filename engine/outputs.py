"""What every method's model returns (anomalib's `InferenceBatch` is the model followed), torch-free.

The field names are the output names of an exported file (`export.py`), so a checkpoint's model, an ONNX
Runtime session and an OpenVINO model answer with the same two names. A NamedTuple: `maps, scores = model(x)`
keeps working, and torch.export / ONNX flatten it in field order.
"""
from __future__ import annotations

from typing import Any, NamedTuple


class InferenceBatch(NamedTuple):
    anomaly_map: Any  # smoothed anomaly maps [N, S, S], float32 (tensor or NumPy array)
    image_score: Any  # image scores [N], float32


OUTPUT_NAMES = InferenceBatch._fields
