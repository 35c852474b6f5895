"""Layout walkers: one function per way the benchmarks are laid out on disk.

Each dataset in the registry names one walker plus parameters (normal folder names,
mask suffixes, a fixed class name...), so the paper's fifteen benchmarks share seven
walkers and no dataset has its own copy of the walking code (the VCP-CLIP benchmarks'
walkers are in surface_layouts.py and reuse these helpers). A walker fills a `Splits` and records
problems; it raises `DatasetError` itself only when the root is not the layout at all.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Callable, Sequence

from .files import (DatasetError, MaskIndex, Problems, check_unique_stems, child_dir, describe_mask_name,
                    list_images, listing, relative, strip_suffix, subdirs)
from .spec import DatasetSpec
from .splits import Splits


# --------------------------------------------------------------------------- helpers

def class_name_of(spec: DatasetSpec, class_dir: Path) -> str:
    """The registry's fixed class name (`brain`, `colon`...) or the class folder's name;
    `abspath` rather than `resolve` so `--root .` works and a symlinked folder keeps the
    name the user gave it."""
    return spec.class_name or os.path.basename(os.path.abspath(class_dir))


def find_class_dirs(root: Path, spec: DatasetSpec, problems: Problems,
                    has_layout: Callable[[Path], bool], expected: str) -> list[Path]:
    """The class folders: the root itself when it already has the layout (a single-class
    download, or `--root mvtec/bottle`), else its sub-folders that have it, so partial
    downloads work. An error saying what was expected when there are none."""
    if has_layout(root):
        return [root]
    found, skipped = [], []
    for folder in subdirs(root):
        (found if has_layout(folder) else skipped).append(folder)
    if not found:
        raise DatasetError(f"{root} does not look like {spec.title}: expected {expected} below it "
                           f"(layout: {spec.layout}). Point --root at the folder that holds them.")
    if spec.class_name and len(found) > 1:
        raise DatasetError(f"{spec.title} is a single class ({spec.class_name!r}) but {root} holds "
                           f"{len(found)} folders with its layout: {listing([f.name for f in found])}; "
                           "point --root at one of them")
    if skipped:
        problems.warn(f"ignored folder(s) not in the layout (no {expected}): "
                      f"{listing([relative(f, root) + '/' for f in skipped])}")
    return found


def find_file(root: Path, name: str) -> Path | None:
    """`name` (which may hold a sub-path) in the root or one folder below it: archives
    often unpack into an extra folder of their own name."""
    candidates = [root / name] + [folder / name for folder in subdirs(root)]
    return next((c for c in candidates if c.is_file()), None)


def read_csv_rows(path: Path, required: Sequence[str], root: Path) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) pairs with header names stripped and lower-cased, so that
    HeadCT's `id, hemorrhage` (with its space) reads like `id,hemorrhage`."""
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        names = [h.strip().lower() for h in header or []]
        missing = [c for c in required if c not in names]
        if missing:
            raise DatasetError(f"{relative(path, root)} lacks the column(s) {', '.join(missing)} "
                               f"(its header is {header}); expected the columns {', '.join(required)}")
        return [(line_no, {n: (values[i].strip() if i < len(values) else "") for i, n in enumerate(names)})
                for line_no, values in enumerate(reader, start=2) if any(v.strip() for v in values)]


def expected_masks(mask_dir: Path, image: Path, suffixes: Sequence[str], root: Path) -> str:
    """The mask names an image could have had, for the missing-mask error."""
    where = relative(mask_dir, root)
    return " or ".join(f"{where}/{image.stem}{s}.png" for s in suffixes) + " (any image extension)"


RESTORE_HINT = "restore it from the download or remove the image"


def add_paired(splits: Splits, split: str, images: Sequence[Path], index: MaskIndex, cls: str,
               mask_dir: Path, spec: DatasetSpec, problems: Problems, *, specie: str | None = None,
               hint: str = RESTORE_HINT) -> None:
    """Adds anomalous images with their masks; an image without its mask is an error
    naming the image, the mask it should have and `hint` (how to get it). The defect
    type is `specie`, or else the image's folder name."""
    check_unique_stems(images, splits.root, problems)
    for image in images:
        mask = index.take(image)
        if mask is None:
            problems.error(f"anomalous image {relative(image, splits.root)} has no mask: expected "
                           f"{expected_masks(mask_dir, image, spec.mask_suffixes, splits.root)}; {hint}")
        else:
            splits.add(split, image, mask, cls, specie or image.parent.name, True)


