"""export.py and predict.py --onnx / --openvino on the reference fixtures: exported graphs compute what PyTorch does."""
from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FIXTURE, FIXTURE_SETTINGS, ROOT, VCP_FIXTURE, fixture_model, project_logging_kept
from test_predict import write_image

import export
import predict
from deploy.runners import OnnxRunner, open_exported

onnx = pytest.importorskip("onnx", reason="export needs onnx (pip install -r requirements.txt)")
pytest.importorskip("onnxscript", reason="export needs onnxscript (pip install -r requirements.txt)")
pytest.importorskip("onnxruntime", reason="exported files run on onnxruntime (pip install -r requirements.txt)")

TOLERANCE = 1e-4
FOLDERS = {"vip2": FIXTURE, "vcp": VCP_FIXTURE}


def model_args(method: str) -> list[str]:
    folder = FOLDERS[method]
    return ["--model", method, "--checkpoint_path", str(folder / "init.pth"), "--clip_weights",
            str(folder / "clip_tiny.npz"), *FIXTURE_SETTINGS]


@pytest.fixture(scope="session")
def exported(tmp_path_factory) -> dict:
    """Each fixture model exported once to ONNX (fp32), with export.py's report."""
    folder = tmp_path_factory.mktemp("exported")
    with project_logging_kept():
        return {method: export.main([*model_args(method), "--output", str(folder / f"{method}.onnx")])
                for method in FOLDERS}


@pytest.fixture(scope="module")
def clips():
    from models.clip_loader import load_clip

    return {"vip2": load_clip(str(FIXTURE / "clip_tiny.npz")),
            "vcp": load_clip(str(VCP_FIXTURE / "clip_tiny.npz"), quick_gelu=False)}


