"""File-system helpers every layout shares: which files are images, how folders are
found, and how masks are paired with images.

Masks are paired with images by file name (stem plus the layout's suffix), never by
sort order: the reference paired sorted lists, so one missing mask silently shifted
every later pair onto the wrong image.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

from utils import DatasetError  # one class for the whole project, re-exported for the walkers

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp"})

# How many names one message lists before it says "and N more": a missing mask folder
# can mean thousands of images, and the first few are enough to find the problem.
MAX_LISTED = 5


class Problems:
    """Collects the errors and warnings of one walk over a dataset.

    Collecting instead of stopping at the first error lets the user see every missing
    mask of a download in one run rather than fixing them one run at a time.
    """

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.warnings: list[str] = []

    def error(self, message: str) -> None:
        self.errors.append(message)

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def raise_if_errors(self) -> None:
        """Raises one DatasetError that lists every error (the first 20 of them)."""
        if not self.errors:
            return
        if len(self.errors) == 1:
            raise DatasetError(self.errors[0])
        shown = "\n".join(f"  - {message}" for message in self.errors[:20])
        more = f"\n  ... and {len(self.errors) - 20} more" if len(self.errors) > 20 else ""
        raise DatasetError(f"{len(self.errors)} problems in the dataset:\n{shown}{more}")


def listing(names: Sequence[str]) -> str:
    """A short human list of names: the first few, then how many more."""
    shown = ", ".join(names[:MAX_LISTED])
    if len(names) > MAX_LISTED:
        shown += f" and {len(names) - MAX_LISTED} more"
    return shown


def is_hidden(name: str) -> bool:
    """Dot files, macOS resource forks (`._x.png`) and `__MACOSX` folders are archive
    debris, not data."""
    return name.startswith(".") or name == "__MACOSX"


def is_image(path: Path) -> bool:
    """Image files by extension, case-insensitively (DAGM ships `.PNG`); text files such
    as `readme.txt`, `license.txt` or DAGM's `Labels.txt` are not images."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and not is_hidden(path.name)


def subdirs(folder: Path) -> list[Path]:
    """The visible sub-folders of `folder`, sorted by name so that runs are deterministic."""
    with os.scandir(folder) as entries:
        found = [Path(e.path) for e in entries if e.is_dir() and not is_hidden(e.name)]
    return sorted(found)


def child_dir(folder: Path | None, name: str) -> Path | None:
    """The sub-folder called `name`, matched exactly first and then case-insensitively
    (`Train` and `train`, `Label` and `label` both occur in the wild); None if absent."""
    if folder is None or not folder.is_dir():
        return None
    exact = folder / name
    if exact.is_dir():
        return exact
    matches = [d for d in subdirs(folder) if d.name.lower() == name.lower()]
    return matches[0] if len(matches) == 1 else None


def list_images(folder: Path, *, recursive: bool = False, exclude: Iterable[Path] = ()) -> list[Path]:
    """The image files in `folder` (and below it when `recursive`), sorted by path.

    `exclude` names folders to skip entirely, such as a segmentation set's `masks/`
    when its images are collected from the rest of the tree.
    """
    excluded = {os.path.normcase(os.path.abspath(p)) for p in exclude}
    found: list[Path] = []
    for current, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(
            d for d in dirs
            if not is_hidden(d) and os.path.normcase(os.path.abspath(os.path.join(current, d))) not in excluded
        )
        found.extend(Path(current, f) for f in files if is_image(Path(f)))
        if not recursive:
            break
    return sorted(found)


def relative(path: Path, root: Path) -> str:
    """`path` relative to the dataset root with forward slashes, as meta.json stores it."""
    return Path(os.path.relpath(path, root)).as_posix()


def strip_suffix(stem: str, suffixes: Sequence[str]) -> str | None:
    """The image stem a mask stem belongs to: the stem without the first of `suffixes`
    it ends with (compared case-insensitively, longest suffix first; `""` means the
    mask has the image's own stem). None when the stem ends with none of them."""
    for suffix in sorted(suffixes, key=len, reverse=True):
        if not suffix:
            return stem
        if len(stem) > len(suffix) and stem.lower().endswith(suffix.lower()):
            return stem[: -len(suffix)]
    return None


def describe_mask_name(suffixes: Sequence[str]) -> str:
    """How a mask of image `000.png` is expected to be named, for error messages."""
    return " or ".join(f"{{stem}}{s}.png" for s in suffixes) + " (any image extension)"


class MaskIndex:
    """The masks of one folder (or tree) keyed by the stem of the image they belong to.

    Pairing goes through this index only, so a missing mask can never shift another
    pair. Masks nobody asked for are reported as warnings once the layout is walked.
    """

    def __init__(self, masks: Iterable[Path], suffixes: Sequence[str], root: Path, problems: Problems):
        self._by_stem: dict[str, Path] = {}
        self._taken: set[str] = set()
        self._root = root
        self._suffixes = tuple(suffixes)
        for mask in masks:
            stem = strip_suffix(mask.stem, self._suffixes)
            if stem is None:
                problems.warn(f"ignored {relative(mask, root)}: a mask name must look like "
                              f"{describe_mask_name(self._suffixes)}")
            elif stem in self._by_stem:
                problems.error(f"two masks for the image stem {stem!r}: {relative(self._by_stem[stem], root)} "
                               f"and {relative(mask, root)}; delete the wrong one")
            else:
                self._by_stem[stem] = mask

    def __len__(self) -> int:
        return len(self._by_stem)

    def take(self, image: Path) -> Path | None:
        """The mask of `image`, or None; the mask counts as used from now on."""
        mask = self._by_stem.get(image.stem)
        if mask is not None:
            self._taken.add(image.stem)
        return mask

    def report_unused(self, problems: Problems) -> None:
        """A mask without an image is a warning: the image may simply not be downloaded."""
        unused = [relative(m, self._root) for s, m in sorted(self._by_stem.items()) if s not in self._taken]
        if unused:
            problems.warn(f"{len(unused)} mask(s) have no image and were ignored: {listing(unused)}")


def check_unique_stems(images: Sequence[Path], root: Path, problems: Problems) -> None:
    """Masks are paired by stem, so two images sharing a stem in one pairing scope
    (`000.png` next to `000.bmp`, or the same name in two image folders) would share one
    mask: that is an error naming both."""
    seen: dict[str, Path] = {}
    for image in images:
        other = seen.setdefault(image.stem, image)
        if other is not image:
            problems.error(f"{relative(other, root)} and {relative(image, root)} share the name {image.stem!r}, "
                           "so their masks cannot be told apart; remove or rename one")
