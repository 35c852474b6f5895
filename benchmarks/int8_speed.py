"""INT8 against fp32 on the CPU: images/s of PyTorch fp32, ONNX Runtime fp32 and INT8, OpenVINO fp32 and INT8.

No weights or data from outside: a randomly initialised CLIP of the chosen architecture and a freshly
initialised method model (the speed does not depend on the values), exported with export.py's own
code (its 1e-4 check runs), quantised with deploy/quantize.py (the code `export.py --int8` runs) on
smooth random calibration images, then every runtime times the same images with the same threads.
The INT8 files' differences from their fp32 file are reported too (random weights: they say how the
quantiser copes with this graph, not how a trained model's accuracy moves; export.py --int8 measures that).

    python benchmarks/int8_speed.py --arch tiny
    python benchmarks/int8_speed.py --arch ViT-B-16 --image_size 224 --images 8 --batch_size 4 \\
        --output benchmarks/results/int8_speed.json

images/s counts the model call only (what the exported graph holds), after one warm-up batch.
"""
from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import platform
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
    parser.add_argument("--arch", choices=ARCHITECTURES, default="tiny", help="CLIP architecture, random weights")
    parser.add_argument("--method", choices=("vip2", "vcp"), default="vip2", help="method to benchmark")
    parser.add_argument("--image_size", type=positive_int, default=None,
                        help="model input size (default: 126 tiny, 224 ViT-B-16, 518 ViT-L-14-336)")
    parser.add_argument("--batch_size", type=positive_int, default=4, help="images per model call")
    parser.add_argument("--images", type=positive_int, default=8, help="images timed per runtime")
    parser.add_argument("--calibration_images", type=positive_int, default=8, help="images the quantisers see")
    parser.add_argument("--threads", type=positive_int, default=None, help="threads for every runtime")
    parser.add_argument("--rounds", type=positive_int, default=3,
                        help="time every runtime this many times, interleaved (A B C, A B C, ...); the best round is "
                             "reported, every round kept in the JSON (a shared machine's load comes and goes)")
    parser.add_argument("--runtimes", nargs="+", default=["torch", "onnx", "onnx_int8", "openvino", "openvino_int8"],
                        choices=("torch", "onnx", "onnx_int8", "openvino", "openvino_int8"), help="what to time")
    parser.add_argument("--output", default=None, metavar="FILE.json", help="also write the results here")
    return parser


