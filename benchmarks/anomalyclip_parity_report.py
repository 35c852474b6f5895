"""AnomalyCLIP's parity figures (README, SPEC_ANOMALYCLIP §11): largest differences from its reference fixture.

    python benchmarks/anomalyclip_parity_report.py

In float32 on the CPU, from tests/fixtures/anomalyclip_tiny with every setting from its `config`:
the model on `init.pth` and on the reference's trained weights (maps, scores, per-layer patch
probabilities), and the reference's five training steps from `init.pth`, once in the reference's
batch order and once in this repository's trainer order (the dataset's order inside a batch).
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
from models import create_model  # noqa: E402
from models.anomalyclip.config import AnomalyCLIPTraining  # noqa: E402
from models.base import normalize_images  # noqa: E402

FIXTURE = ROOT / "tests" / "fixtures" / "anomalyclip_tiny"
DATA = ROOT / "tests" / "fixtures" / "vip2_tiny" / "data"


def largest(a, b) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


def main() -> dict:
    expected = dict(np.load(FIXTURE / "expected.npz"))
    record = json.loads((FIXTURE / "expected.json").read_text())
    config = record["config"]
    settings = {"image_size": config["image_size"], "features_list": tuple(config["features_list"]),
                "feature_map_layer": tuple(config["feature_map_layer"]), "dpam_layer": config["dpam_layer"],
                "sigma": float(config["sigma"])}
    dataset = AnomalyDataset(DATA, config["image_size"])
    batch = torch.utils.data.default_collate([dataset[i] for i in range(len(dataset))])
    init = torch.load(FIXTURE / "init.pth", weights_only=True)
    trained = {"prompt_learner": dict(init["prompt_learner"])}
    for key in record["trained_changed"]:
        trained["prompt_learner"][key] = torch.from_numpy(expected[f"trained_prompt_learner.{key}"])
    clip = str(FIXTURE / "clip_tiny.npz")
    figures = {}
    for stage, checkpoint in (("init", init), ("trained", trained)):
        model = create_model("anomalyclip", clip_weights=clip, checkpoint=checkpoint, **settings)
        with torch.no_grad():
            maps, scores = model(batch["img"])
            features = model.extract_features(normalize_images(batch["img"]))
            text = model.text_features()
            layers = torch.stack([model._probabilities(p, text) for p in features[1:]], dim=1)
        figures[f"{stage} maps"] = largest(maps, expected[f"{stage}_maps"])
        figures[f"{stage} scores"] = largest(scores, expected[f"{stage}_scores"])
        figures[f"{stage} layer probabilities"] = largest(layers, expected[f"{stage}_layer_probabilities"])
    paths = list(batch["img_path"])
    for order in ("reference", "trainer"):
        model = create_model("anomalyclip", clip_weights=clip, checkpoint=init, **settings)
        optimizer = model.make_optimizer(AnomalyCLIPTraining(learning_rate=config["learning_rate"]))
        with torch.no_grad():
            features = model.extract_features(normalize_images(batch["img"]))
        model.train()
        worst = 0.0
        for step in record["train_steps"]:
            index = [paths.index(p) for p in step["batch_order"]] if order == "reference" else list(range(len(paths)))
            losses = model.training_losses(tuple(f[index] for f in features), batch["img_mask"][index],
                                           batch["anomaly"][index].long())
            optimizer.zero_grad()
            losses["loss"].backward()
            optimizer.step()
            worst = max(worst, abs(losses["loss"].item() - step["loss"]),
                        abs(losses["image_loss"].item() - step["image_loss"]))
        model.eval()
        with torch.no_grad():
            maps, scores = model(batch["img"])
        figures[f"training in the {order} order: per-step losses"] = worst
        figures[f"training in the {order} order: trained maps"] = largest(maps, expected["trained_maps"])
        figures[f"training in the {order} order: trained scores"] = largest(scores, expected["trained_scores"])
    return figures


if __name__ == "__main__":
    torch.set_num_threads(2)
    for key, value in main().items():
        print(f"{key}: {value:.1e}")
