"""The torch-free pieces exported models run on: the set normalisation and the image reading."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from deploy import image_io
from dataset import read_image
from deploy.runners import ExportedModelError, ModelInfo
from engine.set_normalization import normalize_over_set


def oracle(maps: np.ndarray, scores: np.ndarray, classes) -> tuple[np.ndarray, np.ndarray]:
    """The reference's per-class min-max, written out image by image in float64."""
    out_maps, out_scores = np.zeros(maps.shape), np.zeros(scores.shape)
    for i, name in enumerate(classes):
        same = [j for j, other in enumerate(classes) if other == name]
        low, high = min(maps[j].min() for j in same), max(maps[j].max() for j in same)
        out_maps[i] = (maps[i] - low) / (high - low) if high > low else 0
        s_low, s_high = min(scores[j] for j in same), max(scores[j] for j in same)
        out_scores[i] = (scores[i] - s_low) / (s_high - s_low) if s_high > s_low else np.nan
    return out_maps, out_scores


def test_set_normalization_is_the_reference_and_the_same_on_numpy_and_torch():
    rng = np.random.default_rng(0)
    maps = rng.random((7, 16, 16), dtype=np.float32) * 0.3 + 0.4
    scores = rng.random(7, dtype=np.float32) + 1
    maps[5:7] = 0.25  # a class whose maps are constant: zeros
    classes = ["a", "b", "a", "b", "a", "c", "c"]
    for names in (classes, ["all"] * 7):
        given = None if names[0] == "all" else names
        got_maps, got_scores = normalize_over_set(maps, scores, given)
        expected_maps, expected_scores = oracle(maps, scores, names)
        np.testing.assert_allclose(got_maps, expected_maps, atol=1e-6)
        np.testing.assert_allclose(got_scores, expected_scores, atol=1e-6)
        assert got_maps.dtype == np.float32 and got_scores.dtype == np.float32
        torch_maps, torch_scores = normalize_over_set(torch.from_numpy(maps), torch.from_numpy(scores), given)
        assert isinstance(torch_maps, torch.Tensor)
        np.testing.assert_array_equal(torch_maps.numpy(), got_maps)  # one function: the same float32 arithmetic
        np.testing.assert_array_equal(torch_scores.numpy(), got_scores)


def test_normalize_over_set_of_one_image_gives_an_undefined_score():
    maps, scores = normalize_over_set(np.full((1, 4, 4), 0.5, np.float32), np.array([1.3], np.float32))
    assert np.isnan(scores[0])
    np.testing.assert_array_equal(maps, np.zeros((1, 4, 4), np.float32))


def _images(tmp_path) -> dict:
    rng = np.random.default_rng(1)
    rgb = (rng.random((37, 53, 3)) * 255).astype(np.uint8)
    images = {"rgb.png": Image.fromarray(rgb), "rgba.png": Image.fromarray(rgb).convert("RGBA"),
              "gray.png": Image.fromarray(rgb[..., 0]), "palette.png": Image.fromarray(rgb).convert("P"),
              "bits.png": Image.fromarray(rgb[..., 0] > 128), "la.png": Image.fromarray(rgb).convert("LA"),
              "cmyk.jpg": Image.fromarray(rgb).convert("CMYK"), "photo.jpg": Image.fromarray(rgb),
              "sixteen.png": Image.fromarray(rgb[..., 0].astype(np.uint16) * 257),  # mode I;16
              "float.tif": Image.fromarray(rgb[..., 1].astype(np.float32) / 255),  # [0, 1]: scaled by 255
              "float255.tif": Image.fromarray(rgb[..., 1].astype(np.float32))}  # [0, 255]: as it is
    transparent = Image.fromarray(rgb).convert("P")
    transparent.info["transparency"] = 0
    images["transparent.png"] = transparent
    paths = {}
    for name, image in images.items():
        paths[name] = tmp_path / name
        image.save(paths[name])
    return paths


@pytest.mark.parametrize("size", [126, 64])
def test_read_image_array_gives_dataset_read_image_pixels(tmp_path, size):
    for name, path in _images(tmp_path).items():
        expected, expected_size = read_image(path, size)
        got, got_size = image_io.read_image_array(path, size)
        assert got.dtype == np.uint8 and got.shape == (3, size, size) and got.flags.c_contiguous, name
        np.testing.assert_array_equal(got, expected.numpy(), err_msg=name)
        assert got_size == expected_size


def test_read_image_array_names_an_unreadable_file(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    with pytest.raises(ValueError, match="cannot read image .*broken.png"):
        image_io.read_image_array(broken, 32)


def test_model_info_round_trips_through_string_metadata():
    info = ModelInfo(method="vcp", title="VCP-CLIP", image_size=518, sigma=8.0, set_normalization=True,
                     settings={"features_list": [6, 12, 18, 24], "alpha": 0.2}, checkpoint_sha256="ab" * 32)
    metadata = info.to_metadata()
    assert all(isinstance(v, str) for v in metadata.values())
    assert ModelInfo.from_metadata({**metadata, "from_a_newer_version": "1"}, "m.onnx") == info
    with pytest.raises(ExportedModelError, match="m.onnx records no model settings.*export.py"):
        ModelInfo.from_metadata({"producer": "someone else"}, "m.onnx")


OPENVINO_RUNNERS_RELEASED_IN_ORDER = """
import signal, subprocess, sys
import numpy as np
import openvino as ov
import openvino.opset13 as ops
from deploy.runners import OPENVINO_RT_INFO, ModelInfo, open_exported

image = ops.parameter([-1, 3, 8, 8], ov.Type.u8, name="image")
pixels = ops.convert(image, ov.Type.f32)
maps = ops.reduce_mean(pixels, ops.constant(np.array([1])), keep_dims=False)
scores = ops.reduce_max(maps, ops.constant(np.array([1, 2])), keep_dims=False)
maps.output(0).set_names({"anomaly_map"}); scores.output(0).set_names({"image_score"})
model = ov.Model([maps, scores], [image])
info = ModelInfo(method="vip2", title="tiny", image_size=8, sigma=4.0, set_normalization=False)
for key, value in info.to_metadata().items():
    model.set_rt_info(value, [OPENVINO_RT_INFO, key])
ov.save_model(model, sys.argv[1])
signal.signal(signal.SIGCHLD, lambda *_: None)  # a Python handler, as a DataLoader with workers installs
first, second = open_exported(sys.argv[1]), open_exported(sys.argv[1])
first(np.zeros((1, 3, 8, 8), np.uint8)), second(np.zeros((1, 3, 8, 8), np.uint8))
del first  # released in the order they were opened
del second
subprocess.run([sys.executable, "-c", "pass"], check=True)  # its SIGCHLD is handled on this thread's signal stack
print("survived")
"""


def test_openvino_runners_released_in_opening_order_leave_signals_working(tmp_path):
    """Each OpenVINO Core's CPU plugin swaps the thread's signal stack and restores it only when Cores die in
    reverse order; the runners share one Core, else this child dies of SIGSEGV at its next handled signal."""
    pytest.importorskip("openvino", reason="OpenVINO is optional (pip install -r requirements-deploy.txt)")
    import subprocess
    import sys
    from pathlib import Path

    result = subprocess.run([sys.executable, "-c", OPENVINO_RUNNERS_RELEASED_IN_ORDER, str(tmp_path / "tiny.xml")],
                            cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "survived" in result.stdout, (result.returncode, result.stderr[-2000:])
