"""Training-time augmentation of VCP-CLIP (SPEC_VCP §6): the mosaic and the albumentations pipeline.

Both act on the decoded image and its binary mask at their original size, before the
resize of SPEC_VCP §8, as in the reference:

* mosaic (`--aug_rate`): with that probability a sample becomes a 2×2 mosaic of four
  anomalous images of its class, drawn at random (with replacement), each pasted at
  offsets of the first one's size (other sizes overlap or are cut, as in the reference),
  their masks pasted the same way. The reference read them from hard-coded MVTec AD
  paths; here they come from the class's anomalous items in the meta file, for any dataset.
  APRIL-GAN's mosaic (`mosaic_pool="any_defect_type"`, SPEC_APRILGAN §6) draws each of the four
  from a random defect type of the class, `good` included, then a random image of that type.
  AdaCLIP's (`mosaic_pool="distinct_items"`, SPEC_ADACLIP §7) draws four different items of the class.
* albumentations (on unless `--no_albumentations`): Rotate(30°, p .5), RandomRotate90
  (p .5), RandomBrightnessContrast (p .5), GaussNoise (p .5), one of Blur(3) / ColorJitter /
  GaussianBlur (p .5); the rotations move the mask too.

Randomness: Python's `random` for the mosaic and albumentations' own generator, both
seeded from torch's per-process seed, which DataLoader derives from `--seed` for every
worker: a run is repeatable with the same seed and number of workers.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
from PIL import Image


def albumentations_pipeline(seed: int | None = None):
    """The reference's pipeline (its parameters; the library's defaults for the rest)."""
    try:
        import albumentations as A
    except ImportError:
        raise ImportError("VCP-CLIP's training augmentation needs albumentations (pip install -r requirements.txt), "
                          "or pass --no_albumentations to train without it") from None

    return A.Compose([
        A.Rotate(limit=30, p=0.5),
        A.RandomRotate90(p=0.5),
        A.RandomBrightnessContrast(p=0.5),
        A.GaussNoise(p=0.5),
        A.OneOf([A.Blur(blur_limit=3, p=0.5), A.ColorJitter(p=0.5), A.GaussianBlur(p=0.5)], p=0.5),
    ], is_check_shapes=False, seed=seed)


def mosaic(images: list[Image.Image], masks: list[np.ndarray]) -> tuple[Image.Image, np.ndarray]:
    """Four images (and boolean masks) pasted 2×2 at offsets of the first image's size."""
    width, height = images[0].size
    canvas = Image.new("RGB", (2 * width, 2 * height))
    mask_canvas = Image.new("L", (2 * width, 2 * height))
    for i, (image, mask) in enumerate(zip(images, masks)):
        offset = ((i % 2) * width, (i // 2) * height)
        canvas.paste(image, offset)
        mask_canvas.paste(Image.fromarray(mask.astype(np.uint8) * 255, mode="L"), offset)
    return canvas, np.asarray(mask_canvas) > 0


MOSAIC_POOLS = ("anomalous", "any_defect_type", "distinct_items")


@dataclass
class Augmentation:
    mosaic_rate: float = -1.0
    albumentations: bool = False
    # Where the mosaic's four images come from: "anomalous" (VCP-CLIP: the class's anomalous items) or
    # "any_defect_type" (APRIL-GAN: a random defect type of the class, `good` included, then a random image of it)
    # or "distinct_items" (AdaCLIP: four different items of the class, `random.sample`).
    mosaic_pool: str = "anomalous"
    _pipeline: object = field(default=None, init=False, repr=False, compare=False)
    _seeded_for: int | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.mosaic_pool not in MOSAIC_POOLS:
            raise ValueError(f"mosaic_pool must be one of {', '.join(MOSAIC_POOLS)}, got {self.mosaic_pool!r}")

    @property
    def active(self) -> bool:
        return self.mosaic_rate > 0 or self.albumentations

    def wants_mosaic(self) -> bool:
        """Drawn for every sample, as the reference does (so the random stream is the same shape)."""
        return random.random() < self.mosaic_rate

    def _get_pipeline(self):
        import torch

        seed = torch.initial_seed() % 2**32  # differs per DataLoader worker, derived from --seed
        if self._pipeline is None or self._seeded_for != seed:
            self._pipeline = albumentations_pipeline(seed)
            self._seeded_for = seed
        return self._pipeline

    def photometric(self, image: Image.Image, mask: np.ndarray) -> tuple[Image.Image, np.ndarray]:
        """The albumentations pipeline on the image as decoded (its own mode) and its mask (0/255)."""
        if not self.albumentations:
            return image, mask
        result = self._get_pipeline()(image=np.asarray(image), mask=mask.astype(np.uint8) * 255)
        return Image.fromarray(result["image"]), np.asarray(result["mask"]) > 127
