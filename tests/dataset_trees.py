"""Tiny dataset trees and the checks every meta.json must pass, shared by the tests
of generate_dataset_json (each layout builds its own synthetic tree from these)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # the package lives at the repository root
    sys.path.insert(0, str(REPO))

ITEM_KEYS = {"img_path", "mask_path", "cls_name", "specie_name", "anomaly"}
MASK_SUFFIXES = ("", "_mask", "_label", "_segmentation", "_gt")


# --------------------------------------------------------------------------- tree builders

def image(root: Path, rel: str, size=(4, 3)) -> Path:
    """A real (tiny) image file; the format follows the extension, whatever its case."""
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (120, 90, 60)).save(path, format=Image.registered_extensions()[path.suffix.lower()])
    return path


def mask(root: Path, rel: str, size=(4, 3)) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas = Image.new("L", size, 0)
    canvas.putpixel((1, 1), 255)
    canvas.save(path, format=Image.registered_extensions()[path.suffix.lower()])
    return path


def text(root: Path, rel: str, content: str = "not an image\n") -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    return path


# --------------------------------------------------------------------------- checks

def counts(meta: dict, split: str = "test") -> dict[str, tuple[int, int]]:
    """{class: (normal, anomalous)} of one split."""
    return {cls: (sum(1 - i["anomaly"] for i in items), sum(i["anomaly"] for i in items))
            for cls, items in meta[split].items()}


def check_meta(meta: dict, root: Path, *, masks: str = "required") -> None:
    """What every meta.json must satisfy: SPEC §10's shape, paths that resolve against
    the root, items sorted by path, and each mask named after its own image. `masks`:
    "required" (every anomalous image has one), "none" (image-level sets) or "optional"."""
    assert set(meta) == {"train", "test"}
    assert set(meta["train"]) == set(meta["test"])
    for split, classes in meta.items():
        for cls, items in classes.items():
            assert [i["img_path"] for i in items] == sorted(i["img_path"] for i in items)
            for item in items:
                assert set(item) == ITEM_KEYS and item["cls_name"] == cls and item["anomaly"] in (0, 1)
                assert not os.path.isabs(item["img_path"]) and (root / item["img_path"]).is_file()
                if not item["anomaly"]:
                    assert item["mask_path"] == ""
                elif masks == "none":
                    assert item["mask_path"] == ""
                elif item["mask_path"] or masks == "required":
                    assert (root / item["mask_path"]).is_file()
                    image_stem, mask_stem = Path(item["img_path"]).stem, Path(item["mask_path"]).stem
                    assert mask_stem.startswith(image_stem)
                    assert mask_stem[len(image_stem):].lower() in MASK_SUFFIXES


def by_path(meta: dict, split: str = "test") -> dict[str, dict]:
    return {item["img_path"]: item for items in meta[split].values() for item in items}


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """The command exactly as a user types it, from the repository root."""
    return subprocess.run([sys.executable, "-m", "generate_dataset_json", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
