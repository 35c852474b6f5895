"""ONNX Runtime against PyTorch on the CPU: images/s of the same model at the same settings, side by side.

No weights or data from outside: a randomly initialised CLIP of the chosen architecture
and a freshly initialised method model (the speed does not depend on the values), exported
with export.py's own code (so its 1e-4 check runs too), then both run on the same random
uint8 images with the same number of threads.

    python benchmarks/onnx_speed.py --arch tiny
    python benchmarks/onnx_speed.py --arch ViT-B-16 --image_size 224 --images 8 --batch_size 4
    python benchmarks/onnx_speed.py --arch ViT-L-14-336 --image_size 518 --threads 16 --output onnx_speed.json

images/s counts the model call only (normalisation, the model, upsampling and smoothing:
what the exported graph holds), after one warm-up batch, decoding excluded.
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from utils import atomic_write_json, positive_int  # noqa: E402

ARCHITECTURES = ("tiny", "ViT-B-16", "ViT-L-14-336")
DEFAULT_SIZES = {"tiny": 126, "ViT-B-16": 224, "ViT-L-14-336": 518}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=ARCHITECTURES, default="tiny",
                        help="CLIP architecture, random weights (tiny: the test fixtures' 4-layer ViT)")
    parser.add_argument("--methods", nargs="+", choices=("vip2", "vcp"), default=["vip2", "vcp"],
                        help="methods to benchmark")
    parser.add_argument("--image_size", type=positive_int, default=None,
                        help="model input size (default: 126 tiny, 224 ViT-B-16, 518 ViT-L-14-336)")
    parser.add_argument("--features_list", type=positive_int, nargs="+", default=None,
                        help="tapped layers (default: four evenly spaced, the last one included)")
    parser.add_argument("--batch_size", type=positive_int, default=4, help="images per model call")
    parser.add_argument("--images", type=positive_int, default=16, help="images timed per runtime")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="threads for both runtimes (default: the CPUs this process may use)")
    parser.add_argument("--output", default=None, metavar="FILE.json", help="also write the rows to this JSON file")
    return parser


def images_per_second(run, images, batch_size: int) -> float:
    """One warm-up batch, then every image in batches, timed."""
    run(images[:batch_size])
    start = time.perf_counter()
    for first in range(0, len(images), batch_size):
        run(images[first:first + batch_size])
    return len(images) / (time.perf_counter() - start)


def benchmark(method: str, args, threads: int, folder: Path) -> dict:
    import torch

    import export
    from models import create_model, get_method
    from models.clip_loader import build_clip, random_clip_state_dict
    from deploy.runners import OnnxRunner, TorchRunner

    torch.manual_seed(0)
    quick_gelu = get_method(method).model_class().quick_gelu
    clip = build_clip(random_clip_state_dict(args.arch, seed=0), quick_gelu=quick_gelu)
    depth = len(clip.visual.transformer.resblocks)
    layers = tuple(args.features_list or sorted({depth * i // 4 for i in range(1, 5)}))
    model = create_model(method, clip=clip, image_size=args.image_size, features_list=layers, device="cpu")
    path = folder / f"{method}.onnx"
    start = time.perf_counter()
    report = export.export_model(model, path)
    export_seconds = time.perf_counter() - start

    images = export.sample_images(args.images, args.image_size, seed=1)
    torch_runner = TorchRunner(model, torch.device("cpu"))
    onnx_runner = OnnxRunner(path, threads=threads)
    torch_speed = images_per_second(torch_runner, images, args.batch_size)
    onnx_speed = images_per_second(onnx_runner, images, args.batch_size)
    return {"method": method, "arch": args.arch, "image_size": args.image_size, "features_list": list(layers),
            "batch_size": args.batch_size, "images": args.images, "threads": threads,
            "torch_images_per_second": torch_speed, "onnx_images_per_second": onnx_speed,
            "speedup": onnx_speed / torch_speed, "max_difference": report["max_difference"],
            "export_seconds": export_seconds, "onnx_megabytes": path.stat().st_size / 2**20}


def main(argv=None) -> list[dict]:
    args = build_parser().parse_args(argv)
    args.image_size = args.image_size or DEFAULT_SIZES[args.arch]

    import onnxruntime
    import torch
    from tabulate import tabulate

    from engine.devices import available_cpus
    from utils import setup_logger

    setup_logger("zsas.export", None)
    logging.getLogger("zsas.export").setLevel(logging.WARNING)  # the table is the output
    threads = args.threads or available_cpus()
    torch.set_num_threads(threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="zsas_onnx_speed_") as folder:
        for method in args.methods:
            print(f"{method}: exporting and timing ({args.arch}, {args.image_size} px, {args.images} images)",
                  flush=True)
            rows.append(benchmark(method, args, threads, Path(folder)))
    table = [[r["method"], r["arch"], r["image_size"], r["batch_size"], r["threads"],
              f"{r['torch_images_per_second']:.2f}", f"{r['onnx_images_per_second']:.2f}", f"{r['speedup']:.2f}x",
              f"{r['max_difference']:.1e}", f"{r['export_seconds']:.0f}", f"{r['onnx_megabytes']:.0f}"] for r in rows]
    print(tabulate(table, headers=["method", "CLIP", "size", "batch", "threads", "PyTorch img/s",
                                   "ONNX Runtime img/s", "speed-up", "max |diff|", "export s", "ONNX MB"],
                   tablefmt="github"))
    print(f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, {available_cpus()} CPU(s) available")
    if args.output:
        atomic_write_json({"rows": rows, "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                           "cpus": available_cpus()}, args.output)
    return rows


if __name__ == "__main__":
    main()
