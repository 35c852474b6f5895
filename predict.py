"""Run a trained model on your own images: a heat-map overlay per image and one scores.csv.

    python predict.py photos/ "more/*.jpg" one.png --checkpoint_path checkpoints/mvtec_train/epoch_10.pth \
        --clip_weights ViT-L-14-336px.pt --out predictions/
    python predict.py photos/ --model vcp --checkpoint_path train_visa.pth --out predictions/
    python predict.py photos/ --onnx vip2.onnx --out predictions/         # a file export.py wrote

Zero-shot: no class name and no mask are needed. PATH may be an image file, a folder
(searched recursively for image files, extensions case-insensitive) or a glob (quote
it to let predict.py expand it; `**` recurses). For every image it writes, under OUT,
mirroring the input folders below their common parent:

    REL/NAME.png    the anomaly map over the resized image, with a colour bar
    REL/NAME.npy    with --save_raw: the map shown (float32 [S, S], smoothed with --sigma)
    scores.csv      path, image score, max pixel score, overlay (and map) file, one row per image
    log.txt         the run's log, including every file skipped and why

VCP-CLIP normalises maps and scores over the evaluated set (its reference does it per
class): here the set is every image of the run, and scores.csv also gives the score
before that step (`raw_score`). Files that cannot be read are reported (one line each)
and skipped; the exit status is non-zero only when no image at all could be processed.
An --out folder holding an earlier run's scores.csv is refused (`--overwrite`).

Under torchrun (`torchrun --standalone --nproc_per_node 4 predict.py ...`, one GPU or CPU
process each) the batches are dealt out to the processes as test.py deals them, and rank 0
writes every file: the same outputs as one process, up to float rounding.

With --onnx FILE (ONNX Runtime) or --openvino FILE.xml (OpenVINO) instead of
--checkpoint_path, the exported model runs with no PyTorch and no CLIP weights: the
method, image size and set normalisation are read from the file (export.py records
them), so the model flags are not taken.
"""
from __future__ import annotations

import argparse
import csv
import io
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from deploy.inputs import InputImage, check_no_overwrite, find_images, output_names
from deploy.outputs import earlier_outputs, publish
from engine.cli import (CHECKPOINT_HELP, add_checkpoint_flags, add_device_flag, add_image_limit_flag, add_overwrite_flag,
                        add_run_flags, checkpoint_problem)
from utils import (DatasetError, OutputError, atomic_write_bytes, check_output_folder, hold_log_records, positive_int,
                   run_cli, staging_folder)

SCORES_FILE = "scores.csv"
SCORE_COLUMNS = ("path", "image_score", "raw_score", "max_pixel_score", "overlay", "map", "decision", "threshold",
                 "pixel_threshold", "mask")  # the last four from a calibrated model (calibrate.py), else empty
# Per-file failures that mean "this file is not a readable image"; anything else is a bug and propagates.
UNREADABLE = (DatasetError, OSError, ValueError, SyntaxError, Image.DecompressionBombError)
EXPORTED_FLAGS = ("--onnx", "--openvino")
INTERRUPT_NOTE: dict = {}  # what Ctrl-C's one line adds (set once a run starts writing)


def _add_io_flags(parser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders (recursive) or globs")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for overlays, maps, scores.csv, log.txt")
    parser.add_argument("--save_raw", action="store_true", help="also write each map as NAME.npy (float32 [S, S])")
    parser.add_argument("--color_scale", choices=("fixed", "image"), default="fixed",
                        help="overlay colours: fixed [0, 1] (comparable across images), or each map's own min-max")
    parser.add_argument("--include_mask_folders", action="store_true",
                        help="also score images in folders named like mask folders (ground_truth, masks, gt, ...), "
                             "which a folder's walk skips")
    add_image_limit_flag(parser)
    add_overwrite_flag(parser, "an earlier run's scores.csv and overlays in --out")


def _add_exported_flags(group) -> None:
    exported = group.add_mutually_exclusive_group()
    exported.add_argument("--onnx", metavar="FILE.onnx",
                          help="run this export.py file with ONNX Runtime instead of a checkpoint (no PyTorch needed)")
    exported.add_argument("--openvino", metavar="FILE.xml",
                          help="run this export.py OpenVINO model (its .bin beside it) instead of a checkpoint")


