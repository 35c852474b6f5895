"""Datasets described by a meta file (SPEC §10, SPEC_VCP §11), read exactly as both references read them.

A dataset root holds `meta.json` (written by `python -m generate_dataset_json`) or, in the
VCP-CLIP authors' layout, `meta_<dataset>.json` beside the `<dataset>/` folder; paths in
it are relative to the root. Images are decoded, resized to S×S with PIL's bicubic and
returned as uint8 RGB (the model normalises them); masks are binarised, resized
bilinearly and thresholded at 0.5 (SPEC §7, SPEC_VCP §8).

Bad input is caught before any model work: every item of the meta file is checked
(files that exist and are files, labels, a normal item carrying a mask, duplicates,
items filed under another class's folder, image and mask sizes) and all problems are
reported at once, each naming the item and the fix. Image modes the reference mishandles
are converted first (docs/INPUTS.md):

* palette (`P`, `PA`) and 1-bit images → RGB before resizing (PIL would resize them with
  nearest-neighbour interpolation);
* 16-bit images → 8 bit by dividing by 257; float images by their range ([0, 1] x 255, [0, 255]
  as is, anything else refused); one implementation, `deploy/image_io.py`, which predict.py shares.
"""
from __future__ import annotations

import json
import logging
import os
import posixpath
import random
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image

from deploy import image_io
from utils import DatasetError

META_FILE = "meta.json"
SPLITS = ("train", "test")
MAX_LISTED = 10

log = logging.getLogger("zsas.dataset")  # under the scripts' logger, so warnings reach log.txt too
# Labels accepted (True/False and 0.0/1.0 compare equal to 1/0, so they match too)
LABELS = {0: 0, 1: 1, "0": 0, "1": 1, "false": 0, "true": 1, "normal": 0, "anomaly": 1}


@dataclass(frozen=True)
class Sample:
    img_path: str  # relative to the dataset root, as written in the meta file
    mask_path: str
    cls_name: str
    anomaly: int
    specie_name: str = ""  # the defect type (`good` for normal images), when the meta file names it


def _regenerate_hint(root: Path) -> str:
    return f"regenerate it with `python -m generate_dataset_json NAME --root {root}`"


def meta_path_for(root: str | os.PathLike, dataset: str | None = None) -> Path:
    """The meta file of a root: `meta_<dataset>.json` (the VCP-CLIP authors' layout) when `dataset` names one
    that exists, else `meta.json`, else the root's only `meta_*.json`.

    `--dataset NAME` falls back to `meta.json` only where the root holds no other `meta_*.json`: beside
    `meta_mvtec.json` a missing `meta_visa.json` is a mistyped name or the wrong root, not a request to
    label the root's other data "visa"."""
    root = Path(root)
    candidates = sorted(root.glob("meta_*.json")) if root.is_dir() else []
    if dataset:
        named = root / f"meta_{dataset}.json"
        if named.is_file():
            return named
        if candidates:
            names = ", ".join(p.name for p in candidates)
            choices = " or ".join(f"--dataset {p.stem[len('meta_'):]}" for p in candidates)
            plain = " (and a meta.json)" if (root / META_FILE).is_file() else ""
            raise DatasetError(f"{named} not found: {root} holds {names}{plain}, so --dataset {dataset} names "
                               f"none of its datasets; pass {choices}, or another --data_path")
        if (root / META_FILE).is_file():
            log.info("--dataset %s: %s has no meta_%s.json; reading %s (results are labelled %r)", dataset, root,
                     dataset, root / META_FILE, dataset)
        return root / META_FILE
    if (root / META_FILE).is_file():
        return root / META_FILE
    if len(candidates) > 1:
        names = ", ".join(p.name for p in candidates)
        raise DatasetError(f"{root} holds several meta files ({names}) and no meta.json: pass --dataset NAME "
                           "to pick meta_NAME.json")
    return candidates[0] if candidates else root / META_FILE


