"""The meta.json structure (SPEC §10) as the layouts fill it."""

from __future__ import annotations

from pathlib import Path

from .files import Problems, relative

SPLITS = ("train", "test")


def make_item(root: Path, image: Path, mask: Path | None, cls_name: str, specie: str, anomaly: bool) -> dict:
    """One meta.json item; normal images never carry a mask path."""
    return {
        "img_path": relative(image, root),
        "mask_path": relative(mask, root) if (mask is not None and anomaly) else "",
        "cls_name": cls_name,
        "specie_name": specie,
        "anomaly": int(bool(anomaly)),
    }


class Splits:
    """Items per split and class. Every class gets an entry in both splits, so a layout
    without a train split still yields `{"train": {cls: []}}` as the loaders expect."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._items: dict[str, dict[str, list[dict]]] = {split: {} for split in SPLITS}
        self._class_dirs: dict[str, Path] = {}

    def add_class(self, cls_name: str, folder: Path) -> None:
        """Declares a class and the folder it came from (named if it turns out empty)."""
        self._class_dirs.setdefault(cls_name, folder)
        for split in SPLITS:
            self._items[split].setdefault(cls_name, [])

    def add(self, split: str, image: Path, mask: Path | None, cls_name: str, specie: str, anomaly: bool) -> None:
        self._items[split][cls_name].append(make_item(self.root, image, mask, cls_name, specie, anomaly))

    def check_not_empty(self, problems: Problems) -> None:
        """A class without test images cannot be evaluated: an error naming its folder."""
        for cls_name, items in self._items["test"].items():
            if not items:
                problems.error(f"class {cls_name!r} has no test images (looked in "
                               f"{relative(self._class_dirs[cls_name], self.root) or '.'}/); "
                               "finish the download or remove the folder")
        if not self._items["test"]:
            problems.error(f"no classes found under {self.root}")

    def to_meta(self) -> dict:
        """meta.json's dict: classes sorted by name, items sorted by image path, so the
        same tree always gives the same file."""
        return {
            split: {cls: sorted(items, key=lambda item: item["img_path"])
                    for cls, items in sorted(classes.items())}
            for split, classes in self._items.items()
        }
