"""Checks shared by the class-conditioned methods' deploy tests: an exported file bound to a class (and its
few-shot memory) gives the model's numbers, directly and through predict.py."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch


def score_rows(folder: Path) -> list[dict]:
    """predict.py's scores.csv, row by row."""
    with open(folder / "scores.csv", newline="") as file:
        return list(csv.DictReader(file))


def assert_memory_in_file(model, onnx_path: Path) -> None:
    """Every few-shot memory buffer of `model` is stored in the ONNX file (the file needs no reference images)."""
    import onnx
    from onnx import numpy_helper

    initializers = [numpy_helper.to_array(t) for t in onnx.load(str(onnx_path)).graph.initializer]
    for name, buffer in model.named_buffers():
        if name.startswith("fewshot_memory"):
            memory = buffer.numpy()  # the exporter may fold the product's transpose into the stored constant
            assert any(np.array_equal(a, memory) or np.array_equal(a, memory.T) for a in initializers), name


def assert_runner_equals_model(runner, model, data_root: Path, image_size: int, class_name: str,
                               tolerance: float) -> None:
    """The exported file's runner on one class's images against the PyTorch model told that class."""
    from dataset import AnomalyDataset

    dataset = AnomalyDataset(data_root, image_size)
    images = torch.stack([dataset[i]["img"] for i in range(len(dataset)) if dataset.samples[i].cls_name == class_name])
    maps, scores = runner(images.numpy())
    with torch.no_grad():
        expected_maps, expected_scores = model(images, [class_name] * len(images))
    np.testing.assert_allclose(maps, expected_maps.numpy(), atol=tolerance, rtol=0)
    np.testing.assert_allclose(scores, expected_scores.numpy(), atol=tolerance, rtol=0)


def assert_predict_onnx_equals_torch(images: Path, count: int, onnx_path: Path, torch_flags: list[str], out: Path,
                                     tolerance: float) -> None:
    """predict.py on the `count` images under `images`, from the exported file and from the PyTorch model
    (`torch_flags`), writes the same scores and maps."""
    import predict

    assert predict.main([str(images), "--out", str(out / "onnx"), "--onnx", str(onnx_path), "--save_raw"]) == count
    assert predict.main([str(images), "--out", str(out / "torch"), *torch_flags, "--device", "cpu",
                         "--save_raw"]) == count
    for got, want in zip(score_rows(out / "onnx"), score_rows(out / "torch")):
        assert float(got["image_score"]) == pytest.approx(float(want["image_score"]), abs=tolerance)
        np.testing.assert_allclose(np.load(out / "onnx" / got["map"]), np.load(out / "torch" / want["map"]),
                                   atol=tolerance, rtol=0)
