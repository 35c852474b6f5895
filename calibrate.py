"""Calibrate a trained model's decisions: image and pixel thresholds, measured on your images, stored with the model.

    python calibrate.py --checkpoint_path epoch_10.pth --clip_weights ViT-L-14-336px.pt \\
        --normal_dir good_parts/ --max_false_alarm 0.01 --max_pixel_false_alarm 0.001 --output calibrated.pth
    python calibrate.py --onnx vip2.onnx --data_path data/mvtec --output vip2_calibrated.onnx --rule f1_max
    python predict.py photos/ --checkpoint_path calibrated.pth --out predictions/   # pass/defect per image, masks

From normal images only (`--normal_dir`, or the normal images of a labelled set): the image threshold at
a false-alarm rate (`--max_false_alarm 0.01`: at most 1% of the good parts flagged) and the pixel
threshold at a pixel false-positive rate (`--max_pixel_false_alarm`). From a labelled set (`--data_path`,
a meta.json root read with dataset.py): also the F1-max thresholds (image and pixel). The rules, the
refusal when there are too few normal images for the rate asked (at least ceil(k / rate), k =
`--min_exceedances`) and the scale (VCP-CLIP: scores before its set normalisation) are defined in
deploy/calibration.py and docs/DEPLOY_DECISIONS.md. `--rule` picks the thresholds the decisions use.

The result is a NEW file (`--output`; the trained one is never overwritten): a checkpoint with a
`calibration` entry, or a copy of the exported file with `calibration` in its metadata. It holds
the thresholds, the rule, what was measured, the calibration set's size and sha256 fingerprint.
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np

from deploy import calibration as cal
from engine.cli import add_checkpoint_flags, add_device_flag, add_overwrite_flag
from utils import HelpFormatter, OutputError, atomic_write_json, positive_int, run_cli

log = logging.getLogger("zsas.calibrate")


def rate(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{text}: a rate strictly between 0 and 1 (0.01 = 1%)")
    return value


def build_parser(method_name: str) -> argparse.ArgumentParser:
    from models import get_method
    from models.settings import add_method_flag, add_setting_flags

    method = get_method(method_name)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_method_flag(parser, method_name)
    model = parser.add_argument_group(f"model ({method.title}, or an exported file)")
    add_checkpoint_flags(model, checkpoint_help="the trained checkpoint (required unless --onnx / --openvino)")
    exported = model.add_mutually_exclusive_group()
    exported.add_argument("--onnx", metavar="FILE.onnx", help="an export.py ONNX file instead of a checkpoint")
    exported.add_argument("--openvino", metavar="FILE.xml", help="an export.py OpenVINO file instead of a checkpoint")
    add_setting_flags(model, method.config, "test")
    data = parser.add_argument_group("calibration set (one of)")
    sets = data.add_mutually_exclusive_group(required=True)
    sets.add_argument("--normal_dir", metavar="DIR", help="a folder of normal (good) images, searched recursively")
    sets.add_argument("--data_path", metavar="ROOT", help="a labelled set: a dataset root with meta.json (dataset.py)")
    data.add_argument("--dataset", default=None, help="with --data_path: pick meta_NAME.json (VCP-CLIP's layout)")
    data.add_argument("--split", choices=("train", "test"), default="test", help="with --data_path: the split used")
    rules = parser.add_argument_group("rules")
    rules.add_argument("--max_false_alarm", type=rate, default=None, metavar="RATE",
                       help="image threshold: at most this share of normal images flagged (0.01 = 1%%)")
    rules.add_argument("--max_pixel_false_alarm", type=rate, default=None, metavar="RATE",
                       help="pixel threshold: at most this share of normal pixels flagged")
    rules.add_argument("--min_exceedances", type=positive_int, default=cal.DEFAULT_MIN_EXCEEDANCES, metavar="K",
                       help="a rate r needs at least ceil(K / r) normal images (K expected false alarms)")
    rules.add_argument("--rule", choices=cal.RULES, default=None,
                       help="the thresholds decisions use (default: false_alarm when a rate is given, else f1_max)")
    output = parser.add_argument_group("output")
    output.add_argument("--output", required=True, metavar="FILE",
                        help="the calibrated model: a new .pth (from a checkpoint) or .onnx / .xml (from an export)")
    output.add_argument("--report", default=None, metavar="FILE.json", help="also write what was measured here")
    add_overwrite_flag(output, "an existing --output or --report (never the input model)")
    run = parser.add_argument_group("run")
    add_device_flag(run)
    run.add_argument("--batch_size", type=positive_int, default=8, help="images per model call")
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    from models.settings import method_from_argv

    parser = build_parser(method_from_argv(argv))
    args = parser.parse_args(argv)
    args.exported = args.onnx or args.openvino
    if bool(args.checkpoint_path) == bool(args.exported):
        parser.error("give one model: --checkpoint_path, or --onnx / --openvino")
    if args.exported:
        from models import get_method
        from models.settings import values_from_args

        given = [name for name, value in values_from_args(args, get_method(args.model).config).items()
                 if value is not None]
        if given:
            parser.error(f"{', '.join(given)}: not taken with --onnx / --openvino, which run the settings the file "
                         "was exported with")
    if args.rule is None:
        args.rule = "false_alarm" if args.max_false_alarm or args.max_pixel_false_alarm else "f1_max"
    if args.rule == "false_alarm" and not (args.max_false_alarm or args.max_pixel_false_alarm):
        parser.error("--rule false_alarm needs --max_false_alarm and/or --max_pixel_false_alarm")
    if args.rule == "f1_max" and not args.data_path:
        parser.error("--rule f1_max needs a labelled set (--data_path); with --normal_dir give --max_false_alarm")
    return args


def check_output(args) -> Path:
    from utils import check_output_file

    source = Path(args.exported or args.checkpoint_path)
    output = Path(args.output)
    wanted = source.suffix.lower() if args.exported else ".pth"
    if output.suffix.lower() != wanted:
        what = f"copy of {source.name}" if args.exported else "checkpoint"
        raise OutputError(f"--output {output}: a calibrated {what} must end in {wanted}")
    bins = (output.with_suffix(".bin").resolve(), source.with_suffix(".bin").resolve())
    same_weights = output.suffix == ".xml" and bins[0] == bins[1]
    if output.resolve() == source.resolve() or same_weights:
        raise OutputError(f"--output {output} is the input model: write the calibrated model to a new file")
    check_output_file(output, "--output", overwrite=args.overwrite)
    if args.report:
        check_output_file(args.report, "--report", overwrite=args.overwrite)
    return output


# ---------------------------------------------------------------- the calibration set

def calibration_set(args) -> dict:
    """The images (path, is_anomalous, mask path or None) and the set's description, before any model work."""
    if args.normal_dir:
        paths = cal.list_images(args.normal_dir)
        if not paths:
            raise cal.CalibrationError(f"--normal_dir {args.normal_dir}: no image files in it")
        items = [(p, 0, None) for p in paths]
        root, hashed = Path(args.normal_dir), paths
    else:
        from dataset import check_files, read_meta, samples_from_meta

        root = Path(args.data_path)
        meta, meta_path = read_meta(root, dataset=args.dataset)
        samples = samples_from_meta(meta, args.split, root, meta_path)
        check_files(samples, root, meta_path)
        items = [(root / s.img_path, int(s.anomaly), root / s.mask_path if s.anomaly and s.mask_path else None)
                 for s in samples]
        hashed = [p for p, _, _ in items] + [m for _, _, m in items if m is not None]
    normal = sum(1 for _, anomalous, _ in items if not anomalous)
    description = {"kind": "normal_dir" if args.normal_dir else "labelled", "root": str(root),
                   "split": None if args.normal_dir else args.split, "images": len(items), "normal_images": normal,
                   "anomalous_images": len(items) - normal, "files_hashed": len(hashed),
                   "sha256": cal.set_fingerprint(hashed, root)}
    if args.max_false_alarm:  # refused here, before the model is loaded
        cal.check_enough_images(normal, args.max_false_alarm, args.min_exceedances, "--max_false_alarm")
    if args.max_pixel_false_alarm and normal < args.min_exceedances:
        raise cal.CalibrationError(f"--max_pixel_false_alarm needs at least {args.min_exceedances} normal images "
                                   f"(--min_exceedances); got {normal}")
    return {"items": items, "description": description}


