"""Evaluate a method zero-shot on a dataset described by a meta file: maps, scores and metrics per class.

    python test.py --data_path data/visa --checkpoint_path mvtec_train_epoch_10.pth --save_path results/visa
    python test.py --model vcp --data_path data --dataset mvtec --checkpoint_path train_visa.pth \\
        --save_path results/vcp/mvtec

    python test.py --smoke      # no weights or data needed: a synthetic end-to-end check (add --model vcp)

Settings (prompt lengths, layers, image size, ...) are read from the checkpoint when
train.py wrote it; flags given explicitly override those that do not change tensor
shapes. The authors' released checkpoints record no settings, so there the flags (or
their defaults, the released scripts') apply. Every output path is checked before the
model loads, and a folder holding an earlier run's results is refused (`--overwrite`).
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import metrics
from models import fewshot, get_method
from models.settings import add_method_flag, add_setting_flags, method_from_argv, values_from_args
from engine.cli import add_checkpoint_flags, add_mask_flags, add_overwrite_flag, add_run_flags, checkpoint_problem
from utils import (HelpFormatter, OutputError, check_output_file, check_output_folder, non_negative_int, run_cli,
                   staging_folder, swap_in)

RESULTS_FILE = "results.json"
INTERRUPT_NOTE: dict = {}  # what Ctrl-C's one line adds (set once a run replaces an earlier one)
FIGURES = "visualization"


def build_parser(method_name: str) -> argparse.ArgumentParser:
    method = get_method(method_name)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_method_flag(parser, method_name)
    parser.add_argument("--smoke", action="store_true",
                        help="generate a synthetic dataset and a tiny random CLIP, train one epoch, evaluate, in a "
                             "temporary folder (writes nothing else)")
    data = parser.add_argument_group("data")
    data.add_argument("--data_path", help="dataset root holding meta.json or meta_<dataset>.json (its test split is "
                                          "evaluated)")
    data.add_argument("--dataset", default=None,
                      help="picks meta_<dataset>.json in the root (the VCP-CLIP authors' layout) and labels logs and "
                           "tables (default: the root's meta.json, labelled with the folder's name)")
    data.add_argument("--save_path", default="./results", help="folder for log.txt, results.json and figures")
    add_mask_flags(data)
    model = parser.add_argument_group(f"model ({method.title}; settings a checkpoint records are read from it)")
    add_checkpoint_flags(model)
    add_setting_flags(model, method.config, "test")
    fewshot.add_flags(parser)
    evaluation = parser.add_argument_group("evaluation")
    evaluation.add_argument("--metrics", choices=tuple(metrics.LEVELS), default="image-pixel-level",
                            help="which metrics to compute")
    metrics.add_pro_flags(evaluation)
    evaluation.add_argument("--save_maps", default=None, metavar="FILE.npz",
                            help="also write maps, scores, masks, labels, classes and paths (metrics.py re-scores it)")
    evaluation.add_argument("--visualize", action="store_true", help="write image | map | ground-truth panels per class")
    evaluation.add_argument("--vis_max", type=non_negative_int, default=8, help="panels per class with --visualize")
    run = parser.add_argument_group("run")
    add_run_flags(run)
    add_overwrite_flag(run, "an earlier run's results in --save_path and an existing --save_maps file")
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    return build_parser(method_from_argv(argv)).parse_args(argv)


def check_outputs(args) -> list[Path]:
    """Refuse, before any work, outputs that cannot be written or would mix with an earlier run's;
    returns the earlier run's files that --overwrite replaces."""
    save_path = check_output_folder(args.save_path, "--save_path")
    if args.save_maps:
        check_output_file(args.save_maps, "--save_maps", overwrite=args.overwrite)
    earlier = [save_path / name for name in (RESULTS_FILE, FIGURES) if (save_path / name).exists()]
    if earlier:  # maps an earlier run saved beside its results belong to it
        earlier += sorted(p for p in save_path.glob("*.npz") if not args.save_maps or p.resolve() != Path(
            args.save_maps).resolve())
    if earlier and not args.overwrite:
        names = ", ".join(p.name for p in earlier)
        raise OutputError(f"--save_path {save_path} already holds an earlier run's results ({names}); choose "
                          "another folder, or pass --overwrite to replace them")
    # A log without results (a run that stopped early) is appended to, unless the folder is being replaced.
    return earlier + ([save_path / "log.txt"] if earlier and (save_path / "log.txt").exists() else [])


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.smoke:
        return smoke(args)
    method = get_method(args.model)
    if not args.data_path:
        build_parser(args.model).error("--data_path is required (or use --smoke)")
    problem = checkpoint_problem(method, args.checkpoint_path, "test.py")
    if problem:
        build_parser(args.model).error(problem + " (or use --smoke)")
    earlier = check_outputs(args)

    from engine import distributed

    with distributed.session(args.device) as (context, device):
        return evaluate(args, method, earlier, context, device)


