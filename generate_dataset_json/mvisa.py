"""`meta_<dataset>.json` for the VCP-CLIP authors' standardised ("mvisa") layout
(SPEC_VCP §11), written as their `dataset/make_meta.py` writes it:

    <data_path>/<dataset>/<cls>/train/good/*.bmp
    <data_path>/<dataset>/<cls>/test/{good,anomaly}/*.bmp
    <data_path>/<dataset>/<cls>/ground_truth/anomaly/{stem}.png

    python -m generate_dataset_json mvisa --root DATA --dataset mvtec   # DATA/meta_mvtec.json

Same items, keys, order and bytes as make_meta.py: `{"train": {cls: [...]}, "test": {...}}`,
item keys img_path, mask_path, cls_name, specie_name, dataset_name, anomaly; paths
relative to <data_path> and starting with `<dataset>/`; species in sorted order, then
files in sorted order; `dataset_name` is the file name up to its first `_`; every specie
but `good` is anomalous. An empty specie folder of `train/` yields one placeholder item
with empty paths, as make_meta.py writes it (the authors' loaders read only the test
split); `placeholders=False` leaves it out.

Where make_meta.py would crash or write a wrong file, this stops with an error naming
the file instead, or skips with a warning: classes come from the folders present (not a
fixed list per dataset), an anomalous image whose mask is missing is an error, a
non-image file (readme.txt, .DS_Store) is skipped rather than listed as an image, and an
image that is not `.bmp` gets the mask `{stem}.png` (make_meta.py only turns `.bmp` into
`.png`, so a `.jpg` image's mask path would name a `.jpg` that does not exist).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Callable

from .files import DatasetError, Problems, is_hidden, is_image, listing, relative
from .meta import DatasetWarning

MVISA_LAYOUT = ("<dataset>/<cls>/train/good/*, <dataset>/<cls>/test/{good|anomaly}/*, "
                "<dataset>/<cls>/ground_truth/anomaly/{stem}.png")
PHASES = ("train", "test")
NORMAL_SPECIE = "good"
MASK_FOLDER = "ground_truth"


def mvisa_meta_path(data_path: str | os.PathLike, dataset: str) -> Path:
    """Where the authors' code looks for the meta file: `<data_path>/meta_<dataset>.json`."""
    return Path(data_path) / f"meta_{dataset}.json"


def build_mvisa_meta(data_path: str | os.PathLike, dataset: str, *, placeholders: bool = True,
                     warn: Callable[[str], None] | None = None) -> dict:
    """The meta_<dataset>.json dict for `<data_path>/<dataset>/`; raises DatasetError
    listing every problem (a missing mask, a class without test images...)."""
    data_path, dataset = Path(data_path), dataset.rstrip("/")  # a trailing slash from tab completion
    if not dataset or dataset != Path(dataset).name or dataset in (".", ".."):
        raise DatasetError(f"--dataset must be the name of one folder inside --root (such as mvtec), got {dataset!r}")
    dataset_dir = data_path / dataset
    if not dataset_dir.is_dir():
        raise DatasetError(f"{dataset_dir} is not a folder: --root is the folder that holds {dataset}/ (the "
                           f"authors' data_path) and --dataset names that folder; layout: {MVISA_LAYOUT}")
    problems = Problems()
    class_dirs = _class_dirs(dataset_dir, data_path, problems)
    meta: dict[str, dict[str, list[dict]]] = {phase: {} for phase in PHASES}
    for class_dir in class_dirs:
        for phase in PHASES:
            meta[phase][class_dir.name] = _phase_items(data_path, dataset, class_dir, phase, placeholders, problems)
        if not any(item["img_path"] for item in meta["test"][class_dir.name]):
            problems.error(f"class {class_dir.name!r} has no test images in {relative(class_dir, data_path)}/test/; "
                           "add them or remove the class folder")
    for message in problems.warnings:
        (warn or _warn)(message)
    problems.raise_if_errors()
    return meta


def _warn(message: str) -> None:
    warnings.warn(message, DatasetWarning, stacklevel=3)


def _class_dirs(dataset_dir: Path, data_path: Path, problems: Problems) -> list[Path]:
    """The class folders, sorted by name (make_meta.py's class lists are alphabetical):
    the sub-folders that have `test/`; others are skipped with a warning."""
    folders = sorted((Path(e.path) for e in os.scandir(dataset_dir) if e.is_dir() and not is_hidden(e.name)),
                     key=lambda p: p.name)
    found = [f for f in folders if (f / "test").is_dir()]
    skipped = [relative(f, data_path) + "/" for f in folders if f not in found]
    if not found:
        raise DatasetError(f"{dataset_dir} holds no class folders with a test/ folder; expected {MVISA_LAYOUT}")
    if skipped:
        problems.warn(f"ignored folder(s) without test/: {listing(skipped)}")
    return found


