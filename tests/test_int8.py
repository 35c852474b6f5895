"""export.py --int8: INT8 files from ONNX Runtime static quantisation and NNCF / OpenVINO, and the accuracy check
against the fp32 file (its figures recomputed here, its refusal, its warning)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURE, FIXTURE_SETTINGS, project_logging_kept, run_script
from test_predict import write_image

import export
from deploy import quantize
from deploy.calibration import list_images
from deploy.image_io import read_image_array
from deploy.runners import ExportedModelError, open_exported

pytest.importorskip("onnx", reason="export needs onnx (pip install -r requirements.txt)")
pytest.importorskip("onnxscript", reason="export needs onnxscript (pip install -r requirements.txt)")
pytest.importorskip("onnxruntime.quantization",
                    reason="INT8 ONNX files need onnxruntime.quantization (pip install -r requirements.txt)")
HAS_NNCF = importlib.util.find_spec("openvino") is not None and importlib.util.find_spec("nncf") is not None


def model_args() -> list[str]:
    return ["--checkpoint_path", str(FIXTURE / "trained.pth"), "--clip_weights", str(FIXTURE / "clip_tiny.npz"),
            *FIXTURE_SETTINGS]


@pytest.fixture(scope="module")
def calibration_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("int8_calibration")
    for index in range(8):
        write_image(root / f"{index}.png", 500 + index, size=(100, 90))
    return root


@pytest.fixture(scope="module")
def fp32_file(tmp_path_factory) -> Path:
    with project_logging_kept():  # a module-scoped run must not leave the project's logging changed
        return Path(export.main([*model_args(), "--output",
                                 str(tmp_path_factory.mktemp("fp32") / "fp32.onnx")])["output"])


def images_of(folder: Path) -> np.ndarray:
    return np.stack([read_image_array(p, 126)[0] for p in list_images(folder)])


@pytest.fixture(scope="module")
def onnx_int8(calibration_dir, tmp_path_factory) -> dict:
    output = tmp_path_factory.mktemp("int8") / "int8.onnx"
    with project_logging_kept():
        return export.main([*model_args(), "--output", str(output), "--int8", "--calibration_dir",
                            str(calibration_dir), "--int8_eval_data", str(FIXTURE / "data"), "--int8_max_map_diff",
                            "0.2", "--int8_max_mean_map_diff", "0.05", "--int8_min_spearman", "0.5",
                            "--int8_max_auroc_drop", "0.2"])


def test_onnx_int8_file_is_quantised_and_records_it(onnx_int8, fp32_file):
    import onnx

    path = Path(onnx_int8["output"])
    info = open_exported(path).info
    assert info.precision == "int8" and "ONNX Runtime" in info.exporter and info.method == "vip2"
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert path.stat().st_size < 0.6 * fp32_file.stat().st_size  # int8 weights
    assert not list(path.parent.glob(".*"))  # no scratch folder or staged file left


def test_the_accuracy_report_is_what_the_two_files_compute(onnx_int8, fp32_file, calibration_dir):
    from scipy.stats import spearmanr
    from sklearn.metrics import roc_auc_score

    images = images_of(calibration_dir)
    maps, scores = open_exported(fp32_file)(images)
    maps8, scores8 = open_exported(onnx_int8["output"])(images)
    report = onnx_int8["int8"]["calibration_images"]
    difference = np.abs(maps8.astype(np.float64) - maps)
    assert report["images"] == 8 and report["finite"]
    assert report["max_map_diff"] == pytest.approx(difference.max(), abs=1e-6) and report["max_map_diff"] > 0
    assert report["mean_map_diff"] == pytest.approx(difference.mean(), abs=1e-7)
    assert report["spearman"] == pytest.approx(spearmanr(scores, scores8).statistic, abs=1e-9)

    from dataset import AnomalyDataset

    dataset = AnomalyDataset(FIXTURE / "data", 126)
    items = [dataset[i] for i in range(len(dataset))]
    labelled = np.stack([item["img"].numpy() for item in items])
    labels = [item["anomaly"] for item in items]
    auroc = onnx_int8["int8"]["auroc"]["image"]
    assert auroc["fp32"] == pytest.approx(roc_auc_score(labels, open_exported(fp32_file)(labelled)[1]), abs=1e-9)
    assert auroc["int8"] == pytest.approx(roc_auc_score(labels, open_exported(onnx_int8["output"])(labelled)[1]),
                                          abs=1e-9)
    assert onnx_int8["int8"]["auroc"]["pixel"] is not None and not onnx_int8["int8"]["violations"]


def test_past_a_bound_the_int8_file_is_refused_and_nothing_written(calibration_dir, tmp_path):
    output = tmp_path / "int8.onnx"
    with pytest.raises(ExportedModelError, match=r"outside the accuracy bounds \(largest map difference .* > "
                                                 r"--int8_max_map_diff 1e-07.*nothing was written"):
        export.main([*model_args(), "--output", str(output), "--int8", "--calibration_dir", str(calibration_dir),
                     "--int8_max_map_diff", "1e-7"])
    assert not list(tmp_path.iterdir())


def test_warn_writes_the_file_and_says_why(calibration_dir, fp32_file, tmp_path, capsys):
    from utils import setup_logger

    setup_logger("zsas.export", None)  # as export.py logs
    report = quantize.quantize_and_check(fp32_file, tmp_path / "int8.onnx", "onnx", images_of(calibration_dir),
                                         bounds={**quantize.DEFAULT_BOUNDS, "min_spearman": 1.5}, on_violation="warn")
    assert (tmp_path / "int8.onnx").is_file() and len(report["violations"]) == 1
    assert "Spearman" in report["violations"][0] and "written anyway" in capsys.readouterr().out


def test_int8_flags_are_checked_before_any_model_work(tmp_path, monkeypatch):
    monkeypatch.setattr("models.create_model", lambda *a, **k: pytest.fail("the model was built"))
    with pytest.raises(ExportedModelError, match="--int8 needs --calibration_dir"):
        export.main([*model_args(), "--output", str(tmp_path / "x.onnx"), "--int8"])
    with pytest.raises(ExportedModelError, match="drop --precision fp16"):
        export.main([*model_args(), "--output", str(tmp_path / "x.onnx"), "--int8", "--precision", "fp16",
                     "--calibration_dir", str(tmp_path)])


@pytest.mark.slow
def test_openvino_int8_with_nncf_carries_a_calibration(calibration_dir, tmp_path):
    """Through the command lines, as a user runs them (and so that NNCF's and OpenVINO's native threads live in
    their own processes, not in the test runner's)."""
    if not HAS_NNCF:
        pytest.skip("OpenVINO INT8 needs openvino and nncf (pip install -r requirements-deploy.txt)")
    calibrated = tmp_path / "calibrated.pth"
    run_script("calibrate.py", *model_args(), "--device", "cpu", "--normal_dir", calibration_dir,
               "--max_false_alarm", "0.5", "--min_exceedances", "4", "--output", calibrated,
               "--report", tmp_path / "record.json")
    record = json.loads((tmp_path / "record.json").read_text())
    args = [*model_args(), "--output", tmp_path / "int8.xml", "--int8", "--calibration_dir", calibration_dir,
            "--int8_max_map_diff", "0.2", "--int8_max_mean_map_diff", "0.05"]
    args[1] = calibrated
    exported = run_script("export.py", *args)
    assert "INT8" in exported.stdout + exported.stderr
    runner = open_exported(tmp_path / "int8.xml")
    assert runner.info.precision == "int8" and "NNCF" in runner.info.exporter
    assert runner.info.calibration == record  # the thresholds travel into the INT8 file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calibrated.pth", "int8.bin", "int8.xml", "record.json"]
    # thresholds measured on the INT8 outputs themselves: a new OpenVINO file, the INT8 one unchanged
    run_script("calibrate.py", "--openvino", tmp_path / "int8.xml", "--normal_dir", calibration_dir,
               "--max_false_alarm", "0.5", "--min_exceedances", "4", "--output", tmp_path / "int8_calibrated.xml",
               "--report", tmp_path / "again.json")
    again = json.loads((tmp_path / "again.json").read_text())
    assert open_exported(tmp_path / "int8.xml").info.calibration == record
    recalibrated = open_exported(tmp_path / "int8_calibrated.xml")
    assert recalibrated.info.calibration == again and recalibrated.info.precision == "int8"
    scores = np.sort(recalibrated(images_of(calibration_dir))[1])
    assert again["image_threshold"] == pytest.approx(float(scores[8 - 4 - 1]), abs=1e-6)  # m = floor(0.5 * 8)
