"""CPU speed and memory of CLIP's image tower: nn.MultiheadAttention as is vs SDPA (models/attention.py).

Why: on a CPU, nn.MultiheadAttention's fused inference path materialises every layer's
[batch, heads, L, L] scores (about 1 GB per layer for 8 ViT-L/14 images at 518 px), so a
batch of 8 ran slower per image than one image at a time. This script times the
repository's own image encoding (FrozenCLIP.residual_streams: positional embedding resized
to the input's grid, layers tapped) on a randomly initialised open_clip vision tower:

    python benchmarks/attention_bench.py --arch ViT-L-14-336 --image_size 518 --batch_sizes 1 8 --threads 16
    python benchmarks/attention_bench.py --arch ViT-B-16 --image_size 224 --images 2 --repeats 1   # plumbing check

Paths: `original` (nn.MultiheadAttention untouched: its fused fast path under inference
mode), `sdpa` (FrozenCLIP's default, models/attention.py), `no_fastpath` (torch.backends.mha.set_fastpath_enabled(False):
nn.MultiheadAttention's Python path, which calls SDPA itself when no weights are asked for).

Every (path, batch size) runs in its own process, so that its peak RSS is its own; the
runs alternate (the order rotates each repeat), all in float32 under torch.inference_mode,
after one warm-up pass. "s/image" is the median over repeats; "user" and "sys" are the
process's CPU seconds per image (all threads); "rss before" is resident memory with the
model built (torch alone holds ~0.5 GB), "peak" the high-water mark during the warm-up and timed passes
(reset with /proc/self/clear_refs where Linux allows it, else the process's whole life),
"working" the largest peak minus memory before. "kernel"
is the attention operator the profiler saw in one block.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PATHS = ("original", "sdpa", "no_fastpath")
# Profiler names of the operators that do the attention, and what to call them in the table.
KERNELS = {
    "aten::_scaled_dot_product_flash_attention_for_cpu": "sdpa flash (cpu)",
    "aten::_scaled_dot_product_flash_attention": "sdpa flash",
    "aten::_scaled_dot_product_efficient_attention": "sdpa mem-efficient",
    "aten::_scaled_dot_product_cudnn_attention": "sdpa cudnn",
    "aten::_scaled_dot_product_attention_math": "sdpa math (materialises scores)",
    "aten::_native_multi_head_attention": "fused MHA (materialises scores)",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="ViT-L-14-336", help="open_clip architecture, e.g. ViT-B-16 or ViT-L-14-336")
    parser.add_argument("--image_size", type=int, default=518, help="input side in pixels (the grid is resized to it)")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 8], help="batch sizes to time")
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS, help="attention implementations")
    parser.add_argument("--images", type=int, default=None, help="images per timed run (default: the largest batch)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating rounds over all runs")
    parser.add_argument("--layers", type=int, nargs="+", default=None,
                        help="1-based layers tapped (default: the quarters, 6 12 18 24 for ViT-L)")
    parser.add_argument("--json", default=None, help="also write every run's measurements to this file")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: "path:batch_size"
    return parser


def build_frozen_vision_tower(arch: str):
    """The repository's FrozenCLIP around a random open_clip vision tower (no text tower: less memory)."""
    import open_clip
    from open_clip.model import _build_vision_tower

    from models.backbone import FrozenCLIP

    config = open_clip.get_model_config(arch)
    if config is None:
        raise SystemExit(f"unknown open_clip architecture {arch!r}")
    torch.manual_seed(0)
    holder = torch.nn.Module()
    holder.visual = _build_vision_tower(config["embed_dim"], config["vision_cfg"],
                                        quick_gelu=config.get("quick_gelu", False))
    return FrozenCLIP(holder)


