"""APRIL-GAN parity with the authors' code on its tiny-CLIP fixture (tests/fixtures/aprilgan_tiny), in process and
through the command lines (SPEC_APRILGAN §11).

Tolerances: maps and scores from init.pth 1e-5, after training 1e-4, per-step losses 1e-5. Every setting comes
from the fixture's `config`. The few-shot references are the images the authors' run drew (its k_shot.txt),
handed over with --reference_dir: the draw itself depends on their RNG stream and is not reproduced (§4).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, fixture_outputs, run_script

FIXTURE = ROOT / "tests" / "fixtures" / "aprilgan_tiny"
INIT_TOLERANCE = 1e-5
TRAINED_TOLERANCE = 1e-4
LOSS_TOLERANCE = 1e-5
METRIC_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def expected():
    return fixture_outputs(FIXTURE)


@pytest.fixture(scope="module")
def config(expected):
    return expected["json"]["config"]


@pytest.fixture(scope="module")
def clip():
    from models.clip_loader import load_clip

    return load_clip(str(FIXTURE / "clip_tiny.npz"), quick_gelu=False)


@pytest.fixture(scope="module")
def batch(config):
    from dataset import AnomalyDataset

    dataset = AnomalyDataset(FIXTURE / "data", config["image_size"])
    return torch.utils.data.default_collate([dataset[i] for i in range(len(dataset))])


def _model(clip, config, checkpoint, mode="zero_shot"):
    from models import create_model

    return create_model("aprilgan", clip=clip, checkpoint=FIXTURE / checkpoint, image_size=config["image_size"],
                        features_list=tuple(config["features_list"]),
                        few_shot_features=tuple(config["few_shot_features"]), mode=mode)


def _reference_dir(expected, target: Path) -> Path:
    """The authors' drawn references (duplicates collapse: a repeated image adds nothing to a nearest-patch
    memory), one sub-folder per class."""
    for relative in sorted(set(expected["json"]["few_shot_references"])):
        cls_name = relative.split("/")[0]
        (target / cls_name).mkdir(parents=True, exist_ok=True)
        shutil.copy(FIXTURE / "data" / relative, target / cls_name / Path(relative).name)
    return target


def _outputs(model, batch):
    with torch.no_grad():
        maps, scores = model(batch["img"], list(batch["cls_name"]))
        return model.finalize({"anomaly_maps": maps, "image_scores": scores}, list(batch["cls_name"]))


# ---------------------------------------------------------------------------------------------- in process
def test_fixture_order_and_masks(batch, expected):
    assert list(batch["img_path"]) == expected["json"]["image_paths"]
    np.testing.assert_array_equal(batch["img_mask"].numpy(), expected["gt_masks"])


@pytest.mark.parametrize("stage", ["init", "trained"])
def test_zero_shot_maps_and_scores(stage, clip, batch, expected, config):
    outputs = _outputs(_model(clip, config, f"{stage}.pth"), batch)
    tolerance = INIT_TOLERANCE if stage == "init" else TRAINED_TOLERANCE
    np.testing.assert_allclose(outputs["anomaly_maps"].numpy(), expected[f"{stage}_maps"], atol=tolerance, rtol=0)
    np.testing.assert_allclose(outputs["image_scores"].numpy(), expected[f"{stage}_scores"], atol=tolerance, rtol=0)


def test_few_shot_maps_and_scores(clip, batch, expected, config, tmp_path):
    from dataset import read_image
    from models import fewshot

    model = _model(clip, config, "init.pth", mode="few_shot")
    chosen = fewshot.choose(None, list(dict.fromkeys(batch["cls_name"])), None, 0,
                            _reference_dir(expected, tmp_path / "refs"))
    for cls_name, paths in chosen.items():
        model.set_references(cls_name, torch.stack([read_image(p, config["image_size"])[0] for p in paths]), paths)
    outputs = _outputs(model, batch)
    np.testing.assert_allclose(outputs["anomaly_maps"].numpy(), expected["init_few_shot_maps"], atol=INIT_TOLERANCE,
                               rtol=0)
    np.testing.assert_allclose(outputs["image_scores"].numpy(), expected["init_few_shot_scores"],
                               atol=INIT_TOLERANCE, rtol=0)
    # few-shot adds a non-negative distance map to the zero-shot one, and its score fuses the zero-shot one
    zero = _outputs(_model(clip, config, "init.pth"), batch)
    assert (outputs["anomaly_maps"] >= zero["anomaly_maps"] - 1e-6).all()
    np.testing.assert_allclose(outputs["image_scores_zero_shot"].numpy(), zero["image_scores"].numpy(), atol=1e-7)


def test_training_steps_reproduce_reference_losses(clip, batch, expected, config):
    from models.aprilgan.config import AprilGANTraining

    model = _model(clip, config, "init.pth").train()
    optimizer = model.make_optimizer(AprilGANTraining(learning_rate=config["learning_rate"]))
    with torch.no_grad():
        features = model.extract_features(_normalized(batch))
    for step in expected["json"]["train_steps"]:
        losses = model.training_losses(features, batch["img_mask"], batch["anomaly"], cls_names=batch["cls_name"])
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
        assert losses["loss"].item() == pytest.approx(step["loss"], abs=LOSS_TOLERANCE)
        for j, (focal, dice) in enumerate(zip(step["focal"], step["dice"])):
            assert losses[f"focal_{j}"].item() == pytest.approx(focal, abs=LOSS_TOLERANCE)
            assert losses[f"dice_{j}"].item() == pytest.approx(dice, abs=LOSS_TOLERANCE)
    trained = _model(clip, config, "trained.pth")
    model.eval()
    mine = _outputs(model, batch)["anomaly_maps"].numpy()
    np.testing.assert_allclose(mine, expected["trained_maps"], atol=TRAINED_TOLERANCE, rtol=0)
    np.testing.assert_allclose(mine, _outputs(trained, batch)["anomaly_maps"].numpy(), atol=TRAINED_TOLERANCE, rtol=0)


def _normalized(batch):
    from models.base import normalize_images

    return normalize_images(batch["img"])


def test_released_layout_round_trip(clip, config, tmp_path):
    """A checkpoint written here keeps the authors' layout: `trainable_linearlayer` with their key names."""
    from models.checkpoint import method_of, read_checkpoint, save_checkpoint

    model = _model(clip, config, "init.pth")
    save_checkpoint(tmp_path / "epoch_1.pth", model, 1)
    ours = torch.load(tmp_path / "epoch_1.pth", weights_only=True)
    theirs = torch.load(FIXTURE / "init.pth", weights_only=True)
    assert set(ours["trainable_linearlayer"]) == set(theirs["trainable_linearlayer"])
    for key, value in theirs["trainable_linearlayer"].items():
        assert torch.equal(ours["trainable_linearlayer"][key], value), key
    assert ours["method"] == "aprilgan" and ours["settings"]["features_list"] == config["features_list"]
    assert method_of(read_checkpoint(FIXTURE / "init.pth")) == "aprilgan"