def build_parser(method_name: str) -> argparse.ArgumentParser:
    from models import get_method
    from models.settings import add_method_flag, add_setting_flags

    method = get_method(method_name)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_method_flag(parser, method_name)
    _add_io_flags(parser)
    model = parser.add_argument_group(f"model ({method.title}; settings a train.py checkpoint records are read "
                                      "from it)")
    add_checkpoint_flags(model, checkpoint_help=CHECKPOINT_HELP + " (required unless --onnx or --openvino is given, or the method is training-free)")
    _add_exported_flags(model)
    add_setting_flags(model, method.config, "test")
    from models import fewshot

    fewshot.add_class_flag(model)
    fewshot.add_flags(parser)
    run = parser.add_argument_group("run")
    add_run_flags(run)
    return parser


def build_exported_parser() -> argparse.ArgumentParser:
    """The flags of a run on an exported file: no model flags (the file fixes the method and its settings)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_io_flags(parser)
    model = parser.add_argument_group("exported model (method and settings are read from the file)")
    _add_exported_flags(model)
    run = parser.add_argument_group("run")
    add_device_flag(run, help="ONNX Runtime: 'cpu' (auto) or 'cuda' (onnxruntime-gpu); OpenVINO: 'cpu' (auto) or a device "
                          "name such as GPU")
    run.add_argument("--batch_size", type=positive_int, default=8,
                     help="images per run of the model (8: an exported runtime has no device to pick a default by)")
    return parser


def _exported_run(argv) -> bool:
    return any(a.split("=", 1)[0] in EXPORTED_FLAGS for a in (sys.argv[1:] if argv is None else argv))


def parse_args(argv=None) -> argparse.Namespace:
    if _exported_run(argv):  # no `models` import: the file may be run where only its runtime is installed
        parser = build_exported_parser()
        args, unknown = parser.parse_known_args(argv)
        if unknown:
            parser.error(f"{' '.join(unknown)}: not taken with --onnx / --openvino, which run the method and settings "
                         "the file was exported with (export.py again to change them)")
        args.exported = args.onnx or args.openvino
        return args
    from models.settings import method_from_argv

    parser = build_parser(method_from_argv(argv))
    args = parser.parse_args(argv)
    from models import get_method

    problem = checkpoint_problem(get_method(args.model), args.checkpoint_path, "predict.py")
    if problem:
        parser.error(problem + " (or run an exported model with --onnx / --openvino)")
    args.exported = None
    return args


class ImageFiles:
    """Loads each file with the dataset's preprocessing; a failure becomes a message, not an exception."""

    def __init__(self, paths: list[Path], size: int, max_pixels: int | None = None):
        self.paths, self.size, self.max_pixels = paths, size, max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        from deploy.image_io import read_image_array  # dataset.read_image's pixels, without torch

        try:
            image, _ = read_image_array(self.paths[index], self.size, self.max_pixels)
            return index, image, None
        except UNREADABLE as error:
            cause = error.__cause__ or error
            return index, None, f"{type(cause).__name__}: {cause}"


def collate(items):
    """Readable images stacked into one uint8 NumPy batch; unreadable ones passed on as (index, reason)."""
    good = [(index, image) for index, image, _ in items if image is not None]
    failed = [(index, reason) for index, _, reason in items if reason is not None]
    indices = [index for index, _ in good]
    images = np.stack([image for _, image in good]) if good else None
    return indices, images, failed


def image_batches(files: ImageFiles, batches: list[list[int]], workers: int):
    """The given batches of file indices, in order; loader processes (torch's DataLoader) only when asked for."""
    if workers:
        import torch

        return torch.utils.data.DataLoader(files, batch_sampler=batches, num_workers=workers, collate_fn=collate)
    return (collate([files[i] for i in batch]) for batch in batches)


def model_outputs(loader, runner):
    """(indices, images, maps, scores, failed) per batch; maps and scores None for a batch with no readable image."""
    for indices, images, failed in loader:
        maps, scores = runner(images) if images is not None else (None, None)
        yield indices, images, maps, scores, failed


