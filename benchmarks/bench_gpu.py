"""End-to-end speed of test.py and train.py on a GPU, for every registered method, with no weights or data from outside.

Builds a synthetic MVTec-layout dataset of PNGs at a realistic size (default 1024 px, three
classes) and a randomly initialised ViT-L/14@336, then runs the real command lines per
precision and reports images/s, wall time and peak GPU memory, plus how far bf16/fp16
maps and scores move from fp32. A first row times data loading alone (test.py's loader,
no model), which bounds what the GPU can be fed.

    python benchmarks/bench_gpu.py                      # the default method: 192 test images, 1725 training images
    python benchmarks/bench_gpu.py --model all          # every registered method, one after the other
    python benchmarks/bench_gpu.py --model vcp          # one method (VCP-CLIP trains with the paper's augmentation)
    python benchmarks/bench_gpu.py --profile            # and torch.profiler's top GPU ops of a bf16 test batch
    python benchmarks/bench_gpu.py --train_images 200   # a quicker look
    python benchmarks/bench_gpu.py --skip_train --output bench.json

"seconds" is what the script itself times (from its first image to its last metric or
epoch, model loading excluded); "wall" is the whole process, Python start and CLIP
loading included. With --workdir, data and weights made by an earlier run are reused.

Without a CUDA device it says so and exits (use --allow_cpu --arch tiny to check the plumbing).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
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
from models import DEFAULT_METHOD, get_method, method_names  # noqa: E402
from models.clip_loader import random_clip_state_dict  # noqa: E402

CLASSES = tuple(f"{kind}_synth_{i}" for i in range(4) for kind in ("bottle", "tile", "screw"))  # 12 classes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_METHOD, choices=(*method_names(), "all"),
                        help="the method, or 'all': every registered method in turn")
    parser.add_argument("--train_args", nargs=argparse.REMAINDER, default=[],
                        help="further train.py flags, last on the line (e.g. --aug_rate -1 --no_albumentations)")
    parser.add_argument("--test_images", type=int, default=192, help="images evaluated by test.py")
    parser.add_argument("--train_images", type=int, default=1725, help="images trained on (MVTec AD has 1725)")
    parser.add_argument("--epochs", type=int, default=10, help="training epochs")
    parser.add_argument("--image_px", type=int, default=1024, help="side of the generated PNGs")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--train_precisions", nargs="+", default=None, choices=["fp32", "bf16", "fp16"],
                        help="precisions train.py is timed in (default: --precisions)")
    parser.add_argument("--profile", action="store_true",
                        help="also profile one bf16 test batch in-process (torch.profiler: top GPU ops)")
    parser.add_argument("--arch", default="ViT-L-14-336", help="open_clip architecture, or 'tiny'")
    parser.add_argument("--image_size", type=int, default=518, help="model input size")
    parser.add_argument("--batch_size", type=int, default=None, help="test.py batch size (default: its own)")
    parser.add_argument("--skip_train", action="store_true", help="do not benchmark train.py")
    parser.add_argument("--skip_test", action="store_true", help="do not benchmark test.py")
    parser.add_argument("--num_workers", type=int, default=None, help="data-loading processes (default: the scripts' own)")
    parser.add_argument("--output", default=None, help="also write the rows and drifts to this JSON file")
    parser.add_argument("--allow_cpu", action="store_true", help="run without CUDA (plumbing check only)")
    parser.add_argument("--workdir", default=None, help="keep the generated data here instead of a temp folder")
    return parser


def _make_class(job) -> None:
    part, cls, seed, n_normal, n_anomalous, side = job
    make_synthetic_dataset(part, classes=(cls,), n_normal=n_normal, n_anomalous=n_anomalous, image_size=(side, side),
                           seed=seed)


def make_data(root: Path, images: int, side: int) -> Path:
    """The synthetic dataset, or the one an earlier run left in --workdir with the same size. Classes are written
    in parallel processes (PNG encoding of ~2000 1024 px images takes minutes on one core)."""
    from concurrent.futures import ProcessPoolExecutor

    from generate_dataset_json import build_meta, write_meta

    per_class = max(2, images // len(CLASSES))
    stamp = root / "bench_stamp.json"
    wanted = {"per_class": per_class, "side": side, "classes": list(CLASSES)}
    if stamp.is_file() and json.loads(stamp.read_text()) == wanted:
        return root
    if root.exists():  # another size or count: start afresh rather than mix two datasets
        shutil.rmtree(root)
    parts = root.parent / f".{root.name}_parts"
    shutil.rmtree(parts, ignore_errors=True)
    jobs = [(parts / cls, cls, seed, per_class // 2, per_class - per_class // 2, side) for seed, cls in enumerate(CLASSES)]
    with ProcessPoolExecutor(max_workers=min(len(jobs), os.cpu_count() or 1)) as pool:
        list(pool.map(_make_class, jobs))
    root.mkdir(parents=True)
    for part, cls, *_ in jobs:
        (part / cls).rename(root / cls)
    shutil.rmtree(parts)
    write_meta(build_meta("mvtec", root), root / "meta.json")
    stamp.write_text(json.dumps(wanted))
    return root


def run(script: str, *args) -> float:
    """Runs a repository script as a user would; returns its wall time."""
    start = time.time()
    subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=ROOT, check=True)
    return time.time() - start


def loading_row(data: Path, image_size: int, batch_size: int, workers: int | None, device: str) -> dict:
    """test.py's loader alone: decoding and resizing, split over its worker processes."""
    from engine import inference as test_script
    from dataset import AnomalyDataset
    from engine.devices import default_workers

    dataset = AnomalyDataset(data, image_size, split="test")
    workers = default_workers() if workers is None else workers
    loader = torch.utils.data.DataLoader(dataset, batch_size=test_script.loader_chunk(batch_size, workers),
                                         num_workers=workers, pin_memory=device == "cuda")
    start = time.time()
    for _ in test_script.device_batches(loader, batch_size, torch.device(device)):
        pass
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.time() - start
    return {"script": f"loading only ({workers} workers)", "precision": "-", "images": len(dataset),
            "seconds": seconds, "wall": seconds, "images_per_second": len(dataset) / seconds,
            "peak_gpu_memory_gb": None}


