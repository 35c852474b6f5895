"""Datasets described by a `meta.json` (SPEC §10), preprocessed exactly as the reference (SPEC §7).

Bad input is caught here, before any model work: a missing or unreadable file, a mask
whose size differs from its image and an empty class each get an error or warning that
names the file and the fix. Image modes the reference mishandles are converted first
(documented in README.md, section 'Input images'):

* palette (`P`, `PA`) and 1-bit images → RGB before resizing (PIL would resize them with
  nearest-neighbour interpolation);
* 16-bit and 32-bit integer images → 8 bit by dividing by 257 (the full 16-bit range
  maps onto 0…255); float images are clipped to 0…255.

RGB, grayscale (`L`), `LA`, `RGBA` and `CMYK` are resized in their own mode and then
converted to RGB, as the reference does.
"""
from __future__ import annotations

import functools
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
META_FILE = "meta.json"
SPLITS = ("train", "test")
ITEM_KEYS = ("img_path", "mask_path", "cls_name", "specie_name", "anomaly")

log = logging.getLogger("vip2.dataset")  # under the scripts' logger, so warnings reach log.txt too
# meta.json labels accepted (True/False and 0.0/1.0 compare equal to 1/0, so they match too)
LABELS = {0: 0, 1: 1, "0": 0, "1": 1, "false": 0, "true": 1, "normal": 0, "anomaly": 1}


class DatasetError(ValueError):
    """Input data that cannot be used as it is; the message names the file and what to do."""

    def __init__(self, message: str):
        # Raised in a DataLoader worker, it comes back wrapped in the worker's traceback: keep the message.
        if "Original Traceback" in message:
            message = message.rstrip().splitlines()[-1].split(": ", 1)[-1]
        super().__init__(message)


@dataclass(frozen=True)
class Sample:
    img_path: str  # relative to the dataset root, as written in meta.json
    mask_path: str
    cls_name: str
    anomaly: int


def _regenerate_hint(root: Path) -> str:
    return f"regenerate it with `python -m generate_dataset_json NAME --root {root}`"


def read_meta(root: str | os.PathLike, meta_path: str | os.PathLike | None = None) -> dict:
    """Load and check `meta.json` (default: `ROOT/meta.json`)."""
    root = Path(root)
    path = Path(meta_path) if meta_path else root / META_FILE
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} is not a folder; check --data_path / --train_data_path")
    if not path.is_file():
        raise DatasetError(f"{path} not found: {_regenerate_hint(root)}")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetError(f"{path} is not valid JSON ({error}); {_regenerate_hint(root)}") from error
    if not isinstance(meta, dict) or not any(isinstance(meta.get(split), dict) for split in SPLITS):
        raise DatasetError(f"{path} must hold {{'train': {{class: [items]}}, 'test': {{...}}}}; "
                           f"{_regenerate_hint(root)}")
    return meta


def samples_from_meta(meta: dict, split: str, root: Path, meta_name: str = META_FILE) -> list[Sample]:
    """Flatten one split in class order (the keys of meta.json), skipping empty classes with a warning."""
    classes = meta.get(split)
    if not isinstance(classes, dict) or not classes:
        raise DatasetError(f"{root / meta_name} has no '{split}' split with classes; {_regenerate_hint(root)}")
    samples = []
    for cls_name, items in classes.items():
        if not items:
            log.warning("class %r of the %s split in %s has no images: skipped", cls_name, split, root / meta_name)
            continue
        for item in items:
            missing = [key for key in ("img_path", "anomaly") if key not in item]
            if missing:
                raise DatasetError(f"{root / meta_name}: an item of class {cls_name!r} lacks {missing}: {item}")
            samples.append(Sample(item["img_path"], item.get("mask_path") or "", str(item.get("cls_name", cls_name)),
                                  _label(item, root / meta_name)))
    if not samples:
        raise DatasetError(f"{root / meta_name}: the '{split}' split has no images at all")
    return samples


