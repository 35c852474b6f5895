"""predict.py on generated images with the tiny fixture CLIP: overlays, maps, scores.csv, unreadable files."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FIXTURE, FIXTURE_SETTINGS, fixture_model
from PIL import Image

import predict
from reporting import visualization
from dataset import read_image

SIZE = 126
MODEL_ARGS = ["--checkpoint_path", str(FIXTURE / "init.pth"), "--clip_weights", str(FIXTURE / "clip_tiny.npz"),
              *FIXTURE_SETTINGS, "--device", "cpu", "--num_workers", "0"]


def write_image(path: Path, seed: int, size=(96, 80)) -> Path:
    """A smooth random texture with a bright square: something for the model to look at."""
    rng = np.random.default_rng(seed)
    small = rng.random((size[1] // 8, size[0] // 8, 3)) * 200
    image = Image.fromarray(small.astype(np.uint8)).resize(size, Image.BICUBIC)
    pixels = np.asarray(image).copy()
    pixels[20:40, 30:50] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture()
def image_folder(tmp_path) -> dict:
    """Two `good/000.png` in different folders, an upper-case extension, a corrupt PNG and a text file."""
    root = tmp_path / "images"
    images = [write_image(root / "a" / "good" / "000.png", 0), write_image(root / "a" / "defect" / "001.PNG", 1),
              write_image(root / "b" / "good" / "000.png", 2)]
    corrupt = root / "a" / "good" / "broken.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (root / "notes.txt").write_text("not an image")
    return {"root": root, "images": images, "corrupt": corrupt}


def read_scores(out_dir: Path) -> list[dict]:
    with open(out_dir / predict.SCORES_FILE, newline="") as file:
        return list(csv.DictReader(file))


def expected_scores(paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Image scores and smoothed maps computed directly with the model, for comparison."""
    from models.clip_loader import load_clip

    model = fixture_model(load_clip(str(FIXTURE / "clip_tiny.npz")))
    images = torch.stack([read_image(path, SIZE)[0] for path in paths])
    with torch.inference_mode():
        maps, scores = model(images)
    return scores.numpy(), maps.numpy()


def test_folder_with_a_corrupt_file(image_folder, tmp_path):
    out_dir = tmp_path / "out"
    processed = predict.main([str(image_folder["root"]), "--out", str(out_dir), "--save_raw", "--batch_size", "2",
                              *MODEL_ARGS])
    assert processed == 3

    # the corrupt file is reported once, by name, and skipped; the text file is not an image and is ignored
    log = (out_dir / "log.txt").read_text()
    skipped = [line for line in log.splitlines() if "skipped" in line and "broken.png" in line]
    assert len(skipped) == 1
    assert "notes.txt" not in log
    assert "3 image(s) processed, 1 unreadable file(s) skipped" in log

    rows = read_scores(out_dir)
    assert [row["path"] for row in rows] == [str(p) for p in sorted(image_folder["images"])]
    scores, maps = expected_scores([Path(row["path"]) for row in rows])
    for row, score, anomaly_map in zip(rows, scores, maps):
        assert float(row["image_score"]) == pytest.approx(float(score), abs=2e-6)
        assert float(row["max_pixel_score"]) == pytest.approx(float(anomaly_map.max()), abs=2e-6)
        saved = np.load(out_dir / row["map"])
        assert saved.shape == (SIZE, SIZE) and saved.dtype == np.float32
        np.testing.assert_allclose(saved, anomaly_map, atol=1e-5)

        overlay = Image.open(out_dir / row["overlay"])
        assert overlay.size == visualization.overlay_canvas_size(SIZE)
        assert np.asarray(overlay.convert("RGB"), dtype=np.float32).std() > 20  # not blank

    # the two good/000.png do not collide: the output mirrors the input folders
    assert {row["overlay"] for row in rows} == {"a/defect/001.png", "a/good/000.png", "b/good/000.png"}
    assert not list(out_dir.rglob(".*.tmp"))


def test_glob_and_file_arguments(image_folder, tmp_path):
    out_dir = tmp_path / "out"
    root = image_folder["root"]
    processed = predict.main([str(root / "*" / "good" / "*.png"), str(image_folder["images"][1]),
                              "--out", str(out_dir), *MODEL_ARGS])
    rows = read_scores(out_dir)
    # the glob finds the two good images and the corrupt one (skipped); the file argument adds the third image
    assert processed == 3
    assert {row["path"] for row in rows} == {str(p) for p in image_folder["images"]}
    assert all(row["map"] == "" for row in rows) and not list(out_dir.rglob("*.npy"))  # no --save_raw


