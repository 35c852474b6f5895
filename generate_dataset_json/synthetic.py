"""A small synthetic dataset in the MVTec AD layout, for the smoke run, tests and
benchmarks: the pipeline can be exercised end to end without downloading anything.

Each class has its own texture (smooth colour noise plus stripes of a class-specific
period and angle); anomalous images carry painted defects (blobs or scratches in a
colour far from the texture), and each mask is exactly the set of painted pixels.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

import numpy as np
from PIL import Image, ImageDraw

from .meta import build_meta, write_meta

Size = tuple[int, int]
SizeSpec = Union[int, Sequence[int], Sequence[Sequence[int]]]

DEFECT_KINDS = ("blob", "scratch")
FORMATS = {"png": ".png", "jpg": ".jpg", "jpeg": ".jpg", "bmp": ".bmp", "tif": ".tif", "tiff": ".tif"}

# Defect colours are picked from these, as far as possible from the class's texture
# colour, so that a defect is plainly visible and its pixels are exactly the mask's.
_PALETTE = np.array([[0, 0, 0], [255, 255, 255], [220, 30, 30], [30, 200, 40], [40, 60, 230],
                     [240, 220, 20], [230, 30, 220], [20, 220, 230]], dtype=np.float32)


@dataclass(frozen=True)
class _Style:
    """What makes one class's texture recognisable."""

    colour: np.ndarray       # mean RGB
    smooth_amplitude: float  # strength of the low-frequency colour noise
    grid: int                # cells of that noise across the image
    period: float            # stripe period, as a fraction of the image width
    angle: float             # stripe direction, radians
    stripe_amplitude: float
    defect_colour: np.ndarray


def make_synthetic_dataset(root: str | os.PathLike, *, classes: Sequence[str] = ("bottle_synth", "tile_synth"),
                           n_normal: int = 3, n_anomalous: int = 3, image_size: SizeSpec = (96, 96),
                           seed: int = 0, train_normal: int = 0, image_format: str = "png") -> dict:
    """Writes an MVTec-layout dataset under root: {cls}/test/good/*.png, {cls}/test/{defect}/*.png,
    {cls}/ground_truth/{defect}/{stem}_mask.png, optional {cls}/train/good; writes root/meta.json
    (via the same build_meta('mvtec', root) the command uses) and returns the meta dict.

    `image_size` is an int (square), one (W, H) pair, or a list of sizes that the images
    of each class cycle through (to test variable sizes). Defect types are `blob` and
    `scratch`, alternating. The same arguments always give the same bytes (PNG/BMP;
    JPEG is lossy, so painted edges blur slightly past the mask).
    `root` should be new or empty: anything else in it is read as part of the dataset.
    """
    sizes = _parse_sizes(image_size)
    extension = FORMATS.get(image_format.lower())
    if extension is None:
        raise ValueError(f"image_format must be one of {', '.join(FORMATS)}, got {image_format!r}")
    if not classes or min(n_normal, n_anomalous, train_normal) < 0 or n_normal + n_anomalous == 0:
        raise ValueError("need at least one class, non-negative counts and at least one test image per class")
    root = Path(root)
    with _Writer() as writer:
        for index, cls in enumerate(classes):
            _write_class(writer, root / cls, np.random.default_rng([seed, index]), sizes, extension,
                         n_normal, n_anomalous, train_normal)
    meta = build_meta("mvtec", root)
    write_meta(meta, root / "meta.json")
    return meta


def _parse_sizes(image_size: SizeSpec) -> list[Size]:
    """An int, a (W, H) pair, or a list of either, as a list of (W, H) pairs."""
    if isinstance(image_size, (int, np.integer)):
        sizes = [(int(image_size), int(image_size))]
    elif len(image_size) == 2 and all(isinstance(v, (int, np.integer)) for v in image_size):
        sizes = [(int(image_size[0]), int(image_size[1]))]
    else:
        sizes = [_parse_sizes(size)[0] for size in image_size]
    if not sizes or any(w < 2 or h < 2 for w, h in sizes):
        raise ValueError(f"image sizes must be at least 2x2 pixels, got {image_size!r}")
    return sizes


def _write_class(writer: _Writer, class_dir: Path, rng: np.random.Generator, sizes: list[Size], extension: str,
                 n_normal: int, n_anomalous: int, train_normal: int) -> None:
    """One class: train/good, test/good, then the anomalous images spread over the
    defect kinds, each with its mask in ground_truth/."""
    style = _class_style(rng)
    size_cycle = iter(sizes * (train_normal + n_normal + n_anomalous))
    for split, count in (("train", train_normal), ("test", n_normal)):
        for i in range(count):
            writer.save(_texture(rng, style, next(size_cycle)), class_dir / split / "good" / f"{i:03d}{extension}")
    for i in range(n_anomalous):
        kind = DEFECT_KINDS[i % len(DEFECT_KINDS)]
        stem = f"{i // len(DEFECT_KINDS):03d}"
        image = _texture(rng, style, next(size_cycle))
        mask = _defect_mask(rng, kind, image.shape[1], image.shape[0])
        image[mask] = np.clip(style.defect_colour + rng.normal(0, 6, (int(mask.sum()), 3)), 0, 255).astype(np.uint8)
        writer.save(image, class_dir / "test" / kind / f"{stem}{extension}")
        writer.save(mask.astype(np.uint8) * 255, class_dir / "ground_truth" / kind / f"{stem}_mask.png")