def walk_label_folders(base: Path, cls: str, split: str, spec: DatasetSpec, splits: Splits,
                       problems: Problems, mask_root: Path | None, *,
                       label_of: Callable[[str], bool | None] | None = None, skip: Sequence[str] = ()) -> None:
    """Images in folders named after their label (`good`, `ok`, `no`: normal; defect
    names or `yes`: anomalous). With a `mask_root`, an anomalous image's mask is
    `{mask_root}/{its folder}/{stem}{suffix}.*` and must exist; without one the dataset
    is image-level and `mask_path` stays empty."""
    label_of = label_of or spec.label_of
    for folder in subdirs(base):
        if folder.name.lower() in skip:
            continue
        anomalous = label_of(folder.name)
        if anomalous is None:
            problems.warn(f"ignored folder {relative(folder, splits.root)}/: not a label folder of {spec.title} here")
            continue
        images = list_images(folder)
        for nested in subdirs(folder):
            if list_images(nested, recursive=True):
                problems.warn(f"ignored images in {relative(nested, splits.root)}/: label folders are read one "
                              "level deep; move them up if they belong to the dataset")
        if not anomalous or mask_root is None:
            for image in images:
                splits.add(split, image, None, cls, folder.name, anomalous)
            continue
        mask_dir = child_dir(mask_root, folder.name) or mask_root / folder.name
        index = MaskIndex(list_images(mask_dir) if mask_dir.is_dir() else [], spec.mask_suffixes,
                          splits.root, problems)
        add_paired(splits, split, images, index, cls, mask_dir, spec, problems)
        index.report_unused(problems)


def add_segmentation_class(class_dir: Path, cls: str, spec: DatasetSpec, splits: Splits, problems: Problems,
                           image_dir: str | None, mask_dir: str | None, *, specie: str | None = None) -> None:
    """A pixel-level set where every image is anomalous: images in `image_dir` (or
    anywhere but the mask folder) and masks in `mask_dir`, or, without a mask folder,
    next to the images and told apart by their suffix (ISIC's `_Segmentation`)."""
    root = splits.root
    masks_folder = child_dir(class_dir, mask_dir) if mask_dir else None
    if mask_dir and masks_folder is None:
        raise DatasetError(f"{class_dir} has no {mask_dir}/ folder; {spec.title} expects {spec.layout}")
    images_folder = child_dir(class_dir, image_dir) if image_dir else class_dir
    candidates = list_images(images_folder, recursive=True, exclude=[masks_folder] if masks_folder else [])
    if masks_folder is not None:
        images, masks = candidates, list_images(masks_folder, recursive=True)
    else:
        suffixes = [s for s in spec.mask_suffixes if s]
        masks = [p for p in candidates if strip_suffix(p.stem, suffixes) is not None]
        images = [p for p in candidates if strip_suffix(p.stem, suffixes) is None]
    if not masks:
        raise DatasetError(f"{class_dir} does not look like {spec.title}: found no masks named "
                           f"{describe_mask_name(spec.mask_suffixes)}; expected {spec.layout}")
    index = MaskIndex(masks, spec.mask_suffixes, root, problems)
    add_paired(splits, "test", images, index, cls, masks_folder or class_dir, spec, problems, specie=specie)
    index.report_unused(problems)


# --------------------------------------------------------------------------- walkers

def walk_mvtec_like(root: Path, spec: DatasetSpec, problems: Problems, splits: Splits) -> None:
    """MVTec AD, MPDD, DTD-Synthetic, BTAD, KSDD: `{cls}/{train,test}/{normal|defect}/*`
    with masks in `{cls}/ground_truth/{defect}/`. Only normal folders of `train/` are
    read: these layouts keep their defects in `test/`."""
    def has_test(folder: Path) -> bool:
        return child_dir(folder, "test") is not None

    def train_label(name: str) -> bool | None:
        return False if spec.label_of(name) is False else None

    for class_dir in find_class_dirs(root, spec, problems, has_test, "{cls}/test/ folders"):
        cls = class_name_of(spec, class_dir)
        splits.add_class(cls, class_dir)
        test_dir = child_dir(class_dir, "test")
        mask_root = child_dir(class_dir, "ground_truth") or class_dir / "ground_truth"
        walk_label_folders(test_dir, cls, "test", spec, splits, problems, mask_root)
        train_dir = child_dir(class_dir, "train")
        if train_dir is not None:
            walk_label_folders(train_dir, cls, "train", spec, splits, problems, None, label_of=train_label)
        orphans = [relative(d, root) + "/" for d in (subdirs(mask_root) if mask_root.is_dir() else [])
                   if child_dir(test_dir, d.name) is None]
        if orphans:
            problems.warn(f"mask folder(s) without a test folder of the same name were ignored: {listing(orphans)}")