def gathered(results, rounds: int, context):
    """Rank 0 gets lists of batch results in dataset order: one round at a time, each rank's batch of the round
    (batches are dealt out round-robin, so rank order is batch order). Other ranks send theirs, get nothing."""
    from engine import distributed

    if not context.enabled:
        yield from ([result] for result in results)
        return
    results = iter(results)
    for _ in range(rounds):
        result = next(results, ([], None, None, None, []))  # a rank may hold one batch fewer than rank 0
        pieces = distributed.gather_objects(result, context)
        if context.is_main:
            yield pieces


# ---------------------------------------------------------------- run

def write_scores(path: Path, rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SCORE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, buffer.getvalue().encode())


def save_outputs(image, anomaly_map, score: float, raw_score: float, item: InputImage,
                 out_dir: Path, args, raw_map=None, calibration=None) -> dict:
    """Overlay (and map) of one image, and with a calibration its decision and defect mask (decided on the raw
    score and map: before any set normalisation); returns its scores.csv row."""
    from deploy.calibration import image_decision
    from reporting import visualization

    anomaly_map = np.asarray(anomaly_map, dtype=np.float32)
    limits = visualization.value_range(anomaly_map, "fixed" if args.color_scale == "fixed" else "data")
    overlay = f"{item.name}.png"
    png = visualization.render_overlay(visualization.to_display(image), anomaly_map, limits=limits,
                                       title=f"image score {score:.3f} · max pixel {anomaly_map.max():.3f}")
    visualization.write_png(out_dir / overlay, png)
    map_file = ""
    if args.save_raw:
        map_file = f"{item.name}.npy"
        buffer = io.BytesIO()
        np.save(buffer, anomaly_map.astype(np.float32))
        atomic_write_bytes(out_dir / map_file, buffer.getvalue())
    decision, mask = image_decision(calibration, raw_score, anomaly_map if raw_map is None else raw_map)
    decision["mask"] = ""
    if mask is not None:  # white: defect, at the model's S x S
        decision["mask"] = f"{item.name}_mask.png"
        png = io.BytesIO()
        Image.fromarray(mask.astype(np.uint8) * 255).save(png, format="PNG")
        atomic_write_bytes(out_dir / decision["mask"], png.getvalue())
    return {"path": str(item.path), "image_score": f"{score:.6f}", "raw_score": f"{raw_score:.6f}",
            "max_pixel_score": f"{anomaly_map.max():.6f}", "overlay": overlay, "map": map_file, **decision}


def check_out(out_dir: Path, overwrite: bool) -> list[Path]:
    """Never mix two runs' files: an --out holding an earlier run's scores.csv is refused; with --overwrite,
    returns that run's files (the ones its scores.csv lists, and itself), which the new run replaces."""
    check_output_folder(out_dir, "--out")
    if not (out_dir / SCORES_FILE).exists():
        return []
    if not overwrite:
        raise OutputError(f"--out {out_dir} already holds an earlier run's {SCORES_FILE}; choose another folder, or "
                          "pass --overwrite to replace its files")
    return earlier_outputs(out_dir, SCORES_FILE)


def make_runner(args, device=None):
    """The model to run: an exported file (settings from its metadata) or a checkpoint on its CLIP, on `device`
    (the `torch.device` the run resolved; the exported runtimes take their own device names)."""
    from deploy import runners

    if args.exported:
        return runners.open_exported(args.exported, "onnx" if args.onnx else "openvino", device=args.device)
    from models import get_method
    from models.settings import values_from_args

    method = get_method(args.model)
    return runners.load_torch_runner(method.name, checkpoint=args.checkpoint_path, clip_weights=args.clip_weights,
                                     device=device, precision=args.precision, bind_args=args,
                                     **values_from_args(args, method.config))