def profile_row(model_name: str, init: Path, weights: Path, image_size: int, batch_size: int, device: str) -> dict:
    """torch.profiler over one bf16 batch of random images through the model (after a warm-up): where the
    time goes on the GPU, for the figures that fall short."""
    from torch.profiler import ProfilerActivity, profile

    from engine.devices import autocast
    from models import create_model

    model = create_model(model_name, clip_weights=str(weights), checkpoint=init, device=device)  # its settings
    images = torch.randint(0, 256, (batch_size, 3, image_size, image_size), dtype=torch.uint8, device=device)
    device_type = torch.device(device)
    with torch.inference_mode(), autocast("bf16", device_type):
        model(images)
        synchronize = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        synchronize()
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
        with profile(activities=activities) as profiler:
            model(images)
            synchronize()
    key = "cuda_time_total" if device == "cuda" else "cpu_time_total"
    table = profiler.key_averages().table(sort_by=key, row_limit=15)
    print(f"\nprofile of one bf16 batch of {batch_size} ({model_name}):\n{table}", flush=True)
    events = sorted(profiler.key_averages(), key=lambda e: getattr(e, "device_time_total", 0) or 0, reverse=True)
    return {"method": model_name, "batch_size": batch_size,
            "top_ops": [{"name": e.key, "device_ms": (getattr(e, "device_time_total", 0) or 0) / 1e3,
                         "calls": e.count} for e in events[:15]]}


def layer_flags(model_name: str, arch: str) -> list[str]:
    """The paper's layers for ViT-L come from each method's defaults; the 4-block tiny tower needs 1 2 3 4."""
    config = get_method(model_name).config
    if arch == "tiny" and any(f.name == "features_list" for f in dataclasses.fields(config)):
        return ["--features_list", "1", "2", "3", "4"]
    return []


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    if not torch.cuda.is_available() and not args.allow_cpu:
        print("no CUDA device: bench_gpu.py measures GPU speed and has nothing to do here (--allow_cpu to try anyway)")
        return
    names = method_names() if args.model == "all" else (args.model,)
    from utils import atomic_write_json

    report = {}
    for name in names:  # written after each method: a run stopped part-way keeps what it measured
        print(f"\n===== {get_method(name).title} =====", flush=True)
        report[name] = bench_method(args, name)
        if args.output:
            atomic_write_json(report if args.model == "all" else report[args.model], Path(args.output))


