"""Checks of the inputs before any work is done, with errors that say which input is wrong."""

from __future__ import annotations

import numpy as np

from .arrays import is_torch_tensor, to_numpy


def shape(value):
    return tuple(value.shape) if hasattr(value, "shape") else np.shape(value)


def is_binary(values) -> bool:
    """Whether a numpy array or torch tensor holds only 0 and 1 (one cheap pass, on its device)."""
    if not (is_torch_tensor(values) or isinstance(values, np.ndarray)):
        values = np.asarray(values)
    if (values.numel() if is_torch_tensor(values) else values.size) == 0:
        return True
    if str(values.dtype).replace("torch.", "") in ("bool", "uint8"):
        return bool(values.max() <= 1)
    return bool(((values == 0) | (values == 1)).all())


def check_binary(name: str, values) -> None:
    if not is_binary(values):
        found = np.unique(to_numpy(values))[:6].tolist()
        raise ValueError(f"{name} must hold only 0 and 1 (or booleans); found values {found}")


def check_shapes(anomaly_maps, gt_masks, image_scores, labels, cls_names, pixel_keys, image_keys) -> None:
    """Errors that say which input is wrong, before any work is done."""
    lengths = {}
    if pixel_keys:
        if anomaly_maps is None or gt_masks is None:
            raise ValueError(f"pixel metrics {pixel_keys} need anomaly_maps and gt_masks")
        map_shape, mask_shape = shape(anomaly_maps), shape(gt_masks)
        if len(map_shape) != 3:
            raise ValueError(f"anomaly_maps must be [N, H, W], got shape {map_shape}")
        if map_shape != mask_shape:
            raise ValueError(f"anomaly_maps shape {map_shape} differs from gt_masks shape {mask_shape}")
        lengths["anomaly_maps"] = map_shape[0]
    if image_keys:
        if image_scores is None or labels is None:
            raise ValueError(f"image metrics {image_keys} need image_scores and labels")
        score_shape, label_shape = shape(image_scores), shape(labels)
        if len(score_shape) != 1 or len(label_shape) != 1:
            raise ValueError(f"image_scores and labels must be [N], got shapes {score_shape} and {label_shape}")
        lengths["image_scores"], lengths["labels"] = score_shape[0], label_shape[0]
    if cls_names is not None:
        lengths["cls_names"] = len(cls_names)
    if len(set(lengths.values())) > 1:
        raise ValueError("inputs disagree on the number of images: "
                         + ", ".join(f"{name} has {n}" for name, n in lengths.items()))
    if pixel_keys:
        check_binary("gt_masks", gt_masks)
    if image_keys:
        check_binary("labels", labels)