class _Writer:
    """Saves images on a thread pool: encoding (PNG above all) dominates the time for
    large images and releases the GIL, while the generating thread keeps drawing from
    the random stream in one order, so the files stay the same. At most two images per
    worker wait in memory."""

    def __init__(self) -> None:
        workers = min(16, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
        self._pool = ThreadPoolExecutor(max_workers=workers)
        self._pending: deque[Future] = deque()
        self._limit = 2 * workers

    def save(self, pixels: np.ndarray, path: Path) -> None:
        while len(self._pending) >= self._limit:
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(_save, pixels, path))

    def __enter__(self) -> _Writer:
        return self

    def __exit__(self, *exc_info) -> None:
        try:
            while self._pending:
                self._pending.popleft().result()  # re-raises a failed save
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)


def _save(pixels: np.ndarray, path: Path) -> None:
    """Saves with fast PNG compression: the generator is used in timed smoke runs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(pixels)
    image.save(path, compress_level=1) if path.suffix == ".png" else image.save(path)


def _class_style(rng: np.random.Generator) -> _Style:
    colour = rng.uniform(70, 185, 3).astype(np.float32)
    distances = np.linalg.norm(_PALETTE - colour, axis=1)
    return _Style(colour=colour, smooth_amplitude=float(rng.uniform(10, 25)), grid=int(rng.integers(3, 8)),
                  period=float(rng.uniform(0.04, 0.2)), angle=float(rng.uniform(0, np.pi)),
                  stripe_amplitude=float(rng.uniform(5, 20)), defect_colour=_PALETTE[np.argmax(distances)])


def _texture(rng: np.random.Generator, style: _Style, size: Size) -> np.ndarray:
    """An RGB uint8 texture [H, W, 3]: the class colour, smooth colour noise (a coarse
    random grid interpolated up), stripes with a random phase, and fine noise. Built
    from separable pieces in float32, because benchmarks ask for hundreds of
    megapixel images."""
    width, height = size
    coarse = rng.standard_normal((3, style.grid, style.grid), dtype=np.float32) * style.smooth_amplitude
    image = _interpolate(_interpolate(coarse, 1, height), 2, width)  # [3, H, W]: contiguous steps
    image += style.colour[:, None, None]
    # sin(a + b) = sin a cos b + cos a sin b: stripes from two 1-D waves
    wavenumber, phase = 2 * np.pi / (style.period * width), rng.uniform(0, 2 * np.pi)
    along_x = (wavenumber * np.cos(style.angle) * np.arange(width) + phase).astype(np.float32)
    along_y = (wavenumber * np.sin(style.angle) * np.arange(height)).astype(np.float32)
    stripes = np.outer(np.sin(along_y), np.cos(along_x))
    stripes += np.outer(np.cos(along_y), np.sin(along_x))
    stripes *= style.stripe_amplitude
    image += stripes
    # fine noise, uniform in [-7.5, 7.5]: random bytes are far cheaper than normals
    image += np.frombuffer(rng.bytes(image.size), dtype=np.uint8).reshape(image.shape) & 15
    image -= 7.5
    np.clip(image, 0, 255, out=image)
    return np.ascontiguousarray(image.astype(np.uint8).transpose(1, 2, 0))


def _interpolate(values: np.ndarray, axis: int, length: int) -> np.ndarray:
    """`values` resampled along `axis` to `length` samples, each a smoothstep blend of
    its two neighbouring grid points (so the noise has no visible creases). Two
    gathers instead of a matrix product: BLAS threads would fight numpy for the cores."""
    grid = values.shape[axis]
    position = (np.arange(length, dtype=np.float32) + 0.5) * ((grid - 1) / length)
    left = np.minimum(position.astype(np.intp), grid - 2)
    fraction = position - left
    weight = fraction * fraction * (3 - 2 * fraction)
    shape = [1] * values.ndim
    shape[axis] = length
    weight = weight.reshape(shape)
    blended = np.take(values, left, axis=axis) * (1 - weight)
    blended += np.take(values, left + 1, axis=axis) * weight
    return blended


def _defect_mask(rng: np.random.Generator, kind: str, width: int, height: int) -> np.ndarray:
    """A boolean [H, W] mask of 1 to 3 blobs (ellipses) or scratches (thick lines),
    never empty, kept away from the border so a centre crop does not cut it off."""
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    scale = min(width, height)
    for _ in range(int(rng.integers(1, 4))):
        cx, cy = rng.uniform(0.25, 0.75) * width, rng.uniform(0.25, 0.75) * height
        if kind == "blob":
            rx, ry = rng.uniform(0.04, 0.12, 2) * scale + 0.5
            draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=255)
        else:
            length, angle = rng.uniform(0.15, 0.4) * scale, rng.uniform(0, np.pi)
            dx, dy = length / 2 * np.cos(angle), length / 2 * np.sin(angle)
            draw.line([cx - dx, cy - dy, cx + dx, cy + dy], fill=255, width=max(1, round(0.02 * scale)))
    mask = np.asarray(canvas) > 0
    if not mask.any():  # sub-pixel shapes on tiny images: keep at least the centre pixel
        mask[height // 2, width // 2] = True
    return mask
