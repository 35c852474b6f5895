"""Train a method's prompts and adapters on an auxiliary dataset; CLIP stays frozen.

    python train.py --train_data_path data/mvtec --save_path checkpoints/mvtec_train --clip_weights ViT-L-14-336px.pt
    python train.py --model vcp --train_data_path data --dataset visa --learning_rate 4e-5 \\
        --save_path checkpoints/vcp_visa_train --clip_weights ViT-L-14-336px.pt
    python train.py --model adaclip --train_data_path data/mvtec data/colondb --dataset mvtec colondb \\
        --aug_rate 0.2 --augment_datasets mvtec --save_path checkpoints/adaclip/mvtec+colondb_train

As in the references, training uses the *test* split of the auxiliary dataset's meta
file, all classes; several roots train together, one after the other (AdaCLIP's authors
train on two datasets per run; `--augment_datasets` names those the augmentation applies
to). Without augmentation (ViP²-CLIP; VCP-CLIP with `--aug_rate -1 --no_albumentations`)
the frozen backbone's features are computed once and reused for every later epoch
(`--cache_features`). `epoch_{n}.pth` is written every `--save_freq`
epochs and after the last, atomically, in the method's released layout plus its settings.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from models import get_method
from models.settings import add_method_flag, add_setting_flags, method_from_argv, values_from_args
from engine.cli import add_clip_weights_flag, add_mask_flags, add_overwrite_flag, add_run_flags
from engine.devices import CACHE_MODES
from utils import (STAGING_FOLDER, HelpFormatter, OutputError, atomic_write_json, check_output_folder, positive_int,
                   run_cli, staging_folder, swap_in)

TRAIN_SPLIT = "test"  # both references train on the auxiliary dataset's annotated test split
INTERRUPT_NOTE: dict = {}  # what Ctrl-C's one line adds (set once a run replaces an earlier one)
RUN_FILES = ("log.txt", "losses.json", "train_stats.json", "validation.json")


def build_parser(method_name: str) -> argparse.ArgumentParser:
    method = get_method(method_name)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_method_flag(parser, method_name)
    data = parser.add_argument_group("data")
    data.add_argument("--train_data_path", required=True, nargs="+", metavar="ROOT",
                      help="dataset root holding meta.json or meta_<dataset>.json (its test split is used); "
                           "several roots train together, their items one after the other in this order (AdaCLIP's "
                           "authors train on MVTec AD + ColonDB)")
    data.add_argument("--dataset", default=None, nargs="+", metavar="NAME",
                      help="picks meta_<dataset>.json in the root (the VCP-CLIP authors' layout) and labels the "
                           "logs (default: the root's meta.json, labelled with the folder's name); one name per "
                           "--train_data_path root")
    data.add_argument("--augment_datasets", default=None, nargs="+", metavar="NAME",
                      help="the training datasets (their --dataset names, else their folders' names) the method's "
                           "training augmentation applies to; the others are read as they are (default: all; "
                           "AdaCLIP's authors mosaic MVTec AD, not ColonDB)")
    data.add_argument("--save_path", default="./checkpoints", help="folder for epoch_{n}.pth, log.txt and losses.json")
    data.add_argument("--val_data_path", default=None,
                      help="optional: a dataset root whose test split is scored (pixel AP) after every epoch; "
                           "logged only, it selects nothing")
    data.add_argument("--val_dataset", default=None, help="picks meta_<val_dataset>.json in --val_data_path")
    add_mask_flags(data)
    model = parser.add_argument_group(f"model ({method.title})")
    add_clip_weights_flag(model)
    model.add_argument("--init_checkpoint", default=None,
                       help="start from these weights (this project's or the authors' released layout)")
    add_setting_flags(model, method.config, "train")
    optimisation = parser.add_argument_group("optimisation")
    add_setting_flags(optimisation, method.training, "train")
    run = parser.add_argument_group("run")
    run.add_argument("--print_freq", type=positive_int, default=1, help="log the mean losses every N epochs")
    run.add_argument("--save_freq", type=positive_int, default=1, help="save epoch_{n}.pth every N epochs (the last always)")
    add_run_flags(run, batch_size=False)  # the batch is a training hyperparameter (--batch_size above)
    run.add_argument("--cache_features", choices=CACHE_MODES, default="auto",
                     help="keep the frozen backbone's features after epoch 1: on the GPU, in host memory, or not "
                          "at all; 'auto' picks the first with room (within this process's memory limits), and "
                          "none for a single epoch or when augmenting")
    add_overwrite_flag(run, "an earlier run's checkpoints and logs in --save_path")
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    name = method_from_argv(argv)
    method = get_method(name)
    if not method.trains:  # before the parser, whose required flags would hide why
        raise ValueError(f"--model {name}: {method.title} is training-free, there is nothing to train; evaluate it "
                         f"directly with test.py --model {name} (no --checkpoint_path)")
    return build_parser(name).parse_args(argv)


def earlier_run(save_path: Path) -> list[Path]:
    """Files of an earlier run in `save_path`, including the temporary files a killed save leaves."""
    if not save_path.is_dir():
        return []
    ours = ("epoch_", *RUN_FILES)  # atomic writes leave `.NAME.XXXX.tmp` when killed mid-write
    stray = [p for p in sorted(save_path.glob(".*.tmp")) if p.name[1:].startswith(ours)]
    unfinished = [save_path / STAGING_FOLDER] if (save_path / STAGING_FOLDER).is_dir() else []  # an interrupted --overwrite
    return (sorted(save_path.glob("epoch_*.pth")) + stray
            + [save_path / f for f in RUN_FILES if (save_path / f).exists()] + unfinished)


def check_save_path(save_path: Path, overwrite: bool) -> list[Path]:
    """Never mix two runs in one folder: refuse before any work unless --overwrite (then return what to remove)."""
    check_output_folder(save_path, "--save_path")
    earlier = earlier_run(save_path)
    if earlier and not overwrite:
        names = ", ".join(p.name for p in earlier[:6]) + (" …" if len(earlier) > 6 else "")
        raise OutputError(f"{save_path} already holds an earlier run ({names}); choose another --save_path, or "
                          "pass --overwrite to replace it")
    return earlier


def main(argv=None) -> Path:
    args = parse_args(argv)
    method = get_method(args.model)
    training = method.training(**values_from_args(args, method.training))
    settings = values_from_args(args, method.config)
    save_path = Path(args.save_path)
    to_remove = check_save_path(save_path, args.overwrite)

    # Everything below imports torch; every input is checked before anything is written.
    from engine import distributed
    from engine.training_data import training_dataset, training_labels
    from dataset import AnomalyDataset
    from deploy import image_io
    from models import resolve_config
    from models.checkpoint import read_checkpoint
    from utils import hold_log_records

    labels = training_labels(args.train_data_path, args.dataset, args.augment_datasets)  # before reading anything
    hold_log_records()  # what the checks below say reaches log.txt, which cannot exist before they pass
    image_io.set_max_pixels(args.max_image_pixels)
    init = read_checkpoint(args.init_checkpoint, "--init_checkpoint") if args.init_checkpoint else None
    config = resolve_config(method.name, init, args.init_checkpoint, "--init_checkpoint", **settings)
    image_size = config.image_size
    inputs = {"mask_threshold": args.mask_threshold, "max_pixels": args.max_image_pixels}
    dataset = training_dataset(args.train_data_path, args.dataset, args.augment_datasets, image_size,
                               split=TRAIN_SPLIT, augmentation=training.augmentation(), **inputs)
    validation = (AnomalyDataset(args.val_data_path, image_size, split="test", dataset=args.val_dataset, **inputs)
                  if args.val_data_path else None)
    with distributed.session(args.device) as (context, device):
        return _train(args, method, training, (config, settings), save_path, to_remove, (dataset, labels),
                      validation, init, context, device)


def _train(args, method, training, resolved, save_path, to_remove, data, validation, init, context, device):
    """Build the model and run the epochs (every rank, under torchrun); rank 0 logs and writes.
    `resolved`: the settings resolved once in `main`, and the values the user gave (for messages);
    `data`: the training dataset and the label of each dataset in it."""
    import torch

    from engine import distributed
    from models import create_model
    from models.checkpoint import save_checkpoint
    from engine.devices import (configure_precision, loader_workers, log_machine, memory_note, peak_gpu_memory_gb,
                                reset_peak_gpu_memory, set_seed, shared_memory_warning)
    from engine.training import Trainer
    from engine.training_data import parts_of, training_record
    from utils import setup_logger

    dataset, labels = data
    distributed.check_batch(training.batch_size, context)
    image_size = dataset.image_size

    configure_precision(args.precision)
    set_seed(training.seed)
    model = create_model(method.name, clip_weights=args.clip_weights, checkpoint=init,
                         checkpoint_flag="--init_checkpoint", checkpoint_name=args.init_checkpoint, device=device,
                         config=resolved[0], **resolved[1])
    model.train()
    model.configure_training(training)
    distributed.broadcast_parameters(model, context)
    if context.enabled:  # dropout and augmentation draw differently on each rank; the batches do not
        set_seed(training.seed + context.rank)

    # Replacing an earlier run (--overwrite): this run writes into a folder beside it and swaps its files in
    # only after the last epoch, so an interrupted or failed run leaves the earlier checkpoints as they were.
    final_path, staging = save_path, None
    if context.is_main and to_remove:
        staging = staging_folder(save_path)
        INTERRUPT_NOTE["note"] = (f"the earlier run in {save_path} is unchanged; this run's files so far are in "
                                  f"{staging} (the next --overwrite run removes them)")
    save_path = staging or save_path
    logger = setup_logger("zsas.train", save_path if context.is_main else None, quiet=not context.is_main)
    label = "+".join(labels)
    if args.augment_datasets and dataset.augmentation is None:
        logger.warning("--augment_datasets %s changes nothing: %s trains without augmentation with these settings",
                       " ".join(args.augment_datasets), method.title)
    if dataset.anomalous_count == 0:
        logger.warning("%s has no anomalous image in its %s split: the pixel losses have no defect to learn from",
                       dataset.meta_path, TRAIN_SPLIT)
    optimizer = model.make_optimizer(training)
    scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "fp16")
    workers = loader_workers(args.num_workers, device)
    shm_warning = shared_memory_warning(workers, training.batch_size, image_size)
    if shm_warning:
        logger.warning(shm_warning)

    trainer = Trainer(model, dataset, device=device, precision=args.precision, batch_size=training.batch_size,
                      workers=workers, seed=training.seed, epochs=training.epoch, cache_mode=args.cache_features,
                      optimizer=optimizer, scaler=scaler, logger=logger, context=context)
    processes = f", {context.world_size} processes" if context.enabled else ""
    augmented = [name for name, part in parts_of(dataset) if part.augmentation is not None and name]
    logger.info("training %s on %s (%s, %d images, %d classes) on %s%s, precision %s, augmentation: %s%s",
                method.title, dataset.meta_path, label, len(dataset), len(dataset.class_names), device, processes,
                args.precision, dataset.augmentation or "none", f" on {', '.join(augmented)}" if augmented else "")
    for part_label, part in parts_of(dataset) if len(labels) > 1 else ():  # which data, and which is augmented
        logger.info("training data %s: %s (%d images, %d classes), augmentation: %s", part_label, part.meta_path,
                    len(part), len(part.class_names), part.augmentation or "none")
    logger.info("settings: %s", json.dumps(model.recorded_config()))
    logger.info("training: %s", json.dumps(vars(training)))
    log_machine(logger, args.precision, device)

    reset_peak_gpu_memory(device)
    history, scores, last_saved, start = [], [], None, time.time()
    for epoch in range(1, training.epoch + 1):
        epoch_start = time.time()
        steps = trainer.run_epoch(epoch)
        history.extend(steps)
        if context.is_main:
            atomic_write_json(history, save_path / "losses.json")
        if epoch % args.print_freq == 0 or epoch == training.epoch:
            means = {key: sum(step[key] for step in steps) / len(steps) for key in steps[0] if key != "epoch"}
            logger.info("epoch [%d/%d], %s (%.1f s)", epoch, training.epoch,
                        ", ".join(f"{key}:{value:.4f}" for key, value in means.items()), time.time() - epoch_start)
        if validation is not None and context.is_main:
            scores.append({"epoch": epoch, **trainer.validate(validation)})
            logger.info("epoch [%d/%d] validation on %s: %s", epoch, training.epoch, validation.meta_path,
                        ", ".join(f"{k}:{v:.4f}" for k, v in scores[-1].items() if k != "epoch"))
            atomic_write_json(scores, save_path / "validation.json")
        if epoch % args.save_freq == 0 or epoch == training.epoch:
            last_saved = save_path / f"epoch_{epoch}.pth"
            if context.is_main:
                save_checkpoint(last_saved, model, epoch, training_data=training_record(dataset, labels))
                logger.info("saved %s", last_saved)
    seconds = time.time() - start
    stats = {"method": method.name, "epochs": training.epoch, "images": len(dataset), "seconds": seconds,
             "images_per_second": training.epoch * len(dataset) / seconds, "precision": args.precision,
             "feature_cache": str(trainer.cache_place or "off"), "device": str(device),
             "processes": context.world_size, "peak_gpu_memory_gb": peak_gpu_memory_gb(device),
             "training_data": training_record(dataset, labels)}
    if context.is_main:
        atomic_write_json(stats, save_path / "train_stats.json")
    logger.info("trained %d epochs in %.1f s (%.1f images/s)%s", training.epoch, seconds,
                stats["images_per_second"], memory_note(device))
    if staging is not None:
        swap_in(staging, final_path, to_remove)
        logger.info("the earlier run's files in %s are replaced (--overwrite)", final_path)
    return final_path / last_saved.name if last_saved else None


def cli():
    return run_cli(main, "train.py", on_interrupt=lambda: INTERRUPT_NOTE.get("note"))


if __name__ == "__main__":
    cli()
