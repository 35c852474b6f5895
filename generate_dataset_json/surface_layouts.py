"""Walkers for the industrial benchmarks VCP-CLIP adds (SPEC_VCP §12): KolektorSDD2,
RSDD, Road (CrackForest), MSD, BSD (BSData) and GC10-DET, each from its public release
layout, plus the `--convert_masks` steps of the three whose ground truth is not a mask
PIL reads right (conversions.py). They reuse the helpers of layouts.py: masks pair with
images by name through `MaskIndex`, and every problem is collected in `Problems`.

Where a release annotates only some of its images (CrackForest's .mat files, BSData's
labelme files, GC10-DET's boxes), the annotated images are the dataset and the others
are left out with one warning; an annotated image whose mask is missing is an error.
"""

from __future__ import annotations

import filecmp
from pathlib import Path
from typing import Sequence

from .conversions import MaskConversion, converted_dir, crackforest_mask, jpeg_mask, labelme_mask, mask_has_defect
from .files import (DatasetError, MaskIndex, Problems, check_unique_stems, child_dir, list_images, listing, relative,
                    strip_suffix, subdirs)
from .layouts import RESTORE_HINT, add_paired, add_segmentation_class, class_name_of, find_class_dirs
from .spec import DatasetSpec
from .splits import SPLITS, Splits

LOSSY_MASK_EXTENSIONS = (".jpg", ".jpeg")


# --------------------------------------------------------------------------- helpers

def masks_to_read(source: Path, spec: DatasetSpec, root: Path, *, what: str) -> Path:
    """The folder whose masks the walker reads: the converted `<source>_png/` if there,
    else `source` itself when it already holds lossless image masks; otherwise an error
    saying to run `--convert_masks` (and what it would write)."""
    converted = converted_dir(source)
    if converted.is_dir():
        return converted
    masks = list_images(source) if source.is_dir() else []
    if masks and not any(m.suffix.lower() in LOSSY_MASK_EXTENSIONS for m in masks):
        return source
    raise DatasetError(f"{relative(source, root)}/ holds {what}, which must become PNG masks first: run "
                       f"`python -m generate_dataset_json {spec.name} --root {root} --convert_masks` "
                       f"(it writes {relative(converted, root)}/{{stem}}.png and then meta.json)")


def conversion_hint(source: Path, root: Path, spec: DatasetSpec) -> str:
    """What to do about a missing converted mask."""
    return (f"restore its annotation in {relative(source, root)}/ and run `python -m generate_dataset_json "
            f"{spec.name} --root {root} --convert_masks` again (it converts only what is missing)")


def annotated_only(images: Sequence[Path], annotations: Sequence[Path], root: Path, problems: Problems,
                   why: str) -> list[Path]:
    """The images that have an annotation file of their stem; the others are left out
    with one warning (`why` says what they lack). Without annotation files, all images."""
    if not annotations:
        return list(images)
    stems = {a.stem for a in annotations}
    kept = [image for image in images if image.stem in stems]
    left_out = [relative(image, root) for image in images if image.stem not in stems]
    if left_out:
        problems.warn(f"{len(left_out)} image(s) {why} and were left out: {listing(left_out)}")
    return kept


def files_with_suffix(folder: Path | None, suffix: str) -> list[Path]:
    """The visible files of `folder` ending in `suffix` (any case), sorted."""
    if folder is None or not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == suffix
                  and not p.name.startswith("."))


def by_stem(images: Sequence[Path]) -> dict[str, Path]:
    """Images keyed by stem (the first in path order; duplicates are reported elsewhere)."""
    found: dict[str, Path] = {}
    for image in images:
        found.setdefault(image.stem, image)
    return found


# --------------------------------------------------------------------------- KolektorSDD2

def walk_ksdd2(root: Path, spec: DatasetSpec, problems: Problems, splits: Splits) -> None:
    """KolektorSDD2 as unzipped: `train/` and `test/` holding `{id}.png` and its ground
    truth `{id}_GT.png` side by side. Every image has one; an image whose mask marks no
    pixel is normal (KSDD2 labels by mask), so each mask is read once."""
    def has_test(folder: Path) -> bool:
        return child_dir(folder, "test") is not None

    for class_dir in find_class_dirs(root, spec, problems, has_test, "train/ and test/ folders"):
        cls = class_name_of(spec, class_dir)
        splits.add_class(cls, class_dir)
        for split in SPLITS:
            folder = child_dir(class_dir, split)
            if folder is not None:
                _add_masked_by_content(folder, split, cls, spec, splits, problems)


