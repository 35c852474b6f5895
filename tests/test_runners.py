"""The torch-free pieces exported models run on: the set normalisation and the image reading equal their torch twins."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from deploy import image_io
from dataset import read_image
from models.vcp.model import VCPCLIP
from deploy.runners import ExportedModelError, ModelInfo, normalize_over_set


def finalize(maps: np.ndarray, scores: np.ndarray, classes) -> tuple[np.ndarray, np.ndarray]:
    outputs = VCPCLIP.finalize(None, {"anomaly_maps": torch.from_numpy(maps), "image_scores": torch.from_numpy(scores)},
                               classes)  # uses nothing of the instance
    return outputs["anomaly_maps"].numpy(), outputs["image_scores"].numpy()


def test_normalize_over_set_is_vcp_finalize():
    rng = np.random.default_rng(0)
    maps = rng.random((7, 16, 16), dtype=np.float32) * 0.3 + 0.4
    scores = rng.random(7, dtype=np.float32) + 1
    maps[5:7] = 0.25  # a class whose maps are constant: zeros
    classes = ["a", "b", "a", "b", "a", "c", "c"]
    for names in (classes, ["all"] * 7):
        expected_maps, expected_scores = finalize(maps, scores, names)
        got_maps, got_scores = normalize_over_set(maps, scores, None if names[0] == "all" else names)
        np.testing.assert_array_equal(got_maps, expected_maps)  # bit for bit: same float32 arithmetic
        np.testing.assert_array_equal(got_scores, expected_scores)
        assert got_maps.dtype == np.float32 and got_scores.dtype == np.float32


def test_normalize_over_set_of_one_image_gives_an_undefined_score():
    maps, scores = normalize_over_set(np.full((1, 4, 4), 0.5, np.float32), np.array([1.3], np.float32))
    expected_maps, expected_scores = finalize(np.full((1, 4, 4), 0.5, np.float32), np.array([1.3], np.float32),
                                              ["all"])
    assert np.isnan(scores[0]) and np.isnan(expected_scores[0])
    np.testing.assert_array_equal(maps, expected_maps)


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
