"""integrations/anomalib_adapter: every registered method as an anomalib model, giving test.py's numbers.

Skipped, saying why, where anomalib is not installed (`pip install -r requirements-anomalib.txt`).
The cases (each registered method, and each few-shot mode, on its fixture) come from
tests/fixture_cases.py, so a method registered later is covered with no edit here. The
end-to-end checks (anomalib's Engine against test.py, the ONNX and OpenVINO exports, the example
of docs/ANOMALIB.md) are marked slow.
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
from anomalib.data.utils import read_image as anomalib_read_image  # noqa: E402
from anomalib.data.utils import read_mask as anomalib_read_mask  # noqa: E402
from anomalib.engine import Engine  # noqa: E402
from anomalib.models.components import AnomalibModule  # noqa: E402
from PIL import Image  # noqa: E402
from torchvision import tv_tensors  # noqa: E402

import dataset  # noqa: E402
import fixture_cases  # noqa: E402
from conftest import ROOT, _clip_pt, run_script  # noqa: E402
from fixture_cases import CASE_IDS, CASES, REFERENCE_SHOTS, Case, model_class  # noqa: E402
from integrations.anomalib_adapter import ADAPTERS, PILResize, learning_type_of, load_model  # noqa: E402
from integrations.anomalib_adapter.modules import _drawn_references  # noqa: E402
from models import create_model, fewshot, method_names  # noqa: E402
from models.base import normalize_images  # noqa: E402

MAP_TOLERANCE = 1e-5  # maps and image scores against test.py
METRIC_TOLERANCE = 1e-6  # AUROC, AUPRO against test.py's results.json
# AUPR, F1-max: anomalib accumulates their curves in float32 (measured: pixel AUPR 1.8e-6 off on the APRIL-GAN
# few-shot fixture with identical maps; 4e-8 when the same maps are given to it in float64)
FLOAT32_METRIC_TOLERANCE = 1e-5
EXPORT_TOLERANCE = 1e-4  # ONNX Runtime / OpenVINO against PyTorch
METRIC_PAIRS = {"image_AUROC": "image_auroc", "pixel_AUROC": "pixel_auroc", "pixel_AUPRO": "pixel_aupro",
                "image_AUPR": "image_ap", "pixel_AUPR": "pixel_ap", "image_F1Max": "image_f1",
                "pixel_F1Max": "pixel_f1"}
@pytest.fixture(scope="module", autouse=True)
def reference_root(tmp_path_factory):
    fixture_cases.REFERENCE_ROOT[:] = [tmp_path_factory.mktemp("references")]
    yield


def adapter(case: Case, **kwargs):
    return load_model(case.checkpoint, clip_weights=case.clip, method=None if case.checkpoint else case.method,
                      settings=case.settings, reference_dir=case.references, visualizer=False, **kwargs)


def engine(root: Path) -> Engine:
    return Engine(default_root_dir=root, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)


# ---------------------------------------------------------------------------- quick checks
def test_every_registered_method_is_an_anomalib_model():
    assert set(ADAPTERS) == set(method_names())
    assert len({cls.__name__ for cls in ADAPTERS.values()}) == len(ADAPTERS)
    for name, cls in ADAPTERS.items():
        assert issubclass(cls, AnomalibModule) and cls.method == name
        assert getattr(sys.modules[cls.__module__], cls.__name__) is cls  # importable by its name


def test_adapter_code_names_no_method():
    """The adapter reaches methods through the registry only: no registered name in its code's strings."""
    from test_contract import _code_strings

    for path in sorted((ROOT / "integrations" / "anomalib_adapter").glob("*.py")):
        named = [text for text in _code_strings(path) if text in set(method_names())]
        assert not named, f"{path.name} names {named}"


def test_learning_type_follows_the_few_shot_setting():
    class FewShot:
        few_shot = True

    class ZeroShot:
        few_shot = False

    assert learning_type_of(FewShot()) == LearningType.FEW_SHOT
    assert learning_type_of(ZeroShot()) == LearningType.ZERO_SHOT
    assert learning_type_of(object()) == LearningType.ZERO_SHOT


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