def main(argv=None) -> int:
    """Returns the number of images processed (test-friendly); `run_cli` turns it into the exit status."""
    from engine import distributed

    args = parse_args(argv)
    hold_log_records()  # what loading the model says reaches log.txt, which is opened once the inputs are found
    out_dir = Path(args.out)
    args.earlier = check_out(out_dir, args.overwrite)
    args.mask_files = []
    paths, unmatched = find_images(args.paths, out_dir, args.include_mask_folders, args.mask_files)
    if not paths:
        masks = (f" ({len(args.mask_files)} in mask folders such as {args.mask_files[0].parent} were skipped: "
                 "pass --include_mask_folders to score them)") if args.mask_files else ""
        raise OutputError(f"nothing to do: no image files in {' '.join(args.paths)}{masks}")
    items = [InputImage(path, name) for path, name in zip(paths, output_names(paths))]
    check_no_overwrite(items, out_dir)
    if args.exported:
        if distributed.launched():
            raise ValueError("--onnx / --openvino run in one process: start predict.py without torchrun")
        return predict(args, paths, items, unmatched, make_runner(args), distributed.SINGLE)
    with distributed.session(args.device) as (context, device):  # under torchrun: this rank's device
        return predict(args, paths, items, unmatched, make_runner(args, device), context)


def predict(args, paths: list[Path], items: list[InputImage], unmatched: list[str], runner, context) -> int:
    """Rank 0 writes this run's files into a folder beside --out and moves them in only once the run is
    complete: an interrupted or failed run leaves no partial overlays, and an earlier run (--overwrite) as
    it was."""
    out_dir = Path(args.out)
    staging = staging_folder(out_dir) if context.is_main else None
    earlier = args.earlier
    INTERRUPT_NOTE["note"] = ("this run's overlays were removed; " + (
        f"the earlier run's files in {out_dir} are unchanged" if earlier else f"nothing was written to {out_dir} "
        "but log.txt"))
    try:
        return _predict(args, paths, items, unmatched, runner, context, staging)
    except BaseException:
        if staging is not None and staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
        raise


