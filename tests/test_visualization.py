"""visualization.py: figure sizes, non-blank renders, deterministic sample picks and names, test.py --visualize."""
from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FIXTURE, FIXTURE_SETTINGS, ROOT
from PIL import Image

from reporting import visualization
from dataset import AnomalyDataset

SIZE = 126


def png_array(data: bytes | Path) -> np.ndarray:
    image = Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
    assert image.format == "PNG"
    return np.asarray(image.convert("RGB"), dtype=np.float32)


def assert_not_blank(pixels: np.ndarray) -> None:
    """A blank or single-colour figure has (almost) no spread; a heat map over an image has plenty."""
    assert pixels.std() > 20, f"figure looks blank (pixel std {pixels.std():.1f})"


def textured_image(size: int = SIZE, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((size, size, 3)) * 255).astype(np.uint8)


def blob_map(size: int = SIZE) -> np.ndarray:
    y, x = np.mgrid[:size, :size]
    return np.exp(-((x - size * 0.6) ** 2 + (y - size * 0.4) ** 2) / (2 * (size / 8) ** 2)).astype(np.float32)


@pytest.mark.parametrize("size", [SIZE, 300])
def test_overlay_has_the_documented_size_and_is_not_blank(size):
    png = visualization.render_overlay(textured_image(size), blob_map(size), title="image score 0.500")
    pixels = png_array(png)
    assert (pixels.shape[1], pixels.shape[0]) == visualization.overlay_canvas_size(size)
    assert pixels.shape[1] > max(size, visualization.MIN_CELL_PX)  # the colour bar is beside the image
    assert_not_blank(pixels)


def test_overlay_shows_the_map_where_it_is_high():
    """The heat map really is drawn: the hot spot is redder than a cold corner (jet: high = red)."""
    image = np.full((SIZE, SIZE, 3), 128, dtype=np.uint8)
    pixels = png_array(visualization.render_overlay(image, blob_map()))
    cell = visualization.MIN_CELL_PX
    top = visualization.TITLE_PX
    hot = pixels[top + int(cell * 0.4), int(cell * 0.6)]
    cold = pixels[top + 5, 5]
    assert hot[0] - hot[2] > 50 and cold[2] - cold[0] > 50


def test_panel_and_overview_render(tmp_path):
    mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
    mask[40:70, 60:90] = 1
    panel = visualization.render_test_panel(textured_image(), blob_map(), mask, title="bottle · anomalous · 0.9")
    assert_not_blank(png_array(panel))
    overview = visualization.render_overview([textured_image(seed=i) for i in range(5)], [blob_map()] * 5,
                                             [mask, mask * 0, mask, mask, mask], [f"#{i}" for i in range(5)],
                                             title="bottle")
    pixels = png_array(overview)
    cell = visualization.MIN_CELL_PX
    assert pixels.shape[1] > 4 * cell and pixels.shape[0] > 2 * cell  # 4 columns, 2 rows
    assert_not_blank(pixels)


def test_value_range():
    assert visualization.value_range(np.array([0.2, 0.4])) == (0.0, 1.0)
    assert visualization.value_range(np.array([0.2, 0.4]), "data") == pytest.approx((0.2, 0.4))
    low, high = visualization.value_range(np.full(4, 0.3), "data")
    assert low < 0.3 < high  # a constant map still gets a usable scale


def test_display_image_is_the_resized_input():
    path = FIXTURE / "data" / "01" / "test" / "ko" / "000.png"
    expected = np.asarray(Image.open(path).convert("RGB").resize((SIZE, SIZE), Image.BICUBIC))
    np.testing.assert_array_equal(visualization.display_image(path, SIZE), expected)


def test_sample_pick_is_half_and_half_topped_up():
    labels = [0, 1, 0, 1, 1, 0, 0]
    assert visualization.select_samples(labels, 4) == [1, 3, 0, 2]
    assert visualization.select_samples(labels, 3) == [1, 3, 0]  # the odd one goes to the anomalies
    assert visualization.select_samples([1, 0, 0, 0, 0], 4) == [0, 1, 2, 3]  # one anomaly: topped up with normals
    assert visualization.select_samples([0, 1], 8) == [1, 0]
    assert visualization.select_samples(labels, 0) == []


def test_names_are_path_derived_and_unique():
    assert visualization.name_from_path("bottle/test/good/000.png") == "bottle_test_good_000"
    assert visualization.safe_name("electrical commutators") == "electrical_commutators"
    assert visualization.unique_names(["a", "b", "a", "a"]) == ["a", "b", "a_2", "a_3"]


def test_save_test_panels_per_class(tmp_path):
    dataset = AnomalyDataset(FIXTURE / "data", SIZE)
    count = len(dataset)
    outputs = {"anomaly_maps": torch.rand(count, SIZE, SIZE, generator=torch.Generator().manual_seed(0)),
               "image_scores": torch.linspace(0, 1, count),
               "gt_masks": torch.stack([dataset[i]["img_mask"] for i in range(count)]),
               "labels": torch.tensor([s.anomaly for s in dataset.samples])}
    written = visualization.save_test_panels(outputs, dataset, tmp_path, max_per_class=2)
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.png"))
    assert written == len(files) == 3 * 2 + 3
    # one anomalous and one normal per class, named after the image path below the class folder
    assert {"01/test_ko_000.png", "01/test_ok_001.png", "01_overview.png", "03_overview.png"} <= set(files)
    assert not list(tmp_path.rglob(".*.tmp"))  # atomic writes leave no temporary files
    assert_not_blank(png_array(tmp_path / "01" / "test_ko_000.png"))


def test_test_py_visualize_writes_panels(tmp_path):
    """test.py --visualize end to end on the fixture (in-process; `import test` would find the stdlib package)."""
    spec = importlib.util.spec_from_file_location("vip2_test_script", ROOT / "test.py")
    test_script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(test_script)
    save_path = tmp_path / "results"
    test_script.main(["--data_path", str(FIXTURE / "data"), "--checkpoint_path", str(FIXTURE / "init.pth"),
                      "--clip_weights", str(FIXTURE / "clip_tiny.npz"), *FIXTURE_SETTINGS, "--device", "cpu",
                      "--num_workers", "0", "--save_path", str(save_path), "--visualize", "--vis_max", "2"])
    figures = save_path / "visualization"
    for cls_name in ("01", "02", "03"):
        assert (figures / f"{cls_name}_overview.png").is_file()
        assert {p.name for p in (figures / cls_name).glob("*.png")} == {"test_ko_000.png", "test_ok_001.png"}
    panel = png_array(figures / "02" / "test_ko_000.png")
    cell = max(SIZE, visualization.MIN_CELL_PX)
    assert panel.shape[1] > 3 * cell and panel.shape[0] > cell  # image | map | contour, side by side
    assert_not_blank(panel)
    assert "9 figures written" in (save_path / "log.txt").read_text()

