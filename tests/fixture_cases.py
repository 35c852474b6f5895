"""Every registered method's tiny fixture as one `Case`: the facts tests need (CLIP, checkpoint, model flags, images,
few-shot flags and references, anomalib `Folder` layout), read from the fixture's files, so that a method registered
later is covered with no edit to the tests that use them, or fails naming the file its fixture lacks:

* `tests/fixtures/<method>_tiny/clip_tiny.npz`: the tiny CLIP (required);
* its checkpoint: `trained.pth`, else `init.pth`, else none (a training-free method: built from the CLIP alone);
* its model flags: `demo_settings.txt` (else demo.py's default fixture flags);
* its images: `data/` with a meta file, else the ViP² fixture's `data/` (which fixtures without data were made on);
* a method with a few-shot mode (`supports_few_shot`) is also a few-shot case, with the flags of
  `few_shot_settings.txt` added (required for such a method) and references drawn as `test.py --k_shot 2` draws
  them, written to a folder (`--reference_dir`) under `REFERENCE_ROOT`, which the using test module sets.
"""
from __future__ import annotations

import shlex
import shutil
import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pytest

import dataset
import demo
from conftest import FIXTURE, ROOT
from models import fewshot, get_method, method_names

FIXTURES = ROOT / "tests" / "fixtures"
SHARED_DATA = FIXTURE / "data"  # the images of fixtures that ship none (anomalyclip_tiny/README.md)
FEW_SHOT_SETTINGS = "few_shot_settings.txt"
REFERENCE_SHOTS = 2  # normal references per class in the few-shot cases
REFERENCE_ROOT: list[Path] = []  # where the few-shot cases' reference folders are written (a session tmp dir)


@dataclass(frozen=True)
class Case:
    """One method (zero- or few-shot) on its fixture: every fact the adapter's tests need, read from its files."""

    method: str
    few_shot: bool = False

    @property
    def id(self) -> str:
        return self.method + ("-few_shot" if self.few_shot else "")

    @property
    def folder(self) -> Path:
        folder = FIXTURES / f"{self.method}_tiny"
        if not (folder / "clip_tiny.npz").is_file():
            pytest.fail(f"--model {self.method}: {folder.relative_to(ROOT)}/clip_tiny.npz is missing; every registered "
                        "method ships a tiny fixture (its CLIP; trained.pth or init.pth unless training-free; "
                        "demo_settings.txt; data/ or the ViP² fixture's images)")
        return folder

    @property
    def clip(self) -> Path:
        return self.folder / "clip_tiny.npz"

    @property
    def checkpoint(self) -> Path | None:
        return next((self.folder / name for name in ("trained.pth", "init.pth") if (self.folder / name).is_file()),
                    None)

    @property
    def flags(self) -> list[str]:
        flags = shlex.split(demo.fixture_settings(self.folder))
        if self.few_shot:
            extra = self.folder / FEW_SHOT_SETTINGS
            if not extra.is_file():
                pytest.fail(f"--model {self.method} has a few-shot mode: {extra.relative_to(ROOT)} must hold the "
                            "model flags that turn it on for its fixture (e.g. the mode flag and the memory layers)")
            flags += shlex.split(extra.read_text())
        return flags

    @property
    def settings(self) -> dict:
        return demo.settings_from_text(self.method, shlex.join(self.flags))

    @property
    def data(self) -> Path:
        return self.folder / "data" if (self.folder / "data").is_dir() else SHARED_DATA

    def split(self, name: str = "test") -> list:
        """The meta file's samples of a split (the image size only matters for reading, not for listing)."""
        return dataset.AnomalyDataset(self.data, self.settings.get("image_size", 224), name).samples

    @cached_property
    def samples(self) -> list:
        return self.split()

    @property
    def classes(self) -> list[str]:
        return list(dict.fromkeys(s.cls_name for s in self.samples))

    @property
    def references(self) -> Path | None:
        """Few-shot: DIR/<class>/ holding the images `test.py --k_shot 2` draws (its seed), written once."""
        if not self.few_shot:
            return None
        if not REFERENCE_ROOT:  # a module that did not set it: a temporary folder of its own
            REFERENCE_ROOT.append(Path(tempfile.mkdtemp(prefix="fixture_references_")))
        target = REFERENCE_ROOT[0] / self.id
        if not target.is_dir():
            data = dataset.AnomalyDataset(self.data, self.settings.get("image_size", 224))
            chosen = fewshot.choose(data, self.classes, REFERENCE_SHOTS, fewshot.DEFAULT_SEED)
            for cls_name, paths in chosen.items():
                (target / cls_name).mkdir(parents=True)
                for i, path in enumerate(paths):
                    shutil.copy(path, target / cls_name / f"{i}_{Path(path).name}")
        return target

    def folder_datamodule(self, cls_name: str):
        """anomalib's `Folder` for one class, its directories read from the meta file's test (and train) split."""
        from anomalib.data import Folder

        test = [s for s in self.samples if s.cls_name == cls_name]

        def parents(items) -> list[str]:
            return sorted({str(Path(item).parent) for item in items if item})

        try:
            train = [s.img_path for s in self.split("train") if s.cls_name == cls_name and not s.anomaly]
        except ValueError:  # no train split
            train = []
        normal_test = parents(s.img_path for s in test if not s.anomaly)
        return Folder(name=cls_name, root=self.data, normal_dir=parents(train) or normal_test,
                      normal_test_dir=normal_test, abnormal_dir=parents(s.img_path for s in test if s.anomaly),
                      mask_dir=parents(s.mask_path for s in test if s.anomaly) or None, val_split_mode="same_as_test",
                      eval_batch_size=1, num_workers=0)


def model_class(name: str):
    return get_method(name).model_class()


CASES = [Case(name) for name in method_names()] + [
    Case(name, few_shot=True) for name in method_names() if getattr(model_class(name), "supports_few_shot", False)]
CASE_IDS = [case.id for case in CASES]


