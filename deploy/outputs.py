"""predict.py's outputs: which files an earlier run wrote (its scores.csv lists them), and moving a complete
run's files into place. NumPy- and torch-free, as predict.py's exported-model runs need."""
from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

from utils import OutputError


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder)
        return True
    except ValueError:
        return False


def earlier_outputs(out_dir: Path, scores_file: str) -> list[Path]:
    """The files an earlier run wrote in `out_dir`, as its scores.csv lists them (nothing else is touched)."""
    root = out_dir.resolve()
    files = [out_dir / scores_file]
    try:
        with open(out_dir / scores_file, newline="") as file:
            rows = list(csv.DictReader(file))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise OutputError(f"--out {out_dir}: cannot read the earlier run's {scores_file} ({error}), so its files "
                          "cannot be told from others: choose another folder, or remove that run yourself") from None
    for row in rows:
        for column in ("overlay", "map"):
            name = (row.get(column) or "").strip()
            path = out_dir / name
            if name and _inside(path, root) and path.resolve() != root and path.is_file():
                files.append(path)
    return files


def publish(staging: Path, out_dir: Path, earlier: list[Path]) -> int:
    """Move the complete new outputs from `staging` onto their places in `out_dir` (each replaces its earlier
    namesake atomically), then remove the earlier run's files that the new run did not write again (and the
    folders that leaves empty). Returns the number of earlier files removed."""
    written = set()
    for path in sorted(p for p in staging.rglob("*") if p.is_file()):
        target = out_dir / path.relative_to(staging)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)
        written.add(target.resolve())
    removed = 0
    for path in earlier:
        if path.resolve() not in written and path.is_file():
            path.unlink()
            removed += 1
            for parent in path.parents:  # folders only this run's files were in
                if parent.resolve() == out_dir.resolve() or not parent.is_dir() or any(parent.iterdir()):
                    break
                parent.rmdir()
    shutil.rmtree(staging)
    return removed
