"""Time `metrics.py` against the straightforward implementation, side by side, in one run.

Builds synthetic but realistic maps (smooth blobs where the masks are, smooth background
noise, several mask blobs per anomalous image, some touching the border, some normal
images), saves them as the .npz `test.py --save_maps` writes, then:

1. runs the real command line `python metrics.py MAPS.npz --json ...` in a subprocess,
   timed from process start to exit (imports included; the median of --repeats runs),
   with its peak memory;
2. runs the oracle of `tests/metrics_oracle.py` (scikit-learn on every pixel and the
   reference's 200-threshold AUPRO loop) in this process, timed without its imports;
3. prints both times and the ratio and checks that every value agrees;
4. times the torch path on a CUDA device when there is one;
5. runs the command line on one VisA-sized class (200 maps) and reports its peak memory.

    python benchmarks/metrics_bench.py [--maps 80] [--size 518] [--classes 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import metrics  # noqa: E402

TOLERANCE = 1e-6
MEMORY_LIMIT_BYTES = 4 * 1024**3


def synthetic_maps(n_maps: int, size: int, n_classes: int, seed: int = 0) -> dict:
    """Maps like a zero-shot detector's: smooth, higher on the defects, never perfect."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n_maps, size, size), dtype=np.uint8)
    labels = (np.arange(n_maps) % 3 != 0).astype(np.int64)  # a third of the images are normal
    rows, cols = np.ogrid[:size, :size]
    for index in np.flatnonzero(labels):
        for _ in range(rng.integers(1, 6)):
            radius_r, radius_c = rng.uniform(2, size / 10, 2)
            if rng.random() < 0.2:  # a defect cut by the border
                centre_r, centre_c = rng.choice([0, size - 1]), rng.uniform(0, size)
            else:
                centre_r, centre_c = rng.uniform(0, size, 2)
            blob = ((rows - centre_r) / radius_r) ** 2 + ((cols - centre_c) / radius_c) ** 2 <= 1
            masks[index][blob] = 1
    background = ndimage.gaussian_filter(rng.standard_normal((n_maps, size, size)).astype(np.float32),
                                         sigma=(0, 12, 12))
    background /= background.std()
    signal = ndimage.gaussian_filter(masks.astype(np.float32), sigma=(0, 6, 6))
    strength = rng.uniform(0.5, 3.0, size=(n_maps, 1, 1)).astype(np.float32)
    raw = 0.3 * background + strength * signal + 0.05 * rng.standard_normal((n_maps, size, size)).astype(np.float32)
    anomaly_maps = ndimage.gaussian_filter(raw, sigma=(0, 2, 2))
    anomaly_maps = (1 / (1 + np.exp(-anomaly_maps))).astype(np.float32)  # in (0, 1) like the reference's
    image_scores = (anomaly_maps.reshape(n_maps, -1).max(axis=1) + 0.1 * rng.standard_normal(n_maps)).astype(np.float64)
    class_names = np.array([f"class{index % n_classes}" for index in range(n_maps)])
    class_names = np.sort(class_names, kind="stable")  # classes contiguous, as test.py writes them
    return {
        "anomaly_maps": anomaly_maps,
        "image_scores": image_scores,
        "gt_masks": masks,
        "labels": labels,
        "cls_names": class_names,
        "img_paths": np.array([f"{name}/test/{index:03d}.png" for index, name in enumerate(class_names)]),
    }


# Starts the command line from a small process and reports its wall time and peak memory.
# (A child forked straight from this benchmark would count this process's large arrays
# in its peak resident memory; one forked from this small launcher does not.)
_LAUNCHER = """
import os, subprocess, sys, time
start = time.perf_counter()
child = subprocess.Popen(sys.argv[2:], stdout=subprocess.DEVNULL if sys.argv[1] == "quiet" else None)
_, status, usage = os.wait4(child.pid, 0)
seconds = time.perf_counter() - start
print(f"{seconds} {usage.ru_maxrss * 1024} {os.waitstatus_to_exitcode(status)}", file=sys.stderr)
"""


def run_cli_with_memory(maps_path: Path, json_path: Path, *extra: str, show: bool = False):
    """The real command line in a fresh process, timed from its start to its exit
    (imports included): (seconds, peak resident bytes)."""
    command = [sys.executable, str(REPO / "metrics.py"), str(maps_path), "--json", str(json_path), *extra]
    launcher = subprocess.run([sys.executable, "-c", _LAUNCHER, "show" if show else "quiet", *command],
                              stderr=subprocess.PIPE, text=True)
    *child_stderr, report = launcher.stderr.strip().splitlines()
    seconds, peak, returncode = report.split()
    if int(returncode):
        raise SystemExit(f"metrics.py failed ({returncode}):\n" + "\n".join(child_stderr))
    return float(seconds), int(peak)


def oracle_results(data: dict) -> dict:
    from metrics_oracle import oracle_class_metrics

    results = {}
    for cls_name in dict.fromkeys(data["cls_names"].tolist()):
        index = data["cls_names"] == cls_name
        results[cls_name] = oracle_class_metrics(data["anomaly_maps"][index], data["gt_masks"][index],
                                                 data["image_scores"][index], data["labels"][index])
    return results


