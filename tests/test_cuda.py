"""The CUDA twins of the CPU paths: run on a machine with a GPU (`python -m pytest -q tests/test_cuda.py`).

Every test here is skipped without CUDA; the CPU tests cover the same logic. What only a
GPU can show is checked here: that the fp32 path reproduces the reference fixture there
too (TF32 off) for both methods, that the torch metrics on the device equal the NumPy ones, that the
feature cache on the GPU trains as recomputing does, and that bf16/fp16 run and stay close.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import FIXTURE, FIXTURE_SETTINGS, VCP_FIXTURE, run_script, vcp_settings
from scipy.ndimage import gaussian_filter

import metrics
from models.smoothing import gaussian_blur

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

MAP_TOLERANCE = 1e-5  # as the CPU parity tests
LOW_PRECISION_MAP_TOLERANCE = 2e-2


def _test_py(clip_pt, folder, *extra):
    run_script("test.py", "--data_path", FIXTURE / "data", "--checkpoint_path", FIXTURE / "init.pth",
               "--clip_weights", clip_pt, *FIXTURE_SETTINGS, "--save_path", folder,
               "--save_maps", folder / "maps.npz", "--device", "cuda", *extra)
    return np.load(folder / "maps.npz")


def test_gaussian_blur_on_cuda_equals_scipy():
    maps = np.random.default_rng(0).random((4, 518, 518)).astype(np.float32)
    ours = gaussian_blur(torch.from_numpy(maps).cuda(), 8).cpu().numpy()
    np.testing.assert_allclose(ours, np.stack([gaussian_filter(m, 8) for m in maps]), atol=1e-6, rtol=0)


def test_metrics_on_cuda_equal_numpy():
    rng = np.random.default_rng(1)
    masks = np.zeros((12, 64, 64), dtype=np.uint8)
    for index in range(0, 12, 2):
        row, col = rng.integers(0, 50, 2)
        masks[index, row:row + 10, col:col + 8] = 1
    maps = (gaussian_filter(rng.random(masks.shape), (0, 2, 2)) + 0.1 * masks).astype(np.float32)
    scores, labels = rng.random(12), (masks.reshape(12, -1).max(1) > 0).astype(int)
    names = ["a"] * 6 + ["b"] * 6
    for pro_mode in metrics.PRO_MODES:
        on_cuda = metrics.evaluate(torch.from_numpy(maps).cuda(), torch.from_numpy(masks).cuda(), scores, labels,
                                   names, pro_mode=pro_mode)
        on_cpu = metrics.evaluate(maps, masks, scores, labels, names, pro_mode=pro_mode, backend="numpy")
        for cls_name, values in on_cpu.items():
            for key, value in values.items():
                assert on_cuda[cls_name][key] == pytest.approx(value, abs=1e-9), (pro_mode, cls_name, key)


def test_test_py_on_cuda_reproduces_the_reference(clip_pt, tmp_path, expected):
    saved = _test_py(clip_pt, tmp_path, "--num_workers", "2")
    np.testing.assert_allclose(saved["anomaly_maps"], expected["init_maps"], atol=MAP_TOLERANCE, rtol=0)
    np.testing.assert_allclose(saved["image_scores"], expected["init_scores"], atol=MAP_TOLERANCE, rtol=0)
    run = json.loads((tmp_path / "results.json").read_text())["run"]
    assert run["device"].startswith("cuda") and run["peak_gpu_memory_gb"] > 0 and run["warm_up_seconds"] > 0


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_on_cuda_stays_close(clip_pt, tmp_path, expected, precision):
    saved = _test_py(clip_pt, tmp_path, "--precision", precision, "--num_workers", "0")
    np.testing.assert_allclose(saved["anomaly_maps"], expected["init_maps"], atol=LOW_PRECISION_MAP_TOLERANCE, rtol=0)
    np.testing.assert_allclose(saved["image_scores"], expected["init_scores"], atol=LOW_PRECISION_MAP_TOLERANCE,
                               rtol=0)


def _train(clip_pt, folder, *extra):
    run_script("train.py", "--train_data_path", FIXTURE / "data", "--save_path", folder, "--clip_weights", clip_pt,
               "--init_checkpoint", FIXTURE / "init.pth", *FIXTURE_SETTINGS, "--num_workers", "0",
               "--device", "cuda", "--epoch", "3", "--batch_size", "3", *extra)
    return json.loads((folder / "losses.json").read_text()), json.loads((folder / "train_stats.json").read_text())


def test_gpu_feature_cache_trains_as_recomputing(clip_pt, tmp_path):
    cached, stats = _train(clip_pt, tmp_path / "cached", "--cache_features", "gpu")
    fresh, _ = _train(clip_pt, tmp_path / "fresh", "--cache_features", "off")
    assert stats["feature_cache"].startswith("cuda")
    for a, b in zip(cached, fresh, strict=True):
        assert a["image_loss"] == pytest.approx(b["image_loss"], abs=1e-6)
        assert a["pixel_loss"] == pytest.approx(b["pixel_loss"], abs=1e-6)


def test_reference_training_losses_on_cuda(clip_pt, tmp_path, expected):
    run_script("train.py", "--train_data_path", FIXTURE / "data", "--save_path", tmp_path, "--clip_weights", clip_pt,
               "--init_checkpoint", FIXTURE / "init.pth", *FIXTURE_SETTINGS, "--epoch", "5", "--num_workers", "0",
               "--device", "cuda")
    losses = json.loads((tmp_path / "losses.json").read_text())
    for ours, reference in zip(losses, expected["json"]["train_steps"], strict=True):
        assert ours["image_loss"] == pytest.approx(reference["image_loss"], abs=1e-5)
        assert ours["pixel_loss"] == pytest.approx(reference["pixel_loss"], abs=1e-5)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_training_on_cuda_gives_finite_losses(clip_pt, tmp_path, precision):
    losses, stats = _train(clip_pt, tmp_path, "--precision", precision)
    assert all(np.isfinite([step["image_loss"], step["pixel_loss"]]).all() for step in losses)
    assert stats["peak_gpu_memory_gb"] > 0


def _vcp_test_py(clip_pt, folder, config, *extra):
    run_script("test.py", "--model", "vcp", "--data_path", VCP_FIXTURE / "data", "--dataset", config["dataset"],
               "--clip_weights", clip_pt, "--checkpoint_path", VCP_FIXTURE / "init.pth", *vcp_settings(config),
               "--alpha", config["alpha"], "--sigma", config["sigma"], "--save_path", folder,
               "--save_maps", folder / "maps.npz", "--device", "cuda", *extra)
    return np.load(folder / "maps.npz")


def test_vcp_test_py_on_cuda_reproduces_the_reference(vcp_clip_pt, tmp_path, vcp_expected):
    saved = _vcp_test_py(vcp_clip_pt, tmp_path, vcp_expected["json"]["config"], "--num_workers", "2")
    np.testing.assert_allclose(saved["anomaly_maps"], vcp_expected["init_maps"], atol=MAP_TOLERANCE, rtol=0)
    np.testing.assert_allclose(saved["image_scores"], vcp_expected["init_scores"], atol=MAP_TOLERANCE, rtol=0)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_vcp_low_precision_on_cuda_stays_close(vcp_clip_pt, tmp_path, vcp_expected, precision):
    saved = _vcp_test_py(vcp_clip_pt, tmp_path, vcp_expected["json"]["config"], "--precision", precision)
    # per-class min-max stretches every difference by 1 / (class range): compare the raw scores
    np.testing.assert_allclose(saved["image_scores_unnormalized"], vcp_expected["init_scores_unnormalized"],
                               atol=LOW_PRECISION_MAP_TOLERANCE, rtol=0)


def test_vcp_reference_training_losses_on_cuda(vcp_clip_pt, tmp_path, vcp_expected):
    config = vcp_expected["json"]["config"]
    run_script("train.py", "--model", "vcp", "--train_data_path", VCP_FIXTURE / "data", "--dataset",
               config["dataset"], "--clip_weights", vcp_clip_pt, "--init_checkpoint", VCP_FIXTURE / "init.pth",
               *vcp_settings(config), "--epoch", config["epochs"], "--batch_size", config["batch_size"],
               "--learning_rate", config["learning_rate"], "--dtp_dropout", "0", "--aug_rate", "-1",
               "--no_albumentations", "--seed", config["run_seed"], "--save_path", tmp_path, "--device", "cuda")
    losses = json.loads((tmp_path / "losses.json").read_text())
    for ours, reference in zip(losses, vcp_expected["json"]["train_steps"], strict=True):
        assert ours["loss"] == pytest.approx(reference["loss"], abs=1e-5)