def test_other_methods_files_are_not_taken_for_aprilgan():
    """VCP-CLIP's files also hold `trainable_linearlayer`; they must not pass for APRIL-GAN's."""
    from models.checkpoint import method_of, read_checkpoint

    assert method_of(read_checkpoint(ROOT / "tests" / "fixtures" / "vcp_tiny" / "init.pth")) == "vcp"


def test_wrong_number_of_layers_is_named(clip, config):
    from models import create_model
    from models.errors import CheckpointError

    with pytest.raises(CheckpointError, match="features_list"):
        create_model("aprilgan", clip=clip, checkpoint=FIXTURE / "init.pth", image_size=config["image_size"],
                     features_list=(1, 2))


# ---------------------------------------------------------------------------------------------- command lines
def _test_command(config, checkpoint, out, maps, *extra):
    return ["--model", "aprilgan", "--data_path", FIXTURE / "data", "--clip_weights", FIXTURE / "clip_tiny.npz",
            "--checkpoint_path", checkpoint, "--image_size", config["image_size"], "--features_list",
            *config["features_list"], "--device", "cpu", "--save_path", out, "--save_maps", maps, *extra]


def _check(maps_file, stage, expected, tolerance):
    saved = np.load(maps_file)
    assert [str(p) for p in saved["img_paths"]] == expected["json"]["image_paths"]
    np.testing.assert_allclose(saved["anomaly_maps"], expected[f"{stage}_maps"], atol=tolerance, rtol=0)
    np.testing.assert_allclose(saved["image_scores"], expected[f"{stage}_scores"], atol=tolerance, rtol=0)