def _reference_model(case: Case, cls_name: str):
    """This repository's model of a case, as test.py builds it, with the class's references when few-shot."""
    model = create_model(case.method, clip_weights=case.clip, checkpoint=case.checkpoint, **case.settings)
    if getattr(model, "few_shot", False):
        paths = fewshot.choose(None, [cls_name], None, 0, case.references)[cls_name]
        model.set_references(cls_name, torch.stack([dataset.read_image(p, model.image_size)[0] for p in paths]), paths)
    return model


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_pre_processor_and_model_reproduce_the_repository_pipeline(case):
    """anomalib's decoding + the adapter's pre-processor + its torch model == dataset.read_image + the model."""
    cls_name = case.classes[0]
    reference = _reference_model(case, cls_name)
    model = adapter(case, class_name=cls_name if reference.class_conditioned else None)
    assert type(model) is ADAPTERS[case.method]  # the method was read from the checkpoint
    assert model.learning_type == (LearningType.FEW_SHOT if case.few_shot else LearningType.ZERO_SHOT)
    samples = [s for s in case.samples if s.cls_name == cls_name][:3]
    names = [cls_name] * len(samples) if reference.class_conditioned else None
    for sample in samples:
        path = case.data / sample.img_path
        uint8, original_size = dataset.read_image(path, model.image_size)
        transformed = model.pre_processor.transform(anomalib_read_image(path, as_tensor=True)[None])
        torch.testing.assert_close(transformed, normalize_images(uint8[None]), rtol=0, atol=0)
        with torch.no_grad():
            ours = model.model(transformed)
            maps, scores = reference(uint8[None], *([names[:1]] if names else []))
        torch.testing.assert_close(ours.anomaly_map, maps, rtol=0, atol=MAP_TOLERANCE)
        torch.testing.assert_close(ours.pred_score, scores, rtol=0, atol=MAP_TOLERANCE)
        if sample.mask_path:
            expected_mask = dataset.load_mask(case.data / sample.mask_path, model.image_size, original_size, path)
            resized = PILResize(model.image_size)(anomalib_read_mask(case.data / sample.mask_path, as_tensor=True))
            torch.testing.assert_close(resized.as_subclass(torch.Tensor), expected_mask, rtol=0, atol=0)


def test_export_preparation_holds_the_resize_weights(monkeypatch):
    """What the exported graph needs is held before tracing: the export transform resizes from the export size
    without making Pillow's weights again (a trace would otherwise run that Python)."""
    from integrations.anomalib_adapter import pil_resize

    case = CASES[0]
    model = adapter(case, class_name=case.classes[0] if model_class(case.method).class_conditioned else None)
    image = torch.rand(2, 3, 90, 100)
    expected = model.pre_processor.export_transform(image)
    assert model.prepare_for_export((90, 100)) == (90, 100)

    def refuse(*args):
        raise AssertionError("Pillow's weights were made again after prepare_for_export")

    monkeypatch.setattr(pil_resize, "pil_coefficients", refuse)
    torch.testing.assert_close(model.pre_processor.export_transform(image), expected, rtol=0, atol=0)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_finalize_outputs_is_the_methods_set_step(case):
    model = adapter(case)
    generator = torch.Generator().manual_seed(0)
    outputs = {"anomaly_map": torch.rand(5, 4, 4, generator=generator) * 3 + 1,
               "pred_score": torch.rand(5, generator=generator) + 2, "image_path": [f"{i}.png" for i in range(5)]}
    classes = ["a", "a", "b", "b", "b"]
    done = model.finalize_outputs(outputs, classes)
    expected = model.model.model.finalize({"anomaly_maps": outputs["anomaly_map"],
                                           "image_scores": outputs["pred_score"]}, classes)
    torch.testing.assert_close(done["anomaly_map"], expected["anomaly_maps"], rtol=0, atol=0)
    torch.testing.assert_close(done["pred_score"], expected["image_scores"], rtol=0, atol=0)
    assert done["image_path"] == outputs["image_path"]
    for key, raw in (("anomaly_map", "anomaly_map_raw"), ("pred_score", "pred_score_raw")):
        changed = not torch.equal(done[key], outputs[key])
        assert (raw in done) == changed, (key, changed)  # the values before the step kept when it changed them
        if changed:
            assert done[raw] is outputs[key]
    # default: the whole set is one class
    whole = model.model.model.finalize({"anomaly_maps": outputs["anomaly_map"],
                                        "image_scores": outputs["pred_score"]}, ["x"] * 5)
    torch.testing.assert_close(model.finalize_outputs(outputs)["pred_score"], whole["image_scores"], rtol=0, atol=0)