def make_runner(args):
    from deploy import runners

    if args.exported:
        return runners.open_exported(args.exported, "onnx" if args.onnx else "openvino", device=args.device)
    from models import get_method
    from models.settings import values_from_args

    method = get_method(args.model)
    return runners.load_torch_runner(method.name, checkpoint=args.checkpoint_path, clip_weights=args.clip_weights,
                                     device=args.device, **values_from_args(args, method.config))


def measure(runner, items, args) -> dict:
    """Raw scores of every image; pixel statistics of the normal maps (streamed) and, for a labelled set, every
    map and mask (the pixel F1-max needs them all: about 5 bytes per pixel)."""
    from deploy.image_io import read_image_array

    size = runner.image_size
    normal_count = sum(1 for _, anomalous, _ in items if not anomalous)
    pixel = (cal.PixelFalseAlarm(args.max_pixel_false_alarm, normal_count, size * size, args.min_exceedances)
             if args.max_pixel_false_alarm else None)
    labelled = bool(args.data_path)
    scores, maps, masks = [], [], []
    for first in range(0, len(items), args.batch_size):
        batch = items[first:first + args.batch_size]
        images = np.stack([read_image_array(path, size)[0] for path, _, _ in batch])
        batch_maps, batch_scores = runner(images)
        scores.append(np.asarray(batch_scores, dtype=np.float32))
        normal = np.array([not anomalous for _, anomalous, _ in batch])
        if pixel is not None and normal.any():
            pixel.add(batch_maps[normal])
        if labelled:
            maps.append(np.asarray(batch_maps, dtype=np.float32))
            masks.append(np.stack([read_mask(mask, path, size) for path, _, mask in batch]))
        log.info("  %d / %d images", min(first + args.batch_size, len(items)), len(items))
    scores = np.concatenate(scores)
    labels = np.array([anomalous for _, anomalous, _ in items], dtype=bool)
    return {"scores": scores, "labels": labels, "pixel": pixel,
            "maps": np.concatenate(maps) if labelled else None, "masks": np.concatenate(masks) if labelled else None}