def reset_peak_rss() -> bool:
    """Linux: writing 5 to clear_refs resets the high-water mark getrusage reports."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def current_rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def attention_kernel(frozen, tokens: torch.Tensor) -> str:
    """The attention operator one block runs on `tokens`, as the profiler records it."""
    from torch.profiler import ProfilerActivity, profile

    block = frozen.clip.visual.transformer.resblocks[0]
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        block(tokens)
    seen = {event.key for event in profiler.key_averages()}
    found = [name for name in KERNELS if name in seen]
    return ", ".join(KERNELS[name] for name in found) or "unrecognised"


def run_worker(args) -> dict:
    """One (path, batch size): build, warm up, time; the measurements as a dict."""
    path, batch_size = args.worker.split(":")
    batch_size = int(batch_size)
    if args.threads:
        torch.set_num_threads(args.threads)
    from models.attention import use_multihead_attention

    frozen = build_frozen_vision_tower(args.arch)  # FrozenCLIP runs SDPA itself
    if path != "sdpa":
        use_multihead_attention(frozen.clip)
    if path == "no_fastpath":
        torch.backends.mha.set_fastpath_enabled(False)
    depth = frozen.num_vision_layers
    layers = tuple(args.layers or sorted({max(1, depth * k // 4) for k in (1, 2, 3, 4)}))
    images = args.images or max(args.batch_sizes)
    pixels = torch.randn(images, 3, args.image_size, args.image_size, generator=torch.Generator().manual_seed(0))
    batches = list(pixels.split(batch_size))
    with torch.inference_mode():
        rss_before = current_rss_mb()
        peak_reset = reset_peak_rss()
        frozen.residual_streams(batches[0], layers)  # warm-up: allocator, thread pool, positional-embedding cache
        usage_start, clock_start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        for batch in batches:
            frozen.residual_streams(batch, layers)
        seconds = time.perf_counter() - clock_start
        usage_end = resource.getrusage(resource.RUSAGE_SELF)
        visual = frozen.clip.visual
        tokens = torch.cat([visual.class_embedding.expand(batch_size, 1, -1),
                            visual.conv1(batches[0]).flatten(2).transpose(1, 2)], dim=1)
        kernel = attention_kernel(frozen, tokens)
    return {"path": path, "batch_size": batch_size, "images": images, "tokens": tokens.shape[1],
            "threads": torch.get_num_threads(), "layers": layers, "seconds_per_image": seconds / images,
            "user_per_image": (usage_end.ru_utime - usage_start.ru_utime) / images,
            "sys_per_image": (usage_end.ru_stime - usage_start.ru_stime) / images,
            "rss_before_mb": rss_before, "peak_rss_mb": usage_end.ru_maxrss / 1024, "peak_reset": peak_reset,
            "kernel": kernel}


def run_one(args, path: str, batch_size: int) -> dict:
    command = [sys.executable, __file__, "--worker", f"{path}:{batch_size}", "--arch", args.arch,
               "--image_size", str(args.image_size), "--batch_sizes", *map(str, args.batch_sizes)]
    for flag, value in (("--images", args.images), ("--threads", args.threads)):
        if value:
            command += [flag, str(value)]
    if args.layers:
        command += ["--layers", *map(str, args.layers)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        raise SystemExit(f"run {path} batch {batch_size} failed:\n{result.stdout}\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def print_table(runs: list[dict], configs: list[tuple[str, int]]) -> None:
    first = runs[0]
    print(f"\n{first['tokens']} tokens, {first['threads']} torch threads, {first['images']} images per run, "
          f"layers {list(first['layers'])}, float32, inference_mode")
    def median_seconds(path, batch_size):
        return statistics.median(run["seconds_per_image"] for run in runs
                                 if run["path"] == path and run["batch_size"] == batch_size)

    original_batches = [batch_size for path, batch_size in configs if path == "original"]
    reference = median_seconds("original", min(original_batches)) if original_batches else None
    header = (f"{'path':<12} {'batch':>5} {'s/image':>8} {'min':>8} {'vs orig b1':>10} {'user':>7} {'sys':>6} "
              f"{'rss before':>10} {'peak rss':>9} {'working':>8}  kernel")
    print(header)
    print("-" * len(header))
    for path, batch_size in configs:
        mine = [run for run in runs if run["path"] == path and run["batch_size"] == batch_size]
        median = median_seconds(path, batch_size)
        speedup = f"{reference / median:.2f}x" if reference else "-"
        print(f"{path:<12} {batch_size:>5} {median:>8.3f} {min(r['seconds_per_image'] for r in mine):>8.3f} "
              f"{speedup:>10} {statistics.median(r['user_per_image'] for r in mine):>7.2f} "
              f"{statistics.median(r['sys_per_image'] for r in mine):>6.2f} "
              f"{statistics.median(r['rss_before_mb'] for r in mine):>8.0f}MB "
              f"{max(r['peak_rss_mb'] for r in mine):>7.0f}MB "
              f"{max(r['peak_rss_mb'] - r['rss_before_mb'] for r in mine):>6.0f}MB  {mine[0]['kernel']}")
    if not all(run["peak_reset"] for run in runs):
        print("note: /proc/self/clear_refs not writable: peak RSS includes model building")


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    if args.worker:
        print(json.dumps(run_worker(args)))
        return
    configs = [(path, batch_size) for path in args.paths for batch_size in sorted(args.batch_sizes)]
    runs = []
    for repeat in range(args.repeats):
        shift = repeat % len(configs)
        for path, batch_size in configs[shift:] + configs[:shift]:
            run = run_one(args, path, batch_size)
            print(f"repeat {repeat + 1}/{args.repeats}: {path:<12} batch {batch_size:>3}: "
                  f"{run['seconds_per_image']:.3f} s/image, peak {run['peak_rss_mb']:.0f} MB", flush=True)
            runs.append(run)
    print_table(runs, configs)
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