def test_a_class_conditioned_method_needs_its_class():
    """Without a class name and without a datamodule to take one from, a run refuses, naming class_name=."""
    case = next((c for c in CASES if model_class(c.method).class_conditioned and not c.few_shot), None)
    if case is None:
        pytest.skip("no registered method names the class in its prompts")
    model = adapter(case)
    with pytest.raises(ValueError, match="class_name="):
        model.setup("predict")
    others = [c for c in CASES if not model_class(c.method).class_conditioned and not c.few_shot]
    if others:
        with pytest.raises(ValueError, match="drop class_name="):
            adapter(others[0], class_name="bottle")


def test_reference_arguments_need_a_few_shot_mode_and_the_draw_is_test_pys():
    case = next((c for c in CASES if c.few_shot), None)
    if case is None:
        pytest.skip("no registered method has a few-shot mode")
    zero_shot = Case(case.method)
    with pytest.raises(ValueError, match="few-shot mode"):
        adapter(zero_shot, k_shot=2)
    with pytest.raises(ValueError, match="k_shot must be >= 1"):
        load_model(case.checkpoint, clip_weights=case.clip, settings=case.settings, k_shot=0)
    # anomalib's few-shot convention (references from the datamodule's training images) draws what
    # models.fewshot draws from the meta file for the first class (one generator stream over the classes)
    cls_name = case.classes[0]
    datamodule = case.folder_datamodule(cls_name)
    datamodule.setup()
    data = dataset.AnomalyDataset(case.data, case.settings.get("image_size", 224))
    expected = fewshot.choose(data, case.classes, REFERENCE_SHOTS, fewshot.DEFAULT_SEED)[cls_name]
    drawn = _drawn_references(datamodule.train_data, REFERENCE_SHOTS, fewshot.DEFAULT_SEED)
    assert [Path(p).resolve() for p in drawn] == [Path(p).resolve() for p in expected]


def test_a_training_free_method_is_built_from_clip_weights_alone():
    """load_model without a checkpoint builds the method's model from the CLIP weights (a training-free method's
    normal use); it must then be told the method."""
    case = CASES[0]
    with pytest.raises(ValueError, match="method="):
        load_model(None, clip_weights=case.clip)
    with pytest.raises(ValueError, match="unknown method 'nosuch'"):
        load_model(None, clip_weights=case.clip, method="nosuch")
    model = load_model(None, clip_weights=case.clip, method=case.method, settings=case.settings, visualizer=False)
    assert type(model) is ADAPTERS[case.method]


# ---------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module", params=CASES, ids=CASE_IDS)
def script_run(request, tmp_path_factory):
    """test.py on a fixture (its CPU defaults: batch 1; the exact AUPRO anomalib computes), maps saved."""
    case = request.param
    out = tmp_path_factory.mktemp(f"test_py_{case.id}")
    references = ["--reference_dir", case.references] if case.few_shot else []
    run_script("test.py", "--model", case.method, "--data_path", case.data, "--clip_weights", case.clip,
               *(["--checkpoint_path", case.checkpoint] if case.checkpoint else []), *case.flags, *references,
               "--pro_mode", "exact", "--save_path", out, "--save_maps", out / "maps.npz", "--num_workers", "0",
               "--device", "cpu")
    with np.load(out / "maps.npz") as saved:
        arrays = {key: saved[key] for key in saved.files}
    return case, arrays, json.loads((out / "results.json").read_text())["metrics"]


