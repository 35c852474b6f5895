"""How far `--precision bf16|fp16` moves anomaly maps and image scores from fp32.

Two models: the reference fixture (tiny CLIP with the authors' init.pth and trained.pth,
its 8 images) and a full-size, randomly initialised ViT-L/14@336 at 518 px on synthetic images.
Runs on the GPU when there is one, else on the CPU (slow for the full-size model: use
--images to keep it short).

    python benchmarks/precision_drift.py --images 2
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dataset import AnomalyDataset  # noqa: E402
from generate_dataset_json.synthetic import make_synthetic_dataset  # noqa: E402
from models import SMOOTHING_SIGMA, ViP2CLIP, ViP2Config, load_clip  # noqa: E402
from models.checkpoint import load_weights, read_checkpoint  # noqa: E402
from models.clip_loader import build_clip, random_clip_state_dict  # noqa: E402
from utils import autocast, gaussian_blur  # noqa: E402

FIXTURE = ROOT / "tests" / "fixtures" / "vip2_tiny"


def outputs(model: ViP2CLIP, images: torch.Tensor, precision: str, device: torch.device):
    with torch.inference_mode(), autocast(precision, device):
        maps, scores = model(images.to(device))
    return gaussian_blur(maps.float(), SMOOTHING_SIGMA).cpu().numpy(), scores.float().cpu().numpy()


def report(name: str, model: ViP2CLIP, images: torch.Tensor, precisions, device) -> None:
    reference = outputs(model, images, "fp32", device)
    for precision in precisions:
        maps, scores = outputs(model, images, precision, device)
        map_diff, score_diff = np.abs(maps - reference[0]), np.abs(scores - reference[1])
        print(f"{name:34s} {precision}: maps max {map_diff.max():.2e} mean {map_diff.mean():.2e} | "
              f"scores max {score_diff.max():.2e} mean {score_diff.mean():.2e}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=8, help="synthetic images for the full-size model")
    parser.add_argument("--precisions", nargs="+", default=["bf16", "fp16"], choices=["bf16", "fp16"])
    parser.add_argument("--skip_full", action="store_true", help="only the fixture")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precisions = [p for p in args.precisions if device.type == "cuda" or p == "bf16"]  # fp16 autocast needs CUDA
    print(f"device: {torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}")

    dataset = AnomalyDataset(FIXTURE / "data", 126)
    images = torch.stack([dataset[i]["img"] for i in range(len(dataset))])
    for checkpoint in ("init.pth", "trained.pth"):
        tiny = ViP2CLIP(load_clip(str(FIXTURE / "clip_tiny.npz")),
                        ViP2Config(image_size=126, features_list=(1, 2, 3, 4)))
        load_weights(tiny, read_checkpoint(FIXTURE / checkpoint), FIXTURE / checkpoint)
        report(f"fixture (tiny CLIP, {checkpoint})", tiny.to(device).eval(), images, precisions, device)
    if args.skip_full:
        return
    with tempfile.TemporaryDirectory() as folder:
        make_synthetic_dataset(folder, classes=("synth",), n_normal=args.images // 2,
                               n_anomalous=args.images - args.images // 2, image_size=(1024, 1024), seed=0)
        dataset = AnomalyDataset(folder, 518)
        images = torch.stack([dataset[i]["img"] for i in range(len(dataset))])
    torch.manual_seed(0)
    full = ViP2CLIP(build_clip(random_clip_state_dict("ViT-L-14-336", seed=0)), ViP2Config())
    report(f"random ViT-L/14@336, 518 px, {len(images)} img", full.to(device).eval(), images, precisions, device)


if __name__ == "__main__":
    main()
