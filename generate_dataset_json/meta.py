"""Building, summarising and writing meta.json (SPEC §10)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Callable

from .files import DatasetError, Problems
from .registry import get_spec
from .splits import SPLITS, Splits


class DatasetWarning(UserWarning):
    """Something odd but harmless in a dataset (a mask without an image, an ignored
    folder); the meta.json is still right."""


def _warn(message: str) -> None:
    warnings.warn(message, DatasetWarning, stacklevel=3)


def build_meta(name: str, root: str | os.PathLike, *, warn: Callable[[str], None] | None = None) -> dict:
    """Walks the dataset `name` (a registry key such as "mvtec") under `root` and returns
    the meta.json dict, paths relative to `root`.

    Raises DatasetError listing every problem found (a missing mask, an empty class...).
    Warnings go to `warn`, by default `warnings.warn` with DatasetWarning; the command
    passes a function that prints them.
    """
    spec = get_spec(name)
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} is not a folder: pass --root the folder {spec.title} "
                           f"was unpacked into (layout: {spec.layout})")
    problems, splits = Problems(), Splits(root)
    spec.walker(root, spec, problems, splits)
    splits.check_not_empty(problems)
    for message in problems.warnings:
        (warn or _warn)(message)
    problems.raise_if_errors()
    return splits.to_meta()


class MetaExistsError(DatasetError):
    """The meta file to write is already there: it may hold hand edits, so the command
    replaces it only when asked to (`--overwrite`)."""


def refuse_to_replace(path: str | os.PathLike) -> None:
    """Raises MetaExistsError, one line naming the file and the flag, if `path` exists."""
    path = Path(path)
    if path.exists():
        raise MetaExistsError(f"{path} already exists and may hold hand edits; pass --overwrite to replace it "
                              f"(the current file is then kept as {backup_path(path).name})")


def backup_path(path: Path) -> Path:
    """Where `--overwrite` keeps the file it replaces: `<name>.bak` beside it."""
    return path.with_name(path.name + ".bak")


def keep_backup(path: str | os.PathLike) -> Path | None:
    """Copies `path` to `<name>.bak` (atomically, replacing an older .bak) before it is
    overwritten; returns the copy, or None when there was nothing to keep."""
    path = Path(path)
    if not path.is_file():
        return None
    def copy(stream) -> None:
        with open(path, "rb") as source:
            shutil.copyfileobj(source, stream)

    backup = backup_path(path)
    _atomic_write(backup, copy, binary=True)
    shutil.copystat(path, backup)  # the hand-edited file's time stays visible on the copy
    return backup


def write_meta(meta: dict, path: str | os.PathLike) -> Path:
    """Writes `meta` as JSON to `path` atomically: a temporary file in the same folder,
    then `os.replace`, so an interrupted run never leaves a truncated meta.json that a
    later training run would read. The format (indent 4, final newline) is the one the
    reference's make_meta.py writes, so the files compare byte for byte."""
    def dump(stream) -> None:
        json.dump(meta, stream, indent=4)
        stream.write("\n")

    path = Path(path)
    _atomic_write(path, dump)
    return path


def _atomic_write(path: Path, fill: Callable, *, binary: bool = False) -> None:
    """Writes a temporary file in `path`'s folder with `fill(stream)`, syncs it, gives it
    the usual permissions, then renames it onto `path`; on any failure `path` is untouched."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as stream:
            fill(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temp, 0o666 & ~_umask())  # mkstemp makes the file private; meta.json should not be
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    """The process umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def count_images(meta: dict) -> dict[str, dict[str, tuple[int, int]]]:
    """{class: {split: (normal, anomalous)}}, the numbers the command prints."""
    counts: dict[str, dict[str, tuple[int, int]]] = {}
    for split in SPLITS:
        for cls, items in meta.get(split, {}).items():
            items = [item for item in items if item["img_path"]]  # mvisa's placeholders name no image
            anomalous = sum(item["anomaly"] for item in items)
            counts.setdefault(cls, {})[split] = (len(items) - anomalous, anomalous)
    return counts


def format_table(meta: dict) -> str:
    """Per class, the normal and anomalous images of each split, plus a total row."""
    header = ("class", "test normal", "test anomalous", "train normal", "train anomalous")
    rows, totals = [], [0, 0, 0, 0]
    for cls, by_split in count_images(meta).items():
        numbers = [*by_split.get("test", (0, 0)), *by_split.get("train", (0, 0))]
        totals = [t + n for t, n in zip(totals, numbers)]
        rows.append((cls, *map(str, numbers)))
    rows.append((f"total ({len(rows)} classes)", *map(str, totals)))
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]

    def line(row: tuple[str, ...]) -> str:
        return "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *map(line, rows[:-1]), rule, line(rows[-1])])
