"""Bad input: each case gets a clear error naming the file, or a documented handling (docs/INPUTS.md)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import FIXTURE, FIXTURE_SETTINGS, normalized, run_script
from PIL import Image

from dataset import AnomalyDataset, DatasetError, read_image, read_mask, resize_mask


@pytest.fixture
def data(tmp_path):
    """A writable copy of the fixture dataset."""
    root = tmp_path / "data"
    shutil.copytree(FIXTURE / "data", root)
    for path in root.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return root


def edit_meta(root, change):
    meta = json.loads((root / "meta.json").read_text())
    change(meta)
    (root / "meta.json").write_text(json.dumps(meta))


def run_test_cli(root, clip_pt, tmp_path, *extra):
    return run_script("test.py", "--data_path", root, "--checkpoint_path", FIXTURE / "init.pth",
                      "--clip_weights", clip_pt, *FIXTURE_SETTINGS, "--save_path", tmp_path / "out",
                      "--num_workers", "0", "--device", "cpu", *extra, check=False)


def assert_clean_failure(result, *needles):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in result.stderr, (needle, result.stderr)


@pytest.mark.slow
def test_missing_file_named_before_any_model_work(data, clip_pt, tmp_path):
    (data / "02/test/ko/002.png").unlink()
    result = run_test_cli(data, clip_pt, tmp_path)
    assert_clean_failure(result, "02/test/ko/002.png", "does not exist", "Check the dataset root")
    assert not (tmp_path / "out").exists()  # nothing created before the inputs are checked


@pytest.mark.slow
def test_missing_meta_json(tmp_path, clip_pt):
    (tmp_path / "empty").mkdir()
    result = run_test_cli(tmp_path / "empty", clip_pt, tmp_path)
    assert_clean_failure(result, "meta.json not found", "python -m generate_dataset_json")


@pytest.mark.slow
def test_corrupt_image_is_named_before_any_model_work(data, clip_pt, tmp_path):
    (data / "01/test/ok/001.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    result = run_test_cli(data, clip_pt, tmp_path)
    assert_clean_failure(result, "cannot read image", "01/test/ok/001.png")
    assert "evaluating" not in result.stdout


def test_mask_of_another_size_is_an_error_before_any_model_work(data):
    mask = data / "01/ground_truth/ko/000_mask.png"
    Image.open(mask).resize((50, 40)).save(mask)
    with pytest.raises(DatasetError, match=r"000_mask.png is 50x40 but its image .*000.png is 160x160"):
        AnomalyDataset(data, 126)


@pytest.mark.slow
def test_truncated_image_in_a_loader_worker_gives_one_clean_line(data, clip_pt, tmp_path):
    """Its header reads fine, so only decoding (in a DataLoader worker) finds the damage."""
    image = data / "02/test/ok/001.png"
    image.write_bytes(image.read_bytes()[:2000])
    result = run_script("test.py", "--data_path", data, "--checkpoint_path", FIXTURE / "init.pth",
                        "--clip_weights", clip_pt, *FIXTURE_SETTINGS, "--save_path", tmp_path / "out",
                        "--num_workers", "2", "--batch_size", "2", "--device", "cpu", check=False)
    assert_clean_failure(result, "cannot read image", "02/test/ok/001.png")
    assert "Original Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("test.py: cannot read image")


@pytest.mark.parametrize("value,label", [(0, 0), (1, 1), (True, 1), ("0", 0), ("1", 1), ("false", 0), (1.0, 1)])
def test_labels_in_meta_json(data, value, label):
    def change(meta):
        item = meta["test"]["01"][0]
        item.update({"anomaly": value, "mask_path": item["mask_path"] if label else ""})

    edit_meta(data, change)
    assert AnomalyDataset(data, 126).samples[0].anomaly == label


def test_unknown_label_is_an_error(data):
    edit_meta(data, lambda meta: meta["test"]["01"][0].update({"anomaly": "maybe"}))
    with pytest.raises(DatasetError, match=r"01/test/ko/000.png' \(class '01'\) has anomaly='maybe'; use 0 \(normal\) or 1"):
        AnomalyDataset(data, 126)


@pytest.mark.slow
def test_missing_checkpoint_and_mismatched_checkpoint(data, clip_pt, tmp_path):
    assert_clean_failure(run_script("test.py", "--data_path", data, "--checkpoint_path", tmp_path / "nope.pth",
                                    "--clip_weights", clip_pt, "--save_path", tmp_path / "o", check=False),
                         "nope.pth: no such file")
    result = run_test_cli(data, clip_pt, tmp_path, "--n_ctx", "5")
    assert_clean_failure(result, "init.pth was made with n_ctx=7, but this run has n_ctx=5", "pass --n_ctx 7")


@pytest.mark.slow
def test_missing_clip_weights_fail_fast_naming_the_flag(data, tmp_path):
    result = run_script("test.py", "--data_path", data, "--checkpoint_path", FIXTURE / "init.pth",
                        "--clip_weights", tmp_path / "ViT-L-14-336px.pt", check=False)
    assert_clean_failure(result, "--clip_weights", "no such file")


def test_empty_class_is_skipped_with_a_warning(data, caplog, monkeypatch):
    import logging

    monkeypatch.setattr(logging.getLogger("zsas"), "propagate", True)  # scripts run in-process may have closed it
    edit_meta(data, lambda meta: meta["test"].update({"04": []}))
    dataset = AnomalyDataset(data, 126)
    assert dataset.class_names == ["01", "02", "03"]
    assert "class '04' of the test split" in caplog.text and "skipped" in caplog.text


def test_split_without_images_is_an_error(data):
    edit_meta(data, lambda meta: meta.update({"test": {"01": []}}))
    with pytest.raises(DatasetError, match="has no images at all"):
        AnomalyDataset(data, 126)


@pytest.mark.slow
def test_class_without_anomalies_still_evaluates(data, clip_pt, tmp_path):
    """Image AUROC is undefined there: reported as missing, the other classes and metrics unaffected."""
    edit_meta(data, lambda meta: meta["test"].update({"03": [meta["test"]["03"][1]]}))
    result = run_test_cli(data, clip_pt, tmp_path)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "out/results.json").read_text())["metrics"]
    assert metrics["03"]["image_auroc"] is None
    assert metrics["01"]["image_auroc"] is not None and metrics["mean"]["image_auroc"] is not None


def _reference_pipeline(image: Image.Image, size: int) -> torch.Tensor:
    """SPEC §7 for an 8-bit RGB image: bicubic resize, to RGB, [0, 1], CLIP normalisation."""
    from models.base import CLIP_MEAN, CLIP_STD

    array = np.asarray(image.resize((size, size), Image.BICUBIC).convert("RGB"), dtype=np.float32) / 255
    return (torch.from_numpy(array).permute(2, 0, 1) - torch.tensor(CLIP_MEAN).view(3, 1, 1)) / torch.tensor(
        CLIP_STD).view(3, 1, 1)


def _load(path, size):
    """An image as the model sees it after normalisation."""
    image, original = read_image(path, size)
    return normalized(image), original


@pytest.fixture
def rgb_image():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8), mode="RGB")


def test_rgb_and_grayscale_follow_the_reference_pipeline(tmp_path, rgb_image):
    for image in (rgb_image, rgb_image.convert("L")):
        image.save(tmp_path / "x.png")
        tensor, size = _load(tmp_path / "x.png", 32)
        assert size == (40, 30)
        torch.testing.assert_close(tensor, _reference_pipeline(image, 32), rtol=0, atol=1e-6)


def test_rgba_is_resized_then_converted_like_the_reference(tmp_path, rgb_image):
    rgba = rgb_image.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(tmp_path / "x.png")
    torch.testing.assert_close(_load(tmp_path / "x.png", 32)[0], _reference_pipeline(rgba, 32), rtol=0, atol=1e-6)


def test_palette_image_is_converted_to_rgb_before_resizing(tmp_path, rgb_image):
    palette = rgb_image.quantize(colors=16)
    palette.save(tmp_path / "x.png")
    torch.testing.assert_close(_load(tmp_path / "x.png", 32)[0],
                               _reference_pipeline(palette.convert("RGB"), 32), rtol=0, atol=1e-6)


def test_16_bit_image_is_scaled_to_8_bit(tmp_path):
    values = np.random.default_rng(1).integers(0, 256, (30, 40)).astype(np.uint16)
    Image.fromarray(values * 257).save(tmp_path / "deep.png")  # 16-bit grayscale PNG
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    eight_bit = Image.fromarray(values.astype(np.uint8), mode="L")
    torch.testing.assert_close(_load(tmp_path / "deep.png", 32)[0], _reference_pipeline(eight_bit, 32),
                               rtol=0, atol=1e-6)


@pytest.mark.parametrize("mode", ["L", "P", "I;16", "RGB", "1"])
def test_masks_of_any_mode_mark_nonzero_pixels(tmp_path, mode):
    binary = np.zeros((40, 40), dtype=bool)
    binary[10:30, 5:15] = True
    if mode == "P":
        mask = Image.fromarray(binary.astype(np.uint8), mode="L").convert("P")
        mask.putpalette([0, 0, 0, 0, 0, 1] + [0] * 762)  # index 1 is an almost black colour
    elif mode == "I;16":
        mask = Image.fromarray(binary.astype(np.uint16) * 3)
    elif mode == "1":
        mask = Image.fromarray(binary)
    else:
        mask = Image.fromarray(binary.astype(np.uint8) * 255, mode="L").convert(mode)
    mask.save(tmp_path / "m.png")
    out = resize_mask(read_mask(tmp_path / "m.png", (40, 40), tmp_path / "img.png"), 40)
    np.testing.assert_array_equal(out.numpy().astype(bool), binary)


@pytest.mark.parametrize("background,defect", [
    ((255, 255, 255, 0), (255, 0, 0, 255)),  # a defect painted on a transparent (white) background
    ((0, 0, 0, 255), (200, 200, 200, 255)),  # fully opaque: the non-black pixels
])
def test_rgba_masks(tmp_path, background, defect):
    binary = np.zeros((40, 40), dtype=bool)
    binary[10:20, 5:35] = True
    rgba = np.empty((40, 40, 4), dtype=np.uint8)
    rgba[:] = background
    rgba[binary] = defect
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "m.png")
    out = resize_mask(read_mask(tmp_path / "m.png", (40, 40), tmp_path / "img.png"), 40)
    np.testing.assert_array_equal(out.numpy().astype(bool), binary)