def _add_masked_by_content(folder: Path, split: str, cls: str, spec: DatasetSpec, splits: Splits,
                           problems: Problems) -> None:
    files = list_images(folder)
    masks = [f for f in files if strip_suffix(f.stem, spec.mask_suffixes) is not None]
    mask_set = set(masks)
    images = [f for f in files if f not in mask_set]
    check_unique_stems(images, splits.root, problems)
    index = MaskIndex(masks, spec.mask_suffixes, splits.root, problems)
    for image in images:
        mask = index.take(image)
        if mask is None:
            problems.error(f"image {relative(image, splits.root)} has no ground truth: expected "
                           f"{relative(folder, splits.root)}/{image.stem}{spec.mask_suffixes[0]}.png ({spec.title} "
                           f"ships one for every image, empty for normal ones); {RESTORE_HINT}")
            continue
        try:
            defect = mask_has_defect(mask)
        except (OSError, ValueError) as error:
            problems.error(f"cannot read mask {relative(mask, splits.root)} ({error}); re-download it")
            continue
        splits.add(split, image, mask, cls, "defect" if defect else "good", defect)
    index.report_unused(problems)


# --------------------------------------------------------------------------- RSDD

RSDD_IMAGES, RSDD_TRUTH = "Rail surface images", "GroundTruth"


def rsdd_class_name(folder: Path) -> str:
    """`Type-I rail` / `Type-II rail` from the release's folder names (`Type-II RSDDs
    dataset`...), else the folder's own name."""
    name = folder.name.lower().replace(" ", "-").replace("_", "-")
    if "type-ii" in name:
        return "Type-II rail"
    if "type-i" in name:
        return "Type-I rail"
    return folder.name


def _rsdd_dirs(root: Path, spec: DatasetSpec, problems: Problems) -> list[Path]:
    """The rail type folders: the root, its sub-folders, or those of the one sub-folder
    that holds them (the archive unpacks into `RSDDs dataset/Type-I RSDDs dataset/`)."""
    def has_layout(folder: Path) -> bool:
        return child_dir(folder, RSDD_IMAGES) is not None and child_dir(folder, RSDD_TRUTH) is not None

    base = root
    if not has_layout(root) and not any(has_layout(folder) for folder in subdirs(root)):
        nested = [folder for folder in subdirs(root) if any(has_layout(inner) for inner in subdirs(folder))]
        if len(nested) == 1:
            base = nested[0]
    return find_class_dirs(base, spec, problems, has_layout, f"'{RSDD_IMAGES}/' and '{RSDD_TRUTH}/' folders")


def walk_rsdd(root: Path, spec: DatasetSpec, problems: Problems, splits: Splits) -> None:
    """RSDDs: one folder per rail type with `Rail surface images/{name}.jpg` and
    `GroundTruth/{name}.jpg`; one class per type. Every image holds a defect. The JPEG
    ground truth is read from its converted `GroundTruth_png/` (lossless masks in
    `GroundTruth/` are read as they are)."""
    seen: dict[str, Path] = {}
    for class_dir in _rsdd_dirs(root, spec, problems):
        cls = rsdd_class_name(class_dir)
        if cls in seen:
            raise DatasetError(f"{relative(seen[cls], root)}/ and {relative(class_dir, root)}/ are both {cls}; "
                               "keep one of them under --root")
        seen[cls] = class_dir
        splits.add_class(cls, class_dir)
        source = child_dir(class_dir, RSDD_TRUTH)
        masks_dir = masks_to_read(source, spec, root, what="JPEG masks (compression blurs their edges)")
        index = MaskIndex(list_images(masks_dir), spec.mask_suffixes, root, problems)
        hint = conversion_hint(source, root, spec) if masks_dir != source else RESTORE_HINT
        add_paired(splits, "test", list_images(child_dir(class_dir, RSDD_IMAGES)), index, cls, masks_dir, spec,
                   problems, specie="defect", hint=hint)
        index.report_unused(problems)


