"""AdaCLIP parity with the authors' code on its tiny-CLIP fixture (tests/fixtures/adaclip_tiny), in process and
through the command lines (SPEC_ADACLIP §11).

Tolerances: maps and scores from init.pth 1e-5, after training 1e-4, per-step losses 1e-5. Every setting comes
from the fixture's `config`; the data are the APRIL-GAN fixture's.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT, fixture_outputs, run_script

FIXTURE = ROOT / "tests" / "fixtures" / "adaclip_tiny"
DATA = ROOT / "tests" / "fixtures" / "aprilgan_tiny" / "data"
INIT_TOLERANCE = 1e-5
TRAINED_TOLERANCE = 1e-4
LOSS_TOLERANCE = 1e-5
METRICS = {"auroc_px": "pixel_auroc", "ap_px": "pixel_ap", "auroc_im": "image_auroc", "ap_im": "image_ap"}


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
def dataset(config):
    from dataset import AnomalyDataset

    return AnomalyDataset(DATA, config["image_size"])


@pytest.fixture(scope="module")
def batch(dataset):
    return torch.utils.data.default_collate([dataset[i] for i in range(len(dataset))])


def _model(clip, config, checkpoint, **settings):
    from models import create_model

    return create_model("adaclip", clip=clip, checkpoint=checkpoint, image_size=config["image_size"],
                        k_clusters=config["k_clusters"], **settings)


def _outputs(model, batch):
    with torch.no_grad():
        return model(batch["img"], list(batch["cls_name"]))


# ---------------------------------------------------------------------------------------------- in process
def test_fixture_order_and_masks(batch, expected):
    assert list(batch["img_path"]) == expected["json"]["image_paths"]
    np.testing.assert_array_equal(batch["img_mask"].numpy(), expected["gt_masks"])


@pytest.mark.parametrize("stage", ["init", "trained"])
def test_maps_and_scores(stage, clip, batch, expected, config):
    """The reference's own checkpoints (its layout, no settings recorded): the tensors tell the prompt shapes."""
    model = _model(clip, config, FIXTURE / f"{stage}.pth")
    assert (model.config.prompting_depth, model.config.prompting_length) == (config["prompting_depth"],
                                                                             config["prompting_length"])
    outputs = _outputs(model, batch)
    tolerance = INIT_TOLERANCE if stage == "init" else TRAINED_TOLERANCE
    np.testing.assert_allclose(outputs.anomaly_map.numpy(), expected[f"{stage}_maps"], atol=tolerance, rtol=0)
    np.testing.assert_allclose(outputs.image_score.numpy(), expected[f"{stage}_scores"], atol=tolerance, rtol=0)


def test_one_image_batches_give_the_batched_outputs(clip, batch, config):
    """The reference runs one image at a time; a batch of mixed classes gives each image's own outputs."""
    model = _model(clip, config, FIXTURE / "init.pth")
    together = _outputs(model, batch)
    for i in (0, 4):
        with torch.no_grad():
            alone = model(batch["img"][i:i + 1], [batch["cls_name"][i]])
        np.testing.assert_allclose(alone.anomaly_map[0].numpy(), together.anomaly_map[i].numpy(), atol=1e-6)
        np.testing.assert_allclose(alone.image_score.numpy(), together.image_score[i:i + 1].numpy(), atol=1e-6)


