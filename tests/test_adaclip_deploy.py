"""AdaCLIP beyond test.py: class binding, predict.py, export.py (ONNX within 1e-4), bad settings, the mosaic."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, project_logging_kept
from export_checks import assert_predict_onnx_equals_torch, assert_runner_equals_model, score_rows

FIXTURE = ROOT / "tests" / "fixtures" / "adaclip_tiny"
DATA = ROOT / "tests" / "fixtures" / "aprilgan_tiny" / "data"
SETTINGS = ["--image_size", "98", "--k_clusters", "3"]
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def clip():
    from models.clip_loader import load_clip

    return load_clip(str(FIXTURE / "clip_tiny.npz"), quick_gelu=False)


def _model(clip, **settings):
    from models import create_model

    return create_model("adaclip", clip=clip, checkpoint=FIXTURE / "init.pth", **{"image_size": 98, "k_clusters": 3,
                                                                                **settings})


def test_a_bound_class_equals_named_images(clip):
    model = _model(clip)
    images = torch.randint(0, 256, (2, 3, 98, 98), dtype=torch.uint8)
    with pytest.raises(ValueError, match="--class_name"):
        model(images)
    model.bind_class("bottle_synth")
    with torch.no_grad():
        bound, named = model(images), model(images, ["bottle_synth", "bottle_synth"])
    assert torch.equal(bound.anomaly_map, named.anomaly_map) and torch.equal(bound.image_score, named.image_score)


def test_settings_the_reference_cannot_run_are_refused_clearly(clip):
    from models.adaclip.config import AdaCLIPConfig, AdaCLIPTraining

    with pytest.raises(ValueError, match="--prompting_type is empty"):
        AdaCLIPConfig(prompting_type="", prompting_branch="VL")
    with pytest.raises(ValueError, match="exceeds the 49 patches"):
        with torch.no_grad():
            _model(clip, k_clusters=50)(torch.zeros((1, 3, 98, 98), dtype=torch.uint8), ["bottle_synth"])
    with pytest.raises(ValueError, match="--aug_rate"):
        AdaCLIPTraining(aug_rate=1.5)
    assert AdaCLIPConfig(prompting_type="", prompting_branch="").prompting_branch == ""  # no prompts: allowed


def test_use_hsf_takes_true_or_false_words():
    import argparse

    from utils import boolean

    assert boolean("True") is True and boolean("false") is False and boolean("1") is True
    with pytest.raises(argparse.ArgumentTypeError, match="True or False"):
        boolean("maybe")  # the reference's str2bool would read False


def test_kmeans_reaches_the_fixed_point_of_lloyds_algorithm():
    """Labels from the first points as centres, iterated until nothing changes: each point is nearest its centre."""
    from models.adaclip.fusion import kmeans_labels

    generator = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [5.0, 5.0], [-5.0, 5.0]])
    points = torch.cat([centres + 0.3 * torch.randn(3, 2, generator=generator),
                        (centres.repeat(10, 1) + 0.5 * torch.randn(30, 2, generator=generator))])[None]
    labels = kmeans_labels(points, 3)[0]
    assert labels[:3].tolist() == [0, 1, 2]
    for k in range(3):  # the three blobs, whatever their order in the points
        blob = labels[3:].reshape(10, 3)[:, k]
        assert (blob == k).all()
    means = torch.stack([points[0][labels == k].mean(0) for k in range(3)])
    assert torch.equal(torch.cdist(points[0], means).argmin(-1), labels)


@pytest.mark.slow
def test_predict_with_a_class_equals_the_model(clip, tmp_path):
    import predict
    from dataset import read_image

    images = DATA / "tile_synth" / "test"
    assert predict.main([str(images), "--model", "adaclip", "--checkpoint_path", str(FIXTURE / "init.pth"),
                         "--clip_weights", str(FIXTURE / "clip_tiny.npz"), *SETTINGS, "--class_name", "tile_synth",
                         "--device", "cpu", "--save_raw", "--out", str(tmp_path / "out")]) == 3
    model = _model(clip)
    for row in score_rows(tmp_path / "out"):
        path = Path(row["path"]) if Path(row["path"]).is_absolute() else ROOT / row["path"]
        with torch.no_grad():
            maps, scores = model(read_image(path, 98)[0][None], ["tile_synth"])
        np.testing.assert_allclose(np.load(tmp_path / "out" / row["map"]), maps[0].numpy(), atol=1e-6, rtol=0)
        assert float(row["raw_score"]) == pytest.approx(float(scores[0]), abs=1e-6)


def test_the_mosaic_draws_four_distinct_items_of_the_class(monkeypatch):
    import random

    from dataset import AnomalyDataset
    from engine.augment import Augmentation

    dataset = AnomalyDataset(DATA, 98, augmentation=Augmentation(mosaic_rate=1.0, mosaic_pool="distinct_items"))
    drawn = []
    original = random.sample
    monkeypatch.setattr(random, "sample", lambda items, k: drawn.append(list(items)) or original(items, k))
    item = dataset[0]  # bottle_synth: 3 test items only, fewer than four: no mosaic
    assert drawn == [] and item["img"].shape == (3, 98, 98)
    train = AnomalyDataset(DATA, 98, split="train",
                           augmentation=Augmentation(mosaic_rate=1.0, mosaic_pool="distinct_items"))
    assert train[0]["img"].shape == (3, 98, 98) and drawn == []  # 3 per class there too


@pytest.mark.slow
def test_export_matches_pytorch_and_predict(clip, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    import export
    from deploy.runners import open_exported

    flags = ["--model", "adaclip", "--checkpoint_path", str(FIXTURE / "init.pth"), "--clip_weights",
             str(FIXTURE / "clip_tiny.npz"), *SETTINGS, "--class_name", "tile_synth"]
    output = tmp_path / "adaclip.onnx"
    with project_logging_kept():
        report = export.main([*flags, "--output", str(output)])
    assert report["max_difference"] <= TOLERANCE
    runner = open_exported(output)
    assert runner.info.method == "adaclip" and runner.info.bound["class_name"] == "tile_synth"
    model = _model(clip)
    assert_runner_equals_model(runner, model, DATA, 98, "tile_synth", TOLERANCE)
    assert_predict_onnx_equals_torch(DATA / "tile_synth" / "test", 3, output, flags, tmp_path, TOLERANCE)