def bench_method(args, model_name: str) -> dict:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows, maps, profiled = [], {}, None
    with tempfile.TemporaryDirectory(prefix="zsas_bench_") as temporary:
        work = Path(args.workdir or temporary)
        work.mkdir(parents=True, exist_ok=True)
        start = time.time()
        test_data = None if args.skip_test else make_data(work / "test_data", args.test_images, args.image_px)
        train_data = None if args.skip_train else make_data(work / "train_data", args.train_images, args.image_px)
        weights = work / f"clip_random_{args.arch}.pt"
        if not weights.is_file():
            torch.save({k: v.half() if v.is_floating_point() else v
                        for k, v in random_clip_state_dict(args.arch, seed=0).items()}, weights)
        print(f"data and weights ready in {time.time() - start:.0f} s", flush=True)
        common = ["--model", model_name, "--clip_weights", weights, "--image_size", args.image_size,
                  *layer_flags(model_name, args.arch), "--device", device]
        workers = ["--num_workers", args.num_workers] if args.num_workers is not None else []

        if test_data is not None:
            rows.append(loading_row(test_data, args.image_size, args.batch_size or (32 if device == "cuda" else 8),
                                    args.num_workers, device))
            init = work / f"init_{model_name}_{args.arch}_{args.image_size}" / "epoch_1.pth"
            if not init.is_file():
                run("train.py", "--train_data_path", test_data, "--save_path", init.parent, "--epoch", "1",
                    "--overwrite", *common, *workers)
        for precision in args.precisions:
            if test_data is not None:
                out = work / f"test_{model_name}_{precision}"
                extra = ["--batch_size", args.batch_size] if args.batch_size else []
                wall = run("test.py", "--data_path", test_data, "--checkpoint_path", init, "--save_path", out,
                           "--save_maps", out / "maps.npz", "--precision", precision, "--overwrite", *common, *workers, *extra)
                stats = json.loads((out / "results.json").read_text())["run"]
                with np.load(out / "maps.npz") as saved:
                    maps[precision] = (saved["anomaly_maps"], saved["image_scores"])
                rows.append({"script": "test.py", "precision": precision, "images": stats["images"],
                             "seconds": stats["seconds"], "wall": wall, "images_per_second": stats["images_per_second"],
                             "peak_gpu_memory_gb": stats["peak_gpu_memory_gb"],
                             "model_seconds": stats["inference_seconds"], "metrics_seconds": stats["metrics_seconds"]})
            if train_data is not None and precision in (args.train_precisions or args.precisions):
                save = work / f"train_{model_name}_{precision}"
                wall = run("train.py", "--train_data_path", train_data, "--save_path", save, "--epoch", args.epochs,
                           "--precision", precision, "--overwrite", *common, *workers, *args.train_args)
                train_stats = json.loads((save / "train_stats.json").read_text())
                rows.append({"script": f"train.py ({args.epochs} epochs)", "precision": precision,
                             "images": train_stats["images"], "seconds": train_stats["seconds"], "wall": wall,
                             "images_per_second": train_stats["images_per_second"],
                             "peak_gpu_memory_gb": train_stats["peak_gpu_memory_gb"],
                             "feature_cache": train_stats["feature_cache"]})

        if args.profile and test_data is not None:
            profiled = profile_row(model_name, init, weights, args.image_size, args.batch_size or 32, device)

    from tabulate import tabulate

    title = (f"{model_name}, {torch.cuda.get_device_name() if device == 'cuda' else 'CPU'}, {args.arch} at "
             f"{args.image_size} px, "
             f"{args.image_px} px PNGs, torch {torch.__version__}")
    print(f"\n{title}")
    print(tabulate(rows, headers="keys", floatfmt=".1f", missingval="-"))
    drifts = {}
    for precision, (low_maps, low_scores) in maps.items():
        if precision == "fp32" or "fp32" not in maps:
            continue
        map_diff, score_diff = np.abs(low_maps - maps["fp32"][0]), np.abs(low_scores - maps["fp32"][1])
        map_diff, score_diff = map_diff[np.isfinite(map_diff)], score_diff[np.isfinite(score_diff)]
        drifts[precision] = {"maps_max": float(map_diff.max()), "maps_mean": float(map_diff.mean()),
                             "scores_max": float(score_diff.max()), "scores_mean": float(score_diff.mean())}
        print(f"{precision} vs fp32: maps max {map_diff.max():.2e} mean {map_diff.mean():.2e}; "
              f"scores max {score_diff.max():.2e} mean {score_diff.mean():.2e}")
    return {"title": title, "rows": rows, "drift_vs_fp32": drifts, "profile": profiled}


if __name__ == "__main__":
    main()