def largest_difference(ours: dict, reference: dict) -> float:
    return max(abs(ours[cls][key] - reference[cls][key]) for cls in reference for key in metrics.METRIC_KEYS)


def time_gpu(data: dict, reference: dict) -> None:
    try:
        import torch
    except ImportError:
        print("no torch: GPU timing skipped")
        return
    if not torch.cuda.is_available():
        print("no CUDA device: GPU timing skipped")
        return
    device = torch.device("cuda")
    maps = torch.from_numpy(data["anomaly_maps"]).to(device)
    masks = torch.from_numpy(data["gt_masks"]).to(device)
    arguments = (maps, masks, data["image_scores"], data["labels"], data["cls_names"])
    metrics.evaluate(*arguments)  # warm-up: CUDA context, kernels
    for pro_mode in metrics.PRO_MODES:
        torch.cuda.synchronize()
        start = time.perf_counter()
        results = metrics.evaluate(*arguments, pro_mode=pro_mode)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        cpu = metrics.evaluate(data["anomaly_maps"], data["gt_masks"], data["image_scores"], data["labels"],
                               data["cls_names"], pro_mode=pro_mode)
        print(f"GPU ({torch.cuda.get_device_name(device)}), pro_mode={pro_mode}: {seconds:.3f} s "
              f"(maps already on the device); largest difference to the CPU path "
              f"{largest_difference(results, cpu):.2e}"
              + (f", to the oracle {largest_difference(results, reference):.2e}" if pro_mode == "official" else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--maps", type=int, default=80, help="number of maps (default 80)")
    parser.add_argument("--size", type=int, default=518, help="map side in pixels (default 518)")
    parser.add_argument("--classes", type=int, default=2, help="number of classes (default 2)")
    parser.add_argument("--memory-maps", type=int, default=200,
                        help="maps in the one-class memory check (default 200, a VisA class; 0 skips it)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="command-line runs, the median is reported (default 3; the oracle runs once)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="metrics-bench-") as workdir:
        workdir = Path(workdir)
        data = synthetic_maps(args.maps, args.size, args.classes, args.seed)
        maps_path = workdir / "maps.npz"
        np.savez(maps_path, **data)  # as test.py --save_maps writes it
        print(f"{args.maps} maps of {args.size}x{args.size} in {args.classes} classes, "
              f"{data['gt_masks'].any(axis=(1, 2)).sum()} with defects; saved {maps_path.stat().st_size / 1e6:.0f} MB")

        sys.stdout.flush()
        runs = [run_cli_with_memory(maps_path, workdir / "fast.json", show=index == 0)
                for index in range(args.repeats)]
        cli_seconds = float(np.median([seconds for seconds, _ in runs]))
        cli_peak = max(peak for _, peak in runs)
        fast = json.loads((workdir / "fast.json").read_text())
        exact_seconds, exact_peak = run_cli_with_memory(maps_path, workdir / "exact.json", "--pro_mode", "exact")

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the reference loop's own RuntimeWarnings
            start = time.perf_counter()
            with np.load(maps_path) as archive:
                loaded = {key: archive[key] for key in archive.files}
            reference = oracle_results(loaded)
            oracle_seconds = time.perf_counter() - start
        difference = largest_difference(fast, reference)

        print(f"oracle (scikit-learn + the reference's AUPRO loop, in-process, imports not counted): "
              f"{oracle_seconds:.2f} s")
        print(f"metrics.py command line (whole process, imports included): {cli_seconds:.2f} s "
              f"(median of {args.repeats} runs: {', '.join(f'{seconds:.2f}' for seconds, _ in runs)}), "
              f"peak memory {cli_peak / 2**20:.0f} MiB")
        print(f"speed-up: {oracle_seconds / cli_seconds:.1f}x")
        print(f"metrics.py --pro_mode exact (whole process): {exact_seconds:.2f} s, peak memory {exact_peak / 2**20:.0f} MiB")
        print(f"largest difference to the oracle over all classes and metrics: {difference:.2e} "
              f"({'OK' if difference <= TOLERANCE else 'FAIL'}, tolerance {TOLERANCE:g})")
        time_gpu(data, reference)

        if args.memory_maps:
            del data, loaded
            big = synthetic_maps(args.memory_maps, args.size, 1, args.seed + 1)
            noise = dict(big, anomaly_maps=np.random.default_rng(args.seed).standard_normal(
                big["anomaly_maps"].shape, dtype=np.float32))
            for kind, arrays in (("realistic maps", big), ("noise maps, every score distinct", noise)):
                big_path = workdir / "one_class.npz"
                np.savez(big_path, **arrays)
                for pro_mode in metrics.PRO_MODES:
                    seconds, peak = run_cli_with_memory(big_path, workdir / "one_class.json",
                                                        "--pro_mode", pro_mode)
                    verdict = "OK" if peak < MEMORY_LIMIT_BYTES else "over the 4 GiB budget"
                    print(f"one class of {args.memory_maps} {kind}, pro_mode={pro_mode}: {seconds:.2f} s, "
                          f"peak memory of the whole process {peak / 2**20:.0f} MiB ({verdict})")
        if difference > TOLERANCE:
            raise SystemExit(1)


if __name__ == "__main__":
    main()
