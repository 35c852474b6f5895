"""AnomalyCLIP through predict.py and export.py on its reference fixture: the generic machinery, no method code.

predict.py's maps and scores on the fixture's images are the reference's (the images go through
predict.py's own reading and resizing); the exported ONNX graph computes what PyTorch does (1e-4),
and predict.py --onnx gives predict.py's outputs.
"""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FIXTURE, ROOT, project_logging_kept

import predict

pytest.importorskip("onnx", reason="export needs onnx (pip install -r requirements.txt)")
pytest.importorskip("onnxscript", reason="export needs onnxscript (pip install -r requirements.txt)")
pytest.importorskip("onnxruntime", reason="exported files run on onnxruntime (pip install -r requirements.txt)")

AC_FIXTURE = ROOT / "tests" / "fixtures" / "anomalyclip_tiny"
TOLERANCE = 1e-4  # exported graph against PyTorch
CONFIG = json.loads((AC_FIXTURE / "expected.json").read_text())["config"]
MODEL_ARGS = ["--model", "anomalyclip", "--checkpoint_path", str(AC_FIXTURE / "init.pth"), "--clip_weights",
              str(AC_FIXTURE / "clip_tiny.npz"), "--image_size", str(CONFIG["image_size"]), "--features_list",
              *map(str, CONFIG["features_list"]), "--feature_map_layer", *map(str, CONFIG["feature_map_layer"]),
              "--dpam_layer", str(CONFIG["dpam_layer"]), "--sigma", str(CONFIG["sigma"])]


@pytest.fixture(scope="module")
def expected():
    with np.load(AC_FIXTURE / "expected.npz") as arrays:
        return {k: arrays[k] for k in arrays.files}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    import export

    folder = tmp_path_factory.mktemp("ac_export")
    with project_logging_kept():
        return export.main([*MODEL_ARGS, "--output", str(folder / "anomalyclip.onnx")])


@pytest.fixture()
def fixture_images(tmp_path) -> list[Path]:
    """The fixture's 8 test images (not their masks), in meta.json's order, in a folder of their own."""
    meta = json.loads((FIXTURE / "data" / "meta.json").read_text())["test"]
    copies = []
    for cls in meta:
        for item in meta[cls]:
            target = tmp_path / "images" / item["img_path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(FIXTURE / "data" / item["img_path"], target)
            copies.append(target)
    return copies


def read_rows(out_dir: Path) -> dict[str, dict]:
    with open(out_dir / predict.SCORES_FILE, newline="") as file:
        return {Path(row["path"]).resolve(): row for row in csv.DictReader(file)}


def test_predict_gives_the_reference_maps_and_scores(fixture_images, expected, tmp_path):
    out = tmp_path / "out"
    with project_logging_kept():
        assert predict.main([str(tmp_path / "images"), "--out", str(out), "--save_raw", "--device", "cpu",
                             *MODEL_ARGS]) == len(fixture_images)
    rows = read_rows(out)
    for index, path in enumerate(fixture_images):
        row = rows[path.resolve()]
        assert float(row["image_score"]) == pytest.approx(float(expected["init_scores"][index]), abs=1e-5)
        np.testing.assert_allclose(np.load(out / row["map"]), expected["init_maps"][index], atol=1e-5, rtol=0)


@pytest.mark.slow  # the export takes about 20 s on 2 cores
def test_onnx_runtime_matches_pytorch(exported, fixture_images):
    from dataset import read_image
    from models import create_model
    from deploy.runners import OnnxRunner, open_exported

    assert exported["max_difference"] <= TOLERANCE  # export.py's own check (batches of 1 and 3)
    info = open_exported(exported["output"]).info
    assert (info.method, info.image_size, info.set_normalization) == ("anomalyclip", CONFIG["image_size"], False)
    images = torch.stack([read_image(p, CONFIG["image_size"])[0] for p in fixture_images])
    model = create_model("anomalyclip", clip_weights=str(AC_FIXTURE / "clip_tiny.npz"),
                         checkpoint=AC_FIXTURE / "init.pth", image_size=CONFIG["image_size"],
                         features_list=tuple(CONFIG["features_list"]), dpam_layer=CONFIG["dpam_layer"],
                         sigma=float(CONFIG["sigma"]))
    runner = OnnxRunner(exported["output"])
    for batch in (1, 3, len(images)):
        with torch.inference_mode():
            maps, scores = model(images[:batch])
        exported_maps, exported_scores = runner(images[:batch].numpy())
        np.testing.assert_allclose(exported_maps, maps.numpy(), atol=TOLERANCE, rtol=0)
        np.testing.assert_allclose(exported_scores, scores.numpy(), atol=TOLERANCE, rtol=0)


@pytest.mark.slow
def test_predict_onnx_equals_predict(exported, fixture_images, tmp_path):
    common = [str(tmp_path / "images"), "--save_raw", "--batch_size", "3"]
    with project_logging_kept():
        assert predict.main([*common, "--out", str(tmp_path / "torch"), *MODEL_ARGS, "--device", "cpu"]) == 8
        assert predict.main([*common, "--out", str(tmp_path / "onnx"), "--onnx", exported["output"]]) == 8
    torch_rows, onnx_rows = read_rows(tmp_path / "torch"), read_rows(tmp_path / "onnx")
    assert sorted(torch_rows) == sorted(onnx_rows)
    for path, row in torch_rows.items():
        assert float(onnx_rows[path]["image_score"]) == pytest.approx(float(row["image_score"]), abs=TOLERANCE)
        np.testing.assert_allclose(np.load(tmp_path / "onnx" / onnx_rows[path]["map"]),
                                   np.load(tmp_path / "torch" / row["map"]), atol=TOLERANCE, rtol=0)
