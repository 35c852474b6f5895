"""integrations/anomalib_adapter: every registered method as an anomalib model, giving test.py's numbers.

Skipped, saying why, where anomalib is not installed (`pip install -r requirements-anomalib.txt`).
The end-to-end checks (anomalib's Engine against test.py on both reference fixtures, the ONNX
export, the example of docs/ANOMALIB.md) are marked slow.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("anomalib", reason="anomalib is not installed: pip install -r requirements-anomalib.txt")

from anomalib import LearningType  # noqa: E402
from anomalib.data import Folder  # noqa: E402
from anomalib.data.utils import read_image as anomalib_read_image  # noqa: E402
from anomalib.data.utils import read_mask as anomalib_read_mask  # noqa: E402
from anomalib.engine import Engine  # noqa: E402
from anomalib.models.components import AnomalibModule  # noqa: E402
from PIL import Image  # noqa: E402
from torchvision import tv_tensors  # noqa: E402

import dataset  # noqa: E402
from conftest import FIXTURE, ROOT, VCP_FIXTURE, _clip_pt, run_script  # noqa: E402
from integrations.anomalib_adapter import ADAPTERS, PILResize, learning_type_of, load_model  # noqa: E402
from models import create_model, get_method, method_names  # noqa: E402
from models.base import normalize_images  # noqa: E402

SETTINGS = {"image_size": 126, "features_list": [1, 2, 3, 4]}
# The two reference fixtures as anomalib Folder datamodules: one per class, the test split only.
CASES = {
    "vip2": {"fixture": FIXTURE, "data": FIXTURE / "data", "classes": FIXTURE / "data", "dataset": None,
             "normal_dir": "test/ok", "normal_test_dir": "test/ok", "abnormal_dir": "test/ko",
             "mask_dir": "ground_truth/ko", "settings": SETTINGS},
    "vcp": {"fixture": VCP_FIXTURE, "data": VCP_FIXTURE / "data", "classes": VCP_FIXTURE / "data" / "mvtec",
            "dataset": "mvtec", "normal_dir": "train/good", "normal_test_dir": "test/good",
            "abnormal_dir": "test/anomaly", "mask_dir": "ground_truth/anomaly",
            "settings": dict(SETTINGS, prompt_len=2, deep_prompt_len=1, total_d_layer_len=1)},
}
MAP_TOLERANCE = 1e-5  # maps and image scores against test.py
METRIC_TOLERANCE = 1e-6  # AUROC, AUPRO (and AUPR, F1-max) against test.py's results.json
EXPORT_TOLERANCE = 1e-4  # ONNX Runtime against PyTorch
METRIC_PAIRS = {"image_AUROC": "image_auroc", "pixel_AUROC": "pixel_auroc", "pixel_AUPRO": "pixel_aupro",
                "image_AUPR": "image_ap", "pixel_AUPR": "pixel_ap", "image_F1Max": "image_f1", "pixel_F1Max": "pixel_f1"}


def adapter(case: str, checkpoint: str = "trained.pth", **kwargs):
    spec = CASES[case]
    return load_model(spec["fixture"] / checkpoint, clip_weights=spec["fixture"] / "clip_tiny.npz",
                      settings=spec["settings"], visualizer=False, **kwargs)


def folder(case: str, cls_name: str) -> Folder:
    spec = CASES[case]
    return Folder(name=cls_name, root=spec["classes"] / cls_name, normal_dir=spec["normal_dir"],
                  normal_test_dir=spec["normal_test_dir"], abnormal_dir=spec["abnormal_dir"],
                  mask_dir=spec["mask_dir"], val_split_mode="same_as_test", eval_batch_size=1, num_workers=0)


def engine(root: Path) -> Engine:
    return Engine(default_root_dir=root, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)


# ---------------------------------------------------------------------------- quick checks
def test_every_registered_method_is_an_anomalib_model():
    assert set(ADAPTERS) == set(method_names())
    assert len({cls.__name__ for cls in ADAPTERS.values()}) == len(ADAPTERS)
    for name, cls in ADAPTERS.items():
        assert issubclass(cls, AnomalibModule) and cls.method == name
        assert getattr(sys.modules[cls.__module__], cls.__name__) is cls  # importable by its name


def test_learning_type_follows_reference_images():
    class TakesReferences:
        takes_reference_images = True

    class ZeroShot:
        pass

    assert learning_type_of(TakesReferences) == LearningType.FEW_SHOT
    assert learning_type_of(ZeroShot) == LearningType.ZERO_SHOT


def test_pil_resize_equals_pillow_for_images_and_masks():
    """Random sizes up and down, both axes, against dataset.resize_image / dataset.resize_mask themselves."""
    rng = np.random.default_rng(0)
    for _ in range(40):
        height, width = (int(v) for v in rng.integers(5, 260, 2))
        size = int(rng.integers(5, 200))
        pixels = (rng.random((height, width, 3)) * 255).astype(np.uint8)
        expected = dataset.resize_image(Image.fromarray(pixels), size)
        image = tv_tensors.Image(torch.from_numpy(pixels).permute(2, 0, 1).float() / 255)
        mask_bool = rng.random((height, width)) > 0.8
        mask = tv_tensors.Mask(torch.from_numpy(mask_bool.astype(np.uint8)))
        resized, resized_mask = PILResize(size)(image, mask)
        assert isinstance(resized, tv_tensors.Image) and isinstance(resized_mask, tv_tensors.Mask)
        torch.testing.assert_close(torch.round(resized * 255).to(torch.uint8), expected, rtol=0, atol=0)
        torch.testing.assert_close(resized_mask.as_subclass(torch.Tensor), dataset.resize_mask(mask_bool, size),
                                   rtol=0, atol=0)
    prepared = PILResize(size)
    prepared.prepare(height, width)  # what an export holds as buffers gives the same pixels
    assert {name for name, _ in prepared.named_buffers()} == {"horizontal", "vertical"}
    torch.testing.assert_close(prepared(image), resized, rtol=0, atol=0)
    same = torch.rand(3, 9, 9)
    assert PILResize(9)(same) is same  # Pillow returns an image already at the size unchanged


@pytest.mark.parametrize("case", sorted(CASES))
def test_pre_processor_and_model_reproduce_the_repository_pipeline(case):
    """anomalib's decoding + the adapter's pre-processor + its torch model == dataset.read_image + the model."""
    model = adapter(case)
    assert type(model) is ADAPTERS[case]  # the method was read from the checkpoint
    assert model.learning_type == learning_type_of(get_method(case).model_class())
    reference = create_model(case, clip_weights=CASES[case]["fixture"] / "clip_tiny.npz",
                             checkpoint=CASES[case]["fixture"] / "trained.pth", **CASES[case]["settings"])
    paths = sorted((CASES[case]["classes"]).rglob("*.bmp" if case == "vcp" else "test/*/*.png"))[:3]
    assert paths
    for path in paths:
        uint8, _ = dataset.read_image(path, model.image_size)
        transformed = model.pre_processor.transform(anomalib_read_image(path, as_tensor=True)[None])
        torch.testing.assert_close(transformed, normalize_images(uint8[None]), rtol=0, atol=0)
        with torch.no_grad():
            ours = model.model(transformed)
            maps, scores = reference(uint8[None])
        torch.testing.assert_close(ours.anomaly_map, maps, rtol=0, atol=MAP_TOLERANCE)
        torch.testing.assert_close(ours.pred_score, scores, rtol=0, atol=MAP_TOLERANCE)
        mask_path = next(iter(sorted(Path(str(path.parent).replace("test", "ground_truth")).glob(
            path.stem + "*.png"))), None)
        if mask_path is not None:
            _, original_size = dataset.read_image(path, model.image_size)
            expected_mask = dataset.load_mask(mask_path, model.image_size, original_size, path)
            resized = PILResize(model.image_size)(anomalib_read_mask(mask_path, as_tensor=True))
            torch.testing.assert_close(resized.as_subclass(torch.Tensor), expected_mask, rtol=0, atol=0)


def test_export_preparation_holds_the_resize_weights(monkeypatch):
    """What the exported graph needs is held before tracing: the export transform resizes from the export size
    without making Pillow's weights again (a trace would otherwise run that Python)."""
    from integrations.anomalib_adapter import pil_resize

    model = adapter("vip2")
    image = torch.rand(2, 3, 90, 100)
    expected = model.pre_processor.export_transform(image)
    assert model.prepare_for_export((90, 100)) == (90, 100)

    def refuse(*args):
        raise AssertionError("Pillow's weights were made again after prepare_for_export")

    monkeypatch.setattr(pil_resize, "pil_coefficients", refuse)
    torch.testing.assert_close(model.pre_processor.export_transform(image), expected, rtol=0, atol=0)