def _label(item: dict, meta_path: Path) -> int:
    value = item["anomaly"]
    key = value.strip().lower() if isinstance(value, str) else value
    if not isinstance(key, (str, int, float)) or key not in LABELS:
        raise DatasetError(f"{meta_path}: item {item.get('img_path')!r} has anomaly={value!r}; "
                           "use 0 (normal) or 1 (anomalous)")
    return LABELS[key]


def _listing(paths: list[str], root: Path) -> str:
    listed = "\n  ".join(str(root / p) for p in paths[:10])
    return listed + (f"\n  … and {len(paths) - 10} more" if len(paths) > 10 else "")


def _header_size(path: Path) -> tuple[int, int] | str:
    """The image's size from its header (cheap: no pixel decoding), or why it cannot be read."""
    try:
        with Image.open(path) as image:
            return image.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        return str(error)


def check_files(samples: list[Sample], root: Path) -> None:
    """Fail before any model work if meta.json names files that are missing, unreadable, or masks
    whose size differs from their image's."""
    missing = [s.img_path for s in samples if not (root / s.img_path).is_file()]
    missing += [s.mask_path for s in samples if s.mask_path and not (root / s.mask_path).exists()]
    if missing:
        raise DatasetError(f"{len(missing)} file(s) named in {root / META_FILE} do not exist:\n  "
                           f"{_listing(missing, root)}\nCheck the dataset root, or {_regenerate_hint(root)}")
    problems = []
    for sample in samples:
        size = _header_size(root / sample.img_path)
        if isinstance(size, str):
            problems.append(f"cannot read image {root / sample.img_path}: {size}")
        elif sample.mask_path and (root / sample.mask_path).is_file():
            mask_size = _header_size(root / sample.mask_path)
            if isinstance(mask_size, str):
                problems.append(f"cannot read mask {root / sample.mask_path}: {mask_size}")
            elif mask_size != size:
                problems.append(f"mask {root / sample.mask_path} is {mask_size[0]}x{mask_size[1]} but its image "
                                f"{root / sample.img_path} is {size[0]}x{size[1]}")
    if problems:
        listed = "\n  ".join(problems[:10]) + (f"\n  … and {len(problems) - 10} more" if len(problems) > 10 else "")
        raise DatasetError(f"{len(problems)} problem(s) with the files named in {root / META_FILE}:\n  {listed}\n"
                           "Re-download the files, fix the masks, or remove the items from meta.json")


def _open(path: Path) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise DatasetError(f"cannot read image {path}: {error}. Re-download or remove it from meta.json") from error
    return image


def to_8bit_mode(image: Image.Image) -> Image.Image:
    """Bring modes the reference pipeline would mangle into ones PIL resizes properly."""
    if image.mode in ("P", "PA", "1"):
        return image.convert("RGBA" if image.mode == "PA" or "transparency" in image.info else "RGB")
    if image.mode.startswith("I;16") or image.mode == "I":
        values = np.asarray(image, dtype=np.float64) / 257.0
        return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")
    if image.mode == "F":
        return Image.fromarray(np.clip(np.rint(np.asarray(image)), 0, 255).astype(np.uint8), mode="L")
    return image