def evaluate(args, method, earlier, context, device) -> dict | None:
    """Every rank infers its shard; rank 0 gathers, scores and writes (returns None elsewhere)."""
    from dataset import AnomalyDataset
    from deploy import image_io
    from engine.devices import configure_precision
    from models import create_model, resolve_config
    from models.checkpoint import read_checkpoint
    from utils import hold_log_records

    hold_log_records()  # what the checks below say reaches log.txt, which cannot exist before they pass
    image_io.set_max_pixels(args.max_image_pixels)
    checkpoint = read_checkpoint(args.checkpoint_path) if args.checkpoint_path else None  # none: training-free
    settings = values_from_args(args, method.config)
    config = resolve_config(method.name, checkpoint, args.checkpoint_path, **settings)  # overrides logged once, here
    dataset = AnomalyDataset(args.data_path, config.image_size, split="test", dataset=args.dataset,
                             mask_threshold=args.mask_threshold, max_pixels=args.max_image_pixels)
    configure_precision(args.precision)
    model = create_model(method.name, clip_weights=args.clip_weights, checkpoint=checkpoint,
                         checkpoint_name=args.checkpoint_path, device=device, config=config, **settings)
    model.checkpoint_path = args.checkpoint_path
    references = fewshot.prepare(model, args, dataset, device)

    save_path = Path(args.save_path)
    # Replacing an earlier run (--overwrite): this run writes beside it and swaps its files in only once they
    # are complete, so an interrupted or failed run leaves the earlier results as they were.
    staging = staging_folder(save_path) if context.is_main and earlier else None
    if staging is not None:
        INTERRUPT_NOTE["note"] = f"the earlier results in {save_path} are unchanged"
    try:
        return _evaluate(args, method, config, checkpoint, dataset, model, save_path, staging, earlier, context,
                         device, references)
    except BaseException:
        if staging is not None and staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
        raise


def _evaluate(args, method, config, checkpoint, dataset, model, save_path, staging, earlier, context, device,
              references=None):
    import torch

    from engine import distributed
    from engine.inference import loader_chunk, predict_dataset, save_maps, warm_up
    from engine.devices import (default_batch_size, loader_workers, log_machine, memory_note, peak_gpu_memory_gb,
                                reset_peak_gpu_memory, shared_memory_warning)
    from utils import atomic_write_json, nan_to_none, setup_logger

    out = staging or save_path  # where this run's files go until they are complete
    logger = setup_logger("zsas.test", out if context.is_main else None, quiet=not context.is_main)
    label = args.dataset or Path(args.data_path).name
    processes = f", {context.world_size} processes" if context.enabled else ""
    logger.info("evaluating %s with %s: %d images in %d classes from %s, on %s%s, precision %s", label,
                method.title, len(dataset), len(dataset.class_names), dataset.meta_path, device, processes,
                args.precision)
    logger.info("settings: %s", json.dumps(model.recorded_config()))
    log_machine(logger, args.precision, device)
    if references is not None:
        logger.info("few-shot references: %s", json.dumps(references))

    batch_size = args.batch_size or default_batch_size(device)
    workers = loader_workers(args.num_workers, device)
    shm_warning = shared_memory_warning(workers, loader_chunk(batch_size, workers), config.image_size)
    if shm_warning:
        logger.warning(shm_warning)
    warm_up_seconds = warm_up(model, device, args.precision)
    if warm_up_seconds:
        logger.info("GPU warm-up pass: %.1f s", warm_up_seconds)
    reset_peak_gpu_memory(device)
    start = time.time()
    shard = [i for batch in distributed.batches_of_rank(len(dataset), batch_size, context) for i in batch]
    outputs = predict_dataset(model, dataset, device, batch_size=batch_size, workers=workers,
                              precision=args.precision, indices=shard if context.enabled else None)
    outputs = distributed.gather_to_main(outputs, context, len(dataset), batch_size)
    if not context.is_main:
        return None
    cls_names = [s.cls_name for s in dataset.samples]
    outputs = model.finalize(outputs, cls_names)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    inference_seconds = time.time() - start
    keys = metrics.LEVELS[args.metrics]
    results = metrics.evaluate(outputs["anomaly_maps"], outputs["gt_masks"], outputs["image_scores"],
                               outputs["labels"], cls_names, pro_mode=args.pro_mode, keys=keys, progress=True,
                               pro_fpr_limit=args.pro_fpr_limit)
    total_seconds = time.time() - start
    stats = {"images": len(dataset), "seconds": total_seconds, "images_per_second": len(dataset) / total_seconds,
             "inference_seconds": inference_seconds, "metrics_seconds": total_seconds - inference_seconds,
             "warm_up_seconds": warm_up_seconds, "precision": args.precision, "batch_size": batch_size,
             "workers": workers, "device": str(device), "processes": context.world_size,
             "peak_gpu_memory_gb": peak_gpu_memory_gb(device)}
    logger.info("\n%s", metrics.format_table(results, keys=keys))
    logger.info("%d images in %.1f s from first image to last metric (%.1f images/s): model and smoothing "
                "%.1f s, metrics %.1f s%s", len(dataset), total_seconds, stats["images_per_second"],
                inference_seconds, stats["metrics_seconds"], memory_note(device))
    atomic_write_json(nan_to_none({"method": method.name, "dataset": label, "checkpoint": str(args.checkpoint_path or ""),
                                   "pro_mode": args.pro_mode, "pro_fpr_limit": args.pro_fpr_limit,
                                   "settings": model.recorded_config(),
                                   "test_settings": {"sigma": config.sigma, **_test_only(model)},
                                   "metrics": results, "run": stats,
                                   **({"references": references} if references is not None else {})}),
                      out / RESULTS_FILE)
    failures = []  # the metrics are safe in results.json now; what follows may fail without losing them
    if args.save_maps:
        try:
            saving = time.time()
            save_maps(args.save_maps, outputs, dataset.samples)
            logger.info("maps written to %s (%.1f s, not counted above)", args.save_maps, time.time() - saving)
        except OSError as error:
            failures.append(f"--save_maps {args.save_maps}: {error}")
    if args.visualize:
        from reporting import visualization

        try:
            written = visualization.save_test_panels(outputs, dataset, out / FIGURES, max_per_class=args.vis_max)
            logger.info("%d figures written under %s", written, save_path / FIGURES)
        except OSError as error:
            failures.append(f"--visualize into {save_path / FIGURES}: {error}")
    if staging is not None:
        swap_in(staging, save_path, earlier)
        logger.info("the earlier run's results in %s are replaced (--overwrite): %s", save_path,
                    ", ".join(p.name for p in earlier))
    if failures:
        raise OutputError("the metrics are in " + str(save_path / RESULTS_FILE) + ", but " + "; ".join(failures))
    return results