@pytest.mark.parametrize("name", method_names())
def test_finalize_outputs_is_the_methods_set_step(name):
    # untrained prompts on the tiny CLIP every method here builds on (VCP-CLIP's needs equal text and embedding widths)
    model = ADAPTERS[name](clip_weights=str(VCP_FIXTURE / "clip_tiny.npz"), settings=SETTINGS, visualizer=False)
    generator = torch.Generator().manual_seed(0)
    outputs = {"anomaly_map": torch.rand(5, 4, 4, generator=generator) * 3 + 1,
               "pred_score": torch.rand(5, generator=generator) + 2, "image_path": [f"{i}.png" for i in range(5)]}
    classes = ["a", "a", "b", "b", "b"]
    done = model.finalize_outputs(outputs, classes)
    if not model.model.model.set_normalization:
        assert done is outputs
        return
    expected = model.model.model.finalize({"anomaly_maps": outputs["anomaly_map"],
                                           "image_scores": outputs["pred_score"]}, classes)
    torch.testing.assert_close(done["anomaly_map"], expected["anomaly_maps"], rtol=0, atol=0)
    torch.testing.assert_close(done["pred_score"], expected["image_scores"], rtol=0, atol=0)
    assert done["pred_score_raw"] is outputs["pred_score"] and done["image_path"] == outputs["image_path"]
    assert not torch.equal(done["pred_score"], outputs["pred_score"])
    # default: the whole set is one class
    whole = model.model.model.finalize({"anomaly_maps": outputs["anomaly_map"],
                                        "image_scores": outputs["pred_score"]}, ["x"] * 5)
    torch.testing.assert_close(model.finalize_outputs(outputs)["pred_score"], whole["image_scores"], rtol=0, atol=0)


