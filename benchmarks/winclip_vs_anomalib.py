"""This project's WinCLIP against anomalib's WinClipModel on the same CLIP and images, side by side on the CPU.

    python benchmarks/winclip_vs_anomalib.py --anomalib_python /path/venv-anomalib/bin/python \
        --open_clip_path /path/open_clip_2.24.0 --arch ViT-B-16-plus-240 --images 4 --repeats 3

Each side runs in its own process (anomalib's under the interpreter that has it, with an open_clip
from inside its pin on PYTHONPATH: docs/SPEC_WINCLIP.md §9), alternating, on the same random CLIP
weights (`--arch`: an open_clip name, or `tiny`, the fixture's CLIP at its 112 px) and the same
normalised images. Timed: the text ensemble of one class (once) and `--iterations` forward passes of
one batch of `--images` images after a warm-up pass. Printed: wall and CPU seconds per image of each side, the
ratio anomalib / this project, the largest map and score difference between the two, the CPU's
kernel level and the load average. Skipped with a note when the anomalib interpreter is missing.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "winclip_tiny"
CLASS_NAME = "object"


def prepare(work: Path, arch: str, images: int, seed: int = 0) -> tuple[int, Path]:
    """Float32 weights as a state dict file and the normalised images; returns the input size."""
    import torch

    sys.path.insert(0, str(ROOT))
    from models.base import normalize_images
    from models.clip_loader import random_clip_state_dict, read_clip_state_dict

    if arch == "tiny":
        state, size = read_clip_state_dict(FIXTURE / "clip_tiny.npz"), 112
    else:
        state = random_clip_state_dict(arch, seed=seed)
        size = int(state["visual.positional_embedding"].shape[0] - 1) ** 0.5 * state["visual.conv1.weight"].shape[-1]
    torch.save({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, work / "clip.pt")
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (images, 3, int(size), int(size)), dtype=torch.uint8, generator=generator)
    torch.save(normalize_images(pixels), work / "images.pt")
    return int(size), work


def _timed(model_forward, images, iterations: int) -> tuple[float, float]:
    """(wall, CPU) seconds per image: the CPU time of the process's threads is less moved by other load."""
    model_forward(images)  # warm-up
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(iterations):
        model_forward(images)
    count = iterations * images.shape[0]
    return (time.perf_counter() - start) / count, (time.process_time() - cpu) / count