def _predict(args, paths: list[Path], items: list[InputImage], unmatched: list[str], runner, context,
             staging: Path | None) -> int:
    """Every rank runs its batches; rank 0 writes every output. Returns the images processed (on every rank)."""
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    from engine import distributed
    from deploy.calibration import check_record
    from engine.devices import default_batch_size, loader_workers, log_machine
    from engine.set_normalization import normalize_over_set
    from utils import setup_logger

    out_dir = Path(args.out)
    info = runner.info
    logger = setup_logger("zsas.predict", out_dir if context.is_main else None, quiet=not context.is_main)
    for argument in unmatched:
        logger.warning("no image found for %s (not a file, a folder with images, or a matching glob)", argument)
    if args.mask_files:
        folders = sorted({str(p.parent) for p in args.mask_files})
        logger.info("skipped %d image(s) in mask folders (%s%s): pass --include_mask_folders to score them",
                    len(args.mask_files), ", ".join(folders[:3]), " …" if len(folders) > 3 else "")
    size = info.image_size
    device = getattr(runner, "device", None)
    batch_size = args.batch_size or (default_batch_size(device) if device is not None else 8)
    requested = getattr(args, "num_workers", None)  # an exported file's run has no --num_workers: no loaders
    workers = loader_workers(requested, device) if device is not None else 0
    all_batches = distributed.batches_of_rank(len(paths), batch_size, distributed.SINGLE)
    mine = distributed.batches_of_rank(len(paths), batch_size, context)
    if len(mine) <= 1:  # one batch: starting loader processes would cost more than it saves
        workers = 0
    rounds = -(-len(all_batches) // context.world_size)
    files = ImageFiles(paths, size, args.max_image_pixels)
    results = gathered(model_outputs(image_batches(files, mine, workers), runner), rounds, context)
    logger.info("predicting %d image(s) with %s at %dx%d (%s%s); outputs in %s", len(paths), info.title, size, size,
                runner.description, f", {context.world_size} processes" if context.enabled else "", out_dir)
    if device is not None:
        log_machine(logger, args.precision, device)
    # A method that normalises over the evaluated set (VCP-CLIP) needs every map before drawing any.
    over_set = info.set_normalization
    calibration = check_record(info.calibration)
    if over_set and len(paths) < 2:
        logger.warning("%s normalises maps and scores over the images of a run; with one image its normalised "
                       "score is undefined (NaN): see raw_score, and --color_scale image for the overlay",
                       info.title)

    rows, skipped, held = [], 0, []
    with logging_redirect_tqdm(loggers=[logger]):
        progress = tqdm(total=len(paths), desc="predict", unit="image", disable=not context.is_main)
        for pieces in results:
            for indices, images, maps, scores, failed in pieces:
                for index, reason in failed:
                    logger.warning("skipped %s: cannot read it as an image (%s)", paths[index], reason)
                skipped += len(failed)
                if images is not None:
                    if over_set:
                        held.append((indices, images, maps, scores))
                    else:
                        for row, index in enumerate(indices):
                            rows.append(save_outputs(images[row], maps[row], float(scores[row]), float(scores[row]),
                                                     items[index], staging, args, calibration=calibration))
                progress.update(len(indices) + len(failed))
        progress.close()
    if held:
        raw_scores, raw_maps = np.concatenate([h[3] for h in held]), np.concatenate([h[2] for h in held])
        maps, scores = normalize_over_set(raw_maps, raw_scores)
        position = 0
        for indices, images, _, _ in held:
            for row, index in enumerate(indices):
                rows.append(save_outputs(images[row], maps[position], float(scores[position]),
                                         float(raw_scores[position]), items[index], staging, args,
                                         raw_map=raw_maps[position], calibration=calibration))
                position += 1

    if rows:  # the run is complete: its files replace the earlier run's (if any)
        write_scores(staging / SCORES_FILE, rows)
        removed = publish(staging, out_dir, args.earlier)
        if args.earlier:
            logger.info("replaced the earlier run in %s (--overwrite): %d of its files not written again were "
                        "removed", out_dir, removed)
    elif staging is not None:
        shutil.rmtree(staging)
    if context.is_main and rows:
        log_decisions(logger, rows, calibration, raw_maps if held else None, raw_scores if held else None)
    if context.is_main:
        logger.info("done: %d image(s) processed, %d unreadable file(s) skipped%s; %s", len(rows), skipped,
                    f", {len(unmatched)} PATH argument(s) matched nothing" if unmatched else "",
                    f"scores in {out_dir / SCORES_FILE}" if rows else "no scores.csv written")
    return distributed.broadcast_count(len(rows), context)


def log_decisions(logger, rows: list[dict], calibration, raw_maps=None, raw_scores=None) -> None:
    """The run's summary: n flagged of N (or why there are no decisions)."""
    from deploy.calibration import to_normalised_scale

    if not calibration:
        logger.info("no pass/defect decisions: the model carries no calibration (calibrate.py adds thresholds)")
        return
    flagged = sum(row["decision"] == "defect" for row in rows)
    masks = sum(bool(row["mask"]) for row in rows)
    logger.info("decisions (rule %s): %s; %s", calibration["rule"],
                f"{flagged} of {len(rows)} image(s) flagged as defect at image threshold "
                f"{calibration['image_threshold']:.6g}" if calibration.get("image_threshold") is not None
                else "no image threshold", f"{masks} defect mask(s) at pixel threshold "
                f"{calibration['pixel_threshold']:.6g}" if calibration.get("pixel_threshold") is not None
                else "no pixel threshold")
    if raw_maps is not None:  # a set-normalised method: where the raw thresholds fall on this run's shown scale
        shown = [f"{kind} threshold "
                 f"{to_normalised_scale(calibration[key], float(values.min()), float(values.max())):.4g}"
                 for kind, key, values in (("image", "image_threshold", raw_scores),
                                           ("pixel", "pixel_threshold", raw_maps)) if calibration.get(key) is not None]
        logger.info("thresholds apply to the raw (unnormalised) score and map; on this run's normalised scale: %s",
                    ", ".join(shown))


def cli():
    """Exit status 1 when no image at all could be processed."""
    return run_cli(main, "predict.py", exit_status=lambda processed: 0 if processed else 1,
                   on_interrupt=lambda: INTERRUPT_NOTE.get("note"))


if __name__ == "__main__":
    cli()