# ---------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module", params=sorted(CASES))
def script_run(request, tmp_path_factory):
    """test.py on a fixture (its CPU defaults: batch 1; the exact AUPRO anomalib computes), maps saved."""
    case = request.param
    spec, out = CASES[case], tmp_path_factory.mktemp(f"test_py_{case}")
    settings = [item for key, value in spec["settings"].items()
                for item in (f"--{key}", *map(str, value if isinstance(value, list) else [value]))]
    run_script("test.py", "--model", case, "--data_path", spec["data"], "--checkpoint_path",
               spec["fixture"] / "trained.pth", "--clip_weights", spec["fixture"] / "clip_tiny.npz", *settings,
               *(["--dataset", spec["dataset"]] if spec["dataset"] else []), "--pro_mode", "exact",
               "--save_path", out, "--save_maps", out / "maps.npz", "--num_workers", "0", "--device", "cpu")
    with np.load(out / "maps.npz") as saved:
        arrays = {key: saved[key] for key in saved.files}
    return case, arrays, json.loads((out / "results.json").read_text())["metrics"]


@pytest.mark.slow
def test_engine_test_gives_test_py_numbers(script_run, tmp_path):
    case, saved, results = script_run
    spec = CASES[case]
    model = adapter(case)
    paths = [str(p) for p in saved["img_paths"]]
    for cls_name in sorted(set(saved["cls_names"])):
        metrics = engine(tmp_path).test(model, datamodule=folder(case, cls_name), verbose=False)[0]
        out = model.test_outputs
        index = [paths.index(str(Path(p).resolve().relative_to(spec["data"].resolve()))) for p in out["image_path"]]
        assert sorted(index) == sorted(np.flatnonzero(saved["cls_names"] == cls_name)), "the same images"
        np.testing.assert_allclose(out["anomaly_map"].numpy(), saved["anomaly_maps"][index], rtol=0, atol=MAP_TOLERANCE)
        np.testing.assert_allclose(out["pred_score"].numpy(), saved["image_scores"][index], rtol=0, atol=MAP_TOLERANCE)
        np.testing.assert_array_equal(out["gt_mask"].numpy().astype(np.uint8), saved["gt_masks"][index])
        np.testing.assert_array_equal(out["gt_label"].numpy().astype(int), saved["labels"][index])
        if "image_scores_unnormalized" in saved:  # a set-normalising method: raw values kept beside
            np.testing.assert_allclose(out["pred_score_raw"].numpy(), saved["image_scores_unnormalized"][index],
                                       rtol=0, atol=MAP_TOLERANCE)
        for ours, theirs in METRIC_PAIRS.items():
            assert metrics[ours] == pytest.approx(results[cls_name][theirs], abs=METRIC_TOLERANCE), (cls_name, ours)
        assert torch.isfinite(model.post_processor.image_threshold), "validation on the test set set thresholds"


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_anomalib_onnx_export_runs_in_onnxruntime(case, tmp_path):
    """anomalib's to_onnx of the adapter, with the Pillow resize from a fixture image's own size in the graph."""
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (requirements.txt)")
    model = adapter(case).eval()
    path = sorted(CASES[case]["classes"].rglob("*.bmp" if case == "vcp" else "test/ko/002.png"))[0]
    image = anomalib_read_image(path, as_tensor=True)[None]
    onnx_path = model.to_onnx(tmp_path, input_size=tuple(image.shape[-2:]))
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    batch = torch.cat([image, image.flip(-1)])  # the batch axis stays dynamic
    outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"input": batch.numpy()})))
    with torch.no_grad():
        expected = model(batch)
        uint8 = torch.stack([dataset.read_image(path, model.image_size)[0],
                             dataset.resize_image(Image.open(path).convert("RGB").transpose(Image.FLIP_LEFT_RIGHT),
                                                  model.image_size)])
        repository_maps, repository_scores = model.model.model(uint8)
    print(f"{case}: ONNX Runtime vs PyTorch: maps {np.abs(outputs['anomaly_map'] - expected.anomaly_map.numpy()).max():.2e}"
          f", scores {np.abs(outputs['pred_score'] - expected.pred_score.numpy()).max():.2e}")
    np.testing.assert_allclose(outputs["anomaly_map"], expected.anomaly_map.numpy(), rtol=0, atol=EXPORT_TOLERANCE)
    np.testing.assert_allclose(outputs["pred_score"], expected.pred_score.numpy(), rtol=0, atol=EXPORT_TOLERANCE)
    np.testing.assert_allclose(outputs["anomaly_map"], repository_maps.numpy(), rtol=0, atol=EXPORT_TOLERANCE)
    np.testing.assert_allclose(outputs["pred_score"], repository_scores.numpy(), rtol=0, atol=EXPORT_TOLERANCE)


