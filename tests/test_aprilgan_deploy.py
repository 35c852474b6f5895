"""APRIL-GAN beyond test.py: the few-shot references (models/fewshot.py), class binding, predict.py and export.py."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FIXTURE as VIP2_FIXTURE
from conftest import ROOT, project_logging_kept
from export_checks import assert_memory_in_file, assert_predict_onnx_equals_torch, assert_runner_equals_model, score_rows

FIXTURE = ROOT / "tests" / "fixtures" / "aprilgan_tiny"
SETTINGS = ["--image_size", "98", "--features_list", "1", "2", "3", "4"]
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def clip():
    from models.clip_loader import load_clip

    return load_clip(str(FIXTURE / "clip_tiny.npz"), quick_gelu=False)


@pytest.fixture(scope="module")
def dataset():
    from dataset import AnomalyDataset

    return AnomalyDataset(FIXTURE / "data", 98)


def _model(clip, mode="zero_shot", **settings):
    from models import create_model

    return create_model("aprilgan", clip=clip, checkpoint=FIXTURE / "init.pth", image_size=98,
                        features_list=(1, 2, 3, 4), few_shot_features=(2, 4), mode=mode, **settings)


def _args(**values):
    import argparse

    defaults = {"k_shot": None, "seed": 42, "reference_dir": None, "class_name": None}
    return argparse.Namespace(**{**defaults, **values})


def _reference_folder(target: Path, per_class: bool = True) -> Path:
    for cls_name in ("bottle_synth", "tile_synth"):
        folder = target / cls_name if per_class else target
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("000.png", "001.png"):
            shutil.copy(FIXTURE / "data" / cls_name / "train" / "good" / name, folder / f"{cls_name}_{name}")
        if not per_class:
            break
    return target


# ------------------------------------------------------------------------------------ models/fewshot.py
def test_k_shot_draws_distinct_normal_train_images_of_each_class(dataset):
    from models import fewshot

    chosen = fewshot.choose(dataset, dataset.class_names, 2, 7)
    assert sorted(chosen) == ["bottle_synth", "tile_synth"]
    for cls_name, paths in chosen.items():
        assert len(paths) == len(set(paths)) == 2
        assert all(p.parent == FIXTURE / "data" / cls_name / "train" / "good" for p in paths)
    assert fewshot.choose(dataset, dataset.class_names, 2, 7) == chosen  # the seed fixes the draw
    draws = {tuple(fewshot.choose(dataset, dataset.class_names, 1, seed)["bottle_synth"]) for seed in range(12)}
    assert len(draws) > 1  # and another seed can draw other images


def test_k_shot_beyond_the_train_split_uses_all_with_a_warning(dataset, caplog):
    from models import fewshot

    chosen = fewshot.choose(dataset, ["tile_synth"], 10, 0)
    assert len(chosen["tile_synth"]) == 3
    assert "fewer than --k_shot 10" in caplog.text


def test_reference_dir_per_class_or_one_folder(tmp_path):
    from models import fewshot

    per_class = fewshot.choose(None, ["bottle_synth", "tile_synth"], None, 0, _reference_folder(tmp_path / "a"))
    assert [p.name for p in per_class["tile_synth"]] == ["tile_synth_000.png", "tile_synth_001.png"]
    flat = fewshot.choose(None, ["bottle_synth", "tile_synth"], None, 0,
                          _reference_folder(tmp_path / "b", per_class=False))
    assert flat["bottle_synth"] == flat["tile_synth"] and len(flat["tile_synth"]) == 2
    (tmp_path / "empty").mkdir()
    with pytest.raises(fewshot.FewShotError, match="no images for class 'x'"):
        fewshot.choose(None, ["x"], None, 0, tmp_path / "empty")


def test_methods_without_a_few_shot_mode_refuse_the_flags(tiny_clip, clip):
    from conftest import fixture_model

    from models import fewshot

    with pytest.raises(fewshot.FewShotError, match="has no few-shot mode"):
        fewshot.check(fixture_model(tiny_clip), _args(k_shot=4))
    with pytest.raises(fewshot.FewShotError, match="add --mode few_shot"):
        fewshot.check(_model(clip), _args(k_shot=4))
    fewshot.check(fixture_model(tiny_clip), _args())  # nothing asked, nothing refused


def test_references_become_buffers_of_the_model(clip, dataset):
    from models import fewshot

    model = _model(clip, mode="few_shot")
    used = fewshot.prepare(model, _args(k_shot=2, seed=3), dataset, torch.device("cpu"))
    assert sorted(used) == ["bottle_synth", "tile_synth"] and all(len(v) == 2 for v in used.values())
    buffers = dict(model.named_buffers())
    memory = buffers["fewshot_memory_0_1"]  # class 0, second memory layer (4)
    assert memory.shape == (2 * 7 * 7, model.backbone.vision_width)
    assert torch.allclose(memory.norm(dim=-1), torch.ones(len(memory)))
    assert model.memory("bottle_synth", 1) is memory
    with pytest.raises(ValueError, match="no reference images for class 'other'"):
        model.memory("other", 0)


def test_a_class_conditioned_model_needs_its_class(clip, tiny_clip):
    from conftest import fixture_model

    from models import fewshot

    model = _model(clip)
    images = torch.zeros((1, 3, 98, 98), dtype=torch.uint8)
    with pytest.raises(ValueError, match="--class_name"):
        model(images)
    with pytest.raises(fewshot.FewShotError, match="pass --class_name"):
        fewshot.bind(model, _args(), "cpu")
    with pytest.raises(fewshot.FewShotError, match="drop --class_name"):
        fewshot.bind(fixture_model(tiny_clip), _args(class_name="bottle_synth"), "cpu")
    assert fewshot.bind(model, _args(class_name="bottle_synth"), "cpu") == {"class_name": "bottle_synth"}
    with torch.no_grad():
        bound = model(images)
        named = model(images, ["bottle_synth"])
    assert torch.equal(bound[0], named[0]) and torch.equal(bound[1], named[1])


def test_a_batch_of_one_class_equals_the_per_image_path(clip, dataset):
    """One class in a batch runs a batched product; mixed classes run image by image: the same maps."""
    from models import fewshot

    model = _model(clip, mode="few_shot")
    fewshot.prepare(model, _args(k_shot=2), dataset, torch.device("cpu"))
    items = [dataset[i] for i in range(len(dataset))]
    images = torch.stack([it["img"] for it in items])
    names = [it["cls_name"] for it in items]
    with torch.no_grad():
        mixed, _ = model(images, names)
        single = torch.cat([model(images[i:i + 1], [names[i]])[0] for i in range(len(names))])
    np.testing.assert_allclose(mixed.numpy(), single.numpy(), atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------ predict.py, export.py
def test_predict_with_a_class_and_references_equals_the_model(clip, tmp_path):
    import predict

    refs = _reference_folder(tmp_path / "refs")
    images = FIXTURE / "data" / "bottle_synth" / "test"
    common = [str(images), "--model", "aprilgan", "--checkpoint_path", str(FIXTURE / "init.pth"), "--clip_weights",
              str(FIXTURE / "clip_tiny.npz"), *SETTINGS, "--class_name", "bottle_synth", "--device", "cpu",
              "--save_raw"]
    assert predict.main([*common, "--out", str(tmp_path / "fs"), "--mode", "few_shot", "--few_shot_features", "2",
                         "4", "--reference_dir", str(refs)]) == 3
    model = _model(clip, mode="few_shot")
    from models import fewshot

    fewshot.prepare(model, _args(reference_dir=refs), None, "cpu", class_names=["bottle_synth"])
    from dataset import read_image

    for row in score_rows(tmp_path / "fs"):
        image = read_image(Path(row["path"]) if Path(row["path"]).is_absolute() else ROOT / row["path"], 98)[0]
        with torch.no_grad():
            maps, scores = model(image[None], ["bottle_synth"])
        np.testing.assert_allclose(np.load(tmp_path / "fs" / row["map"]), maps[0].numpy(), atol=1e-6, rtol=0)
        assert float(row["raw_score"]) == pytest.approx(float(scores[0]), abs=1e-6)
    with pytest.raises(ValueError, match="needs --reference_dir"):
        predict.main([*common, "--out", str(tmp_path / "no_refs"), "--mode", "few_shot", "--few_shot_features", "2",
                      "4"])


def test_predict_refuses_few_shot_flags_for_other_methods(tmp_path):
    import predict

    with pytest.raises(ValueError, match="has no few-shot mode"):
        predict.main([str(FIXTURE / "data" / "bottle_synth" / "test"), "--out", str(tmp_path / "out"),
                      "--checkpoint_path", str(VIP2_FIXTURE / "init.pth"), "--clip_weights",
                      str(VIP2_FIXTURE / "clip_tiny.npz"), "--image_size", "126", "--features_list", "1", "2", "3",
                      "4", "--k_shot", "2", "--device", "cpu"])


@pytest.mark.slow
def test_export_few_shot_keeps_the_memory_inside_and_matches_pytorch(clip, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    import export
    from deploy.runners import open_exported

    refs = _reference_folder(tmp_path / "refs")
    flags = ["--model", "aprilgan", "--checkpoint_path", str(FIXTURE / "init.pth"), "--clip_weights",
             str(FIXTURE / "clip_tiny.npz"), *SETTINGS, "--class_name", "tile_synth", "--mode", "few_shot",
             "--few_shot_features", "2", "4", "--reference_dir", str(refs)]
    output = tmp_path / "aprilgan.onnx"
    with project_logging_kept():
        report = export.main([*flags, "--output", str(output)])
    assert report["max_difference"] <= TOLERANCE
    runner = open_exported(output)
    assert runner.info.method == "aprilgan" and runner.info.bound["class_name"] == "tile_synth"
    assert [Path(p).name for p in runner.info.bound["references"]] == ["tile_synth_000.png", "tile_synth_001.png"]
    assert runner.info.settings["mode"] == "few_shot" and runner.info.set_normalization is False

    model = _model(clip, mode="few_shot")
    from models import fewshot

    fewshot.bind(model, _args(class_name="tile_synth", reference_dir=refs), "cpu")
    assert_memory_in_file(model, output)
    assert_runner_equals_model(runner, model, FIXTURE / "data", 98, "tile_synth", TOLERANCE)

    assert_predict_onnx_equals_torch(FIXTURE / "data" / "tile_synth" / "test", 3, output, flags, tmp_path, TOLERANCE)
    assert json.loads(json.dumps(runner.info.bound))  # JSON-ready, as written into the metadata


@pytest.mark.parametrize("pool, normal_drawn", [("any_defect_type", True), ("anomalous", False)])
def test_mosaic_pools(pool, normal_drawn, monkeypatch):
    """APRIL-GAN's mosaic draws a defect type first, `good` included; VCP-CLIP's only anomalous images."""
    import random

    from engine.augment import Augmentation
    from dataset import AnomalyDataset

    data = AnomalyDataset(FIXTURE / "data", 98, augmentation=Augmentation(mosaic_rate=1.0, mosaic_pool=pool))
    decoded = []
    original = AnomalyDataset._decode
    monkeypatch.setattr(AnomalyDataset, "_decode", lambda self, s: (decoded.append(s), original(self, s))[1])
    random.seed(0)
    for index in range(len(data)):
        item = data[index]
        assert item["img"].shape == (3, 98, 98)
    picks = [s for i, s in enumerate(decoded) if i % 5]  # each item: its own decode, then the four picks
    assert all(p.cls_name == data.samples[i // 5].cls_name for i, p in enumerate(decoded) if i % 5)
    assert any(not p.anomaly for p in picks) is normal_drawn
    assert {p.specie_name for p in picks} >= {"blob", "scratch"}


def test_test_py_few_shot_with_k_shot_records_its_references(tmp_path):
    import test as test_script

    from models import fewshot

    arguments = ["--model", "aprilgan", "--data_path", str(FIXTURE / "data"), "--checkpoint_path",
                 str(FIXTURE / "init.pth"), "--clip_weights", str(FIXTURE / "clip_tiny.npz"), *SETTINGS, "--mode",
                 "few_shot", "--few_shot_features", "2", "4", "--k_shot", "2", "--seed", "5", "--device", "cpu",
                 "--num_workers", "0"]
    test_script.main([*arguments, "--save_path", str(tmp_path / "a")])
    results = json.loads((tmp_path / "a" / "results.json").read_text())
    from dataset import AnomalyDataset

    dataset = AnomalyDataset(FIXTURE / "data", 98)
    expected = fewshot.choose(dataset, dataset.class_names, 2, 5)
    assert results["references"] == {k: [str(p) for p in v] for k, v in expected.items()}
    assert "few-shot references" in (tmp_path / "a" / "log.txt").read_text()
    with pytest.raises(ValueError, match="add --mode few_shot"):
        test_script.main(["--model", "aprilgan", "--data_path", str(FIXTURE / "data"), "--checkpoint_path",
                          str(FIXTURE / "init.pth"), "--clip_weights", str(FIXTURE / "clip_tiny.npz"), *SETTINGS,
                          "--k_shot", "2", "--device", "cpu", "--save_path", str(tmp_path / "b")])


def test_validation_during_training_scores_the_epochs_maps(tmp_path):
    """--val_data_path: the logged pixel AP is test.py's mean pixel AP of that epoch's checkpoint."""
    import test as test_script
    import train

    common = ["--model", "aprilgan", "--clip_weights", str(FIXTURE / "clip_tiny.npz"), "--device", "cpu",
              "--num_workers", "0"]
    train.main([*common, "--train_data_path", str(FIXTURE / "data"), "--init_checkpoint", str(FIXTURE / "init.pth"),
                *SETTINGS, "--epoch", "1", "--batch_size", "6", "--save_path", str(tmp_path / "ckpt"),
                "--val_data_path", str(FIXTURE / "data")])
    logged = json.loads((tmp_path / "ckpt" / "validation.json").read_text())
    results = test_script.main([*common, "--data_path", str(FIXTURE / "data"), "--checkpoint_path",
                                str(tmp_path / "ckpt" / "epoch_1.pth"), "--save_path", str(tmp_path / "out"),
                                "--metrics", "pixel-level"])
    assert logged[0]["ap"] == pytest.approx(results["mean"]["pixel_ap"], abs=1e-6)