def read_image(path: Path, size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Resize((S, S), bicubic) → RGB: `[3, S, S]` uint8, and the original size."""
    image = to_8bit_mode(_open(path))
    original_size = image.size
    image = image.resize((size, size), Image.BICUBIC).convert("RGB")
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1), original_size


def normalize_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 `[..., 3, S, S]` → [0, 1] → CLIP normalisation, float32, on the images' device.

    The scripts move uint8 images to the GPU and normalise them there: a quarter of the
    bytes through the loader's shared memory and the host-to-device copy, same values."""
    if images.dtype != torch.uint8:  # normalising twice would run silently and shift every value
        raise ValueError(f"normalize_images expects uint8 images, got {images.dtype}: "
                         "read them with AnomalyDataset(..., normalize=False) or read_image")
    mean, std = _clip_statistics(str(images.device))
    return (images.float().div(255) - mean) / std


@functools.lru_cache(maxsize=None)
def _clip_statistics(device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP's mean and std as `[3, 1, 1]` tensors, made once per device: building them per batch
    would copy from host memory and wait for the GPU each time."""
    return (torch.tensor(CLIP_MEAN, device=device).view(3, 1, 1), torch.tensor(CLIP_STD, device=device).view(3, 1, 1))


def load_image(path: Path, size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """`read_image` then `normalize_images`: `[3, S, S]` float32, and the original size."""
    image, original_size = read_image(path, size)
    return normalize_images(image), original_size


def anomalous_pixels(mask: Image.Image) -> np.ndarray:
    """Which pixels a mask marks, for any PIL mode (README, 'Input images').

    Single-channel and palette masks: any non-zero value or index. Masks with an alpha
    channel that is not fully opaque: the non-transparent pixels (a defect painted on a
    transparent background). Other colour masks: any non-black pixel.
    """
    if mask.mode in ("L", "P", "1", "F") or mask.mode.startswith("I"):
        return np.asarray(mask) > 0
    if mask.mode == "PA":
        return np.asarray(mask)[..., 0] > 0
    if mask.mode in ("LA", "RGBA", "La", "RGBa"):
        alpha = np.asarray(mask.getchannel("A"))
        if alpha.min() < 255:
            return alpha > 0
    return np.asarray(mask.convert("L")) > 0


def load_mask(path: Path, size: int, image_size: tuple[int, int], image_path: Path) -> torch.Tensor:
    """Binary mask `[S, S]` (uint8): any non-zero pixel is anomalous, resized bilinearly, then > 0.5."""
    mask = _open(path)
    if mask.size != image_size:
        raise DatasetError(f"mask {path} is {mask.size[0]}x{mask.size[1]} but its image {image_path} is "
                           f"{image_size[0]}x{image_size[1]}: fix the pairing in meta.json or the mask file")
    binary = anomalous_pixels(mask)
    resized = Image.fromarray(binary.astype(np.uint8) * 255, mode="L").resize((size, size), Image.BILINEAR)
    return torch.from_numpy((np.asarray(resized, dtype=np.float32) / 255.0 > 0.5).astype(np.uint8))


class AnomalyDataset(torch.utils.data.Dataset):
    """One split of a meta.json dataset; items are dicts the default collate can batch."""

    def __init__(self, root: str | os.PathLike, image_size: int, split: str = "test",
                 meta_path: str | os.PathLike | None = None, classes: list[str] | None = None,
                 normalize: bool = True):
        self.root = Path(root)
        self.image_size = image_size
        self.normalize = normalize  # False: `img` is uint8, for `normalize_images` on the GPU
        samples = samples_from_meta(read_meta(self.root, meta_path), split, self.root)
        if classes:
            unknown = sorted(set(classes) - {s.cls_name for s in samples})
            if unknown:
                raise DatasetError(f"classes {unknown} are not in {self.root / META_FILE}")
            samples = [s for s in samples if s.cls_name in set(classes)]
        check_files(samples, self.root)
        self.samples = samples

    @property
    def class_names(self) -> list[str]:
        return list(dict.fromkeys(s.cls_name for s in self.samples))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        image_path = self.root / sample.img_path
        image, original_size = (load_image if self.normalize else read_image)(image_path, self.image_size)
        if sample.mask_path and (self.root / sample.mask_path).is_file():
            mask = load_mask(self.root / sample.mask_path, self.image_size, original_size, image_path)
            if sample.anomaly and not mask.any():
                log.warning("mask %s of anomalous image %s marks no pixel at %d px: its pixel metrics see "
                            "only normal pixels", self.root / sample.mask_path, image_path, self.image_size)
        else:  # normal image, image-level dataset, or a mask folder as in the reference: all-zero mask
            mask = torch.zeros(self.image_size, self.image_size, dtype=torch.uint8)
        return {"img": image, "img_mask": mask, "anomaly": sample.anomaly, "cls_name": sample.cls_name,
                "img_path": sample.img_path, "index": index}
