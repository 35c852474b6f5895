"""The synthetic MVTec-layout dataset behind the smoke run, tests and benchmarks: masks
exactly where defects were painted, sizes that match, a valid meta.json, and speed."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # the package lives at the repository root
    sys.path.insert(0, str(REPO))

from generate_dataset_json import build_meta, make_synthetic_dataset  # noqa: E402


def all_items(meta: dict, split: str = "test") -> list[dict]:
    return [item for items in meta[split].values() for item in items]


def digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_default_dataset_layout_and_meta(tmp_path):
    meta = make_synthetic_dataset(tmp_path)
    assert json.loads((tmp_path / "meta.json").read_text()) == meta == build_meta("mvtec", tmp_path)
    assert list(meta["test"]) == ["bottle_synth", "tile_synth"]
    assert meta["train"] == {"bottle_synth": [], "tile_synth": []}
    for cls, items in meta["test"].items():
        assert sum(i["anomaly"] for i in items) == 3 and len(items) == 6
        assert {i["specie_name"] for i in items} == {"good", "blob", "scratch"}
    assert (tmp_path / "bottle_synth/ground_truth/blob/000_mask.png").is_file()


def test_masks_match_painted_defects(tmp_path):
    meta = make_synthetic_dataset(tmp_path, n_normal=2, n_anomalous=4, image_size=(64, 48))
    for item in all_items(meta):
        image = Image.open(tmp_path / item["img_path"])
        assert image.mode == "RGB" and image.size == (64, 48)
        if not item["anomaly"]:
            assert item["mask_path"] == ""
            continue
        mask = Image.open(tmp_path / item["mask_path"])
        assert mask.mode == "L" and mask.size == image.size
        values = np.asarray(mask)
        assert set(np.unique(values)) == {0, 255}  # non-empty, binary
        pixels = np.asarray(image).astype(np.float32)
        inside, outside = pixels[values > 0], pixels[values == 0]
        # painted pixels sit near one palette colour, far from the texture around them
        assert np.abs(inside - inside.mean(0)).max() <= 30
        assert np.linalg.norm(inside.mean(0) - outside.mean(0)) > 60


def test_variable_sizes_train_split_and_formats(tmp_path):
    sizes = [(40, 30), (32, 32), (50, 20)]
    meta = make_synthetic_dataset(tmp_path, classes=("a",), n_normal=2, n_anomalous=2, train_normal=2,
                                  image_size=sizes, image_format="bmp")
    assert [i["img_path"] for i in meta["train"]["a"]] == ["a/train/good/000.bmp", "a/train/good/001.bmp"]
    seen = set()
    for item in all_items(meta) + all_items(meta, "train"):
        size = Image.open(tmp_path / item["img_path"]).size
        seen.add(size)
        if item["mask_path"]:
            assert Image.open(tmp_path / item["mask_path"]).size == size
    assert seen == set(sizes)


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    make_synthetic_dataset(tmp_path / "a", seed=3)
    make_synthetic_dataset(tmp_path / "b", seed=3)
    make_synthetic_dataset(tmp_path / "c", seed=4)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert digest(tmp_path / "a") != digest(tmp_path / "c")


def test_classes_look_different(tmp_path):
    meta = make_synthetic_dataset(tmp_path, n_anomalous=0, image_size=32)
    means = [np.asarray(Image.open(tmp_path / items[0]["img_path"])).reshape(-1, 3).mean(0)
             for items in meta["test"].values()]
    assert np.linalg.norm(means[0] - means[1]) > 5


def test_tiny_images_still_get_a_defect(tmp_path):
    meta = make_synthetic_dataset(tmp_path, classes=("t",), n_normal=0, n_anomalous=4, image_size=2)
    for item in all_items(meta):
        assert np.asarray(Image.open(tmp_path / item["mask_path"])).max() == 255


@pytest.mark.parametrize("kwargs", [dict(image_size=1), dict(image_format="gif"), dict(classes=()),
                                    dict(n_normal=0, n_anomalous=0), dict(n_normal=-1)])
def test_bad_arguments_raise_value_error(tmp_path, kwargs):
    with pytest.raises(ValueError):
        make_synthetic_dataset(tmp_path, **kwargs)


def test_large_images_have_their_size_and_a_mask_each(tmp_path):
    """(Its speed is a benchmark's business, not a test's: no clock here.)"""
    make_synthetic_dataset(tmp_path, n_normal=6, n_anomalous=6, image_size=512)
    images = [p for p in tmp_path.rglob("*.png") if "ground_truth" not in p.parts]
    masks = [p for p in tmp_path.rglob("*.png") if "ground_truth" in p.parts]
    assert len(images) == 24 and len(masks) == 12  # two classes of 6 + 6; a mask per anomalous image
    assert {Image.open(p).size for p in images} == {(512, 512)}


@pytest.mark.slow
def test_cli_synthetic(tmp_path):
    result = subprocess.run([sys.executable, "-m", "generate_dataset_json", "synthetic", "--root", str(tmp_path),
                             "--classes", "x", "y", "z", "--n_normal", "1", "--n_anomalous", "2",
                             "--size", "24", "16x20", "--seed", "5"],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert list(meta["test"]) == ["x", "y", "z"] and all(len(v) == 3 for v in meta["test"].values())
    assert {Image.open(tmp_path / i["img_path"]).size for i in all_items(meta)} == {(24, 24), (16, 20)}
    assert "total (3 classes)" in result.stdout
