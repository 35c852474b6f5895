"""WinCLIP outside test.py: the reference flags alone switch WinCLIP+ on, predict.py and export.py without a checkpoint
(the class and the WinCLIP+ memory bound into the run and into the exported file), ONNX within 1e-4 of PyTorch."""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, project_logging_kept
from export_checks import assert_memory_in_file, assert_predict_onnx_equals_torch, assert_runner_equals_model, score_rows

FIXTURE = ROOT / "tests" / "fixtures" / "winclip_tiny"
SIZE = 112
CLIP_FLAGS = ["--model", "winclip", "--clip_weights", str(FIXTURE / "clip_tiny.npz"), "--image_size", str(SIZE)]
TOLERANCE = 1e-4  # ONNX Runtime against PyTorch
PREDICT_TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def clip():
    from models.clip_loader import load_clip

    return load_clip(str(FIXTURE / "clip_tiny.npz"), quick_gelu=False)


def _model(clip):
    from models import create_model

    return create_model("winclip", clip=clip, image_size=SIZE)


def _args(**values):
    from models.fewshot import DEFAULT_SEED

    defaults = {"k_shot": None, "seed": DEFAULT_SEED, "reference_dir": None, "class_name": None}
    return argparse.Namespace(**{**defaults, **values})


def _references(target: Path, cls_name: str = "tile_synth") -> Path:
    folder = target / cls_name
    folder.mkdir(parents=True)
    for name in ("000.png", "001.png"):
        shutil.copy(FIXTURE / "data" / cls_name / "train" / "good" / name, folder / name)
    return target


def test_reference_flags_alone_switch_winclip_plus_on(clip):
    from dataset import AnomalyDataset
    from models import fewshot

    model = _model(clip)
    assert not model.few_shot
    dataset = AnomalyDataset(FIXTURE / "data", SIZE)
    used = fewshot.prepare(model, _args(k_shot=1, seed=3), dataset, "cpu")
    assert model.few_shot and sorted(used) == ["bottle_synth", "tile_synth"] and all(len(v) == 1 for v in used.values())
    memory = {name for name, _ in model.named_buffers() if name.startswith("fewshot_memory")}
    assert memory == {f"fewshot_memory_{i}_{key}" for i in (0, 1) for key in ("patch", "0", "1")}
    assert fewshot.prepare(_model(clip), _args(), dataset, "cpu") is None  # no flag: zero-shot


def test_predict_binds_the_class_and_references_and_equals_the_model(clip, tmp_path):
    import predict
    from dataset import read_image
    from models import fewshot

    refs = _references(tmp_path / "refs")
    images = FIXTURE / "data" / "tile_synth" / "test"
    assert predict.main([str(images), *CLIP_FLAGS, "--class_name", "tile_synth", "--reference_dir", str(refs),
                         "--device", "cpu", "--save_raw", "--out", str(tmp_path / "out")]) == 3
    model = _model(clip)
    fewshot.bind(model, _args(class_name="tile_synth", reference_dir=refs), "cpu")
    for row in score_rows(tmp_path / "out"):
        image = read_image(Path(row["path"]) if Path(row["path"]).is_absolute() else ROOT / row["path"], SIZE)[0]
        with torch.no_grad():
            maps, scores = model(image[None], ["tile_synth"])
        np.testing.assert_allclose(np.load(tmp_path / "out" / row["map"]), maps[0].numpy(), atol=PREDICT_TOLERANCE,
                                   rtol=0)
        assert float(row["raw_score"]) == pytest.approx(float(scores[0]), abs=PREDICT_TOLERANCE)


def test_predict_without_a_class_name_says_object(tmp_path, capsys):
    import predict

    predict.main([str(FIXTURE / "data" / "tile_synth" / "test"), *CLIP_FLAGS, "--device", "cpu",
                  "--out", str(tmp_path / "out")])
    assert "no --class_name: the prompts name the generic 'object'" in capsys.readouterr().out


def test_scripts_refuse_a_checkpoint_for_a_training_free_method(tmp_path):
    import export
    import predict

    checkpoint = ["--checkpoint_path", str(FIXTURE / "expected.npz")]
    with pytest.raises(SystemExit):
        predict.main([str(FIXTURE / "data"), *CLIP_FLAGS, *checkpoint, "--out", str(tmp_path / "out")])
    with pytest.raises(ValueError, match="training-free and reads no checkpoint"):
        export.main([*CLIP_FLAGS, *checkpoint, "--output", str(tmp_path / "w.onnx")])


@pytest.mark.slow
def test_export_keeps_the_memory_inside_and_matches_pytorch(clip, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    import export
    from deploy.runners import open_exported
    from models import fewshot

    refs = _references(tmp_path / "refs")
    flags = [*CLIP_FLAGS, "--class_name", "tile_synth", "--reference_dir", str(refs)]
    output = tmp_path / "winclip.onnx"
    with project_logging_kept():
        report = export.main([*flags, "--output", str(output)])
    assert report["max_difference"] <= TOLERANCE
    runner = open_exported(output)
    assert runner.info.method == "winclip" and runner.info.bound["class_name"] == "tile_synth"
    assert [Path(p).name for p in runner.info.bound["references"]] == ["000.png", "001.png"]

    model = _model(clip)
    fewshot.bind(model, _args(class_name="tile_synth", reference_dir=refs), "cpu")
    assert_memory_in_file(model, output)
    assert_runner_equals_model(runner, model, FIXTURE / "data", SIZE, "tile_synth", TOLERANCE)

    assert_predict_onnx_equals_torch(FIXTURE / "data" / "tile_synth" / "test", 3, output, flags, tmp_path, TOLERANCE)
    assert json.loads(json.dumps(runner.info.bound))


def test_mode_few_shot_draws_the_default_k_shot(clip):
    from dataset import AnomalyDataset
    from models import create_model, fewshot

    model = create_model("winclip", clip=clip, image_size=SIZE, mode="few_shot")
    used = fewshot.prepare(model, _args(), AnomalyDataset(FIXTURE / "data", SIZE), "cpu")
    assert model.few_shot and all(len(paths) == 3 for paths in used.values())  # all 3 train images (< the default 4)