def worker(side: str, work: Path, arch: str, size: int, iterations: int, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    images = torch.load(work / "images.pt")
    state = torch.load(work / "clip.pt")
    if side == "ours":
        sys.path.insert(0, str(ROOT))
        from models import create_model
        from models.clip_loader import build_clip

        model = create_model("winclip", clip=build_clip(state, quick_gelu=False), image_size=size)
        start = time.perf_counter()
        model.bind_class(CLASS_NAME)
        text_seconds = time.perf_counter() - start
        forward = model.predict
    else:
        import open_clip
        from anomalib.models.image.winclip import torch_model

        name = arch
        if arch == "tiny":
            name = "winclip-tiny"
            (work / f"{name}.json").write_text((FIXTURE / "model_config.json").read_text())
            open_clip.add_model_config(work / f"{name}.json")
        torch_model.BACKBONE, torch_model.PRETRAINED = name, str(work / "clip.pt")
        model = torch_model.WinClipModel().eval()
        start = time.perf_counter()
        model.setup(CLASS_NAME)
        text_seconds = time.perf_counter() - start

        def forward(batch):
            result = model(batch)
            return result.anomaly_map, result.pred_score
    with torch.no_grad():
        seconds, cpu_seconds = _timed(forward, images, iterations)
        maps, scores = forward(images)
    torch.save({"maps": maps, "scores": scores}, work / f"out_{side}.pt")
    print(json.dumps({"seconds_per_image": seconds, "cpu_seconds_per_image": cpu_seconds, "text_seconds": text_seconds,
                      "capability": torch.backends.cpu.get_cpu_capability(), "threads": threads}))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--anomalib_python", default="/work/venv-anomalib/bin/python",
                        help="an interpreter that imports anomalib")
    parser.add_argument("--open_clip_path", default=None, help="folder holding an open_clip inside anomalib's pin")
    parser.add_argument("--arch", default="ViT-B-16-plus-240", help="an open_clip model name, or tiny")
    parser.add_argument("--images", type=int, default=4, help="images in the timed batch")
    parser.add_argument("--iterations", type=int, default=2, help="timed forward passes per process")
    parser.add_argument("--repeats", type=int, default=2, help="alternating rounds of the two processes")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default=None, help="also write the timings and figures as JSON")
    parser.add_argument("--worker", choices=("ours", "anomalib"), help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args.worker, args.work, args.arch, args.size, args.iterations, args.threads)
    if not Path(args.anomalib_python).is_file():
        print(f"skipped: no anomalib interpreter at {args.anomalib_python}")
        return None
    import torch

    with tempfile.TemporaryDirectory(prefix="winclip_bench_") as folder:
        size, work = prepare(Path(folder), args.arch, args.images)
        common = ["--work", str(work), "--arch", args.arch, "--size", str(size), "--iterations",
                  str(args.iterations), "--threads", str(args.threads)]
        env = dict(os.environ, PYTHONPATH=args.open_clip_path or "", OMP_NUM_THREADS=str(args.threads))
        runs = {"ours": [sys.executable], "anomalib": [args.anomalib_python]}
        timings: dict = {side: [] for side in runs}
        for repeat in range(args.repeats):
            for side in (list(runs) if repeat % 2 == 0 else list(reversed(runs))):
                result = subprocess.run([*runs[side], __file__, "--worker", side, *common], capture_output=True,
                                        text=True, env=env if side == "anomalib" else dict(os.environ), cwd=ROOT)
                if result.returncode:
                    raise SystemExit(f"{side} failed:\n{result.stderr[-3000:]}")
                timings[side].append(json.loads(result.stdout.strip().splitlines()[-1]))
                print(side, timings[side][-1], flush=True)
        ours, theirs = torch.load(work / "out_ours.pt"), torch.load(work / "out_anomalib.pt")
    best = {side: min(t["seconds_per_image"] for t in timings[side]) for side in timings}
    cpu = {side: min(t["cpu_seconds_per_image"] for t in timings[side]) for side in timings}
    title = (f"{args.arch} at {size} px, batch {args.images}, {args.threads} threads, CPU kernels "
             f"{timings['ours'][0]['capability']}, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"\n{title}")
    print(f"seconds per image (best of {args.repeats}): this project {best['ours']:.3f}, anomalib "
          f"{best['anomalib']:.3f}; anomalib / this project = {best['anomalib'] / best['ours']:.2f}")
    print(f"CPU seconds per image (both threads): this project {cpu['ours']:.3f}, anomalib {cpu['anomalib']:.3f}; "
          f"anomalib / this project = {cpu['anomalib'] / cpu['ours']:.2f}")
    print(f"text ensemble of one class: this project {min(t['text_seconds'] for t in timings['ours']):.2f} s, "
          f"anomalib {min(t['text_seconds'] for t in timings['anomalib']):.2f} s")
    differences = {"maps": float((ours["maps"] - theirs["maps"]).abs().max()),
                   "scores": float((ours["scores"] - theirs["scores"]).abs().max())}
    print(f"largest difference: maps {differences['maps']:.2e}, scores {differences['scores']:.2e}")
    if args.output:
        sys.path.insert(0, str(ROOT))
        from utils import atomic_write_json

        atomic_write_json({"title": title, "timings": timings, "best_seconds_per_image": best,
                           "best_cpu_seconds_per_image": cpu, "differences": differences,
                           "when": time.strftime("%Y-%m-%d")}, args.output)
    return None


if __name__ == "__main__":
    main()
