"""`DatasetSpec`, one registry row: how a dataset is laid out and where to get it.

It lives in its own module so that the walkers (`layouts`) and the table of rows
(`registry`) can both import it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .files import Problems
from .splits import Splits

# A walker reads one layout: it fills `Splits` and records problems (see layouts.py).
Walker = Callable[[Path, "DatasetSpec", Problems, Splits], None]
# A mask converter writes PNG masks from annotations PIL cannot read as masks (MATLAB
# files, JPEG masks, polygons) beside the release; it returns one line per folder written.
MaskConverter = Callable[[Path, "DatasetSpec", Problems], "list[str]"]


@dataclass(frozen=True)
class DatasetSpec:
    """How one dataset is laid out on disk and where to get it."""

    name: str                                   # the command's NAME argument
    title: str                                  # the dataset's usual name, for messages
    walker: Walker                              # the layout function that reads it
    layout: str                                 # the expected layout, in words (help, errors, README)
    url: str                                    # official download / project page
    url_certain: bool = True                    # False where the URL is from memory and unverified
    class_name: str | None = None               # a fixed class name; None: the folder names
    normal_dirs: tuple[str, ...] = ("good",)    # label folders holding normal images
    anomalous_dirs: tuple[str, ...] = ()        # label folders of anomalies; () = every other folder
    mask_suffixes: tuple[str, ...] = ("_mask",)  # mask stem = image stem + one of these
    image_dir: str | None = None                # segmentation sets: the image folder
    mask_dir: str | None = None                 # the mask folder (DAGM: inside each split)
    csv_path: str | None = None                 # VisA's split csv, HeadCT's labels
    convert_masks: MaskConverter | None = None  # `--convert_masks`: PNG masks from the release's annotations
    convert_help: str = ""                      # what `--convert_masks` reads and writes, for its help

    def label_of(self, folder_name: str) -> bool | None:
        """Whether a label folder holds anomalies (True), normal images (False), or is
        not a label folder at all (None, e.g. Br35H's `pred/`); case-insensitive."""
        name = folder_name.lower()
        if name in (n.lower() for n in self.normal_dirs):
            return False
        if not self.anomalous_dirs:
            return True
        return True if name in (n.lower() for n in self.anomalous_dirs) else None
