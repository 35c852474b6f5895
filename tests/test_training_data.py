"""Several training datasets in one run (engine/training_data.py; AdaCLIP's authors train on MVTec AD + ColonDB):
the combined dataset in process (quick), then train.py with two roots against the same images in one root (slow)."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import ROOT, run_script

from dataset import AnomalyDataset
from engine.training_data import CombinedDataset, training_dataset, training_labels
from generate_dataset_json.synthetic import make_synthetic_dataset
from models import get_method
from utils import DatasetError

SIZE = 28
ADACLIP = ROOT / "tests" / "fixtures" / "adaclip_tiny"


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    """Two tiny datasets: 'first' with two classes, 'second' with one (four images per class: the mosaic's four)."""
    base = tmp_path_factory.mktemp("roots")
    make_synthetic_dataset(base / "first", classes=("bottle", "tile"), n_normal=2, n_anomalous=2, image_size=32)
    make_synthetic_dataset(base / "second", classes=("polyp",), n_normal=1, n_anomalous=3, image_size=40, seed=1)
    return [str(base / "first"), str(base / "second")]


def combined(roots, augmented=None, aug_rate=-1.0):
    augmentation = get_method("adaclip").training(aug_rate=aug_rate).augmentation()
    return training_dataset(roots, None, augmented, SIZE, split="test", augmentation=augmentation)


def test_items_of_both_in_order_with_their_global_index(roots):
    data = combined(roots)
    first, second = (AnomalyDataset(root, SIZE) for root in roots)
    assert isinstance(data, CombinedDataset) and data.labels == ["first", "second"]
    assert len(data) == len(first) + len(second) == 12
    assert data.class_names == ["bottle", "tile", "polyp"]
    assert data.anomalous_count == first.anomalous_count + second.anomalous_count == 7
    assert data.samples == first.samples + second.samples
    assert str(first.meta_path) in data.meta_path and str(second.meta_path) in data.meta_path
    for index in (0, len(first) - 1, len(first), len(data) - 1):
        item = data[index]
        part, local = (first, index) if index < len(first) else (second, index - len(first))
        expected = part[local]
        assert item["index"] == index and item["cls_name"] == expected["cls_name"]
        assert torch.equal(item["img"], expected["img"]) and torch.equal(item["img_mask"], expected["img_mask"])
    with pytest.raises(IndexError):
        data[len(data)]


def test_one_root_is_read_as_before(roots):
    alone = training_dataset(roots[:1], ["named"], None, SIZE, split="test")
    assert type(alone) is AnomalyDataset and alone.samples == AnomalyDataset(roots[0], SIZE).samples


def test_the_mosaic_only_on_the_datasets_named(roots):
    """AdaCLIP's mosaic at rate 1 on 'first' only: its items are mosaics, 'second''s are read as they are."""
    data = combined(roots, augmented=["first"], aug_rate=1.0)
    plain = combined(roots)
    assert data.augmentation is not None and plain.augmentation is None  # augmenting: no feature cache
    assert [part.augmentation is not None for part in data.parts] == [True, False]
    boundary = len(data.parts[0])
    for index in range(len(data)):
        same = torch.equal(data[index]["img"], plain[index]["img"])
        assert same == (index >= boundary), index
    everywhere = combined(roots, aug_rate=1.0)  # no --augment_datasets: every dataset is augmented
    assert all(part.augmentation is not None for part in everywhere.parts)


def test_flags_that_disagree_are_named(roots, tmp_path):
    with pytest.raises(ValueError, match=r"--dataset gives 1 name\(s\) but --train_data_path gives 2 root\(s\)"):
        training_labels(roots, ["mvtec"])
    with pytest.raises(ValueError, match="--augment_datasets visa: no training dataset is labelled so"):
        training_labels(roots, ["mvtec", "colondb"], ["visa"])
    with pytest.raises(ValueError, match="tell them apart with --dataset"):
        training_labels(["a/data", "b/data"], None, ["data"])
    with pytest.raises(DatasetError, match="given twice"):
        combined([roots[0], roots[0] + "/"])
    overlap = tmp_path / "overlap"  # two meta files in one root (VCP-CLIP's layout), the second listing a first's image
    shutil.copytree(roots[0], overlap)
    meta = json.loads((overlap / "meta.json").read_text())
    (overlap / "meta.json").rename(overlap / "meta_whole.json")
    meta["test"] = {"tile": meta["test"]["tile"][:1]}
    (overlap / "meta_part.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="is listed in both .*meta_whole.json and .*meta_part.json"):
        training_dataset([str(overlap), str(overlap)], ["whole", "part"], None, SIZE, split="test")


# ----------------------------------------------------------------------------------------------- train.py
def _merged_root(roots, target):
    """The two datasets' files under one root with one meta file: the same images in the same order."""
    merged = {"train": {}, "test": {}}
    for root in map(type(target), roots):
        shutil.copytree(root, target / root.name)
        meta = json.loads((root / "meta.json").read_text())
        for cls, items in meta["test"].items():
            merged["test"][cls] = [{**item, "img_path": f"{root.name}/{item['img_path']}",
                                    "mask_path": f"{root.name}/{item['mask_path']}" if item["mask_path"] else ""}
                                   for item in items]
    (target / "meta.json").write_text(json.dumps(merged))
    return target


def _adaclip_train(save_path, *data_flags, extra=()):
    config = json.loads((ADACLIP / "expected.json").read_text())["config"]
    settings = [part for name in ("image_size", "prompting_depth", "prompting_length", "k_clusters")
                for part in (f"--{name}", str(config[name]))]
    return run_script("train.py", "--model", "adaclip", *data_flags, "--clip_weights", ADACLIP / "clip_tiny.npz",
                      "--init_checkpoint", ADACLIP / "init.pth", *settings, "--epoch", "2", "--learning_rate", "1e-3",
                      "--save_path", save_path, "--device", "cpu", "--num_workers", "0", *extra)


@pytest.mark.slow
def test_two_roots_train_as_their_images_in_one_root(roots, tmp_path):
    """Two roots (the feature cache on) take the steps of one root holding both datasets' images in that order
    (the cache off); the checkpoint and train_stats.json record both datasets. --augment_datasets without any
    augmentation (AdaCLIP's default --aug_rate -1) changes nothing, and says so."""
    both = _adaclip_train(tmp_path / "both", "--train_data_path", *roots, "--dataset", "mvtec", "colondb",
                          "--augment_datasets", "mvtec", extra=("--cache_features", "cpu"))
    merged = _merged_root(roots, tmp_path / "merged")
    _adaclip_train(tmp_path / "one", "--train_data_path", merged, extra=("--cache_features", "off"))
    losses = [json.loads((tmp_path / name / "losses.json").read_text()) for name in ("both", "one")]
    assert len(losses[0]) == len(losses[1]) == 2 * 12
    for a, b in zip(*losses):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
    log = (tmp_path / "both" / "log.txt").read_text()
    assert "(mvtec+colondb, 12 images, 3 classes)" in log and "feature cache: cpu" in log
    assert "--augment_datasets mvtec changes nothing: AdaCLIP trains without augmentation" in log
    checkpoint = torch.load(tmp_path / "both" / "epoch_2.pth", weights_only=True)
    assert [(d["dataset"], d["images"], d["augmented"]) for d in checkpoint["training_data"]] == [
        ("mvtec", 8, False), ("colondb", 4, False)]
    assert json.loads((tmp_path / "both" / "train_stats.json").read_text())["training_data"] == checkpoint[
        "training_data"]
    assert "Traceback" not in both.stderr


@pytest.mark.slow
def test_a_name_count_that_differs_from_the_roots_is_one_line(roots, tmp_path):
    result = run_script("train.py", "--model", "adaclip", "--train_data_path", *roots, "--dataset", "mvtec",
                        "--save_path", tmp_path / "out", "--device", "cpu", check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "train.py: --dataset gives 1 name(s) but --train_data_path gives 2 root(s): pass one --dataset name per "
        "root, in the same order (or no --dataset)"]
    assert not (tmp_path / "out").exists()
