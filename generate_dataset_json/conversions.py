"""PNG masks from ground truth that PIL cannot read as a mask, or reads wrongly.

Three releases need it (the `--convert_masks` flag of their commands):

- CrackForest (Road) ships MATLAB files, `groundTruth/{stem}.mat`, whose struct
  `groundTruth` holds `Segmentation`: 1 for background, 2 for crack. The mask is
  `Segmentation == 2`; any other value is an error, never guessed.
- RSDD ships its ground truth as JPEG (`GroundTruth/{stem}.jpg`): compression leaves
  grey ringing around every defect, which a "any non-zero pixel" rule would count as
  defect. The mask is grey value > 127 (the midpoint of the 0/255 the annotators drew).
- BSData (BSD) ships labelme JSON polygons (`label/{stem}.json`). The mask is the filled
  polygons (and rectangles or circles, if any), drawn as labelme draws them; other shape
  types are an error.

Each writes 0/255 single-channel PNG masks named `{image stem}.png` into a folder
beside the source, named after it plus `_png` (`groundTruth_png/`, `GroundTruth_png/`,
`label_png/`), checks each mask against its image's size, and never replaces a PNG that
is already there (delete the folder to convert again). Files are written atomically, so
an interrupted run leaves no truncated mask.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, UnidentifiedImageError

from .files import Problems, listing, relative

CONVERTED_SUFFIX = "_png"
JPEG_THRESHOLD = 127  # RSDD: grey > 127 is defect
CRACK_LABEL, BACKGROUND_LABEL = 2, 1  # CrackForest's Segmentation values


def converted_dir(source: Path) -> Path:
    """Where the PNG masks made from `source` go: a sibling folder named `<source>_png`."""
    return source.with_name(source.name + CONVERTED_SUFFIX)


def image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the file's header, or None when PIL cannot read it."""
    try:
        with Image.open(path) as image:
            return image.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return None


def mask_has_defect(path: Path) -> bool:
    """Whether a mask marks any pixel, by the rule the data loader applies (dataset.py's
    `anomalous_pixels`, restated here so this package does not import torch): single-
    channel and palette masks, any non-zero value; a mask with an alpha channel that is
    not fully opaque, its non-transparent pixels; other colour masks, any non-black pixel
    (grey value > 0). Raises OSError or ValueError when the file cannot be read."""
    with Image.open(path) as mask:
        mask.load()
        if mask.mode in ("L", "P", "1", "F") or mask.mode.startswith("I"):
            return bool((np.asarray(mask) > 0).any())
        if mask.mode == "PA":
            return bool((np.asarray(mask)[..., 0] > 0).any())
        if mask.mode in ("LA", "RGBA", "La", "RGBa"):
            alpha = np.asarray(mask.getchannel("A"))
            if alpha.min() < 255:
                return bool((alpha > 0).any())
        return bool((np.asarray(mask.convert("L")) > 0).any())