def walk_dagm(root: Path, spec: DatasetSpec, problems: Problems, splits: Splits) -> None:
    """DAGM 2007: `Class{n}/{Train,Test}/*.PNG`, masks `{split}/Label/{stem}_label.PNG`;
    an image with a mask is a defect, one without is normal (DAGM labels only defects)."""
    def has_test(folder: Path) -> bool:
        return child_dir(folder, "test") is not None

    for class_dir in find_class_dirs(root, spec, problems, has_test, "Class{n}/Test/ folders"):
        cls = class_name_of(spec, class_dir)
        splits.add_class(cls, class_dir)
        for split in ("train", "test"):
            split_dir = child_dir(class_dir, split)
            if split_dir is None:
                continue
            label_dir = child_dir(split_dir, spec.mask_dir)
            index = MaskIndex(list_images(label_dir) if label_dir else [], spec.mask_suffixes, root, problems)
            images = list_images(split_dir)
            check_unique_stems(images, root, problems)
            for image in images:
                mask = index.take(image)
                splits.add(split, image, mask, cls, "defect" if mask else "good", mask is not None)
            index.report_unused(problems)


def walk_visa(root: Path, spec: DatasetSpec, problems: Problems, splits: Splits) -> None:
    """VisA: the split csv lists object, split, label, image and mask per row (paths
    relative to the root). Objects whose folder is not on disk are skipped with a warning,
    so a partial download works; a listed image or mask that is missing is an error."""
    csv_path = root / spec.csv_path
    if not csv_path.is_file():
        raise DatasetError(f"{root} does not look like VisA: expected {spec.csv_path} (it ships in the VisA "
                           "archive); point --root at the folder the archive unpacked into")
    where = relative(csv_path, root)
    skipped: set[str] = set()
    for line_no, row in read_csv_rows(csv_path, ("object", "split", "label", "image", "mask"), root):
        cls, split, label = row["object"], row["split"].lower(), row["label"].lower()
        if not row["image"] or split not in ("train", "test") or label not in ("normal", "anomaly"):
            problems.error(f"{where} line {line_no}: expected an image path, split train|test and label "
                           f"normal|anomaly, got {row['image']!r}, {row['split']!r}, {row['label']!r}")
            continue
        object_dir = root / Path(row["image"]).parts[0]
        if not object_dir.is_dir():  # a partial download: this object was not unpacked
            skipped.add(cls)
            continue
        splits.add_class(cls, object_dir)
        image, mask = root / row["image"], (root / row["mask"] if row["mask"] else None)
        if not image.is_file():
            problems.error(f"{where} line {line_no}: image {row['image']} does not exist; re-extract the archive")
        elif label == "anomaly" and (mask is None or not mask.is_file()):
            problems.error(f"anomalous image {row['image']} has no mask ({where} line {line_no} names "
                           f"{row['mask'] or 'none'!r}); re-extract the archive")
        else:
            splits.add(split, image, mask, cls, label, label == "anomaly")
    if skipped:
        problems.warn(f"{where} lists object(s) not on disk, skipped: {listing(sorted(skipped))}")