def convert_rsdd(root: Path, spec: DatasetSpec, problems: Problems) -> list[str]:
    """GroundTruth/*.jpg of each rail type into GroundTruth_png/{stem}.png, grey > 127."""
    lines = []
    for class_dir in _rsdd_dirs(root, spec, problems):
        source = child_dir(class_dir, RSDD_TRUTH)
        images = by_stem(list_images(child_dir(class_dir, RSDD_IMAGES)))
        conversion = MaskConversion(source, images, root, problems, "JPEG ground truth, grey > 127 is defect")
        lines.append(conversion.run(list_images(source), lambda mask, size: jpeg_mask(mask, problems, root)))
    return lines


# --------------------------------------------------------------------------- Road (CrackForest)

CFD_IMAGES, CFD_TRUTH = "image", "groundTruth"


def _road_dirs(root: Path, spec: DatasetSpec, problems: Problems) -> list[Path]:
    def has_layout(folder: Path) -> bool:
        return child_dir(folder, CFD_IMAGES) is not None and (
            child_dir(folder, CFD_TRUTH) is not None or child_dir(folder, CFD_TRUTH + "_png") is not None)

    return find_class_dirs(root, spec, problems, has_layout, f"{CFD_IMAGES}/ and {CFD_TRUTH}/ folders")


def walk_road(root: Path, spec: DatasetSpec, problems: Problems, splits: Splits) -> None:
    """CrackForest: `image/{stem}.jpg` and `groundTruth/{stem}.mat`, read from the masks
    `--convert_masks` writes to `groundTruth_png/` (or PNG masks already in
    `groundTruth/`). Images without a .mat are not annotated and are left out."""
    for class_dir in _road_dirs(root, spec, problems):
        cls = class_name_of(spec, class_dir)
        splits.add_class(cls, class_dir)
        source = child_dir(class_dir, CFD_TRUTH) or class_dir / CFD_TRUTH
        masks_dir = masks_to_read(source, spec, root, what="MATLAB ground truth (.mat)")
        images = annotated_only(list_images(child_dir(class_dir, CFD_IMAGES)), files_with_suffix(source, ".mat"),
                                root, problems, f"have no ground truth in {relative(source, root)}/")
        index = MaskIndex(list_images(masks_dir), spec.mask_suffixes, root, problems)
        hint = conversion_hint(source, root, spec) if masks_dir != source else RESTORE_HINT
        add_paired(splits, "test", images, index, cls, masks_dir, spec, problems, specie="crack", hint=hint)
        index.report_unused(problems)


def convert_road(root: Path, spec: DatasetSpec, problems: Problems) -> list[str]:
    """groundTruth/*.mat into groundTruth_png/{stem}.png: crack = Segmentation == 2."""
    lines = []
    for class_dir in _road_dirs(root, spec, problems):
        source = child_dir(class_dir, CFD_TRUTH)
        mats = files_with_suffix(source, ".mat")
        if not mats:
            problems.error(f"{relative(class_dir, root) or '.'}/ has no {CFD_TRUTH}/*.mat files to convert")
            continue
        images = by_stem(list_images(child_dir(class_dir, CFD_IMAGES)))
        conversion = MaskConversion(source, images, root, problems, "MATLAB Segmentation, 2 is crack")
        lines.append(conversion.run(mats, lambda mat, size: crackforest_mask(mat, problems, root)))
    return lines


# --------------------------------------------------------------------------- MSD

MSD_MASK_DIRS = {"scratch": "ground_truth_1", "stain": "ground_truth_1", "oil": "ground_truth_2"}
MSD_VOC_IMAGES, MSD_VOC_MASKS = "JPEGImages", "SegmentationClass"