def read_mask(mask_path, image_path, size: int) -> np.ndarray:
    """The dataset's binarised mask at S x S (all False for a normal image)."""
    if mask_path is None:
        return np.zeros((size, size), dtype=bool)
    from dataset import load_mask
    from deploy.image_io import open_image

    return load_mask(Path(mask_path), size, open_image(image_path).size, Path(image_path)).numpy().astype(bool)


def calibrate(runner, items, description: dict, args) -> dict:
    measured = measure(runner, items, args)
    scores, labels = measured["scores"], measured["labels"]
    image = (cal.false_alarm_threshold(scores[~labels], args.max_false_alarm, args.min_exceedances)
             if args.max_false_alarm else None)
    pixel = measured["pixel"].result() if measured["pixel"] is not None else None
    f1_image = f1_pixel = None
    if args.data_path:
        f1_image = cal.f1_max_threshold(scores, labels)
        if measured["masks"].any():
            f1_pixel = cal.f1_max_threshold(measured["maps"], measured["masks"])
        else:
            log.warning("the labelled set marks no anomalous pixel: no pixel F1-max threshold")
    info = runner.info
    model = {"method": info.method, "runtime": runner.description, "precision": info.precision,
             "image_size": info.image_size, "set_normalization": info.set_normalization,
             "checkpoint": info.checkpoint or Path(args.checkpoint_path or "").name,
             "checkpoint_sha256": info.checkpoint_sha256 or (_sha256(args.checkpoint_path) if args.checkpoint_path
                                                            else "")}
    return cal.make_record(rule=args.rule, image=image, pixel=pixel, f1_image=f1_image, f1_pixel=f1_pixel,
                           calibration_set=description, model=model)