def _test_only(model) -> dict:
    """Test-time settings other than sigma (VCP-CLIP's fusion weight and score pixels)."""
    from models import settings

    values = settings.to_dict(model.config)
    return {f.name: values[f.name] for f in settings.fields_of(type(model.config), ("test",)) if f.name != "sigma"}


SMOKE_IMAGE_SIZE = 112
SMOKE_LAYERS = ("1", "2", "3", "4")


def smoke(args) -> dict:
    """Synthetic data + tiny random CLIP: train one epoch, then evaluate, all in a temporary folder."""
    import torch

    import dataclasses

    import train
    from generate_dataset_json.synthetic import make_synthetic_dataset
    from models.clip_loader import random_clip_state_dict

    with tempfile.TemporaryDirectory(prefix="zsas_smoke_") as folder:
        folder = Path(folder)
        make_synthetic_dataset(folder / "data", seed=0)
        torch.save(random_clip_state_dict("tiny", seed=0), folder / "clip_tiny.pt")
        has_layers = any(f.name == "features_list" for f in dataclasses.fields(get_method(args.model).config))
        layers = ["--features_list", *SMOKE_LAYERS] if has_layers else []  # AdaCLIP's follow the tower
        common = ["--model", args.model, "--clip_weights", str(folder / "clip_tiny.pt"), "--device", args.device,
                  "--num_workers", "0"]
        if get_method(args.model).trains:
            checkpoint = train.main(["--train_data_path", str(folder / "data"), "--save_path", str(folder / "ckpt"),
                                     "--epoch", "1", "--dataset", "synthetic", "--image_size", str(SMOKE_IMAGE_SIZE),
                                     *layers, *common])
            model = ["--checkpoint_path", str(checkpoint)]
        else:  # training-free: evaluated as it is
            model = ["--image_size", str(SMOKE_IMAGE_SIZE)]
        results = main(["--data_path", str(folder / "data"), *model,
                        "--save_path", str(folder / "results"), "--dataset", "synthetic", *common]
                       + (["--visualize"] if args.visualize else []))
    print(f"smoke run passed: {get_method(args.model).title} runs end to end (random weights, so "
          "the numbers mean nothing; nothing was kept)")
    return results


def cli():
    return run_cli(main, "test.py", on_interrupt=lambda: INTERRUPT_NOTE.get("note"))


if __name__ == "__main__":
    cli()