def read_meta(root: str | os.PathLike, meta_path: str | os.PathLike | None = None,
              dataset: str | None = None) -> tuple[dict, Path]:
    """Load and check the meta file (default: `meta_path_for(root, dataset)`); returns it and its path."""
    root = Path(root)
    path = Path(meta_path) if meta_path else meta_path_for(root, dataset)
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} is not a folder; check --data_path / --train_data_path")
    if not path.is_file():
        also = f" (nor {root / f'meta_{dataset}.json'})" if dataset and not meta_path else ""
        raise DatasetError(f"{path} not found{also}: {_regenerate_hint(root)}")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetError(f"{path} is not valid JSON ({error}); {_regenerate_hint(root)}") from error
    if not isinstance(meta, dict) or not any(isinstance(meta.get(split), dict) for split in SPLITS):
        raise DatasetError(f"{path} must hold {{'train': {{class: [items]}}, 'test': {{...}}}}; "
                           f"{_regenerate_hint(root)}")
    return meta, path


def _label(value) -> int | None:
    key = value.strip().lower() if isinstance(value, str) else value
    if isinstance(key, bool) or isinstance(key, (str, int, float)):
        return LABELS.get(key)
    return None


def samples_from_meta(meta: dict, split: str, root: Path, meta_path: Path) -> list[Sample]:
    """One split in class order (the meta file's keys), empty classes skipped with a warning, and every
    item checked; all problems found are reported in one error."""
    classes = meta.get(split)
    if not isinstance(classes, dict) or not classes:
        raise DatasetError(f"{meta_path} has no '{split}' split with classes; {_regenerate_hint(root)}")
    samples, problems, seen = [], [], {}
    class_folders = set(classes)
    for cls_name, items in classes.items():
        if not items:
            log.warning("class %r of the %s split in %s has no images: skipped", cls_name, split, meta_path)
            continue
        if not isinstance(items, list):
            problems.append(f"class {cls_name!r}: expected a list of items, got {type(items).__name__}")
            continue
        for item in items:
            problem = _item_problem(item, cls_name, class_folders)
            if problem:
                problems.append(problem)
                continue
            sample = Sample(item["img_path"], item.get("mask_path") or "", str(cls_name), _label(item["anomaly"]),
                            str(item.get("specie_name") or ("anomalous" if _label(item["anomaly"]) else "good")))
            key = same_file_key(sample.img_path, root)  # `./01/x.png`, `01//x.png`, ROOT/01/x.png: one file
            if key in seen:
                first, first_class = seen[key]
                spelled = "" if first == sample.img_path else f" (also spelled {first!r})"
                problems.append(f"{sample.img_path!r} is listed twice{spelled} (classes {first_class!r} and "
                                f"{cls_name!r}): remove one")
                continue
            seen[key] = (sample.img_path, cls_name)
            samples.append(sample)
    if problems:
        raise DatasetError(_problem_report(len(problems), problems, meta_path,
                                           f"fix the items or {_regenerate_hint(root)}"))
    if not samples:
        raise DatasetError(f"{meta_path}: the '{split}' split has no images at all")
    return samples


def same_file_key(relative: str, root: Path) -> str:
    """One spelling per file for a meta path: `./a/b.png`, `a//b.png`, `a/c/../b.png` and the absolute
    `ROOT/a/b.png` are the same file (compared as text: no file-system access)."""
    return posixpath.normpath(posixpath.join(root.as_posix(), str(relative).replace("\\", "/")))


def _item_problem(item, cls_name: str, class_folders: set[str]) -> str | None:
    """What is wrong with one meta item on its own, or None."""
    if not isinstance(item, dict):
        return f"class {cls_name!r}: an item is a {type(item).__name__}, not an object: {item!r}"
    missing = [key for key in ("img_path", "anomaly") if key not in item]
    if missing:
        return f"an item of class {cls_name!r} lacks {missing}: {item}"
    where = f"item {item['img_path']!r} (class {cls_name!r})"
    label = _label(item["anomaly"])
    if label is None:
        return f"{where} has anomaly={item['anomaly']!r}; use 0 (normal) or 1 (anomalous)"
    if label == 0 and item.get("mask_path"):
        return (f"{where} is normal (anomaly 0) but names the mask {item['mask_path']!r}: set anomaly to 1 if "
                "it is defective, or clear its mask_path")
    if "cls_name" in item and str(item["cls_name"]) != str(cls_name):
        return f"{where} says cls_name {item['cls_name']!r}: move it under that class or fix the field"
    folders = set(PurePosixPath(str(item["img_path"])).parts[:-1])
    others = sorted((folders & class_folders) - {cls_name})
    if others and cls_name not in folders:
        return f"{where} lies in the folder of class {others[0]!r}: is it filed under the wrong class?"
    return None