def _sha256(path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ---------------------------------------------------------------- writing the calibrated model

def write_checkpoint(source, output: Path, record: dict) -> None:
    from models.checkpoint import read_checkpoint
    from utils import atomic_torch_save

    state = read_checkpoint(source)
    state["calibration"] = record
    atomic_torch_save(state, output)


def write_exported(runner, source, output: Path, record: dict, fmt: str) -> None:
    """A copy of an export.py file with the calibration in its metadata (the graph and weights unchanged)."""
    import export

    info = replace(runner.info, calibration=record)
    with export.staged_files(output, fmt) as staged:
        if fmt == "onnx":
            import onnx

            export.save_onnx(onnx.load(str(source)), staged, info)
        else:
            import openvino as ov

            from deploy.runners import OPENVINO_RT_INFO, openvino_core

            model = openvino_core().read_model(str(source))
            for key, value in info.to_metadata().items():
                model.set_rt_info(value, [OPENVINO_RT_INFO, key])
            ov.save_model(model, str(staged), compress_to_fp16=False)  # the weights as they are in the source


def summary(record: dict) -> list[str]:
    described = record["calibration_set"]
    lines = [f"calibration set: {described['images']} image(s), {described['normal_images']} normal, sha256 "
             f"{described['sha256'][:16]}…"]
    measured = record["measured"]
    if measured["false_alarm_image"]:
        m = measured["false_alarm_image"]
        lines.append(f"false-alarm rule, image: rate <= {m['max_false_alarm']:g} of {m['normal_images']} normal -> "
                     f"threshold {m['threshold']:.6g} (order statistic {m['order_statistic']} of {m['normal_images']}, "
                     f"{m['flagged']} flagged = {m['measured_false_alarm']:.4g}); normal score quantiles "
                     + ", ".join(f"{k} {v:.4g}" for k, v in m["normal_score_quantiles"].items()))
    if measured["false_alarm_pixel"]:
        m = measured["false_alarm_pixel"]
        lines.append(f"false-alarm rule, pixel: rate <= {m['max_pixel_false_alarm']:g} of {m['normal_pixels']} normal "
                     f"pixels -> threshold {m['threshold']:.6g} ({m['flagged_pixels']} flagged = "
                     f"{m['measured_false_alarm']:.4g}; {m['images_with_flagged_pixels']} of {m['normal_images']} "
                     "normal images hold a flagged pixel)")
    for kind in ("image", "pixel"):
        m = measured[f"f1_max_{kind}"]
        if m:
            lines.append(f"F1-max, {kind}: threshold {m['threshold']:.6g}, F1 {m['f1']:.4f} (precision "
                         f"{m['precision']:.4f}, recall {m['recall']:.4f}; {m['positives']} anomalous, "
                         f"{m['negatives']} normal; false alarms {m['false_alarm_at_threshold']:.4g})")
    lines.append(f"decisions use rule {record['rule']}: image threshold {record['image_threshold']}, pixel threshold "
                 f"{record['pixel_threshold']} ({record['decision']})")
    return lines


def main(argv=None) -> dict:
    from utils import setup_logger

    args = parse_args(argv)
    output = check_output(args)
    chosen = calibration_set(args)  # counts and refusals before the model loads
    setup_logger("zsas.calibrate", None)
    runner = make_runner(args)
    if args.max_pixel_false_alarm:
        pixels = chosen["description"]["normal_images"] * runner.image_size ** 2
        cal.check_enough_images(pixels, args.max_pixel_false_alarm, args.min_exceedances, "--max_pixel_false_alarm",
                                what="normal pixels")
    log.info("calibrating %s (%s) on %d image(s)", runner.info.title, runner.description, len(chosen["items"]))
    record = calibrate(runner, chosen["items"], chosen["description"], args)
    if runner.info.set_normalization:
        log.info("%s normalises over the evaluated set: these thresholds are on its raw (unnormalised) score and "
                 "map; predict.py decides on those and shows the threshold on each run's normalised scale",
                 runner.info.title)
    if args.exported:
        write_exported(runner, args.exported, output, record, "onnx" if args.onnx else "openvino")
    else:
        write_checkpoint(args.checkpoint_path, output, record)
    if args.report:
        atomic_write_json(record, args.report)
    for line in summary(record):
        log.info("%s", line)
    log.info("wrote %s (the input model is unchanged)", output)
    return record


def cli():
    return run_cli(main, "calibrate.py")


if __name__ == "__main__":
    cli()
