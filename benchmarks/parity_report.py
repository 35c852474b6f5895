"""The parity figures the README states: largest differences from both reference fixtures, measured.

    python benchmarks/parity_report.py

Runs each method's model on its fixture from `init.pth` and `trained.pth` (maps, scores,
and for VCP-CLIP the per-class normalisation), and five full-batch training steps from
`init.pth` with the method's own losses and optimiser, in float32 on the CPU.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dataset import AnomalyDataset  # noqa: E402
from models import create_model, get_method  # noqa: E402
from models.base import normalize_images  # noqa: E402

FIXTURES = {"vip2": ROOT / "tests" / "fixtures" / "vip2_tiny", "vcp": ROOT / "tests" / "fixtures" / "vcp_tiny"}
TRAINING = {"vip2": {}, "vcp": {"learning_rate": 1e-3, "dtp_dropout": 0.0, "aug_rate": -1, "albumentations": False}}
LOSS_KEYS = {"vip2": ("image_loss", "pixel_loss"), "vcp": ("loss", "loss_base", "loss_new")}


def report(method: str) -> dict:
    folder = FIXTURES[method]
    expected = np.load(folder / "expected.npz")
    steps = json.loads((folder / "expected.json").read_text())["train_steps"]
    dataset = AnomalyDataset(folder / "data", 126, dataset="mvtec")
    batch = torch.utils.data.default_collate([dataset[i] for i in range(len(dataset))])
    figures = {}
    for stage in ("init", "trained"):
        model = create_model(method, clip_weights=str(folder / "clip_tiny.npz"), checkpoint=folder / f"{stage}.pth",
                             image_size=126, features_list=(1, 2, 3, 4))
        with torch.no_grad():
            maps, scores = model(batch["img"])
            outputs = model.finalize({"anomaly_maps": maps, "image_scores": scores}, batch["cls_name"])
        figures[f"{stage} maps"] = float(np.abs(outputs["anomaly_maps"].numpy() - expected[f"{stage}_maps"]).max())
        figures[f"{stage} scores"] = float(np.abs(outputs["image_scores"].numpy() - expected[f"{stage}_scores"]).max())
    model = create_model(method, clip_weights=str(folder / "clip_tiny.npz"), checkpoint=folder / "init.pth",
                         image_size=126, features_list=(1, 2, 3, 4)).train()
    training = get_method(method).training(**TRAINING[method])
    model.configure_training(training)
    optimizer = model.make_optimizer(training)
    features = model.extract_features(normalize_images(batch["img"]))
    worst = 0.0
    for step in steps:
        losses = model.training_losses(features, batch["img_mask"], batch["anomaly"].long())
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
        worst = max(worst, *(abs(losses[key].item() - step[key]) for key in LOSS_KEYS[method]))
    figures["per-step losses"] = worst
    model.eval()
    with torch.no_grad():
        maps, scores = model(batch["img"])
        outputs = model.finalize({"anomaly_maps": maps, "image_scores": scores}, batch["cls_name"])
    figures["own trained maps"] = float(np.abs(outputs["anomaly_maps"].numpy() - expected["trained_maps"]).max())
    return figures


if __name__ == "__main__":
    torch.set_num_threads(2)
    for name in FIXTURES:
        print(name, {key: f"{value:.1e}" for key, value in report(name).items()})