@pytest.mark.parametrize("method", ["vip2", "vcp"])
def test_onnx_runtime_matches_pytorch_on_the_fixture_images(method, exported, clips, fixture_batch, vcp_batch):
    report = exported[method]
    assert set(report["check"]) == {1, 3} and report["max_difference"] <= TOLERANCE  # export.py's own check

    images = (fixture_batch if method == "vip2" else vcp_batch)["img"]
    model = fixture_model(clips[method], method=method)
    runner = OnnxRunner(report["output"])
    for batch in (1, 3, len(images)):  # traced with a batch of 2: the graph takes any
        with torch.inference_mode():
            maps, scores = model(images[:batch])
        exported_maps, exported_scores = runner(images[:batch].numpy())
        assert exported_maps.shape == (batch, 126, 126) and exported_maps.dtype == np.float32
        assert exported_scores.shape == (batch,) and exported_scores.dtype == np.float32
        np.testing.assert_allclose(exported_maps, maps.numpy(), atol=TOLERANCE, rtol=0)
        np.testing.assert_allclose(exported_scores, scores.numpy(), atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("method", ["vip2", "vcp"])
def test_the_file_records_its_settings(method, exported):
    model = onnx.load(exported[method]["output"])
    graph_input = model.graph.input[0]
    assert graph_input.name == "image" and graph_input.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [d.dim_param or d.dim_value for d in graph_input.type.tensor_type.shape.dim] == ["batch", 3, 126, 126]
    assert [o.name for o in model.graph.output] == ["anomaly_map", "image_score"]

    metadata = {p.key: p.value for p in model.metadata_props}
    checkpoint = FOLDERS[method] / "init.pth"
    assert metadata["zsas.method"] == method and metadata["zsas.image_size"] == "126"
    assert metadata["zsas.sigma"] == "8.0" and metadata["zsas.precision"] == "fp32"
    assert metadata["zsas.checkpoint_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert json.loads(metadata["zsas.set_normalization"]) is (method == "vcp")
    settings = json.loads(metadata["zsas.settings"])
    assert settings["features_list"] == [1, 2, 3, 4] and settings["image_size"] == 126
    if method == "vcp":
        assert settings["alpha"] == 0.2 and settings["score_topk"] == 2000

    info = open_exported(exported[method]["output"]).info  # what predict.py reads back
    assert (info.method, info.image_size, info.set_normalization) == (method, 126, method == "vcp")


def test_an_existing_output_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    output = tmp_path / "model.onnx"
    output.write_bytes(b"earlier")
    monkeypatch.setattr("sys.argv", ["export.py", *model_args("vip2"), "--output", str(output)])
    with pytest.raises(SystemExit) as exit_info:
        export.cli()
    message = str(exit_info.value.code)
    assert message.startswith("export.py: --output") and "--overwrite" in message and "\n" not in message
    assert output.read_bytes() == b"earlier"
    assert "building" not in capsys.readouterr().out  # refused before the model was built


def test_a_bad_checkpoint_is_one_clear_line(tmp_path, monkeypatch):
    output = tmp_path / "model.onnx"
    monkeypatch.setattr("sys.argv", ["export.py", "--checkpoint_path", str(tmp_path / "nope.pth"),
                                     "--output", str(output)])
    with pytest.raises(SystemExit) as exit_info:
        export.cli()
    message = str(exit_info.value.code)
    assert message == f"export.py: --checkpoint_path {tmp_path / 'nope.pth'}: no such file"
    assert not list(tmp_path.iterdir())


def test_a_suffix_that_contradicts_the_format_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"--format openvino file must end in \.xml"):
        export.main([*model_args("vip2"), "--output", str(tmp_path / "model.onnx"), "--format", "openvino"])


def test_staged_files_appear_only_when_complete(tmp_path):
    target = tmp_path / "model.xml"
    with pytest.raises(RuntimeError):
        with export.staged_files(target, "openvino") as staged:
            staged.with_suffix(".bin").write_bytes(b"weights")
            staged.write_text("<net/>")
            raise RuntimeError("the check failed")
    assert not list(tmp_path.iterdir())
    with export.staged_files(target, "openvino") as staged:
        staged.with_suffix(".bin").write_bytes(b"weights")
        staged.write_text("<net/>")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.bin", "model.xml"]


@pytest.mark.slow
def test_an_export_off_by_more_than_the_tolerance_leaves_no_file(tmp_path, monkeypatch):
    monkeypatch.setattr(export, "FP32_TOLERANCE", -1.0)  # any difference, even 0, fails the check
    output = tmp_path / "model.onnx"
    with pytest.raises(export.ExportedModelError, match="differs from PyTorch.*nothing was written"):
        export.main([*model_args("vip2"), "--output", str(output)])
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_fp16_export_is_close_and_says_so(tmp_path, exported):
    report = export.main([*model_args("vcp"), "--output", str(tmp_path / "vcp16.onnx"), "--precision", "fp16"])
    assert 0 < report["max_difference"] < 1e-2
    assert open_exported(report["output"]).info.precision == "fp16"
    assert Path(report["output"]).stat().st_size < 0.7 * Path(exported["vcp"]["output"]).stat().st_size


@pytest.mark.slow
def test_openvino_export_matches_pytorch(tmp_path, clips, vcp_batch):
    pytest.importorskip("openvino", reason="OpenVINO is optional (pip install -r requirements-deploy.txt)")
    report = export.main([*model_args("vcp"), "--output", str(tmp_path / "vcp.xml")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vcp.bin", "vcp.xml"]  # no intermediate left
    runner = open_exported(tmp_path / "vcp.xml")
    assert (runner.info.method, runner.info.image_size, runner.info.set_normalization) == ("vcp", 126, True)
    model = fixture_model(clips["vcp"], method="vcp")
    images = vcp_batch["img"][:3]
    with torch.inference_mode():
        maps, scores = model(images)
    exported_maps, exported_scores = runner(images.numpy())
    np.testing.assert_allclose(exported_maps, maps.numpy(), atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(exported_scores, scores.numpy(), atol=TOLERANCE, rtol=0)
    assert report["max_difference"] <= TOLERANCE


# ---------------------------------------------------------------- predict.py --onnx

@pytest.fixture()
def images(tmp_path) -> Path:
    root = tmp_path / "images"
    for index, name in enumerate(("a/000.png", "a/001.jpg", "b/000.png", "c.bmp")):
        write_image(root / name, index, size=(96 + 8 * index, 80))
    return root


def read_rows(out_dir: Path) -> list[dict]:
    with open(out_dir / predict.SCORES_FILE, newline="") as file:
        return list(csv.DictReader(file))


@pytest.mark.parametrize("method", ["vip2", "vcp"])
def test_predict_onnx_equals_predict_with_the_checkpoint(method, exported, images, tmp_path):
    common = [str(images), "--save_raw", "--batch_size", "3"]
    assert predict.main([*common, "--out", str(tmp_path / "torch"), *model_args(method), "--device", "cpu"]) == 4
    assert predict.main([*common, "--out", str(tmp_path / "onnx"), "--onnx", exported[method]["output"]]) == 4
    torch_rows, onnx_rows = read_rows(tmp_path / "torch"), read_rows(tmp_path / "onnx")
    assert [r["path"] for r in onnx_rows] == [r["path"] for r in torch_rows]
    for expected, got in zip(torch_rows, onnx_rows):
        assert (got["overlay"], got["map"]) == (expected["overlay"], expected["map"])
        for column in ("image_score", "raw_score", "max_pixel_score"):
            assert float(got[column]) == pytest.approx(float(expected[column]), abs=TOLERANCE)
        np.testing.assert_allclose(np.load(tmp_path / "onnx" / got["map"]),
                                   np.load(tmp_path / "torch" / expected["map"]), atol=TOLERANCE, rtol=0)
    if method == "vcp":  # normalised over the run, from the file's metadata
        scores = sorted(float(r["image_score"]) for r in onnx_rows)
        assert scores[0] == 0 and scores[-1] == 1
    log = (tmp_path / "onnx" / "log.txt").read_text()
    assert "ONNX Runtime" in log and "4 image(s) processed" in log


def test_predict_onnx_refuses_model_flags(exported, images, tmp_path, capsys):
    with pytest.raises(SystemExit):
        predict.main([str(images), "--out", str(tmp_path / "out"), "--onnx", exported["vip2"]["output"],
                      "--image_size", "224"])
    assert "--image_size 224: not taken with --onnx" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_predict_onnx_on_a_file_that_is_not_an_export(images, tmp_path):
    not_onnx = tmp_path / "model.onnx"
    not_onnx.write_bytes(b"not a model")
    with pytest.raises(ValueError, match=r"model\.onnx cannot be loaded by ONNX Runtime.*export\.py"):
        predict.main([str(images), "--out", str(tmp_path / "out"), "--onnx", str(not_onnx)])
    assert not (tmp_path / "out").exists()


BLOCKED = ("torch", "open_clip", "models", "dataset")
TORCH_FREE_RUN = """
import sys
class Blocker:  # as if PyTorch, open_clip and the model code were not installed
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ImportError(f"{{name}} is blocked in this test")
sys.meta_path.insert(0, Blocker())
sys.path.insert(0, {root!r})
sys.argv = ["predict.py", *{args!r}]
import predict
predict.cli()
"""


@pytest.mark.slow
@pytest.mark.parametrize("flag", ["--onnx", "--openvino"])
def test_predict_on_an_exported_file_needs_no_pytorch(flag, exported, images, tmp_path):
    if flag == "--openvino":
        pytest.importorskip("openvino", reason="OpenVINO is optional (pip install -r requirements-deploy.txt)")
        model_file = export.main([*model_args("vcp"), "--output", str(tmp_path / "vcp.xml")])["output"]
    else:
        model_file = exported["vcp"]["output"]
    args = [str(images), "--out", str(tmp_path / "out"), "--save_raw", flag, model_file]
    code = TORCH_FREE_RUN.format(blocked=BLOCKED, root=str(ROOT), args=args)
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, OMP_NUM_THREADS="2"))
    assert result.returncode == 0, result.stderr
    rows = read_rows(tmp_path / "out")
    assert len(rows) == 4 and sorted(float(r["image_score"]) for r in rows)[-1] == 1


@pytest.mark.slow
def test_onnx_speed_benchmark_runs(tmp_path):
    from conftest import run_script

    output = tmp_path / "speed.json"
    result = run_script("benchmarks/onnx_speed.py", "--arch", "tiny", "--methods", "vip2", "--images", "2",
                        "--batch_size", "2", "--threads", "2", "--output", output)
    assert "ONNX Runtime img/s" in result.stdout
    row = json.loads(output.read_text())["rows"][0]
    assert row["method"] == "vip2" and row["onnx_images_per_second"] > 0 and row["max_difference"] <= TOLERANCE