MEASURED: dict[str, dict[str, float]] = {}  # printed at the end of the slow tests (pytest -s): the report's figures


@pytest.mark.slow
def test_engine_test_gives_test_py_numbers(script_run, tmp_path):
    case, saved, results = script_run
    model = adapter(case)
    paths = [str(p) for p in saved["img_paths"]]
    worst = MEASURED.setdefault(case.id, {})
    for cls_name in case.classes:
        metrics = engine(tmp_path).test(model, datamodule=case.folder_datamodule(cls_name), verbose=False)[0]
        out = model.test_outputs
        assert model.class_name in (None, cls_name), "the class was taken from the datamodule"
        index = [paths.index(str(Path(p).resolve().relative_to(case.data.resolve()))) for p in out["image_path"]]
        assert sorted(index) == sorted(np.flatnonzero(saved["cls_names"] == cls_name)), "the same images"
        diffs = {"maps": np.abs(out["anomaly_map"].numpy() - saved["anomaly_maps"][index]).max(),
                 "scores": np.abs(out["pred_score"].numpy() - saved["image_scores"][index]).max()}
        np.testing.assert_allclose(out["anomaly_map"].numpy(), saved["anomaly_maps"][index], rtol=0, atol=MAP_TOLERANCE)
        np.testing.assert_allclose(out["pred_score"].numpy(), saved["image_scores"][index], rtol=0, atol=MAP_TOLERANCE)
        np.testing.assert_array_equal(out["gt_mask"].numpy().astype(np.uint8), saved["gt_masks"][index])
        np.testing.assert_array_equal(out["gt_label"].numpy().astype(int), saved["labels"][index])
        raw = [key for key in saved if key.startswith("image_scores_")]  # the scores before the set-level step
        assert ("pred_score_raw" in out) == bool(raw)
        for key in raw:
            np.testing.assert_allclose(out["pred_score_raw"].numpy(), saved[key][index], rtol=0, atol=MAP_TOLERANCE)
        for ours, theirs in METRIC_PAIRS.items():
            tolerance = METRIC_TOLERANCE if ours.endswith(("AUROC", "AUPRO")) else FLOAT32_METRIC_TOLERANCE
            assert metrics[ours] == pytest.approx(results[cls_name][theirs], abs=tolerance), (cls_name, ours)
            diffs[ours] = abs(metrics[ours] - results[cls_name][theirs])
        assert torch.isfinite(model.post_processor.image_threshold), "validation on the test set set thresholds"
        for key, value in diffs.items():
            worst[key] = max(worst.get(key, 0.0), float(value))
    print(f"{case.id}: anomalib Engine.test vs test.py, max abs: " + ", ".join(f"{k} {v:.1e}"
                                                                              for k, v in worst.items()))


def _compare(label: str, outputs: dict, expected) -> None:
    """An exported graph's outputs against the adapter's PyTorch ones, the differences printed (pytest -s)."""
    print(f"{label} vs PyTorch: " + ", ".join(
        f"{key} {np.abs(outputs[key] - getattr(expected, key).numpy()).max():.2e}" for key in ("anomaly_map",
                                                                                               "pred_score")))
    for key in ("anomaly_map", "pred_score"):
        np.testing.assert_allclose(outputs[key], getattr(expected, key).numpy(), rtol=0, atol=EXPORT_TOLERANCE)


