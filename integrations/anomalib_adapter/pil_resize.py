"""Pillow's 8-bit resize, value for value, as a torch computation (and a torchvision `Resize` for anomalib).

This repository's input is `dataset.read_image`: the decoded image resized to S x S with
`PIL.Image.resize(..., BICUBIC)` (uint8 in, uint8 out), and its masks `dataset.resize_mask`:
0/255 resized with `BILINEAR`, then `> 0.5` of 255. anomalib reads images as float [0, 1] at
their own size and resizes tensors; torchvision's bicubic differs from Pillow's by up to a
grey level (Pillow rounds fixed-point sums, twice), which moves maps by far more than 1e-5.
So the resize is re-done here as Pillow does it (libImaging/Resample.c, Pillow >= 4.3):

* per axis, `precompute_coeffs`: each output pixel's source window and filter weights in
  double, normalised to sum 1, then rounded to 22-bit fixed point (`normalize_coeffs_8bpc`);
* the horizontal pass first, then the vertical one (only where the size changes), each
  summing `pixel * weight` from `1 << 21` and keeping `clip8(sum >> 22)`.

Every sum is an integer below 2**53, so a float64 matrix product gives it exactly (any
summation order) and the graph exports to ONNX with standard operators. An input already
at the target size passes unchanged, as Pillow returns a copy.
"""
from __future__ import annotations

import functools

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import InterpolationMode, Resize

PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed-point precision for 8-bit images


def _bicubic(x: float) -> float:
    a = -0.5  # Pillow's bicubic (Keys, a = -0.5)
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    if x < 2.0:
        return (((x - 5) * x + 8) * x - 4) * a
    return 0.0


def _bilinear(x: float) -> float:
    x = abs(x)
    return 1.0 - x if x < 1.0 else 0.0


FILTERS = {"bicubic": (_bicubic, 2.0), "bilinear": (_bilinear, 1.0)}


