"""How far `--precision bf16|fp16` moves anomaly maps and image scores from fp32, for either method.

Two models: the method's reference fixture (tiny CLIP with the authors' init.pth and
trained.pth, its 8 images) and a full-size, randomly initialised ViT-L/14@336 at 518 px on
synthetic images. Maps and scores are compared as the model returns them (smoothed; for
VCP-CLIP before its per-class normalisation, which would stretch every difference by
1 / the class's range). Runs on the GPU when there is one, else on the CPU (slow for the
full-size model: use --images to keep it short).

    python benchmarks/precision_drift.py --images 2
    python benchmarks/precision_drift.py --model vcp --skip_full
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
from models import create_model, get_method  # noqa: E402
from models.clip_loader import build_clip, random_clip_state_dict  # noqa: E402
from engine.devices import autocast  # noqa: E402

FIXTURES = {"vip2": ROOT / "tests" / "fixtures" / "vip2_tiny", "vcp": ROOT / "tests" / "fixtures" / "vcp_tiny"}


def outputs(model, images: torch.Tensor, precision: str, device: torch.device):
    with torch.inference_mode(), autocast(precision, device):
        maps, scores = model(images.to(device))
    return maps.float().cpu().numpy(), scores.float().cpu().numpy()


def report(name: str, model, images: torch.Tensor, precisions, device) -> None:
    reference = outputs(model, images, "fp32", device)
    for precision in precisions:
        maps, scores = outputs(model, images, precision, device)
        map_diff, score_diff = np.abs(maps - reference[0]), np.abs(scores - reference[1])
        print(f"{name:40s} {precision}: maps max {map_diff.max():.2e} mean {map_diff.mean():.2e} | "
              f"scores max {score_diff.max():.2e} mean {score_diff.mean():.2e}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vip2", choices=tuple(FIXTURES), help="the method")
    parser.add_argument("--images", type=int, default=8, help="synthetic images for the full-size model")
    parser.add_argument("--precisions", nargs="+", default=["bf16", "fp16"], choices=["bf16", "fp16"])
    parser.add_argument("--skip_full", action="store_true", help="only the fixture")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precisions = [p for p in args.precisions if device.type == "cuda" or p == "bf16"]  # fp16 autocast needs CUDA
    print(f"device: {torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}; method {args.model}")
    fixture = FIXTURES[args.model]
    dataset = AnomalyDataset(fixture / "data", 126, dataset="mvtec")
    images = torch.stack([dataset[i]["img"] for i in range(len(dataset))])
    for checkpoint in ("init.pth", "trained.pth"):
        model = create_model(args.model, clip_weights=str(fixture / "clip_tiny.npz"), checkpoint=fixture / checkpoint,
                             image_size=126, features_list=(1, 2, 3, 4), device=device)
        report(f"fixture (tiny CLIP, {checkpoint})", model, images, precisions, device)
    if args.skip_full:
        return
    with tempfile.TemporaryDirectory() as folder:
        make_synthetic_dataset(folder, classes=("synth",), n_normal=args.images // 2,
                               n_anomalous=args.images - args.images // 2, image_size=(1024, 1024), seed=0)
        dataset = AnomalyDataset(folder, 518)
        images = torch.stack([dataset[i]["img"] for i in range(len(dataset))])
    torch.manual_seed(0)
    quick_gelu = get_method(args.model).model_class().quick_gelu
    clip = build_clip(random_clip_state_dict("ViT-L-14-336", seed=0), quick_gelu=quick_gelu)
    full = create_model(args.model, clip=clip, device=device)
    report(f"random ViT-L/14@336, 518 px, {len(images)} img", full, images, precisions, device)


if __name__ == "__main__":
    main()