def _class_bound(case: Case):
    model = adapter(case).eval()
    if model.model.model.class_conditioned:
        model.bind_class(case.classes[0])  # and its references, for a few-shot case
    return model


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_anomalib_onnx_export_runs_in_onnxruntime(case, tmp_path):
    """anomalib's to_onnx of the adapter, with the Pillow resize from a fixture image's own size in the graph."""
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (requirements.txt)")
    model = _class_bound(case)
    sample = next(s for s in case.samples if s.cls_name == case.classes[0] and s.anomaly)
    path = case.data / sample.img_path
    image = anomalib_read_image(path, as_tensor=True)[None]
    onnx_path = model.to_onnx(tmp_path, input_size=tuple(image.shape[-2:]))
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    batch = torch.cat([image, image.flip(-1)])  # the batch axis stays dynamic
    outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"input": batch.numpy()})))
    names = [case.classes[0]] * 2 if model.model.model.class_conditioned else None
    with torch.no_grad():
        expected = model(batch)
        uint8 = torch.stack([dataset.read_image(path, model.image_size)[0],
                             dataset.resize_image(Image.open(path).convert("RGB").transpose(Image.FLIP_LEFT_RIGHT),
                                                  model.image_size)])
        repository_maps, repository_scores = _reference_model(case, case.classes[0])(uint8, *([names] if names else []))
    _compare(f"{case.id}: ONNX Runtime", outputs, expected)
    np.testing.assert_allclose(outputs["anomaly_map"], repository_maps.numpy(), rtol=0, atol=EXPORT_TOLERANCE)
    np.testing.assert_allclose(outputs["pred_score"], repository_scores.numpy(), rtol=0, atol=EXPORT_TOLERANCE)


def docs_example() -> str:
    """The README's example (its deploy part), which docs/ANOMALIB.md repeats word for word."""
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"### From anomalib\n.*?```python\n(.*?)```", readme, re.S).group(1)
    page = (ROOT / "docs" / "ANOMALIB.md").read_text()
    assert re.search(r"## Checkpoint in, maps and scores out\n\n```python\n(.*?)```", page, re.S).group(1) == code, \
        "docs/ANOMALIB.md's example differs from the README's"
    return code


def test_readme_example_is_short_and_repeated_on_the_docs_page():
    assert len(docs_example().strip().splitlines()) <= 10


@pytest.mark.slow
def test_docs_example_runs_as_written(tmp_path):
    """The README's example (and docs/ANOMALIB.md's), unchanged, in a folder holding the files it names (a checkpoint train.py's
    way, the fixture's CLIP under OpenAI's file name, a folder of photos); its scores are the model's."""
    from models.checkpoint import save_checkpoint

    code = docs_example()
    assert len(code.strip().splitlines()) <= 10
    case = Case(re.search(r'load_model\("checkpoints/([^/]+)/', code).group(1))
    model = create_model(case.method, clip_weights=case.clip, checkpoint=case.checkpoint, **case.settings)
    checkpoint = tmp_path / re.search(r'load_model\("([^"]+)"', code).group(1)
    checkpoint.parent.mkdir(parents=True)
    save_checkpoint(checkpoint, model, 10)
    _clip_pt(case.folder, tmp_path / re.search(r'clip_weights="([^"]+)"', code).group(1))
    photos = tmp_path / re.search(r'data_path="([^"]+)"', code).group(1)
    photos.mkdir()
    for i, sample in enumerate(case.samples[:3]):
        shutil.copy(case.data / sample.img_path, photos / f"{i}_{Path(sample.img_path).name}")
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
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_anomalib_openvino_export_runs(case, tmp_path):
    """anomalib's to_openvino of the adapter (through its ONNX export), run by OpenVINO in float32."""
    pytest.importorskip("openvino", reason="openvino is not installed (requirements-deploy.txt)")
    from deploy.runners import openvino_core  # one Core per process (its docstring says why)

    model = _class_bound(case)
    xml = model.to_openvino(tmp_path)
    compiled = openvino_core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    paths = [case.data / s.img_path for s in case.samples if s.cls_name == case.classes[0]][:2]
    batch = torch.stack([dataset.read_image(path, model.image_size)[0] for path in paths]).float() / 255
    result = compiled(batch.numpy())
    outputs = {port.get_any_name(): value for port, value in result.items()}
    with torch.no_grad():
        expected = model(batch)
    _compare(f"{case.id}: OpenVINO", outputs, expected)
