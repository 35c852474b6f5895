"""End-to-end speed of test.py and train.py on a GPU, with no weights or data from outside.

Builds a synthetic MVTec-layout dataset of PNGs at a realistic size (default 1024 px, three
classes) and a randomly initialised ViT-L/14@336, then runs the real command lines per
precision and reports images/s, wall time and peak GPU memory, plus how far bf16/fp16
maps and scores move from fp32.

    python benchmarks/bench_gpu.py                      # 192 test images, 1725 training images
    python benchmarks/bench_gpu.py --train_images 200   # a quicker look

Without a CUDA device it says so and exits (use --allow_cpu --arch tiny to check the plumbing).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from generate_dataset_json.synthetic import make_synthetic_dataset  # noqa: E402
from models.clip_loader import random_clip_state_dict  # noqa: E402

CLASSES = ("bottle_synth", "tile_synth", "screw_synth")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--test_images", type=int, default=192, help="images evaluated by test.py")
    parser.add_argument("--train_images", type=int, default=1725, help="images trained on (MVTec AD has 1725)")
    parser.add_argument("--epochs", type=int, default=10, help="training epochs")
    parser.add_argument("--image_px", type=int, default=1024, help="side of the generated PNGs")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--arch", default="ViT-L-14-336", help="open_clip architecture, or 'tiny'")
    parser.add_argument("--image_size", type=int, default=518, help="model input size")
    parser.add_argument("--batch_size", type=int, default=None, help="test.py batch size (default: its own)")
    parser.add_argument("--skip_train", action="store_true", help="only benchmark test.py")
    parser.add_argument("--allow_cpu", action="store_true", help="run without CUDA (plumbing check only)")
    parser.add_argument("--workdir", default=None, help="keep the generated data here instead of a temp folder")
    return parser


def make_data(root: Path, images: int, side: int) -> Path:
    per_class = max(2, images // len(CLASSES))
    make_synthetic_dataset(root, classes=CLASSES, n_normal=per_class // 2, n_anomalous=per_class - per_class // 2,
                           image_size=(side, side), seed=0)
    return root


def run(script: str, *args) -> float:
    start = time.time()
    subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=ROOT, check=True)
    return time.time() - start


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    if not torch.cuda.is_available() and not args.allow_cpu:
        print("no CUDA device: bench_gpu.py measures GPU speed and has nothing to do here (--allow_cpu to try anyway)")
        return
    device = "cuda" if torch.cuda.is_available() else "cpu"
    layers = ["6", "12", "18", "24"] if args.arch != "tiny" else ["1", "2", "3", "4"]
    with tempfile.TemporaryDirectory(prefix="vip2_bench_") as temporary:
        work = Path(args.workdir or temporary)
        work.mkdir(parents=True, exist_ok=True)
        start = time.time()
        test_data = make_data(work / "test_data", args.test_images, args.image_px)
        train_data = None if args.skip_train else make_data(work / "train_data", args.train_images, args.image_px)
        weights = work / "clip_random.pt"
        torch.save({k: v.half() if v.is_floating_point() else v
                    for k, v in random_clip_state_dict(args.arch, seed=0).items()}, weights)
        print(f"data and weights ready in {time.time() - start:.0f} s")
        common = ["--clip_weights", weights, "--image_size", args.image_size, "--features_list", *layers,
                  "--device", device]
        init = work / "init" / "epoch_1.pth"
        run("train.py", "--train_data_path", test_data, "--save_path", init.parent, "--epoch", "1", *common)

        rows, maps = [], {}
        for precision in args.precisions:
            out = work / f"test_{precision}"
            extra = ["--batch_size", args.batch_size] if args.batch_size else []
            run("test.py", "--data_path", test_data, "--checkpoint_path", init, "--save_path", out,
                "--save_maps", out / "maps.npz", "--precision", precision, *common, *extra)
            stats = json.loads((out / "results.json").read_text())["run"]
            with np.load(out / "maps.npz") as saved:
                maps[precision] = (saved["anomaly_maps"], saved["image_scores"])
            row = {"script": "test.py", "precision": precision, "images": stats["images"],
                   "seconds": stats["seconds"], "images_per_second": stats["images_per_second"],
                   "peak_gpu_memory_gb": stats["peak_gpu_memory_gb"]}
            if not args.skip_train:
                save = work / f"train_{precision}"
                run("train.py", "--train_data_path", train_data, "--save_path", save, "--epoch", args.epochs,
                    "--precision", precision, *common)
                train_stats = json.loads((save / "train_stats.json").read_text())
                rows.append(row)
                row = {"script": f"train.py ({args.epochs} epochs)", "precision": precision,
                       "images": train_stats["images"], "seconds": train_stats["seconds"],
                       "images_per_second": train_stats["images_per_second"],
                       "peak_gpu_memory_gb": train_stats["peak_gpu_memory_gb"]}
            rows.append(row)

    from tabulate import tabulate

    print(f"\n{torch.cuda.get_device_name() if device == 'cuda' else 'CPU'}, {args.arch} at {args.image_size} px, "
          f"{args.image_px} px PNGs")
    print(tabulate(rows, headers="keys", floatfmt=".1f"))
    if "fp32" in maps:
        for precision, (low_maps, low_scores) in maps.items():
            if precision == "fp32":
                continue
            map_diff = np.abs(low_maps - maps["fp32"][0])
            score_diff = np.abs(low_scores - maps["fp32"][1])
            print(f"{precision} vs fp32: maps max {map_diff.max():.2e} mean {map_diff.mean():.2e}; "
                  f"scores max {score_diff.max():.2e} mean {score_diff.mean():.2e}")


if __name__ == "__main__":
    main()