def _problem_report(count: int, problems: list[str], where: Path, fix: str) -> str:
    listed = "\n  ".join(problems[:MAX_LISTED])
    more = f"\n  … and {count - MAX_LISTED} more" if count > MAX_LISTED else ""
    return f"{count} problem(s) with the items of {where}:\n  {listed}{more}\n{fix[:1].upper()}{fix[1:]}"


def _header_size(path: Path, max_pixels: int | None = None) -> tuple[int, int] | str:
    """The image's size from its header (cheap: no pixel decoding), or why it cannot be read."""
    try:
        return image_io.image_size(path, max_pixels)
    except DatasetError as error:
        return str(error).removeprefix(f"cannot read image {path}: ")


def check_files(samples: list[Sample], root: Path, meta_path: Path, max_pixels: int | None = None) -> None:
    """Fail before any model work if the meta file names paths that are missing, not files, unreadable,
    or masks whose size differs from their image's; every problem in one error."""
    problems = []
    for sample in samples:
        for kind, relative in (("image", sample.img_path), ("mask", sample.mask_path)):
            path = root / relative
            if relative and not path.exists():
                problems.append(f"{kind} {path} does not exist")
            elif relative and not path.is_file():
                problems.append(f"{kind} {path} is a folder, not a file")
    if not problems:
        for sample in samples:
            size = _header_size(root / sample.img_path, max_pixels)
            if isinstance(size, str):
                problems.append(f"cannot read image {root / sample.img_path}: {size}")
            elif sample.mask_path:
                mask_size = _header_size(root / sample.mask_path, max_pixels)
                if isinstance(mask_size, str):
                    problems.append(f"cannot read mask {root / sample.mask_path}: {mask_size}")
                elif mask_size != size:
                    problems.append(f"mask {root / sample.mask_path} is {mask_size[0]}x{mask_size[1]} but its "
                                    f"image {root / sample.img_path} is {size[0]}x{size[1]}")
    if problems:
        raise DatasetError(_problem_report(len(problems), problems, meta_path,
                                           "check the dataset root, re-download the files, fix the masks, or "
                                           f"remove the items from {meta_path.name}"))


def resize_image(image: Image.Image, size: int) -> torch.Tensor:
    """`deploy.image_io.resize_to_input` as a tensor: the pixels every model and export sees."""
    return torch.from_numpy(image_io.resize_to_input(image, size))