def walk_msd(root: Path, spec: DatasetSpec, problems: Problems, splits: Splits) -> None:
    """MSD as on Kaggle: `good/`, `oil/`, `scratch/`, `stain/` images, masks `{stem}.png`
    in `ground_truth_1/` (scratch and stain) and `ground_truth_2/` (oil); or the PASCAL
    VOC release: `JPEGImages/` with `SegmentationClass/{stem}.png` (every image
    anomalous), plus the separate `good/` download if present."""
    def has_layout(folder: Path) -> bool:
        return child_dir(folder, MSD_VOC_IMAGES) is not None or any(
            child_dir(folder, label) is not None for label in MSD_MASK_DIRS)

    expected = f"{MSD_VOC_IMAGES}/ or oil/, scratch/, stain/ folders"
    for class_dir in find_class_dirs(root, spec, problems, has_layout, expected):
        cls = class_name_of(spec, class_dir)
        splits.add_class(cls, class_dir)
        if child_dir(class_dir, MSD_VOC_IMAGES) is not None:
            add_segmentation_class(class_dir, cls, spec, splits, problems, MSD_VOC_IMAGES, MSD_VOC_MASKS,
                                   specie="defect")
            known = {MSD_VOC_IMAGES.lower(), MSD_VOC_MASKS.lower(), "imagesets", "annotations"}
        else:
            _add_msd_label_folders(class_dir, cls, spec, splits, problems)
            known = set(MSD_MASK_DIRS) | set(MSD_MASK_DIRS.values())
        for folder in subdirs(class_dir):
            name = folder.name.lower()
            if spec.label_of(name) is False:
                for image in list_images(folder):
                    splits.add("test", image, None, cls, folder.name, False)
            elif name not in known:
                problems.warn(f"ignored folder {relative(folder, root)}/: not part of the {spec.title} layout")


def _add_msd_label_folders(class_dir: Path, cls: str, spec: DatasetSpec, splits: Splits,
                           problems: Problems) -> None:
    """oil/, scratch/, stain/ paired through the one index of their shared mask folder."""
    indexes: dict[str, tuple[Path, MaskIndex]] = {}
    for label, mask_name in MSD_MASK_DIRS.items():
        folder = child_dir(class_dir, label)
        if folder is None:
            continue
        if mask_name not in indexes:
            mask_dir = child_dir(class_dir, mask_name) or class_dir / mask_name
            masks = list_images(mask_dir) if mask_dir.is_dir() else []
            indexes[mask_name] = (mask_dir, MaskIndex(masks, spec.mask_suffixes, splits.root, problems))
        mask_dir, index = indexes[mask_name]
        add_paired(splits, "test", list_images(folder), index, cls, mask_dir, spec, problems)
    for _, index in indexes.values():
        index.report_unused(problems)


# --------------------------------------------------------------------------- BSD (BSData)

BSD_IMAGES, BSD_LABELS = "data", "label"


def _bsd_dirs(root: Path, spec: DatasetSpec, problems: Problems) -> list[Path]:
    def has_layout(folder: Path) -> bool:
        return child_dir(folder, BSD_IMAGES) is not None and child_dir(folder, BSD_LABELS) is not None

    return find_class_dirs(root, spec, problems, has_layout, f"{BSD_IMAGES}/ and {BSD_LABELS}/ folders")


def walk_bsd(root: Path, spec: DatasetSpec, problems: Problems, splits: Splits) -> None:
    """BSData: `data/*.jpg` and labelme files `label/{stem}.json` for the images that
    show pitting, read from the masks `--convert_masks` writes to `label_png/`. Only the
    annotated images are listed: the VCP-CLIP paper uses only BSD's defective images."""
    for class_dir in _bsd_dirs(root, spec, problems):
        cls = class_name_of(spec, class_dir)
        splits.add_class(cls, class_dir)
        source = child_dir(class_dir, BSD_LABELS)
        masks_dir = masks_to_read(source, spec, root, what="labelme polygons (.json)")
        images = annotated_only(list_images(child_dir(class_dir, BSD_IMAGES)), files_with_suffix(source, ".json"),
                                root, problems, f"have no {relative(source, root)}/*.json (no pitting annotated; "
                                "the paper uses only the defective images)")
        index = MaskIndex(list_images(masks_dir), spec.mask_suffixes, root, problems)
        hint = conversion_hint(source, root, spec) if masks_dir != source else RESTORE_HINT
        add_paired(splits, "test", images, index, cls, masks_dir, spec, problems, specie="pitting", hint=hint)
        index.report_unused(problems)


