"""Image files as the model's uint8 input, with NumPy and PIL only (no torch): the one implementation that
`dataset.py`, `predict.py` and `demo.py` read images with (docs/INPUTS.md).

`dataset.py` wraps it in tensors; `predict.py --onnx` and `demo.py` use it on a machine without PyTorch.
The steps, which an exported model's user can copy (docs/DEPLOY.md):

    image = PIL.Image.open(path)                  # palette / 16-bit / float modes first go to 8 bit (below)
    image = image.resize((S, S), PIL.Image.BICUBIC).convert("RGB")
    pixels = np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)   # [3, S, S] uint8 RGB

Modes PIL would resize badly or that hold more than 8 bits are brought to 8 bit first:

* palette (`P`, `PA`) and 1-bit → RGB(A) (PIL resizes them with nearest-neighbour interpolation);
* 16-bit integer (`I;16*`, and `I` holding values in [0, 65535]) → divided by 257 (65535 → 255, the
  dtype's maximum to 8 bit's); `I` values outside [0, 65535] are refused;
* float (`F`, e.g. a float32 TIFF): values in [0, 1] are scaled by 255, values in [0, 255] taken as
  they are; any other range (or NaN / infinity) is refused naming the file — guessing would give a
  silently black or saturated image.

Images of more than `max_pixels` pixels (default `DEFAULT_MAX_PIXELS`, `--max_image_pixels`) are
refused before decoding, with the flag that raises the limit.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from utils import DatasetError

DEFAULT_MAX_PIXELS = 100_000_000  # 10,000 x 10,000; decoding one such RGB image takes 300 MB
MAX_PIXELS_HELP = (f"refuse images of more pixels than this (default {DEFAULT_MAX_PIXELS:,}; 0: no limit); "
                   "checked from the file's header, before decoding")
READ_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)
# This module checks the size itself (one message, one flag); PIL's own check would warn or raise first.
Image.MAX_IMAGE_PIXELS = None
_limit = {"max_pixels": DEFAULT_MAX_PIXELS}


def current_max_pixels() -> int:
    """The process-wide limit in force (0: none)."""
    return _limit["max_pixels"]


def set_max_pixels(max_pixels: int | None) -> None:
    """The process-wide limit (`--max_image_pixels`; 0: none); None keeps the current one."""
    if max_pixels is not None:
        _limit["max_pixels"] = int(max_pixels)


def _check_pixels(image: Image.Image, path, max_pixels: int | None) -> None:
    limit = _limit["max_pixels"] if max_pixels is None else max_pixels
    width, height = image.size
    if limit and width * height > limit:
        raise DatasetError(f"cannot read image {path}: {width}x{height} is {width * height:,} pixels, more than "
                           f"the limit of {limit:,}; if it is meant to be read, pass --max_image_pixels "
                           f"{width * height} (or 0 for no limit), else shrink it or remove it from the input")


def _unreadable(path, error) -> DatasetError:
    return DatasetError(f"cannot read image {path}: {error}. Re-download or remove it from the meta file")


def image_size(path: str | Path, max_pixels: int | None = None) -> tuple[int, int]:
    """(width, height) from the header (no pixel decoding), with the errors `open_image` gives."""
    try:
        with Image.open(path) as image:
            _check_pixels(image, path, max_pixels)
            return image.size
    except READ_ERRORS as error:
        if isinstance(error, DatasetError):
            raise
        raise _unreadable(path, error) from error


def open_image(path: str | Path, max_pixels: int | None = None) -> Image.Image:
    """The decoded file, with the dataset's error message when it is not a readable image (or too large)."""
    try:
        image = Image.open(path)
        _check_pixels(image, path, max_pixels)
        image.load()
    except READ_ERRORS as error:
        if isinstance(error, DatasetError):
            raise
        raise _unreadable(path, error) from error
    return image


def _float_to_8bit(values: np.ndarray, path) -> np.ndarray:
    """A float image's values as 8 bit: [0, 1] x 255, [0, 255] as they are; anything else refused."""
    where = path if path is not None else "a float image"
    if not np.isfinite(values).all():
        raise DatasetError(f"cannot read image {where}: a float image holding NaN or infinite values; convert it "
                           "to an 8- or 16-bit image")
    low, high = float(values.min(initial=0.0)), float(values.max(initial=0.0))
    if low >= 0 and high <= 1:
        values = values * 255.0
    elif low < 0 or high > 255:
        raise DatasetError(f"cannot read image {where}: a float image with values in [{low:g}, {high:g}], neither "
                           "[0, 1] nor [0, 255], so its brightness is unknown; scale it into one of those ranges or "
                           "convert it to an 8- or 16-bit image")
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def to_8bit_mode(image: Image.Image, path=None) -> Image.Image:
    """Modes PIL would resize badly (palette, 1-bit, 16/32-bit integer, float) brought to 8-bit ones first
    (module docstring); `path` names the file in a refusal."""
    if image.mode in ("P", "PA", "1"):
        return image.convert("RGBA" if image.mode == "PA" or "transparency" in image.info else "RGB")
    if image.mode.startswith("I;16") or image.mode == "I":
        values = np.asarray(image, dtype=np.float64)
        if image.mode == "I" and values.size and (values.min() < 0 or values.max() > 65535):
            raise DatasetError(f"cannot read image {path or 'a 32-bit integer image'}: 32-bit integer values in "
                               f"[{values.min():g}, {values.max():g}], beyond 16 bit, so their brightness is "
                               "unknown; convert it to an 8- or 16-bit image")
        return Image.fromarray(np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8), mode="L")
    if image.mode == "F":
        return Image.fromarray(_float_to_8bit(np.asarray(image, dtype=np.float64), path), mode="L")
    return image


def resize_to_input(image: Image.Image, size: int) -> np.ndarray:
    """Resize((S, S), bicubic) -> RGB -> `[3, S, S]` uint8: the pixels every model and export sees."""
    image = to_8bit_mode(image).resize((size, size), Image.BICUBIC).convert("RGB")
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1))


def read_8bit(path: str | Path, max_pixels: int | None = None) -> Image.Image:
    """An image file decoded and brought to an 8-bit mode (the model's pixels before the resize)."""
    return to_8bit_mode(open_image(path, max_pixels), path)


def read_image_array(path: str | Path, size: int, max_pixels: int | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """An image file as the model's uint8 `[3, S, S]` input, and its original (width, height)."""
    image = read_8bit(path, max_pixels)
    return resize_to_input(image, size), image.size