def read_image(path: Path, size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """An image file as the model's uint8 `[3, S, S]` input, and its original size."""
    image = image_io.read_8bit(path)
    return resize_image(image, size), image.size


def mask_values(mask: Image.Image) -> np.ndarray | None:
    """The values a mask's threshold compares: the channel itself (single-channel masks), the alpha channel
    (masks with transparency), else the grey value; None for palette and 1-bit masks (indices, not levels)."""
    if mask.mode in ("P", "PA", "1"):
        return None
    if mask.mode in ("LA", "RGBA", "La", "RGBa"):
        alpha = np.asarray(mask.getchannel("A"))
        if alpha.min() < 255:
            return alpha
    if mask.mode in ("L", "F") or mask.mode.startswith("I"):
        return np.asarray(mask)
    return np.asarray(mask.convert("L"))


def anomalous_pixels(mask: Image.Image, threshold: float = 0) -> np.ndarray:
    """Which pixels a mask marks, for any PIL mode (docs/INPUTS.md): values above `threshold`
    (`--mask_threshold`, default 0: any non-zero value).

    Single-channel masks: the value. Palette masks: any non-zero index (with a threshold: the
    grey value). Masks with an alpha channel that is not fully opaque: the alpha value (a defect
    painted on a transparent background). Other colour masks: the grey value (any non-black pixel).
    """
    if mask.mode == "1" or (mask.mode == "P" and not threshold):
        return np.asarray(mask) > 0
    if mask.mode == "PA" and not threshold:
        return np.asarray(mask)[..., 0] > 0
    values = mask_values(mask)
    if values is None:  # a palette mask with a threshold: its colours' grey values
        values = np.asarray(mask.convert("L"))
    return values > threshold


def read_mask(path: Path, image_size: tuple[int, int], image_path: Path, threshold: float = 0) -> np.ndarray:
    """A mask file as a boolean array of its image's size."""
    mask = image_io.open_image(path)
    if mask.size != image_size:
        raise DatasetError(f"mask {path} is {mask.size[0]}x{mask.size[1]} but its image {image_path} is "
                           f"{image_size[0]}x{image_size[1]}: fix the pairing in the meta file or the mask file")
    return anomalous_pixels(mask, threshold)


def load_mask(path: Path, size: int, image_size: tuple[int, int], image_path: Path,
              threshold: float = 0) -> torch.Tensor:
    """A mask file at the model's size, `[S, S]` uint8 in {0, 1} (what calibrate.py compares pixel scores with)."""
    return resize_mask(read_mask(path, image_size, image_path, threshold), size)


LOSSY_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif")
NAMED_IN_WARNINGS = 3


def _levels(values: np.ndarray) -> int:
    if values.dtype == np.uint8:
        return int(np.count_nonzero(np.bincount(values.ravel(), minlength=256)))
    return len(np.unique(values))


def _some(paths: list, count: int) -> str:
    shown = ", ".join(map(str, paths[:NAMED_IN_WARNINGS]))
    return f"{count} ({'e.g. ' if count > NAMED_IN_WARNINGS else ''}{shown})"


def survey_masks(samples: list[Sample], root: Path, meta_path: Path, threshold: float = 0) -> list[str]:
    """Warnings, one per kind of problem and per dataset (a count and the first files), about masks the
    `> threshold` rule would read wrongly without a word: lossy or many-level masks (compression noise, a
    grey "ignore" band counted as defect), masks marking most of the image (inverted?), and anomalous
    items without any mask (all-normal pixels)."""
    unmasked, lossy, grey, inverted = [], [], [], []
    for sample in samples:
        if not sample.anomaly:
            continue
        if not sample.mask_path:
            unmasked.append(sample.img_path)
            continue
        path = root / sample.mask_path
        mask = image_io.open_image(path)
        if path.suffix.lower() in LOSSY_SUFFIXES or mask.format in ("JPEG", "MPO"):
            lossy.append(path)
        values = mask_values(mask)
        if values is not None and _levels(values) > 2:
            grey.append(path)
        fraction = float(anomalous_pixels(mask, threshold).mean())
        if fraction > 0.5:
            inverted.append(f"{path}: {fraction:.1%}")
    notes = []
    fix = (f"every value above {threshold:g} counts as defect, so compression noise or a grey 'ignore' band does "
           "too: pass --mask_threshold 127 to count only the bright pixels (or the value below which pixels are "
           "not defect), or rewrite the masks as lossless 0/255 PNG files")
    if lossy and not threshold:
        notes.append(f"{_some(lossy, len(lossy))} mask(s) of {meta_path} are stored in a lossy format (JPEG); "
                     + fix)
    plain_grey = [p for p in grey if p not in set(lossy)]
    if plain_grey and not threshold:
        notes.append(f"{_some(plain_grey, len(plain_grey))} mask(s) of {meta_path} hold more than two values "
                     f"(grey levels); {fix} (if the values are class labels, all of them are defect: ignore this)")
    if inverted:
        notes.append(f"{_some(inverted, len(inverted))} mask(s) of {meta_path} mark more of their image as "
                     "defect than as background: inverted (defect black, background white)? A mask must mark the "
                     "defect with non-zero values: invert those files")
    if unmasked:
        notes.append(f"{_some(unmasked, len(unmasked))} anomalous item(s) of {meta_path} have no mask_path: every "
                     "pixel of theirs counts as normal in the pixel metrics; add their masks, or evaluate with "
                     "--metrics image-level if the dataset has none")
    return notes


def resize_mask(binary: np.ndarray, size: int) -> torch.Tensor:
    """Boolean mask → 0/255 → Resize((S, S)) bilinear → > 0.5: `[S, S]` uint8 in {0, 1}."""
    resized = Image.fromarray(binary.astype(np.uint8) * 255, mode="L").resize((size, size), Image.BILINEAR)
    return torch.from_numpy((np.asarray(resized, dtype=np.float32) / 255.0 > 0.5).astype(np.uint8))


class AnomalyDataset(torch.utils.data.Dataset):
    """One split of a meta-file dataset; items are dicts the default collate can batch.

    `augmentation` (training only, `augment.Augmentation`) is applied to the decoded image and
    mask before the resize."""

    def __init__(self, root: str | os.PathLike, image_size: int, split: str = "test", *, dataset: str | None = None,
                 meta_path: str | os.PathLike | None = None, augmentation=None, mask_threshold: float = 0,
                 max_pixels: int | None = None):
        self.root = Path(root)
        self.image_size = image_size
        self.augmentation = augmentation
        self.mask_threshold = mask_threshold
        self.max_pixels = max_pixels  # None: deploy.image_io's limit (--max_image_pixels)
        meta, self.meta_path = read_meta(self.root, meta_path, dataset)
        log.info("reading the %s split of %s", split, self.meta_path)
        self.samples = samples_from_meta(meta, split, self.root, self.meta_path)
        check_files(self.samples, self.root, self.meta_path, max_pixels)
        for note in survey_masks(self.samples, self.root, self.meta_path, mask_threshold):
            log.warning(note)
        self._anomalous_of_class: dict[str, list[int]] = {}
        self._species_of_class: dict[str, dict[str, list[int]]] = {}  # class -> defect type -> items
        for index, sample in enumerate(self.samples):
            if sample.anomaly:
                self._anomalous_of_class.setdefault(sample.cls_name, []).append(index)
            self._species_of_class.setdefault(sample.cls_name, {}).setdefault(sample.specie_name, []).append(index)

    @property
    def class_names(self) -> list[str]:
        return list(dict.fromkeys(s.cls_name for s in self.samples))

    @property
    def anomalous_count(self) -> int:
        return sum(s.anomaly for s in self.samples)

    def __len__(self) -> int:
        return len(self.samples)

    def _decode(self, sample: Sample) -> tuple[Image.Image, np.ndarray]:
        """The image (in its own mode, 8 bit) and its boolean mask at the image's size."""
        image_path = self.root / sample.img_path
        image = image_io.read_8bit(image_path, self.max_pixels)
        if sample.anomaly and sample.mask_path:
            mask = read_mask(self.root / sample.mask_path, image.size, image_path, self.mask_threshold)
            if not mask.any():
                log.warning("mask %s of anomalous image %s marks no pixel: its pixel metrics see only normal "
                            "pixels", self.root / sample.mask_path, image_path)
        else:  # a normal image, or an image-level dataset: all-zero mask
            mask = np.zeros((image.size[1], image.size[0]), dtype=bool)
        return image, mask

    def _mosaic_pool_has(self, cls_name: str, pool: str) -> bool:
        if pool == "distinct_items":  # random.sample of four: a class with fewer items gets no mosaic
            return sum(len(v) for v in self._species_of_class[cls_name].values()) >= 4
        return bool(self._anomalous_of_class.get(cls_name)) if pool == "anomalous" else True

    def _mosaic_pick(self, cls_name: str, pool: str) -> int:
        if pool == "anomalous":
            return random.choice(self._anomalous_of_class[cls_name])
        species = self._species_of_class[cls_name]  # a defect type first (normal included), then an image of it
        return random.choice(species[random.choice(sorted(species))])

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        image, mask = self._decode(sample)
        augmentation = self.augmentation
        if augmentation is not None:
            if augmentation.mosaic_rate > 0 and augmentation.wants_mosaic() and self._mosaic_pool_has(
                    sample.cls_name, augmentation.mosaic_pool):
                from engine.augment import mosaic

                if augmentation.mosaic_pool == "distinct_items":
                    items = sorted(i for v in self._species_of_class[sample.cls_name].values() for i in v)
                    picks = [self.samples[i] for i in random.sample(items, 4)]
                else:
                    picks = [self.samples[self._mosaic_pick(sample.cls_name, augmentation.mosaic_pool)]
                             for _ in range(4)]
                image, mask = mosaic(*zip(*(self._decode(pick) for pick in picks)))
            image, mask = augmentation.photometric(image, mask)
        return {"img": resize_image(image, self.image_size), "img_mask": resize_mask(mask, self.image_size),
                "anomaly": sample.anomaly, "cls_name": sample.cls_name, "img_path": sample.img_path, "index": index}
