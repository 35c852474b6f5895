"""What predict.py reads: image files from PATH arguments (files, folders, globs) and the output names that
mirror them below `--out`. Plain Python, no torch: a run on an exported file needs nothing more."""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
GLOB_CHARACTERS = frozenset("*?[")
# Folders a dataset keeps its masks in: a folder's walk skips them (--include_mask_folders), or a dataset
# folder given as PATH would score its ground-truth masks as if they were parts.
MASK_FOLDERS = frozenset({"ground_truth", "groundtruth", "ground-truth", "gt", "mask", "masks", "label", "labels"})


@dataclass(frozen=True)
class InputImage:
    path: Path  # as found (relative paths stay relative), written to scores.csv
    name: str  # output path below --out, without extension


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder)
        return True
    except ValueError:
        return False


def _in_mask_folder(path: Path, folder: Path) -> bool:
    return any(part.lower() in MASK_FOLDERS for part in path.relative_to(folder).parts[:-1])


def find_images(arguments: list[str], out_dir: Path, include_mask_folders: bool = False,
                skipped: list | None = None) -> tuple[list[Path], list[str]]:
    """Expand PATH arguments into image files (first-seen order, no duplicates), and the arguments that matched nothing.

    Files named explicitly are always tried (whatever their extension); files found in
    folders or by globs must have an image extension, and a folder's walk skips `out_dir`
    when that lies inside it (a rerun would otherwise read its own overlays) and, unless
    `include_mask_folders`, the files below folders named like mask folders (MASK_FOLDERS; those
    are added to `skipped` when given). A mask folder given as PATH itself is walked.
    """
    out_dir = out_dir.resolve()
    found: dict[Path, Path] = {}
    unmatched = []

    def add(path: Path, explicit: bool) -> bool:
        """Whether `path` is an image to process (already found through another argument or not)."""
        if path.is_file() and (explicit or _is_image(path)):
            found.setdefault(path.resolve(), path)
            return True
        return False

    def add_folder(folder: Path) -> bool:
        skip_out = out_dir != folder.resolve() and _inside(out_dir, folder.resolve())
        added = []
        for path in sorted(folder.rglob("*")):
            if skip_out and _inside(path, out_dir):
                continue
            if not include_mask_folders and _in_mask_folder(path, folder) and _is_image(path):
                if skipped is not None and path.is_file():
                    skipped.append(path)
                continue
            added.append(add(path, explicit=False))
        return any(added)

    for argument in arguments:
        path = Path(argument)
        matched = False
        if path.is_dir():
            matched = add_folder(path)
        elif path.is_file():
            matched = add(path, explicit=True)
        elif GLOB_CHARACTERS & set(argument):
            for match in sorted(glob.glob(argument, recursive=True)):
                match = Path(match)
                matched |= add_folder(match) if match.is_dir() else add(match, explicit=False)
        if not matched:
            unmatched.append(argument)
    return list(found.values()), unmatched


def output_names(paths: list[Path]) -> list[str]:
    """Output names that mirror the inputs below their common folder: `a/good/000` and `b/good/000` stay apart.

    Two inputs that differ only by extension (`x.png`, `x.jpg`) get `x` and `x_2`.
    """
    from reporting import visualization

    if not paths:
        return []
    resolved = [p.resolve() for p in paths]
    common = Path(os.path.commonpath([str(p.parent) for p in resolved]))
    names = []
    for path in resolved:
        relative = path.relative_to(common).with_suffix("")
        names.append("/".join(visualization.safe_name(part) for part in relative.parts))
    return visualization.unique_names(names)


def check_no_overwrite(items: list[InputImage], out_dir: Path) -> None:
    """Refuse an --out that would write an overlay or map over one of the input images."""
    inputs = {item.path.resolve() for item in items}
    for item in items:
        for suffix in (".png", ".npy", "_mask.png"):
            target = (out_dir / f"{item.name}{suffix}").resolve()
            if target in inputs:
                raise ValueError(f"--out {out_dir} would overwrite the input {target} with an overlay: "
                                 f"choose an output folder outside the input folders")
