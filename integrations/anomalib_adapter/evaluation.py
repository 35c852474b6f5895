"""The adapter's evaluator: anomalib's default metrics plus AUPRO, AUPR and F1-max, and the set-level step.

anomalib's `Evaluator` updates every metric batch by batch. A method whose `finalize` works over
the evaluated set (`AnomalyModel.finalize`: VCP-CLIP's per-class min-max normalisation,
APRIL-GAN's few-shot score fusion) cannot be scored that way: an image's values depend on images
not seen yet. So for the adapter's modules (those with `finalize_outputs`), `AdapterEvaluator`
keeps every test batch's outputs; at the end of the test epoch it applies the model's `finalize`
over the whole set (one anomalib test run is one class: anomalib's datamodules hold one
category), as `test.py` does, and only then updates and computes the metrics. For any other
LightningModule the metrics are updated per batch, as anomalib does. Either way the values
scored are kept on the module as `test_outputs` (image paths, maps, scores, labels, masks).
"""
from __future__ import annotations

from types import SimpleNamespace

import torch
from anomalib.metrics import AUPR, AUPRO, AUROC, F1Max, F1Score
from anomalib.metrics.evaluator import Evaluator

SET_CLASS = "set"  # the one class name given to `finalize` for a test run


def default_metrics() -> list:
    """anomalib's default test metrics (`AnomalibModule.configure_evaluator`) plus AUPRO, AUPR and F1-max."""
    return [
        AUROC(fields=["pred_score", "gt_label"], prefix="image_"),
        F1Score(fields=["pred_label", "gt_label"], prefix="image_"),
        AUROC(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
        F1Score(fields=["pred_mask", "gt_mask"], prefix="pixel_", strict=False),
        AUPR(fields=["pred_score", "gt_label"], prefix="image_"),
        F1Max(fields=["pred_score", "gt_label"], prefix="image_"),
        AUPR(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
        F1Max(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
        AUPRO(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
    ]


FIELDS = ("image_path", "pred_score", "anomaly_map", "gt_label", "gt_mask", "pred_label", "pred_mask")


def _cpu(value):  # noqa: D103 (shared with modules.py)
    return value.detach().cpu() if isinstance(value, torch.Tensor) else value


class AdapterEvaluator(Evaluator):
    """`Evaluator` that keeps the test outputs and, for the adapter's modules, scores them at the epoch's end after
    the method's set-level step."""

    def __init__(self, test_metrics=None, val_metrics=None, compute_on_cpu: bool = True) -> None:
        super().__init__(val_metrics=val_metrics, test_metrics=default_metrics() if test_metrics is None
                         else test_metrics, compute_on_cpu=compute_on_cpu)
        self._kept: list[dict] = []

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self._kept = []

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._kept.append({key: _cpu(getattr(batch, key, None)) for key in FIELDS})
        if not _deferred(pl_module):
            super().on_test_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        outputs = gather(self._kept)
        self._kept = []
        if _deferred(pl_module) and outputs:
            outputs = pl_module.finalize_outputs(outputs)
            for metric in self.test_metrics:
                metric.update(SimpleNamespace(**{key: outputs.get(key) for key in FIELDS}))
        pl_module.test_outputs = outputs
        super().on_test_epoch_end(trainer, pl_module)


def _deferred(pl_module) -> bool:
    return callable(getattr(pl_module, "finalize_outputs", None))


def gather(kept: list[dict]) -> dict:
    """Batches' fields joined: tensors concatenated, path lists chained, fields missing anywhere left out."""
    if not kept:
        return {}
    joined = {}
    for key in FIELDS:
        values = [entry[key] for entry in kept]
        if any(value is None for value in values):
            continue
        if isinstance(values[0], torch.Tensor):
            joined[key] = torch.cat([value.reshape(-1, *value.shape[1:]) for value in values])
        else:
            joined[key] = [item for value in values for item in value]
    return joined
