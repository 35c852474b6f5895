"""Building, summarising and writing meta.json (SPEC §10)."""

from __future__ import annotations

import json
import os
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


def write_meta(meta: dict, path: str | os.PathLike) -> Path:
    """Writes `meta` as JSON to `path` atomically: a temporary file in the same folder,
    then `os.replace`, so an interrupted run never leaves a truncated meta.json that a
    later training run would read."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            json.dump(meta, stream, indent=4)
            stream.write("\n")
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temp, 0o666 & ~_umask())  # mkstemp makes the file private; meta.json should not be
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


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