def test_training_steps_reproduce_the_reference(clip, dataset, batch, expected, config):
    """Each reference step on its image (expected.json), from init.pth: every loss term within 1e-5, then the
    trained maps within 1e-4."""
    from models.adaclip.config import AdaCLIPTraining
    from models.base import normalize_images

    model = _model(clip, config, FIXTURE / "init.pth").train()
    optimizer = model.make_optimizer(AdaCLIPTraining(learning_rate=config["learning_rate"]))
    paths = [s.img_path for s in dataset.samples]
    for step in expected["json"]["train_steps"]:
        item = dataset[paths.index(step["image"])]
        losses = model.training_losses((normalize_images(item["img"][None]),), item["img_mask"][None],
                                       torch.tensor([item["anomaly"]]), cls_names=[item["cls_name"]])
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
        assert losses["loss"].item() == pytest.approx(step["loss"], abs=LOSS_TOLERANCE)
        assert losses["image_loss"].item() == pytest.approx(step["image_loss"], abs=LOSS_TOLERANCE)
        ours = [losses[f"{name}_{j}"].item() for j in range(4) for name in ("focal", "dice_abnormal", "dice_normal")]
        np.testing.assert_allclose(ours, step["pixel_terms"], atol=LOSS_TOLERANCE, rtol=0)
    model.eval()
    outputs = _outputs(model, batch)
    np.testing.assert_allclose(outputs.anomaly_map.numpy(), expected["trained_maps"], atol=TRAINED_TOLERANCE, rtol=0)
    np.testing.assert_allclose(outputs.image_score.numpy(), expected["trained_scores"], atol=TRAINED_TOLERANCE,
                               rtol=0)


def test_checkpoints_keep_the_reference_layout(clip, config, tmp_path):
    """What this project writes is the reference's state dict (same keys, shapes, dtypes) plus its settings."""
    from models.checkpoint import method_of, save_checkpoint

    model = _model(clip, config, FIXTURE / "init.pth")
    save_checkpoint(tmp_path / "epoch_1.pth", model, 1)
    ours = torch.load(tmp_path / "epoch_1.pth", weights_only=True)
    theirs = torch.load(FIXTURE / "init.pth", weights_only=True)
    assert method_of(theirs) == "adaclip" and ours["method"] == "adaclip"
    assert {k for k in ours if k.startswith("clip_model.")} == set(theirs)
    for key, value in theirs.items():
        assert ours[key].dtype == value.dtype and torch.equal(ours[key], value), key
    assert ours["settings"]["prompting_depth"] == config["prompting_depth"]
    assert ours["settings"]["k_clusters"] == config["k_clusters"]


def test_other_methods_files_are_not_taken_for_adaclip():
    from models.checkpoint import method_of, read_checkpoint

    for name in ("aprilgan", "anomalyclip", "vcp", "vip2"):
        assert method_of(read_checkpoint(ROOT / "tests" / "fixtures" / f"{name}_tiny" / "init.pth")) == name


def test_wrong_prompt_shape_is_named(clip, config):
    from models.errors import CheckpointError

    with pytest.raises(CheckpointError, match="prompting_length"):
        _model(clip, config, FIXTURE / "init.pth", prompting_length=3)


def test_hsf_off_and_static_only_run(clip, batch, config):
    """The paper's ablations: without the fusion the score is the class token's alone; static prompts only
    need no generators (the reference's checkpoints then hold none)."""
    two = {"img": batch["img"][2:4], "cls_name": batch["cls_name"][2:4]}  # one image of each class
    with_fusion = _outputs(_model(clip, config, FIXTURE / "init.pth"), two)
    without = _outputs(_model(clip, config, FIXTURE / "init.pth", use_hsf=False), two)
    np.testing.assert_array_equal(without.anomaly_map.numpy(), with_fusion.anomaly_map.numpy())
    assert not np.allclose(without.image_score.numpy(), with_fusion.image_score.numpy(), atol=1e-4)
    static = _model(clip, config, None, prompting_type="S", prompting_depth=3, prompting_length=2)
    assert not hasattr(static.learnable, "dynamic_visual_prompt_generator")
    assert _outputs(static, two).anomaly_map.shape == (2, config["image_size"], config["image_size"])


# ---------------------------------------------------------------------------------------------- command lines
def _test_command(config, checkpoint, out, maps):
    return ["--model", "adaclip", "--data_path", DATA, "--clip_weights", FIXTURE / "clip_tiny.npz",
            "--checkpoint_path", checkpoint, "--image_size", config["image_size"], "--k_clusters",
            config["k_clusters"], "--device", "cpu", "--save_path", out, "--save_maps", maps]