def _sorted_entries(folder: Path, data_path: Path, problems: Problems, *, want_dirs: bool) -> list[str]:
    """The names make_meta.py would list in `folder` (sorted as Python sorts strings),
    keeping only folders (`want_dirs`) or only image files; anything else is reported."""
    kept, skipped = [], []
    with os.scandir(folder) as entries:
        for entry in entries:
            if is_hidden(entry.name):
                continue
            if entry.is_dir() if want_dirs else (entry.is_file() and is_image(Path(entry.name))):
                kept.append(entry.name)
            else:
                skipped.append(relative(Path(entry.path), data_path))
    if skipped:
        what = "files (specie folders hold the images)" if want_dirs else "entries that are not image files"
        problems.warn(f"ignored {len(skipped)} {what}: {listing(sorted(skipped))}")
    return sorted(kept)


def _phase_items(data_path: Path, dataset: str, class_dir: Path, phase: str, placeholders: bool,
                 problems: Problems) -> list[dict]:
    """One class's items of one phase, in make_meta.py's order: species sorted, then files sorted."""
    cls, phase_dir = class_dir.name, class_dir / phase
    if not phase_dir.is_dir():  # make_meta.py would crash; the authors' loaders never read train
        problems.warn(f"{relative(phase_dir, data_path)}/ does not exist: class {cls!r} has an empty {phase} split")
        return []
    items = []
    for specie in _sorted_entries(phase_dir, data_path, problems, want_dirs=True):
        anomalous = specie != NORMAL_SPECIE
        names = _sorted_entries(phase_dir / specie, data_path, problems, want_dirs=False)
        if not names and phase != "test":
            if placeholders:
                problems.warn(f"{relative(phase_dir / specie, data_path)}/ is empty: wrote a placeholder item with "
                              "empty paths there, as make_meta.py does (--no_placeholders leaves it out)")
                items.append(_item("", "", cls, specie, "", anomalous))
            continue
        mask_dir = class_dir / MASK_FOLDER / specie
        for name in names:
            image_rel = f"{dataset}/{cls}/{phase}/{specie}/{name}"
            mask_rel = _mask_of(image_rel, name, mask_dir, data_path, problems) if anomalous else ""
            items.append(_item(image_rel, mask_rel, cls, specie, name.split("_")[0], anomalous))
    if phase == PHASES[-1]:
        _report_orphan_masks(class_dir, data_path, problems)
    return items


def _item(image: str, mask: str, cls: str, specie: str, dataset_name: str, anomalous: bool) -> dict:
    """One item, keys in make_meta.py's order."""
    return {"img_path": image, "mask_path": mask, "cls_name": cls, "specie_name": specie,
            "dataset_name": dataset_name, "anomaly": 1 if anomalous else 0}


def _mask_of(image_rel: str, name: str, mask_dir: Path, data_path: Path, problems: Problems) -> str:
    """The mask path make_meta.py writes (`.bmp` turned into `.png`), or `{stem}.png` when
    that is the file that exists; an error naming the expected file when neither does."""
    for candidate in dict.fromkeys([name.replace(".bmp", ".png"), Path(name).stem + ".png"]):
        if (mask_dir / candidate).is_file():
            return relative(mask_dir / candidate, data_path)
    expected = relative(mask_dir / (Path(name).stem + ".png"), data_path)
    problems.error(f"anomalous image {image_rel} has no mask: expected {expected}; restore it or remove the image")
    return ""


def _report_orphan_masks(class_dir: Path, data_path: Path, problems: Problems) -> None:
    """Masks no image uses are a warning: the image may not have been copied."""
    mask_root = class_dir / MASK_FOLDER
    if not mask_root.is_dir():
        return
    stems = {Path(image).stem for phase in PHASES if (class_dir / phase).is_dir()
             for specie in os.scandir(class_dir / phase) if specie.is_dir() for image in os.listdir(specie.path)}
    unused = sorted(relative(Path(entry.path), data_path)
                    for specie in os.scandir(mask_root) if specie.is_dir()
                    for entry in os.scandir(specie.path)
                    if entry.is_file() and not is_hidden(entry.name) and Path(entry.name).stem not in stems)
    if unused:
        problems.warn(f"{len(unused)} mask(s) have no image and were ignored: {listing(unused)}")