def docs_example() -> str:
    text = (ROOT / "docs" / "ANOMALIB.md").read_text()
    return re.search(r"## Checkpoint in, maps and scores out\n\n```python\n(.*?)```", text, re.S).group(1)


@pytest.mark.slow
def test_docs_example_runs_as_written(tmp_path):
    """The example of docs/ANOMALIB.md, unchanged, in a folder holding the files it names (a checkpoint train.py's
    way, the fixture's CLIP under OpenAI's file name, a folder of photos); its scores are the model's."""
    from models.checkpoint import save_checkpoint

    code = docs_example()
    assert len(code.strip().splitlines()) <= 10
    model = create_model("vip2", clip_weights=FIXTURE / "clip_tiny.npz", checkpoint=FIXTURE / "trained.pth", **SETTINGS)
    checkpoint = tmp_path / re.search(r'load_model\("([^"]+)"', code).group(1)
    checkpoint.parent.mkdir(parents=True)
    save_checkpoint(checkpoint, model, 10)
    _clip_pt(FIXTURE, tmp_path / re.search(r'clip_weights="([^"]+)"', code).group(1))
    photos = tmp_path / re.search(r'data_path="([^"]+)"', code).group(1)
    photos.mkdir()
    sources = sorted((FIXTURE / "data").rglob("test/*/*.png"))[:3]
    for i, source in enumerate(sources):
        shutil.copy(source, photos / f"{i}_{source.name}")
    (tmp_path / "example.py").write_text(code)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="2")
    result = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split("\t") for line in result.stdout.splitlines() if line.count("\t") == 2]
    assert sorted(Path(row[0]).name for row in rows) == sorted(p.name for p in photos.iterdir())
    with torch.no_grad():
        for path, score, peak in rows:
            maps, scores = model(dataset.read_image(Path(path), model.image_size)[0][None])
            assert float(score) == pytest.approx(float(scores[0]), abs=1e-5)
            assert float(peak) == pytest.approx(float(maps.max()), abs=1e-5)


@pytest.mark.slow
def test_anomalib_openvino_export_runs(tmp_path):
    """anomalib's to_openvino of the adapter (through its ONNX export), run by OpenVINO in float32."""
    pytest.importorskip("openvino", reason="openvino is not installed (requirements-deploy.txt)")
    case = "vcp"  # the method whose export holds the most (two branches, deep prompts); ONNX covers every fixture
    model = adapter(case).eval()
    xml = model.to_openvino(tmp_path)
    from deploy.runners import openvino_core  # one Core per process (its docstring says why)

    compiled = openvino_core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    paths = sorted(CASES[case]["classes"].rglob("*.bmp"))[:2]
    batch = torch.stack([dataset.read_image(path, model.image_size)[0] for path in paths]).float() / 255
    result = compiled(batch.numpy())
    outputs = {port.get_any_name(): value for port, value in result.items()}
    with torch.no_grad():
        expected = model(batch)
    np.testing.assert_allclose(outputs["anomaly_map"], expected.anomaly_map.numpy(), rtol=0, atol=EXPORT_TOLERANCE)
    np.testing.assert_allclose(outputs["pred_score"], expected.pred_score.numpy(), rtol=0, atol=EXPORT_TOLERANCE)