def _check(maps_file, stage, expected, tolerance):
    saved = np.load(maps_file)
    assert [str(p) for p in saved["img_paths"]] == expected["json"]["image_paths"]
    np.testing.assert_allclose(saved["anomaly_maps"], expected[f"{stage}_maps"], atol=tolerance, rtol=0)
    np.testing.assert_allclose(saved["image_scores"], expected[f"{stage}_scores"], atol=tolerance, rtol=0)


def _model_flags(config):
    """train.py's flags carry the method's defaults: the fixture's settings are passed (its file records none)."""
    return [
        part for name in ("image_size", "prompting_depth", "prompting_length", "prompting_type", "prompting_branch",
                          "use_hsf", "k_clusters") for part in (f"--{name}", config[name])]


def _train_command(config, save_path):
    return ["train.py", "--model", "adaclip", "--train_data_path", DATA, "--clip_weights", FIXTURE / "clip_tiny.npz",
            "--init_checkpoint", FIXTURE / "init.pth", *_model_flags(config), "--epoch", config["epoch"], "--batch_size", config["batch_size"],
            "--learning_rate", config["learning_rate"], "--seed", config["seed"], "--save_path", save_path,
            "--device", "cpu", "--num_workers", "0"]


@pytest.mark.slow
def test_test_command_from_init(tmp_path, expected, config):
    run_script("test.py", *_test_command(config, FIXTURE / "init.pth", tmp_path / "out", tmp_path / "m.npz"))
    _check(tmp_path / "m.npz", "init", expected, INIT_TOLERANCE)
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["method"] == "adaclip"
    for cls_name, reference in expected["json"]["init"]["metrics"].items():
        for theirs, ours in METRICS.items():
            if reference[theirs]:  # their 0 stands for "one class only"
                assert results["metrics"][cls_name][ours] * 100 == pytest.approx(reference[theirs], abs=1e-2)


@pytest.mark.slow
def test_train_command_then_test(tmp_path, expected, config):
    """train.py from init.pth in the reference's steps; test.py on what it saved needs no model flags."""
    ckpt = tmp_path / "ckpt"
    run_script(*_train_command(config, ckpt))
    losses = json.loads((ckpt / "losses.json").read_text())
    assert len(losses) == len(expected["json"]["train_steps"])
    for ours, reference in zip(losses, expected["json"]["train_steps"]):
        assert ours["loss"] == pytest.approx(reference["loss"], abs=LOSS_TOLERANCE)
        assert ours["image_loss"] == pytest.approx(reference["image_loss"], abs=LOSS_TOLERANCE)
    checkpoint = ckpt / f"epoch_{config['epoch']}.pth"
    assert torch.load(checkpoint, weights_only=True)["settings"]["k_clusters"] == config["k_clusters"]
    run_script("test.py", "--model", "adaclip", "--data_path", DATA, "--clip_weights", FIXTURE / "clip_tiny.npz",
               "--checkpoint_path", checkpoint, "--device", "cpu", "--save_path", tmp_path / "out", "--save_maps",
               tmp_path / "m.npz")
    _check(tmp_path / "m.npz", "trained", expected, TRAINED_TOLERANCE)


@pytest.mark.slow
def test_two_process_training_matches_one_process(tmp_path, config):
    """torchrun, 2 processes, batch 2 (the reference runs batch 1 only, which cannot be shared): one image per
    rank, the losses of one process with the same batches."""
    def command(save_path):
        script, *flags = _train_command(config, save_path)
        return [str(ROOT / script), *map(str, flags), "--batch_size", "2"]

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    runs = {"one": [sys.executable, *command(tmp_path / "one")],
            "two": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                    *command(tmp_path / "two")]}
    for name, argv in runs.items():
        result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
        assert result.returncode == 0, (name, result.stderr[-3000:])
    one, two = (json.loads((tmp_path / name / "losses.json").read_text()) for name in runs)
    assert len(one) == 3  # 6 images, batch 2
    for a, b in zip(one, two, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=LOSS_TOLERANCE)