def images_per_second(run, images, batch_size: int) -> float:
    run(images[:batch_size])
    start = time.perf_counter()
    for first in range(0, len(images), batch_size):
        run(images[first:first + batch_size])
    return len(images) / (time.perf_counter() - start)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return []
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_int8", "amx_bf16")
    return [flag for flag in flags.split(":", 1)[1].split() if flag in wanted]


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    args.image_size = args.image_size or DEFAULT_SIZES[args.arch]

    import torch

    import export
    from deploy import quantize
    from deploy.runners import OnnxRunner, OpenVinoRunner, TorchRunner
    from engine.devices import available_cpus
    from models import create_model, get_method
    from models.clip_loader import build_clip, random_clip_state_dict
    from utils import setup_logger

    setup_logger("zsas.export", None)
    logging.getLogger("zsas.export").setLevel(logging.WARNING)
    threads = args.threads or available_cpus()
    torch.set_num_threads(threads)
    wanted = set(args.runtimes)
    if importlib.util.find_spec("openvino") is None or importlib.util.find_spec("nncf") is None:
        print("OpenVINO / NNCF not installed: OpenVINO rows skipped", flush=True)
        wanted -= {"openvino", "openvino_int8"}

    torch.manual_seed(0)
    quick_gelu = get_method(args.method).model_class().quick_gelu
    clip = build_clip(random_clip_state_dict(args.arch, seed=0), quick_gelu=quick_gelu)
    depth = len(clip.visual.transformer.resblocks)
    layers = tuple(sorted({depth * i // 4 for i in range(1, 5)}))
    model = create_model(args.method, clip=clip, image_size=args.image_size, features_list=layers, device="cpu")
    images = export.sample_images(args.images, args.image_size, seed=1)
    calibration = export.sample_images(args.calibration_images, args.image_size, seed=2)
    rows, seconds, differences = {}, {}, {}
    with tempfile.TemporaryDirectory(prefix="zsas_int8_speed_") as folder:
        folder = Path(folder)
        runners = {}
        if "torch" in wanted:
            runners["torch"] = TorchRunner(model, torch.device("cpu"))
        for fmt, runner_class in (("onnx", OnnxRunner), ("openvino", OpenVinoRunner)):
            if not {fmt, f"{fmt}_int8"} & wanted:
                continue
            fp32_path = folder / f"fp32{export.FORMAT_SUFFIXES[fmt]}"
            start = time.perf_counter()
            export.export_model(model, fp32_path, fmt)
            seconds[f"{fmt}_export"] = time.perf_counter() - start
            print(f"{fmt}: fp32 written in {seconds[f'{fmt}_export']:.0f} s; quantising", flush=True)
            int8_path = folder / f"int8{export.FORMAT_SUFFIXES[fmt]}"
            start = time.perf_counter()
            report = quantize.quantize_and_check(fp32_path, int8_path, fmt, calibration,
                                                 bounds={**quantize.DEFAULT_BOUNDS, "max_map_diff": float("inf"),
                                                         "max_mean_map_diff": float("inf"), "min_spearman": -1.0},
                                                 on_violation="warn")
            seconds[f"{fmt}_int8_quantise_and_check"] = time.perf_counter() - start
            differences[f"{fmt}_int8_vs_fp32"] = report["calibration_images"]
            sizes = {name: sum(p.stat().st_size for p in folder.glob(f"{name}.*")) / 2**20 for name in ("fp32", "int8")}
            rows[f"{fmt}_fp32_megabytes"] = sizes["fp32"]
            rows[f"{fmt}_int8_megabytes"] = sizes["int8"]
            if fmt in wanted:
                runners[fmt] = runner_class(fp32_path, threads=threads)
            if f"{fmt}_int8" in wanted:
                runners[f"{fmt}_int8"] = runner_class(int8_path, threads=threads)
            for path in folder.glob("fp32.*"):
                path.unlink()  # the next format starts from the model, not this file
            for path in folder.glob("int8.*"):
                path.rename(folder / f"{fmt}_{path.name}")
        rounds, load_before = {name: [] for name in runners}, os.getloadavg()  # other processes distort: recorded
        for round_index in range(args.rounds):
            for name, runner in runners.items():
                rounds[name].append(images_per_second(runner, images, args.batch_size))
                print(f"round {round_index + 1}: {name}: {rounds[name][-1]:.2f} images/s", flush=True)
        speeds = {name: max(values) for name, values in rounds.items()}
    result = {"method": args.method, "arch": args.arch, "image_size": args.image_size, "features_list": list(layers),
              "batch_size": args.batch_size, "images": args.images, "calibration_images": args.calibration_images,
              "threads": threads, "rounds": args.rounds, "images_per_second": speeds, "every_round": rounds,
              "speedup_vs_torch_fp32": {k: v / speeds["torch"] for k, v in speeds.items()} if "torch" in speeds else {},
              "int8_vs_fp32": differences, "file_megabytes": rows, "seconds": seconds,
              "machine": {"cpu": cpu_name(), "cpus_available": available_cpus(), "flags": cpu_flags(),
                          "load_average_1_5_15_min_before_timing": load_before,
                          "load_average_1_5_15_min_after_timing": os.getloadavg()},
              "versions": versions()}
    if args.output:
        atomic_write_json(result, args.output)
    return result


def versions() -> dict:
    found = {}
    for name in ("torch", "onnxruntime", "openvino", "nncf", "numpy"):
        if importlib.util.find_spec(name) is not None:
            module = __import__(name)
            found[name] = getattr(module, "__version__", "?")
    return found


if __name__ == "__main__":
    main()
