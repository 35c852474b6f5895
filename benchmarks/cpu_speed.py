"""This project's test.py (and predict.py) against the authors' per-image loop, side by side on the CPU.

    python benchmarks/cpu_speed.py                                   # every method, ViT-B/16 and ViT-L/14@336
    python benchmarks/cpu_speed.py --models vcp --archs ViT-L-14-336 --images 16 --output cpu.json

For each method and architecture (random weights, 518 px input, synthetic PNGs of
--image_px in two classes), in one run, alternating: `test.py` as a user runs it, the
reference's way (`benchmarks/reference_loop.py`: batch 1, fp32, nn.MultiheadAttention,
scipy smoothing per image, scikit-learn and the reference's AUPRO loop), `predict.py` (on the
test images, overlays written), and with `--bf16` also `test.py --precision bf16` (opt-in:
autocast moves the maps by ~2e-3, docs/PERFORMANCE.md).
Each is a fresh process, timed from its start to its exit, with its own peak resident
memory. Reported: images/s end to end, model seconds per image, peak RSS, and the ratios
the issues ask for (model step >= 1.5x faster per image, end to end >= 2x for ViT-L,
peak RSS <= the loop's + 1 GB; VCP-CLIP end to end >= 5x).
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
sys.path.insert(0, str(ROOT))

# A launcher process so that each run's peak RSS is its own (see metrics_bench.py).
_LAUNCHER = """
import resource, subprocess, sys, time
start = time.perf_counter()
child = subprocess.run(sys.argv[1:], capture_output=True, text=True)
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # its only child's peak
print(child.stdout[-2000:])
print(child.stderr[-3000:], file=sys.stderr)
print(f"@@ {seconds} {peak} {child.returncode}", file=sys.stderr)
"""


def launch(command: list) -> tuple[float, int, str]:
    """(wall seconds, peak RSS bytes, stdout) of one command in a fresh process."""
    result = subprocess.run([sys.executable, "-c", _LAUNCHER, *map(str, command)], capture_output=True, text=True,
                            cwd=ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    *_, report = result.stderr.strip().splitlines()
    _, seconds, peak, code = report.split()
    if int(code):
        raise SystemExit(f"{command[1]} failed:\n{result.stderr[-3000:]}")
    return float(seconds), int(peak), result.stdout


def prepare(work: Path, method: str, arch: str, images: int, image_px: int, image_size: int):
    """Synthetic data, random CLIP weights (float16, like OpenAI's) and a freshly initialised checkpoint (None for a
    training-free method)."""
    import torch

    from generate_dataset_json.synthetic import make_synthetic_dataset
    from models import create_model, get_method
    from models.checkpoint import save_checkpoint
    from models.clip_loader import build_clip, random_clip_state_dict

    data = work / f"data_{images}_{image_px}"
    if not (data / "meta.json").is_file():
        per_class = images // 2
        make_synthetic_dataset(data, classes=("a_synth", "b_synth"), n_normal=per_class // 2,
                               n_anomalous=per_class - per_class // 2, image_size=(image_px, image_px), seed=0)
    weights = work / f"clip_{arch}.pt"
    if not weights.is_file():
        torch.save({k: v.half() if v.is_floating_point() else v for k, v in
                    random_clip_state_dict(arch, seed=0).items()}, weights)
    if not get_method(method).trains:
        return data, weights, None
    checkpoint = work / f"{method}_{arch}_{image_size}.pth"
    if not checkpoint.is_file():
        torch.manual_seed(0)
        quick_gelu = get_method(method).model_class().quick_gelu
        clip = build_clip(torch.load(weights, weights_only=True), quick_gelu=quick_gelu)
        depth = len(clip.visual.transformer.resblocks)  # each method's default layers are ViT-L's (24 blocks)
        defaults = get_method(method).config()
        layers = ({"features_list": tuple(depth * layer // 24 for layer in defaults.features_list)}
                  if hasattr(defaults, "features_list") else {})  # AdaCLIP's follow the tower by themselves
        save_checkpoint(checkpoint, create_model(method, clip=clip, image_size=image_size, **layers), epoch=0)
    return data, weights, checkpoint


def class_flag(method: str) -> list[str]:
    """A class-conditioned method (APRIL-GAN's prompts name the class) runs predict.py bound to one class."""
    from models import get_method

    return ["--class_name", "a_synth"] if get_method(method).model_class().class_conditioned else []


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    from models import method_names

    parser.add_argument("--models", nargs="+", default=list(method_names()), choices=method_names(),
                        help="registered methods (default: all)")
    parser.add_argument("--archs", nargs="+", default=["ViT-B-16", "ViT-L-14-336"])
    parser.add_argument("--images", type=int, default=16, help="images in two classes")
    parser.add_argument("--image_size", type=int, default=518, help="model input size (recorded in the checkpoint)")
    parser.add_argument("--image_px", type=int, default=1024, help="side of the generated PNGs")
    parser.add_argument("--repeats", type=int, default=1, help="alternating rounds of the runs")
    parser.add_argument("--skip_predict", action="store_true")
    parser.add_argument("--bf16", action="store_true", help="also time test.py --precision bf16")
    parser.add_argument("--workdir", default=None, help="keep data, weights and checkpoints here for the next run")
    parser.add_argument("--output", default=None, help="also write the rows as JSON")
    args = parser.parse_args(argv)
    from tabulate import tabulate

    rows = []
    with tempfile.TemporaryDirectory(prefix="zsas_cpu_") as temporary:
        work = Path(args.workdir or temporary)
        work.mkdir(parents=True, exist_ok=True)
        for method in args.models:
            for arch in args.archs:
                data, weights, checkpoint = prepare(work, method, arch, args.images, args.image_px, args.image_size)
                model = ["--checkpoint_path", checkpoint] if checkpoint else ["--image_size", args.image_size]
                common = ["--model", method, *model, "--clip_weights", weights]
                runs = {"test.py": [ROOT / "test.py", "--data_path", data, *common, "--device", "cpu",
                                    "--save_path", work / "out", "--overwrite"],
                        "reference loop": [ROOT / "benchmarks" / "reference_loop.py", "--data_path", data, *common]}
                if args.bf16:
                    runs["test.py bf16"] = [*runs["test.py"], "--precision", "bf16"]
                if not args.skip_predict:
                    runs["predict.py"] = [ROOT / "predict.py", str(data / "*" / "test"), "--out", work / "predicted",
                                          "--overwrite", *common, "--device", "cpu", *class_flag(method)]
                for repeat in range(args.repeats):
                    order = list(runs) if repeat % 2 == 0 else list(reversed(runs))
                    for name in order:
                        seconds, peak, stdout = launch([sys.executable, *runs[name]])
                        row = {"method": method, "arch": arch, "run": name, "repeat": repeat, "images": args.images,
                               "wall_s": seconds, "images_per_s": args.images / seconds, "peak_rss_gb": peak / 2**30}
                        if name.startswith("test.py"):
                            stats = json.loads((work / "out" / "results.json").read_text())["run"]
                            row.update(model_s_per_image=stats["inference_seconds"] / stats["images"],
                                       metrics_s=stats["metrics_seconds"])
                        elif name == "reference loop":
                            stats = json.loads(stdout.strip().splitlines()[-1])
                            row.update(model_s_per_image=stats["model_seconds"] / stats["images"],
                                       metrics_s=stats["metrics_seconds"])
                        rows.append(row)
                        print(f"{method} {arch} {name}: {seconds:.1f} s, peak {peak / 2**30:.2f} GB", flush=True)
    import torch

    title = f"CPU: {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads; " \
            f"{args.images} PNGs of {args.image_px} px, {args.image_size} px input, random weights, fp32 unless said"
    print(f"\n{title}")
    print(tabulate(rows, headers="keys", floatfmt=".2f"))
    summary = []
    for method in args.models:
        for arch in args.archs:
            def best(run, key, pick=min):
                values = [r[key] for r in rows if (r["method"], r["arch"], r["run"]) == (method, arch, run)]
                return pick(values) if values else float("nan")
            summary.append({"method": method, "arch": arch,
                            "model step speed-up": best("reference loop", "model_s_per_image")
                            / best("test.py", "model_s_per_image"),
                            "end-to-end speed-up": best("reference loop", "wall_s") / best("test.py", "wall_s"),
                            "peak RSS over the loop (GB)": best("test.py", "peak_rss_gb")
                            - best("reference loop", "peak_rss_gb")})
            if args.bf16:
                summary[-1].update({
                    "bf16 model step speed-up": best("reference loop", "model_s_per_image")
                    / best("test.py bf16", "model_s_per_image"),
                    "bf16 end-to-end speed-up": best("reference loop", "wall_s") / best("test.py bf16", "wall_s")})
    print(tabulate(summary, headers="keys", floatfmt=".2f"))
    if args.output:
        from utils import atomic_write_json

        atomic_write_json({"title": title, "rows": rows, "summary": summary, "when": time.strftime("%Y-%m-%d")},
                          args.output)


if __name__ == "__main__":
    main()