def _check_metrics(results_file, stage, expected):
    results = json.loads(Path(results_file).read_text())
    assert results["method"] == "aprilgan"
    for cls_name, reference in expected["json"][stage]["metrics"].items():
        for key, value in reference.items():
            assert results["metrics"][cls_name][key] == pytest.approx(value, abs=METRIC_TOLERANCE), (cls_name, key)
    return results


@pytest.mark.slow
def test_test_command_zero_shot(tmp_path, expected, config):
    run_script("test.py", *_test_command(config, FIXTURE / "init.pth", tmp_path / "out", tmp_path / "m.npz"))
    _check(tmp_path / "m.npz", "init", expected, INIT_TOLERANCE)
    _check_metrics(tmp_path / "out" / "results.json", "init", expected)


@pytest.mark.slow
def test_test_command_few_shot(tmp_path, expected, config):
    refs = _reference_dir(expected, tmp_path / "refs")
    run_script("test.py", *_test_command(config, FIXTURE / "init.pth", tmp_path / "out", tmp_path / "m.npz",
                                         "--mode", "few_shot", "--few_shot_features", *config["few_shot_features"],
                                         "--reference_dir", refs))
    _check(tmp_path / "m.npz", "init_few_shot", expected, INIT_TOLERANCE)
    results = _check_metrics(tmp_path / "out" / "results.json", "init_few_shot", expected)
    assert sorted(results["references"]) == sorted(set(expected["json"]["cls_names"]))
    assert results["test_settings"]["mode"] == "few_shot"


@pytest.mark.slow
def test_train_command_then_test(tmp_path, expected, config):
    ckpt = tmp_path / "ckpt"
    run_script("train.py", "--model", "aprilgan", "--train_data_path", FIXTURE / "data", "--clip_weights",
               FIXTURE / "clip_tiny.npz", "--init_checkpoint", FIXTURE / "init.pth", "--image_size",
               config["image_size"], "--features_list", *config["features_list"], "--epoch", config["epochs"],
               "--batch_size", config["batch_size"], "--learning_rate", config["learning_rate"], "--aug_rate", "-1",
               "--seed", config["train_seed"], "--save_freq", config["epochs"], "--save_path", ckpt,
               "--device", "cpu", "--num_workers", "0")
    losses = json.loads((ckpt / "losses.json").read_text())
    assert len(losses) == len(expected["json"]["train_steps"])
    for ours, reference in zip(losses, expected["json"]["train_steps"]):
        assert ours["loss"] == pytest.approx(reference["loss"], abs=LOSS_TOLERANCE)
    checkpoint = ckpt / f"epoch_{config['epochs']}.pth"
    # settings recorded: test.py needs no model flags
    run_script("test.py", "--model", "aprilgan", "--data_path", FIXTURE / "data", "--clip_weights",
               FIXTURE / "clip_tiny.npz", "--checkpoint_path", checkpoint, "--device", "cpu", "--save_path",
               tmp_path / "out", "--save_maps", tmp_path / "m.npz")
    _check(tmp_path / "m.npz", "trained", expected, TRAINED_TOLERANCE)


@pytest.mark.slow
def test_two_process_training_reproduces_the_reference(tmp_path, expected, config):
    """torchrun, 2 processes: each rank half of every batch, each image's class name travelling with it."""
    import os
    import subprocess
    import sys

    ckpt = tmp_path / "ckpt"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(ROOT / "train.py"),
         "--model", "aprilgan", "--train_data_path", str(FIXTURE / "data"), "--clip_weights",
         str(FIXTURE / "clip_tiny.npz"), "--init_checkpoint", str(FIXTURE / "init.pth"), "--image_size",
         str(config["image_size"]), "--features_list", *map(str, config["features_list"]), "--epoch",
         str(config["epochs"]), "--batch_size", str(config["batch_size"]), "--learning_rate",
         str(config["learning_rate"]), "--save_freq", str(config["epochs"]), "--save_path", str(ckpt), "--device",
         "cpu", "--num_workers", "0"], cwd=ROOT, capture_output=True, text=True, timeout=600,
        env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    losses = json.loads((ckpt / "losses.json").read_text())
    for ours, reference in zip(losses, expected["json"]["train_steps"], strict=True):
        assert ours["loss"] == pytest.approx(reference["loss"], abs=LOSS_TOLERANCE)