def convert_bsd(root: Path, spec: DatasetSpec, problems: Problems) -> list[str]:
    """label/*.json (labelme) into label_png/{stem}.png: the shapes filled."""
    lines = []
    for class_dir in _bsd_dirs(root, spec, problems):
        source = child_dir(class_dir, BSD_LABELS)
        images = by_stem(list_images(child_dir(class_dir, BSD_IMAGES)))
        conversion = MaskConversion(source, images, root, problems, "labelme shapes filled")
        lines.append(conversion.run(files_with_suffix(source, ".json"),
                                    lambda label, size: labelme_mask(label, size, problems, root)))
    return lines


# --------------------------------------------------------------------------- GC10-DET

GC10_MASKS = "masks"
GC10_BOX_DIRS = ("lable", "label")  # the release spells it `lable`
GC10_NO_MASKS = (
    "GC10-DET publishes bounding boxes only ({boxes}), no masks: the VCP-CLIP paper made its masks from the "
    "boxes with MobileSAM and did not release them, so {root} cannot give a pixel-level meta.json as downloaded. "
    "Put masks you made (e.g. with MobileSAM from the boxes) in {root}/masks/{{stem}}.png (0 = background, "
    "non-zero = defect), or arrange images and masks in the generic layout (`python -m generate_dataset_json "
    "folder -h`). Boxes are never turned into masks here: a box-shaped mask counts every background pixel "
    "in the box as defect.")


def walk_gc10(root: Path, spec: DatasetSpec, problems: Problems, splits: Splits) -> None:
    """GC10-DET with masks you made: the release's image folders (`1/` ... `10/`, or
    named by defect), its boxes in `lable/*.xml` (or `label/`, at any depth: one Kaggle
    copy has `label/label/`), and `masks/{stem}.png`. The images
    with a box file are the dataset; each needs a mask. The release files some images
    under two defect folders: identical copies are listed once."""
    def has_masks(folder: Path) -> bool:
        return child_dir(folder, GC10_MASKS) is not None

    if not has_masks(root) and not any(has_masks(folder) for folder in subdirs(root)):
        raise DatasetError(GC10_NO_MASKS.format(root=root, boxes="lable/*.xml"))
    for class_dir in find_class_dirs(root, spec, problems, has_masks, f"a {GC10_MASKS}/ folder"):
        cls = class_name_of(spec, class_dir)
        splits.add_class(cls, class_dir)
        masks_dir = child_dir(class_dir, GC10_MASKS)
        box_dir = next((child_dir(class_dir, name) for name in GC10_BOX_DIRS if child_dir(class_dir, name)), None)
        images = list_images(class_dir, recursive=True, exclude=[masks_dir] + ([box_dir] if box_dir else []))
        boxes = sorted(p for p in box_dir.rglob("*") if p.suffix.lower() == ".xml") if box_dir else []
        images = annotated_only(_without_copies(images, root, problems), boxes, root, problems,
                                "have no box file (GC10-DET leaves a few unlabelled)")
        index = MaskIndex(list_images(masks_dir, recursive=True), spec.mask_suffixes, root, problems)
        add_paired(splits, "test", images, index, cls, masks_dir, spec, problems,
                   hint="make it (GC10-DET publishes boxes only) or remove the image")
        index.report_unused(problems)


def _without_copies(images: Sequence[Path], root: Path, problems: Problems) -> list[Path]:
    """Drops byte-identical copies of an image filed under a second folder (keeping the
    first by path, with one warning); a different image of the same name stays, so the
    pairing check reports it."""
    first: dict[str, Path] = {}
    kept, copies = [], []
    for image in images:
        original = first.setdefault(image.stem, image)
        if original is image or not filecmp.cmp(original, image, shallow=False):
            kept.append(image)
        else:
            copies.append(relative(image, root))
    if copies:
        problems.warn(f"{len(copies)} image(s) are copies of an image in another folder and are listed once, "
                      f"under the first folder: {listing(copies)}")
    return kept