def save_mask(defect: np.ndarray, path: Path) -> None:
    """Writes a boolean [H, W] array as a 0/255 PNG, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".png", dir=path.parent)
    os.close(handle)
    try:
        Image.fromarray(np.where(defect, 255, 0).astype(np.uint8), mode="L").save(temp, format="PNG")
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


class MaskConversion:
    """Converts the annotation files of one folder, one `convert(annotation, (w, h))`
    call per file whose image exists, and says what it did in one line."""

    def __init__(self, source: Path, images_by_stem: dict[str, Path], root: Path, problems: Problems,
                 description: str) -> None:
        self.source, self.out = source, converted_dir(source)
        self.images_by_stem, self.root, self.problems = images_by_stem, root, problems
        self.description = description
        self.written, self.kept, self.empty, self.no_image = 0, 0, [], []

    def run(self, annotations: list[Path], convert: Callable[[Path, tuple[int, int]], np.ndarray | None]) -> str:
        for annotation in annotations:
            target = self.out / f"{annotation.stem}.png"
            image = self.images_by_stem.get(annotation.stem)
            if image is None:
                self.no_image.append(relative(annotation, self.root))
                continue
            if target.exists():
                self.kept += 1
                continue
            size = image_size(image)
            if size is None:
                self.problems.error(f"cannot read image {relative(image, self.root)}, so its mask cannot be "
                                    "checked; re-download it")
                continue
            defect = convert(annotation, size)
            if defect is None:  # the converter reported why
                continue
            if defect.shape != (size[1], size[0]):
                self.problems.error(f"{relative(annotation, self.root)} is {defect.shape[1]}x{defect.shape[0]} but "
                                    f"its image {relative(image, self.root)} is {size[0]}x{size[1]}; "
                                    "check that the two belong together")
                continue
            if not defect.any():
                self.empty.append(relative(target, self.root))
            save_mask(defect, target)
            self.written += 1
        return self._summary()

    def _summary(self) -> str:
        if self.no_image:
            self.problems.warn(f"{len(self.no_image)} annotation(s) have no image and were not converted: "
                               f"{listing(self.no_image)}")
        if self.empty:
            self.problems.warn(f"{len(self.empty)} converted mask(s) mark no pixel, so those images count as "
                               f"anomalous without any defect pixel: {listing(self.empty)}")
        kept = f", {self.kept} already there and kept (delete the folder to convert again)" if self.kept else ""
        return (f"{relative(self.out, self.root)}/: {self.written} mask(s) written from "
                f"{relative(self.source, self.root)}/ ({self.description}){kept}")


# --------------------------------------------------------------------------- the three formats

def crackforest_mask(path: Path, problems: Problems, root: Path) -> np.ndarray | None:
    """CrackForest's `groundTruth.Segmentation == 2`, or None (with an error) when the file
    is not that struct or holds other labels."""
    from scipy.io import loadmat  # only this format needs scipy

    where = relative(path, root)
    try:
        content = loadmat(path, squeeze_me=True, struct_as_record=False)
    except (ValueError, OSError, NotImplementedError) as error:
        problems.error(f"cannot read {where} as a MATLAB file ({error}); re-download it")
        return None
    truth = content.get("groundTruth")
    segmentation = getattr(truth, "Segmentation", None)
    if segmentation is None or np.ndim(segmentation) != 2:
        problems.error(f"{where} holds no groundTruth.Segmentation matrix (one annotation per image, as "
                       "CrackForest's files do); convert it yourself into a PNG mask")
        return None
    labels = set(np.unique(segmentation).tolist())
    if not labels <= {BACKGROUND_LABEL, CRACK_LABEL}:
        problems.error(f"{where}: Segmentation holds the values {sorted(labels)}, expected only "
                       f"{BACKGROUND_LABEL} (background) and {CRACK_LABEL} (crack); convert it yourself")
        return None
    return np.asarray(segmentation) == CRACK_LABEL


def jpeg_mask(path: Path, problems: Problems, root: Path) -> np.ndarray | None:
    """A lossy 0/255 mask binarised at its midpoint: grey > 127 is defect."""
    try:
        with Image.open(path) as mask:
            return np.asarray(mask.convert("L")) > JPEG_THRESHOLD
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        problems.error(f"cannot read mask {relative(path, root)} ({error}); re-download it")
        return None


def labelme_mask(path: Path, size: tuple[int, int], problems: Problems, root: Path) -> np.ndarray | None:
    """The filled shapes of a labelme JSON file, drawn with PIL as labelme itself draws
    them (polygon outline and interior); None with an error for other shape types."""
    where = relative(path, root)
    try:
        annotation = json.loads(path.read_text(encoding="utf-8"))
        shapes = annotation["shapes"]
    except (ValueError, KeyError, TypeError, OSError) as error:
        problems.error(f"cannot read {where} as a labelme file with 'shapes' ({error}); re-download it")
        return None
    width, height = size
    declared = (annotation.get("imageWidth"), annotation.get("imageHeight"))
    if None not in declared and tuple(declared) != size:
        problems.error(f"{where} was drawn on a {declared[0]}x{declared[1]} image but its image is "
                       f"{width}x{height}; check that the two belong together")
        return None
    canvas = Image.new("L", size, 0)
    draw = ImageDraw.Draw(canvas)
    for number, shape in enumerate(shapes, start=1):
        kind = shape.get("shape_type") or "polygon"  # old labelme files leave it out
        points = [tuple(map(float, point)) for point in shape.get("points", [])]
        if kind == "polygon" and len(points) >= 3:
            draw.polygon(points, outline=255, fill=255)
        elif kind == "rectangle" and len(points) == 2:
            (x0, y0), (x1, y1) = points
            draw.rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], outline=255, fill=255)
        elif kind == "circle" and len(points) == 2:
            (cx, cy), (px, py) = points
            radius = float(np.hypot(px - cx, py - cy))
            draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], outline=255, fill=255)
        else:
            problems.error(f"{where}: shape {number} is a {kind} with {len(points)} point(s); only polygons, "
                           "rectangles and circles enclose an area, so no mask is written for this file")
            return None
    return np.asarray(canvas) > 0