def walk_headct(root: Path, spec: DatasetSpec, problems: Problems, splits: Splits) -> None:
    """HeadCT: images named by number (`000.png` ... `199.png`) and `labels.csv` with
    columns `id, hemorrhage`. Id N names the image whose stem is the integer N with or
    without leading zeros (id 0 is `000.png`); hemorrhage 1 is anomalous. Images the
    csv does not list are ignored with a warning."""
    labels = find_file(root, spec.csv_path)
    if labels is None:
        raise DatasetError(f"{root} does not look like HeadCT: expected {spec.csv_path} (columns id, hemorrhage) "
                           "in it or one folder below, next to the images")
    where = relative(labels, root)
    images = list_images(root, recursive=True)
    by_id: dict[int, list[Path]] = {}
    for image in images:
        if image.stem.isdigit():
            by_id.setdefault(int(image.stem), []).append(image)
    splits.add_class(spec.class_name, root)
    used: set[int] = set()
    for line_no, row in read_csv_rows(labels, ("id", "hemorrhage"), root):
        if not (row["id"].isdigit() and row["hemorrhage"] in ("0", "1")):
            problems.error(f"{where} line {line_no}: expected an integer id and hemorrhage 0 or 1, "
                           f"got {row['id']!r}, {row['hemorrhage']!r}")
            continue
        image_id, matches = int(row["id"]), by_id.get(int(row["id"]), [])
        if len(matches) != 1 or image_id in used:
            found = listing([relative(i, root) for i in matches]) or "none"
            problems.error(f"{where} line {line_no}: id {image_id} needs exactly one image named "
                           f"{image_id:03d}.png (or {image_id}.png), found {found}"
                           + (" (the id is listed twice)" if image_id in used else ""))
            continue
        used.add(image_id)
        anomalous = row["hemorrhage"] == "1"
        splits.add("test", matches[0], None, spec.class_name, "hemorrhage" if anomalous else "good", anomalous)
    unlisted = [relative(i, root) for i in images if not i.stem.isdigit() or int(i.stem) not in used]
    if unlisted:
        problems.warn(f"{len(unlisted)} image(s) not listed in {where} were ignored: {listing(unlisted)}")


def walk_image_level(root: Path, spec: DatasetSpec, problems: Problems, splits: Splits) -> None:
    """BrainMRI and Br35H: `no/` (normal) and `yes/` (anomalous), image-level only;
    other folders (Br35H's unlabelled `pred/`) are ignored with a warning."""
    labels = spec.normal_dirs + spec.anomalous_dirs

    def has_labels(folder: Path) -> bool:
        return all(child_dir(folder, name) is not None for name in labels)

    expected = " and ".join(f"{name}/" for name in labels) + " folders"
    for class_dir in find_class_dirs(root, spec, problems, has_labels, expected):
        cls = class_name_of(spec, class_dir)
        splits.add_class(cls, class_dir)
        walk_label_folders(class_dir, cls, "test", spec, splits, problems, None)


def walk_segmentation(root: Path, spec: DatasetSpec, problems: Problems, splits: Splits) -> None:
    """ISIC, CVC-ColonDB, CVC-ClinicDB, Kvasir-SEG, EndoTect: every image is anomalous
    and has a mask of the same name (plus the suffix, if any) in the mask folder."""
    folders = [name for name in (spec.image_dir, spec.mask_dir) if name]

    def has_folders(folder: Path) -> bool:
        return all(child_dir(folder, name) is not None for name in folders)

    if folders:
        expected = " and ".join(f"{name}/" for name in folders) + " folders"
        class_dirs = find_class_dirs(root, spec, problems, has_folders, expected)
    else:
        class_dirs = [root]
    for class_dir in class_dirs:
        cls = class_name_of(spec, class_dir)
        splits.add_class(cls, class_dir)
        add_segmentation_class(class_dir, cls, spec, splits, problems, spec.image_dir, spec.mask_dir)


def walk_folder(root: Path, spec: DatasetSpec, problems: Problems, splits: Splits) -> None:
    """A generic single- or multi-class layout for your own data, per class either
    `images/` with `masks/` (every image anomalous, like the polyp sets) or `good/`
    plus one folder per defect type, with optional masks in `masks/{defect}/` or
    `ground_truth/{defect}/` (`{stem}.png` or `{stem}_mask.png`). Without a mask folder
    the class is image-level."""
    def has_layout(folder: Path) -> bool:
        return child_dir(folder, "images") is not None or any(
            child_dir(folder, name) is not None for name in spec.normal_dirs)

    for class_dir in find_class_dirs(root, spec, problems, has_layout, "images/ or good/ (ok/, normal/, no/) folders"):
        cls = class_name_of(spec, class_dir)
        splits.add_class(cls, class_dir)
        if child_dir(class_dir, "images") is not None:
            add_segmentation_class(class_dir, cls, spec, splits, problems, "images", "masks")
        else:
            mask_root = child_dir(class_dir, "masks") or child_dir(class_dir, "ground_truth")
            walk_label_folders(class_dir, cls, "test", spec, splits, problems, mask_root,
                               skip=("masks", "ground_truth"))