@functools.lru_cache(maxsize=64)
def pil_coefficients(in_size: int, out_size: int, filter_name: str) -> np.ndarray:
    """`[out_size, in_size]` int64 fixed-point weights of Pillow's resample along one axis (box = whole axis)."""
    function, support = FILTERS[filter_name]
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = support * filterscale
    matrix = np.zeros((out_size, in_size), dtype=np.int64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        ss = 1.0 / filterscale
        xmin = max(int(center - support + 0.5), 0)  # C's (int) truncates; negatives clamp to 0 either way
        xmax = min(int(center + support + 0.5), in_size) - xmin
        weights = [function((x + xmin - center + 0.5) * ss) for x in range(xmax)]
        total = 0.0
        for w in weights:
            total += w
        if total != 0.0:
            weights = [w / total for w in weights]
        for x, w in enumerate(weights):
            fixed = w * (1 << PRECISION_BITS)
            matrix[xx, xmin + x] = int(fixed - 0.5) if w < 0 else int(fixed + 0.5)  # truncation toward zero, as C
    return matrix


def fixed_point_weights(in_size: int, out_size: int, filter_name: str, device=None) -> torch.Tensor:
    """`pil_coefficients` as a float64 tensor (its integers are exact in float64)."""
    return torch.from_numpy(pil_coefficients(in_size, out_size, filter_name)).to(device, torch.float64)


def _resample_axis(values: torch.Tensor, weights: torch.Tensor, axis: int) -> torch.Tensor:
    """One Pillow pass over float64 integer values `[..., H, W]` along axis -1 (horizontal) or -2 (vertical)."""
    sums = values @ weights.T if axis == -1 else weights @ values
    sums = sums + float(1 << (PRECISION_BITS - 1))
    return torch.clamp(torch.floor(sums / float(1 << PRECISION_BITS)), 0.0, 255.0)


def pil_resize_values(values: torch.Tensor, size: int, filter_name: str, horizontal: torch.Tensor | None = None,
                      vertical: torch.Tensor | None = None) -> torch.Tensor:
    """Integer grey levels 0..255 `[..., H, W]` (any dtype) resized to `size x size` as Pillow does, float64.
    horizontal, vertical: the weights for this input size, when already made (`PILResize.prepare`)."""
    height, width = int(values.shape[-2]), int(values.shape[-1])
    values = values.to(torch.float64)
    if width != size:
        if horizontal is None:
            horizontal = fixed_point_weights(width, size, filter_name, values.device)
        values = _resample_axis(values, horizontal, -1)
    if height != size:
        if vertical is None:
            vertical = fixed_point_weights(height, size, filter_name, values.device)
        values = _resample_axis(values, vertical, -2)
    return values


def resize_unit_image(image: torch.Tensor, size: int, horizontal: torch.Tensor | None = None,
                      vertical: torch.Tensor | None = None) -> torch.Tensor:
    """A float image in [0, 1] that holds uint8 levels (`level / 255`, as anomalib reads files) -> the same
    levels after `dataset.resize_image`'s Pillow bicubic resize, as float32 `level / 255`."""
    if int(image.shape[-2]) == size and int(image.shape[-1]) == size:
        return image
    levels = torch.round(image.to(torch.float32) * 255.0)
    return pil_resize_values(levels, size, "bicubic", horizontal, vertical).to(torch.float32).div(255.0)


def resize_binary_mask(mask: torch.Tensor, size: int) -> torch.Tensor:
    """A 0/1 mask -> `dataset.resize_mask`'s result: 0/255, Pillow bilinear, `/ 255 > 0.5`, as uint8 0/1."""
    if int(mask.shape[-2]) == size and int(mask.shape[-1]) == size:
        return mask
    resized = pil_resize_values((mask > 0).to(torch.float64) * 255.0, size, "bilinear")
    return (resized.to(torch.float32) / 255.0 > 0.5).to(torch.uint8)


class PILResize(Resize):
    """`Resize((S, S))` as this repository resizes: Pillow's bicubic for images, bilinear + `> 0.5` for masks.

    A torchvision `Resize` subclass, so that anomalib's datamodules find it in the model's
    pre-processor and resize each image before batching (anomalib otherwise resizes a batch of
    mixed sizes with torchvision's bilinear). `antialias` and `interpolation` are recorded for
    anomalib's consistency checks; the computation is always Pillow's.
    """

    def __init__(self, size: int) -> None:
        super().__init__((int(size), int(size)), interpolation=InterpolationMode.BICUBIC, antialias=True)
        self.square = int(size)

    def transform(self, inpt, params):  # torchvision >= 0.21 dispatch hook
        if isinstance(inpt, tv_tensors.Mask):
            return tv_tensors.wrap(resize_binary_mask(inpt.as_subclass(torch.Tensor), self.square), like=inpt)
        if isinstance(inpt, tv_tensors.Image) or type(inpt) is torch.Tensor:
            plain = inpt.as_subclass(torch.Tensor) if isinstance(inpt, tv_tensors.Image) else inpt
            if not plain.is_floating_point():
                raise TypeError(f"PILResize expects float images in [0, 1] (as anomalib reads them), got {plain.dtype}")
            resized = resize_unit_image(plain, self.square, *self._prepared(plain))
            return tv_tensors.wrap(resized, like=inpt) if isinstance(inpt, tv_tensors.Image) else resized
        raise TypeError(f"PILResize resizes images and masks only, not {type(inpt).__name__}")

    def prepare(self, height: int, width: int) -> None:
        """Hold the bicubic weights for `height x width` inputs as buffers, so that a graph traced at that size
        takes them as constants instead of tracing how Pillow makes them."""
        self.register_buffer("horizontal", fixed_point_weights(width, self.square, "bicubic"), persistent=False)
        self.register_buffer("vertical", fixed_point_weights(height, self.square, "bicubic"), persistent=False)

    def _prepared(self, image: torch.Tensor) -> tuple:
        horizontal, vertical = getattr(self, "horizontal", None), getattr(self, "vertical", None)
        if horizontal is None or vertical is None or horizontal.shape[1] != image.shape[-1] \
                or vertical.shape[1] != image.shape[-2]:
            return None, None
        return horizontal.to(image.device), vertical.to(image.device)

    def extra_repr(self) -> str:
        return f"size={self.square}, images: Pillow bicubic, masks: Pillow bilinear > 0.5"
