"""WinCLIP parity with anomalib's WinClipModel on its tiny-CLIP fixture (tests/fixtures/winclip_tiny), in process and
through the command lines (SPEC_WINCLIP §11). Maps and scores within 1e-5, zero-shot and WinCLIP+; every setting
comes from the fixture's `config`; the few-shot references are drawn by models/fewshot.py (--k_shot, --seed), the
draw the fixture recorded."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import ROOT, fixture_outputs, run_script

FIXTURE = ROOT / "tests" / "fixtures" / "winclip_tiny"
TOLERANCE = 1e-5


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


def _model(clip, config, **settings):
    from models import create_model

    settings = {"image_size": config["image_size"], "scales": tuple(config["scales"]), **settings}
    return create_model("winclip", clip=clip, **settings)


@pytest.fixture(scope="module")
def zero_shot_model(clip, config):
    return _model(clip, config)


@pytest.fixture(scope="module")
def few_shot_model(clip, config, expected):
    model = _model(clip, config)
    _set_references(model, expected, config)
    return model


def _set_references(model, expected, config):
    from dataset import read_image

    for cls_name, paths in expected["json"]["few_shot_references"].items():
        images = torch.stack([read_image(FIXTURE / "data" / p, config["image_size"])[0] for p in paths])
        model.set_references(cls_name, images, paths)


# ---------------------------------------------------------------------------------------------- in process
def test_fixture_order(batch, expected):
    assert list(batch["img_path"]) == expected["json"]["image_paths"]
    assert list(batch["cls_name"]) == expected["json"]["cls_names"]


def test_zero_shot_maps_and_scores(zero_shot_model, batch, expected):
    with torch.no_grad():
        maps, scores = zero_shot_model(batch["img"], list(batch["cls_name"]))
    np.testing.assert_allclose(maps.numpy(), expected["zero_shot_maps"], atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(scores.numpy(), expected["zero_shot_scores"], atol=TOLERANCE, rtol=0)
    # the maps vary within each image far beyond the tolerance: the windows are seen, not a constant
    assert (np.ptp(expected["zero_shot_maps"].reshape(6, -1), axis=1) > 100 * TOLERANCE).all()


def test_few_shot_maps_and_scores(few_shot_model, batch, expected):
    assert few_shot_model.few_shot
    with torch.no_grad():
        maps, scores = few_shot_model(batch["img"], list(batch["cls_name"]))
    np.testing.assert_allclose(maps.numpy(), expected["few_shot_maps"], atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(scores.numpy(), expected["few_shot_scores"], atol=TOLERANCE, rtol=0)


def test_an_image_scores_the_same_alone_and_in_a_mixed_batch(few_shot_model, batch):
    with torch.no_grad():
        together, _ = few_shot_model(batch["img"], list(batch["cls_name"]))
        alone, _ = few_shot_model(batch["img"][-1:], [batch["cls_name"][-1]])
    torch.testing.assert_close(alone[0], together[-1], atol=1e-6, rtol=0)


def test_window_geometry_and_harmonic_mean():
    from models.winclip.model import harmonic_aggregation, window_indices

    index = window_indices(3, 2)
    assert index.tolist() == [[0, 1, 3, 4], [1, 2, 4, 5], [3, 4, 6, 7], [4, 5, 7, 8]]
    coverage = torch.zeros(4, 9, dtype=torch.bool).scatter_(1, index, True)
    scores = torch.tensor([[1.0, 0.5, 0.25, 0.2]])
    centre = 4 / (1 / 1.0 + 1 / 0.5 + 1 / 0.25 + 1 / 0.2)  # the middle patch is in every window
    out = harmonic_aggregation(scores, coverage)
    assert out[0, 4].item() == pytest.approx(centre) and out[0, 0].item() == pytest.approx(1.0)
    assert out[0, 1].item() == pytest.approx(2 / (1 / 1.0 + 1 / 0.5))


def test_scales_larger_than_the_grid_are_refused(clip, config):
    grid = config["image_size"] // 16
    with pytest.raises(ValueError, match=f"--scales \\[{grid + 1}\\] larger than the {grid}x{grid} patch grid"):
        _model(clip, config, scales=(2, grid + 1))
    with pytest.raises(ValueError, match="repeats a window size"):
        _model(clip, config, scales=(2, 2))


def test_without_a_class_name_the_prompts_say_object(clip, config, caplog):
    model = _model(clip, config)
    images = torch.zeros(1, 3, config["image_size"], config["image_size"], dtype=torch.uint8)
    with torch.no_grad(), caplog.at_level("INFO", logger="zsas.models"):
        unnamed = model(images).anomaly_map
        named = model(images, ["object"]).anomaly_map
    assert "'object'" in caplog.text
    torch.testing.assert_close(unnamed, named, atol=0, rtol=0)


def test_a_class_without_references_is_named(few_shot_model, config):
    images = torch.zeros(1, 3, config["image_size"], config["image_size"], dtype=torch.uint8)
    with pytest.raises(ValueError, match="no reference images for class 'screw'"):
        few_shot_model(images, ["screw"])


# ---------------------------------------------------------------------------------------------- command lines
def _test_command(config, out, maps, *extra):
    return ["--model", "winclip", "--data_path", FIXTURE / "data", "--clip_weights", FIXTURE / "clip_tiny.npz",
            "--image_size", config["image_size"], "--scales", *config["scales"], "--device", "cpu",
            "--save_path", out, "--save_maps", maps, *extra]


def _check(maps_file, stage, expected):
    saved = np.load(maps_file)
    assert [str(p) for p in saved["img_paths"]] == expected["json"]["image_paths"]
    np.testing.assert_allclose(saved["anomaly_maps"], expected[f"{stage}_maps"], atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(saved["image_scores"], expected[f"{stage}_scores"], atol=TOLERANCE, rtol=0)


@pytest.mark.slow
def test_test_command_zero_shot(tmp_path, expected, config):
    run_script("test.py", *_test_command(config, tmp_path / "out", tmp_path / "m.npz"))
    _check(tmp_path / "m.npz", "zero_shot", expected)
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["method"] == "winclip" and results["checkpoint"] == "" and "references" not in results


@pytest.mark.slow
def test_test_command_few_shot_draws_the_recorded_references(tmp_path, expected, config):
    run_script("test.py", *_test_command(config, tmp_path / "out", tmp_path / "m.npz", "--k_shot", config["k_shot"],
                                         "--seed", config["seed"]))
    _check(tmp_path / "m.npz", "few_shot", expected)
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    drawn = {c: [str(p).split("/data/", 1)[1] for p in paths] for c, paths in results["references"].items()}
    assert drawn == expected["json"]["few_shot_references"]


@pytest.mark.slow
def test_test_command_few_shot_from_a_reference_dir(tmp_path, expected, config):
    for cls_name, paths in expected["json"]["few_shot_references"].items():
        (tmp_path / "refs" / cls_name).mkdir(parents=True)
        for path in paths:
            shutil.copy(FIXTURE / "data" / path, tmp_path / "refs" / cls_name / path.replace("/", "_"))
    run_script("test.py", *_test_command(config, tmp_path / "out", tmp_path / "m.npz", "--reference_dir",
                                         tmp_path / "refs"))
    _check(tmp_path / "m.npz", "few_shot", expected)


@pytest.mark.slow
def test_train_refuses_and_test_refuses_a_checkpoint(tmp_path, config):
    trained = run_script("train.py", "--model", "winclip", "--train_data_path", FIXTURE / "data", check=False)
    assert trained.returncode != 0 and "training-free, there is nothing to train" in trained.stderr
    assert "Traceback" not in trained.stderr
    tested = run_script("test.py", *_test_command(config, tmp_path / "out", tmp_path / "m.npz", "--checkpoint_path",
                                                  FIXTURE / "expected.npz"), check=False)
    assert tested.returncode != 0 and "training-free and reads no checkpoint" in tested.stderr


@pytest.mark.slow
def test_test_command_under_torchrun_and_in_bf16(tmp_path, expected, config):
    """torchrun, 2 processes (each rank half of the images, every rank the same drawn references): the fixture's
    values; bf16 autocast: within 1e-2 of them (it rounds every matmul)."""
    import os
    import subprocess
    import sys

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(ROOT / "test.py"), *map(str, _test_command(config, tmp_path / "out", tmp_path / "m.npz", "--k_shot",
                                                              config["k_shot"], "--seed", config["seed"],
                                                              "--batch_size", 2))]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    _check(tmp_path / "m.npz", "few_shot", expected)
    run_script("test.py", *_test_command(config, tmp_path / "bf16", tmp_path / "bf16.npz", "--precision", "bf16"))
    saved = np.load(tmp_path / "bf16.npz")
    np.testing.assert_allclose(saved["anomaly_maps"], expected["zero_shot_maps"], atol=1e-2, rtol=0)
    np.testing.assert_allclose(saved["image_scores"], expected["zero_shot_scores"], atol=1e-2, rtol=0)
