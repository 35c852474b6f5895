"""Image files as the model's uint8 input, with NumPy and PIL only (no torch).

The one implementation of image reading: `dataset.py` wraps it in tensors, and `predict.py
--onnx` and `demo.py` use it on a machine without PyTorch. The steps, which an exported model's user can copy (docs/DEPLOY.md):

    image = PIL.Image.open(path)                  # palette / 16-bit / float modes first go to 8 bit (below)
    image = image.resize((S, S), PIL.Image.BICUBIC).convert("RGB")
    pixels = np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)   # [3, S, S] uint8 RGB
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from utils import DatasetError


def open_image(path: str | Path) -> Image.Image:
    """The decoded file, with the dataset's error message when it is not a readable image."""
    try:
        image = Image.open(path)
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise DatasetError(f"cannot read image {path}: {error}. Re-download or remove it from the meta file") \
            from error
    return image


def to_8bit_mode(image: Image.Image) -> Image.Image:
    """Modes PIL would resize badly (palette, 1-bit, 16/32-bit integer, float) brought to 8-bit ones first.

    Palettes and 1-bit to RGB(A) (PIL resizes them with nearest neighbour), integers divided
    by 257, floats clipped."""
    if image.mode in ("P", "PA", "1"):
        return image.convert("RGBA" if image.mode == "PA" or "transparency" in image.info else "RGB")
    if image.mode.startswith("I;16") or image.mode == "I":
        values = np.asarray(image, dtype=np.float64) / 257.0
        return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")
    if image.mode == "F":
        return Image.fromarray(np.clip(np.rint(np.asarray(image)), 0, 255).astype(np.uint8), mode="L")
    return image


def resize_to_input(image: Image.Image, size: int) -> np.ndarray:
    """Resize((S, S), bicubic) -> RGB -> `[3, S, S]` uint8: the pixels every model and export sees."""
    image = to_8bit_mode(image).resize((size, size), Image.BICUBIC).convert("RGB")
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1))


def read_image_array(path: str | Path, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """An image file as the model's uint8 `[3, S, S]` input, and its original (width, height)."""
    image = to_8bit_mode(open_image(path))
    return resize_to_input(image, size), image.size