def test_exit_status_when_nothing_can_be_processed(image_folder, tmp_path, monkeypatch):
    monkeypatch.setattr("sys.argv", ["predict.py", str(image_folder["corrupt"]), str(tmp_path / "missing.png"),
                                     "--out", str(tmp_path / "out"), *MODEL_ARGS])
    with pytest.raises(SystemExit) as exit_info:
        predict.cli()
    assert exit_info.value.code == 1
    assert not (tmp_path / "out" / predict.SCORES_FILE).exists()


def test_checkpoint_error_is_one_clear_line(image_folder, tmp_path, monkeypatch):
    monkeypatch.setattr("sys.argv", ["predict.py", str(image_folder["root"]), "--out", str(tmp_path / "out"),
                                     "--checkpoint_path", str(tmp_path / "nope.pth")])
    with pytest.raises(SystemExit) as exit_info:
        predict.cli()
    message = str(exit_info.value.code)
    assert message.startswith("predict.py: --checkpoint_path") and "nope.pth" in message and "\n" not in message
    assert not (tmp_path / "out").exists()  # nothing is created before the inputs are checked


def test_refuses_to_overwrite_its_inputs(image_folder):
    image = image_folder["images"][0]
    before = image.read_bytes()
    with pytest.raises(ValueError, match="would overwrite the input"):
        predict.main([str(image), "--out", str(image.parent), *MODEL_ARGS])
    assert image.read_bytes() == before


def test_find_images_skips_its_own_output_folder(image_folder):
    root = image_folder["root"]
    out_dir = root / "predictions"
    write_image(out_dir / "a" / "good" / "000.png", 9)  # an overlay from an earlier run
    paths, unmatched = predict.find_images([str(root), str(root / "nothing*")], out_dir)
    assert sorted(paths) == sorted(image_folder["images"] + [image_folder["corrupt"]])
    assert unmatched == [str(root / "nothing*")]


def test_a_glob_overlapping_a_folder_is_not_reported_as_matching_nothing(tmp_path):
    from predict import find_images

    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    for name in ("a.png", "sub/b.jpg"):
        Image.new("RGB", (8, 8)).save(folder / name)
    paths, unmatched = find_images([str(folder), str(folder / "**" / "*.jpg"), str(tmp_path / "none*.png")],
                                   tmp_path / "out")
    assert sorted(p.name for p in paths) == ["a.png", "b.jpg"]
    assert unmatched == [str(tmp_path / "none*.png")]


def test_an_earlier_run_is_refused_unless_overwrite(image_folder, tmp_path):
    out_dir = tmp_path / "out"
    predict.main([str(image_folder["images"][0]), "--out", str(out_dir), *MODEL_ARGS])
    before = (out_dir / predict.SCORES_FILE).read_text()
    with pytest.raises(ValueError, match="already holds an earlier run's scores.csv.*--overwrite"):
        predict.main([str(image_folder["images"][1]), "--out", str(out_dir), *MODEL_ARGS])
    assert (out_dir / predict.SCORES_FILE).read_text() == before
    assert predict.main([str(image_folder["images"][1]), "--out", str(out_dir), "--overwrite", *MODEL_ARGS]) == 1


def test_vcp_scores_are_normalised_over_the_run(image_folder, tmp_path):
    from conftest import VCP_FIXTURE

    out_dir = tmp_path / "out"
    args = ["--model", "vcp", "--checkpoint_path", str(VCP_FIXTURE / "init.pth"), "--clip_weights",
            str(VCP_FIXTURE / "clip_tiny.npz"), *FIXTURE_SETTINGS, "--device", "cpu"]
    assert predict.main([str(image_folder["root"]), "--out", str(out_dir), "--save_raw", *args]) == 3
    rows = read_scores(out_dir)
    scores = sorted(float(row["image_score"]) for row in rows)
    assert scores[0] == 0 and scores[-1] == 1  # min-max over the run's images, as the reference does per class
    raw = [float(row["raw_score"]) for row in rows]
    assert len(set(raw)) == 3 and all(1 < value < 2 for value in raw)  # two branch means of probabilities
    maps = np.stack([np.load(out_dir / row["map"]) for row in rows])
    assert maps.min() == 0 and maps.max() == 1


def test_exported_model_under_torchrun_is_refused(tmp_path, monkeypatch):
    """An exported model runs in one process: under torchrun (WORLD_SIZE > 1) predict.py says so before any work."""
    write_image(tmp_path / "images" / "000.png", 0)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="run in one process: start predict.py without torchrun"):
        predict.main([str(tmp_path / "images"), "--onnx", str(tmp_path / "model.onnx"), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out" / predict.SCORES_FILE).exists()
