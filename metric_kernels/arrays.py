"""Array backends: the metric formulas are written once and run on numpy or torch arrays.

torch is imported only when a torch backend is made or a tensor is converted, so that
code scoring numpy arrays never loads it.
"""

from __future__ import annotations

import sys

import numpy as np


class NumpyOps:
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

    def last_index_of_max(self, values) -> int:
        return int(np.flatnonzero(values == values.max())[-1])


class TorchOps:
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

    def last_index_of_max(self, values) -> int:
        return int(self.torch.nonzero(values == values.max())[-1, 0])


def is_torch_tensor(value) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def to_numpy(value):
    if value is None:
        return None
    if is_torch_tensor(value):
        value = value.detach().cpu()
        return (value.float() if str(value.dtype) == "torch.bfloat16" else value).numpy()
    return np.asarray(value)


def as_bool(values: np.ndarray) -> np.ndarray:
    """0/1 values as booleans, without a copy for uint8."""
    if values.dtype == bool:
        return values
    if values.dtype in (np.uint8, np.int8):
        return values.view(bool)
    return values != 0


def float_maps(maps):
    """Maps as float32/float64 (numpy or torch); other dtypes are widened."""
    if is_torch_tensor(maps):
        import torch

        if maps.dtype in (torch.float32, torch.float64):
            return maps
        return maps.to(torch.float32 if maps.is_floating_point() else torch.float64)
    maps = np.asarray(maps)
    if maps.dtype in (np.float32, np.float64):
        return maps
    return maps.astype(np.float32 if np.issubdtype(maps.dtype, np.floating) else np.float64)


def choose_ops(anomaly_maps, backend: str):
    """The backend that scores these maps: torch for CUDA tensors under "auto", else numpy."""
    if backend not in ("auto", "numpy", "torch"):
        raise ValueError(f"backend must be 'auto', 'numpy' or 'torch', got {backend!r}")
    if backend == "numpy":
        return NumpyOps()
    if backend == "torch":
        device = anomaly_maps.device if is_torch_tensor(anomaly_maps) else "cpu"
        return TorchOps(device)
    if is_torch_tensor(anomaly_maps) and anomaly_maps.device.type != "cpu":
        return TorchOps(anomaly_maps.device)
    return NumpyOps()
