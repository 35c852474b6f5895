"""Evaluate ViP²-CLIP zero-shot on a dataset described by meta.json: maps, scores and metrics per class.

    python test.py --data_path data/visa --checkpoint_path mvtec_train_epoch_10.pth --save_path results/visa

    python test.py --smoke      # no weights or data needed: a synthetic end-to-end check

Settings (n_ctx, n_cls, topk, features_list, image_size, ...) are read from the
checkpoint when train.py wrote it; flags given explicitly override the ones that do
not change tensor shapes. The authors' released checkpoints record no settings, so
there the flags (or their defaults, the released scripts') apply.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import metrics
from dataset import AnomalyDataset, DatasetError, normalize_images
from models import SMOOTHING_SIGMA, ClipWeightsError, ViP2CLIP, load_clip
from models.checkpoint import CheckpointError, load_weights, read_checkpoint, resolve_config
from models.clip_loader import CLIP_WEIGHTS_HELP
from models.config import add_setting_overrides, setting_overrides
from utils import (
    PRECISIONS,
    HelpFormatter,
    atomic_savez,
    atomic_write_json,
    autocast,
    configure_precision,
    default_workers,
    gaussian_blur,
    memory_note,
    nan_to_none,
    non_negative_float,
    non_negative_int,
    peak_gpu_memory_gb,
    positive_int,
    reset_peak_gpu_memory,
    resolve_device,
    set_seed,
    setup_logger,
    shared_memory_warning,
)

RESULTS_FILE = "results.json"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--smoke", action="store_true",
                        help="generate a synthetic dataset and a tiny random CLIP, train one epoch, evaluate")
    data = parser.add_argument_group("data")
    data.add_argument("--data_path", help="dataset root holding meta.json (its test split is evaluated)")
    data.add_argument("--save_path", default="./results", help="folder for log.txt, results.json and figures")
    data.add_argument("--dataset", default=None,
                      help="a label for logs and result tables (default: the data folder's name; classes come "
                           "from meta.json)")
    model = parser.add_argument_group("model")
    model.add_argument("--checkpoint_path", help="ICA/FGP weights: train.py's epoch_{n}.pth or a released file")
    model.add_argument("--clip_weights", default="openai", help=CLIP_WEIGHTS_HELP)
    add_setting_overrides(model)
    evaluation = parser.add_argument_group("evaluation")
    evaluation.add_argument("--metrics", choices=tuple(metrics.LEVELS), default="image-pixel-level",
                            help="which metrics to compute")
    evaluation.add_argument("--pro_mode", choices=metrics.PRO_MODES, default="official",
                            help="AUPRO: the paper's 200-threshold protocol, or the exact MVTec AD definition")
    evaluation.add_argument("--sigma", type=non_negative_float, default=SMOOTHING_SIGMA,
                            help="sigma of the Gaussian smoothing of the maps, in pixels (0: none)")
    evaluation.add_argument("--save_maps", default=None, metavar="FILE.npz",
                            help="also write maps, scores, masks, labels, classes and paths (metrics.py re-scores it)")
    evaluation.add_argument("--visualize", action="store_true", help="write image | map | ground-truth panels per class")
    evaluation.add_argument("--vis_max", type=non_negative_int, default=8, help="panels per class with --visualize")
    run = parser.add_argument_group("run")
    run.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda' or 'cuda:N'")
    run.add_argument("--precision", choices=PRECISIONS, default="fp32",
                     help="backbone and heads precision; fp32 reproduces the reference")
    run.add_argument("--batch_size", type=positive_int, default=None, help="images per forward pass (default 32 on GPU, 8 on CPU)")
    run.add_argument("--num_workers", type=non_negative_int, default=None, help="data-loading processes (default: the CPUs available, at most 16)")
    run.add_argument("--seed", type=int, default=111, help="seed (evaluation is deterministic; kept for parity)")
    return parser


def loader_chunk(batch_size: int, workers: int) -> int:
    """Images per data-loading task: the largest divisor of the batch that lets every worker
    help fill it. One worker decoding a whole batch of large PNGs would leave the GPU idle
    for the first batch's full decoding time."""
    if workers <= 1:
        return batch_size
    share = -(-batch_size // workers)
    return max(d for d in range(1, share + 1) if batch_size % d == 0)


def device_batches(loader, batch_size: int, device: torch.device):
    """Join the loader's chunks, in order, into batches of `batch_size` (the last may be smaller) on `device`."""
    pending, count = [], 0
    for chunk in loader:
        pending.append({key: chunk[key].to(device, non_blocking=True) for key in ("img", "img_mask", "anomaly")})
        count += len(chunk["img"])
        while count >= batch_size:
            joined = {key: torch.cat([part[key] for part in pending]) for key in pending[0]}
            yield {key: values[:batch_size] for key, values in joined.items()}
            count -= batch_size
            pending = [{key: values[batch_size:] for key, values in joined.items()}] if count else []
    if pending:
        yield {key: torch.cat([part[key] for part in pending]) for key in pending[0]}


@torch.inference_mode()
def predict(model: ViP2CLIP, dataset: AnomalyDataset, device: torch.device, *, batch_size: int, workers: int,
            precision: str, sigma: float) -> dict:
    """Smoothed maps `[N, S, S]`, scores `[N]`, masks and labels, all on `device`, in dataset order."""
    size, count = model.config.image_size, len(dataset)
    maps = torch.empty((count, size, size), dtype=torch.float32, device=device)
    masks = torch.empty((count, size, size), dtype=torch.uint8, device=device)
    scores = torch.empty(count, dtype=torch.float32, device=device)
    labels = torch.empty(count, dtype=torch.long, device=device)
    loader = torch.utils.data.DataLoader(dataset, batch_size=loader_chunk(batch_size, workers), shuffle=False,
                                         num_workers=workers, pin_memory=device.type == "cuda")
    start = 0
    with tqdm(total=count, desc="inference", unit="img", leave=False) as progress:
        for batch in device_batches(loader, batch_size, device):
            stop = start + batch["img"].shape[0]
            with autocast(precision, device):
                raw_maps, raw_scores = model(normalize_images(batch["img"]))
            maps[start:stop] = gaussian_blur(raw_maps.float(), sigma)
            scores[start:stop] = raw_scores.float()
            masks[start:stop] = batch["img_mask"]
            labels[start:stop] = batch["anomaly"]
            progress.update(stop - start)
            start = stop
    return {"anomaly_maps": maps, "image_scores": scores, "gt_masks": masks, "labels": labels}


@torch.inference_mode()
def warm_up(model: ViP2CLIP, device: torch.device, precision: str) -> float:
    """On a GPU, one pass over two blank images before the clock starts: CUDA's one-time set-up
    (kernel loading, library handles) belongs with model loading, not with images/s."""
    if device.type != "cuda":
        return 0.0
    start = time.time()
    size = model.config.image_size
    with autocast(precision, device):
        model(torch.zeros((2, 3, size, size), device=device))
    torch.cuda.synchronize(device)
    return time.time() - start


def save_maps(path: str, outputs: dict, dataset: AnomalyDataset) -> None:
    atomic_savez(path, anomaly_maps=outputs["anomaly_maps"].cpu().numpy(),
                 image_scores=outputs["image_scores"].cpu().numpy(),
                 gt_masks=outputs["gt_masks"].cpu().numpy(),
                 labels=outputs["labels"].cpu().numpy(),
                 cls_names=np.array([s.cls_name for s in dataset.samples]),
                 img_paths=np.array([s.img_path for s in dataset.samples]))


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    if args.smoke:
        return smoke(args)
    if not args.data_path or not args.checkpoint_path:
        build_parser().error("--data_path and --checkpoint_path are required (or use --smoke)")
    save_path = Path(args.save_path)
    logger = setup_logger("vip2.test", save_path)
    set_seed(args.seed)
    device = resolve_device(args.device)
    configure_precision(args.precision)
    checkpoint = read_checkpoint(args.checkpoint_path)
    config = resolve_config(checkpoint, args.checkpoint_path, setting_overrides(args))
    dataset = AnomalyDataset(args.data_path, config.image_size, split="test", normalize=False)

    model = ViP2CLIP(load_clip(args.clip_weights), config)
    load_weights(model, checkpoint, args.checkpoint_path)
    model.to(device).eval()
    label = args.dataset or Path(args.data_path).name
    logger.info("evaluating %s: %d images in %d classes, on %s, precision %s", label, len(dataset),
                len(dataset.class_names), device, args.precision)
    logger.info("settings: %s", json.dumps(config.to_dict()))

    batch_size = args.batch_size or (32 if device.type == "cuda" else 8)
    workers = default_workers() if args.num_workers is None else args.num_workers
    shm_warning = shared_memory_warning(workers, loader_chunk(batch_size, workers), config.image_size)
    if shm_warning:
        logger.warning(shm_warning)
    warm_up_seconds = warm_up(model, device, args.precision)
    if warm_up_seconds:
        logger.info("GPU warm-up pass: %.1f s", warm_up_seconds)
    reset_peak_gpu_memory(device)
    start = time.time()
    outputs = predict(model, dataset, device, batch_size=batch_size, workers=workers, precision=args.precision,
                      sigma=args.sigma)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    inference_seconds = time.time() - start
    saving_seconds = 0.0
    if args.save_maps:
        save_maps(args.save_maps, outputs, dataset)
        saving_seconds = time.time() - start - inference_seconds
        logger.info("maps written to %s (%.1f s, not counted below)", args.save_maps, saving_seconds)

    cls_names = [s.cls_name for s in dataset.samples]
    results = metrics.evaluate(outputs["anomaly_maps"], outputs["gt_masks"], outputs["image_scores"],
                               outputs["labels"], cls_names, pro_mode=args.pro_mode,
                               keys=metrics.LEVELS[args.metrics], progress=True)
    total_seconds = time.time() - start - saving_seconds
    stats = {"images": len(dataset), "seconds": total_seconds, "images_per_second": len(dataset) / total_seconds,
             "inference_seconds": inference_seconds, "metrics_seconds": total_seconds - inference_seconds,
             "save_maps_seconds": saving_seconds, "warm_up_seconds": warm_up_seconds,
             "precision": args.precision, "batch_size": batch_size, "workers": workers, "device": str(device),
             "peak_gpu_memory_gb": peak_gpu_memory_gb(device)}
    logger.info("\n%s", metrics.format_table(results, keys=metrics.LEVELS[args.metrics]))
    logger.info("%d images in %.1f s from first image to last metric (%.1f images/s): model and smoothing "
                "%.1f s, metrics %.1f s%s", len(dataset), total_seconds, stats["images_per_second"],
                inference_seconds, stats["metrics_seconds"], memory_note(device))
    atomic_write_json(nan_to_none({"dataset": label, "checkpoint": str(args.checkpoint_path),
                                   "pro_mode": args.pro_mode, "settings": config.to_dict(),
                                   "metrics": results, "run": stats}), save_path / RESULTS_FILE)
    if args.visualize:
        import visualization

        written = visualization.save_test_panels(outputs, dataset, save_path / "visualization",
                                                 max_per_class=args.vis_max)
        logger.info("%d figures written under %s", written, save_path / "visualization")
    return results


SMOKE_IMAGE_SIZE = 112
SMOKE_LAYERS = ("1", "2", "3", "4")


def smoke(args) -> dict:
    """Synthetic data + tiny random CLIP: train one epoch, then evaluate, in a temporary folder."""
    import train
    from generate_dataset_json.synthetic import make_synthetic_dataset
    from models.clip_loader import random_clip_state_dict

    with tempfile.TemporaryDirectory(prefix="vip2_smoke_") as folder:
        folder = Path(folder)
        make_synthetic_dataset(folder / "data", seed=0)
        torch.save(random_clip_state_dict("tiny", seed=0), folder / "clip_tiny.pt")
        common = ["--clip_weights", str(folder / "clip_tiny.pt"), "--image_size", str(SMOKE_IMAGE_SIZE),
                  "--features_list", *SMOKE_LAYERS, "--device", args.device, "--num_workers", "0"]
        checkpoint = train.main(["--train_data_path", str(folder / "data"), "--save_path", str(folder / "ckpt"),
                                 "--epoch", "1", "--dataset", "synthetic", *common])
        results = main(["--data_path", str(folder / "data"), "--checkpoint_path", str(checkpoint),
                        "--save_path", str(Path(args.save_path) / "smoke"), "--dataset", "synthetic",
                        "--device", args.device, "--num_workers", "0",
                        "--clip_weights", str(folder / "clip_tiny.pt")]
                       + (["--visualize"] if args.visualize else []))
    print("smoke run passed: the install trains and evaluates end to end (random weights, so the numbers mean nothing)")
    return results


def run_cli() -> None:
    try:
        main()
    except (DatasetError, CheckpointError, ClipWeightsError, ValueError) as error:
        sys.exit(f"test.py: {error}")


if __name__ == "__main__":
    run_cli()
