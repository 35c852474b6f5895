"""INT8 post-training quantisation of an export.py fp32 file, with accuracy control against that fp32 file.

    python export.py --checkpoint_path epoch_10.pth --clip_weights ViT-L-14-336px.pt --output vip2_int8.xml \\
        --int8 --calibration_dir good_parts/ [--int8_eval_data data/mvtec] [--int8_max_map_diff 0.05]

Two back ends, picked by the output format:

* OpenVINO (`NAME.xml`): NNCF's post-training quantisation (`nncf.quantize`, transformer preset:
  SmoothQuant and fast bias correction), the calibration images as its data set;
* ONNX Runtime (`NAME.onnx`): `onnxruntime.quantization.quantize_static`, QDQ format, MinMax calibration,
  per-channel int8 weights and uint8 activations on MatMul / Gemm / Conv (what the CPU's VNNI units run).

Both start from the fp32 file export.py has just written and checked against PyTorch (1e-4). Accuracy
control: both files run on the calibration images and, when given, a labelled set; measured are the
largest and mean absolute difference of the anomaly maps, the largest difference of the image scores,
Spearman's rank correlation of the image scores, and on a labelled set the image AUROC and pixel AUROC
(pooled over the set, on the raw outputs, before any set normalisation) of each file and the change.
A calibrated model's decisions are compared too (images whose pass/defect flips). Past a bound
(`--int8_max_map_diff`, `--int8_max_mean_map_diff`, `--int8_min_spearman`, `--int8_max_auroc_drop`) the
file is refused (nothing written), or with `--int8_on_violation warn` written with a warning.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
from pathlib import Path

import numpy as np

from deploy.runners import (INPUT_NAME, METADATA_PREFIX, OPENVINO_RT_INFO, ExportedModelError, open_exported,
                            openvino_core)
from utils import positive_int

log = logging.getLogger("zsas.export")
REQUIRED = {"openvino": ("openvino", "nncf"), "onnx": ("onnxruntime",)}
DEFAULT_BOUNDS = {"max_map_diff": 0.05, "max_mean_map_diff": 0.01, "min_spearman": 0.95, "max_auroc_drop": 0.01}
CHECK_BATCH = 8


def add_int8_flags(parser) -> None:
    group = parser.add_argument_group("INT8 (post-training quantisation on the CPU, checked against the fp32 file)")
    group.add_argument("--int8", action="store_true",
                       help="quantise to INT8: OpenVINO + NNCF for NAME.xml, ONNX Runtime static quantisation for "
                            "NAME.onnx (needs --calibration_dir)")
    group.add_argument("--calibration_dir", metavar="DIR",
                       help="images the quantiser calibrates on (recursive; production-like, normal parts are fine); "
                            "the accuracy check runs on them too")
    group.add_argument("--int8_max_images", type=positive_int, default=300,
                       help="use at most this many calibration images (sorted by path)")
    group.add_argument("--int8_eval_data", metavar="ROOT",
                       help="a labelled set (meta.json root): also compare image and pixel AUROC of fp32 and INT8")
    for name, value in DEFAULT_BOUNDS.items():
        what = {"max_map_diff": "largest |map difference| to the fp32 file",
                "max_mean_map_diff": "mean |map difference| to the fp32 file",
                "min_spearman": "smallest Spearman rank correlation of image scores with the fp32 file",
                "max_auroc_drop": "largest drop of image or pixel AUROC (with --int8_eval_data)"}[name]
        group.add_argument(f"--int8_{name}", type=float, default=value, metavar="X", help=f"bound: {what}")
    group.add_argument("--int8_on_violation", choices=("refuse", "warn"), default="refuse",
                       help="past a bound: write nothing (non-zero exit), or write the file and warn")


def check_int8_args(args) -> None:
    """Before any model work: the flags fit together and the back end is installed."""
    if not args.int8:
        if args.calibration_dir or args.int8_eval_data:
            raise ExportedModelError("--calibration_dir / --int8_eval_data are for --int8")
        return
    if args.precision != "fp32":
        raise ExportedModelError("--int8 quantises the fp32 graph: drop --precision fp16")
    if not args.calibration_dir:
        raise ExportedModelError("--int8 needs --calibration_dir DIR: images the quantiser calibrates on")
    missing = [name for name in REQUIRED[args.format] if importlib.util.find_spec(name) is None]
    if missing:
        other = "onnx" if args.format == "openvino" else "openvino"
        raise ExportedModelError(f"--int8 --format {args.format} needs {', '.join(missing)}: pip install "
                                 f"{' '.join(missing)} (or --format {other})")


def calibration_images(folder, size: int, limit: int) -> np.ndarray:
    from deploy.calibration import list_images
    from deploy.image_io import read_image_array

    paths = list_images(folder)[:limit]
    if not paths:
        raise ExportedModelError(f"--calibration_dir {folder}: no image files in it")
    return np.stack([read_image_array(path, size)[0] for path in paths])


def eval_set(root, size: int) -> dict:
    """A labelled set's images, labels and masks (dataset.py's reading)."""
    from dataset import AnomalyDataset

    dataset = AnomalyDataset(root, size)
    items = [dataset[i] for i in range(len(dataset))]
    return {"images": np.stack([item["img"].numpy() for item in items]),
            "labels": np.array([item["anomaly"] for item in items], dtype=bool),
            "masks": np.stack([item["img_mask"].numpy() > 0 for item in items])}


# ---------------------------------------------------------------- quantising

def _batches(images: np.ndarray, size: int = 1) -> list[np.ndarray]:
    return [images[i:i + size] for i in range(0, len(images), size)]


def describe(fmt: str, count: int) -> str:
    """What the quantiser does, for the file's `exporter` metadata."""
    if fmt == "openvino":
        import nncf
        import openvino as ov

        return (f"INT8: NNCF {nncf.__version__} post-training quantisation (transformer preset) for OpenVINO "
                f"{ov.__version__.split('-')[0]}, {count} calibration image(s)")
    import onnxruntime

    return (f"INT8: ONNX Runtime {onnxruntime.__version__} static quantisation (QDQ, MinMax, per-channel int8 weights, "
            f"uint8 activations; MatMul/Gemm/Conv), {count} calibration image(s)")


def quantize_onnx(fp32_path, output, images: np.ndarray, info) -> None:
    """ONNX Runtime static quantisation, `info` (a ModelInfo) in the file's metadata."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(_batches(images))

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {INPUT_NAME: batch}

    if Path(str(fp32_path) + ".data").exists():
        raise ExportedModelError("INT8 through ONNX Runtime takes single-file models (under 2 GB); this one keeps its "
                                 "weights in a .data file: use --format openvino (NNCF)")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its advice to pre-process (shape inference) is not the user's business
    try:
        quantize_static(str(fp32_path), str(output), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=["MatMul", "Gemm", "Conv"])
    finally:
        root.setLevel(level)
    proto = onnx.load(str(output))
    del proto.metadata_props[:]
    for key, value in info.to_metadata().items():
        proto.metadata_props.add(key=METADATA_PREFIX + key, value=value)
    onnx.save_model(proto, str(output))


def quantize_openvino(fp32_path, output, images: np.ndarray, info) -> None:
    """NNCF post-training quantisation of the fp32 OpenVINO model export.py wrote, `info` in its rt_info."""
    import nncf
    import openvino as ov

    model = openvino_core().read_model(str(fp32_path))
    quantized = nncf.quantize(model, nncf.Dataset(_batches(images)), model_type=nncf.ModelType.TRANSFORMER,
                              subset_size=len(images))
    for key, value in info.to_metadata().items():
        quantized.set_rt_info(value, [OPENVINO_RT_INFO, key])
    ov.save_model(quantized, str(output), compress_to_fp16=False)


# ---------------------------------------------------------------- accuracy control

def _run(runner, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    outputs = [runner(batch) for batch in _batches(images, CHECK_BATCH)]
    return np.concatenate([m for m, _ in outputs]), np.concatenate([s for _, s in outputs])


def compare_outputs(fp32, int8) -> dict:
    """Figures of two runs' (maps, scores) on the same images."""
    from scipy.stats import spearmanr

    (maps, scores), (maps8, scores8) = fp32, int8
    difference = np.abs(maps8.astype(np.float64) - maps)
    spearman = float(spearmanr(scores, scores8).statistic) if len(scores) >= 3 else float("nan")
    return {"images": int(len(scores)), "max_map_diff": float(difference.max()),
            "mean_map_diff": float(difference.mean()), "max_score_diff": float(np.abs(scores8 - scores).max()),
            "spearman": spearman, "finite": bool(np.isfinite(maps8).all() and np.isfinite(scores8).all())}


def auroc_change(fp32, int8, labelled: dict) -> dict:
    from sklearn.metrics import roc_auc_score

    result = {}
    for kind, truth, index in (("image", labelled["labels"], 1), ("pixel", labelled["masks"], 0)):
        if truth.all() or not truth.any():
            result[kind] = None  # AUROC undefined with one class only
            continue
        before, after = (float(roc_auc_score(truth.ravel(), run[index].ravel())) for run in (fp32, int8))
        result[kind] = {"fp32": before, "int8": after, "drop": before - after}
    return result


def decision_changes(record: dict, fp32, int8) -> dict | None:
    """How many calibration images change decision, and the pixels whose mask flips, under a carried calibration."""
    from deploy.calibration import check_record, decide

    record = check_record(record)
    if not record:
        return None
    (defects, masks), (defects8, masks8) = decide(record, fp32[1], fp32[0]), decide(record, int8[1], int8[0])
    return {"images_flipped": None if defects is None else int((defects != defects8).sum()),
            "mask_pixels_flipped": None if masks is None else float((masks != masks8).mean())}


def violations(report: dict, bounds: dict) -> list[str]:
    found = []
    on_calibration = report["calibration_images"]
    if not on_calibration["finite"]:
        found.append("the INT8 file returns NaN or infinite values")
    if on_calibration["max_map_diff"] > bounds["max_map_diff"]:
        found.append(f"largest map difference {on_calibration['max_map_diff']:.4g} > --int8_max_map_diff "
                     f"{bounds['max_map_diff']:g}")
    if on_calibration["mean_map_diff"] > bounds["max_mean_map_diff"]:
        found.append(f"mean map difference {on_calibration['mean_map_diff']:.4g} > --int8_max_mean_map_diff "
                     f"{bounds['max_mean_map_diff']:g}")
    if np.isfinite(on_calibration["spearman"]) and on_calibration["spearman"] < bounds["min_spearman"]:
        found.append(f"Spearman rank correlation of image scores {on_calibration['spearman']:.4f} < "
                     f"--int8_min_spearman {bounds['min_spearman']:g}")
    for kind, figures in (report.get("auroc") or {}).items():
        if figures and figures["drop"] > bounds["max_auroc_drop"]:
            found.append(f"{kind} AUROC {figures['fp32']:.4f} -> {figures['int8']:.4f} (drop {figures['drop']:.4f} "
                         f"> --int8_max_auroc_drop {bounds['max_auroc_drop']:g})")
    return found


def quantize_and_check(fp32_path, output, fmt: str, images: np.ndarray, *, bounds: dict, on_violation: str = "refuse",
                       labelled: dict | None = None) -> dict:
    """Write the INT8 file to `output` (a staged path: the caller renames it into place), compare it with the fp32
    file, and raise ExportedModelError past a bound when `on_violation` is refuse."""
    fp32_runner = open_exported(fp32_path)
    log.info("quantising to INT8 on %d calibration image(s) (%s)", len(images),
             "NNCF / OpenVINO" if fmt == "openvino" else "ONNX Runtime static quantisation")
    description = describe(fmt, len(images))
    info = dataclasses.replace(fp32_runner.info, precision="int8",
                               exporter=f"{fp32_runner.info.exporter}; {description}")
    (quantize_openvino if fmt == "openvino" else quantize_onnx)(fp32_path, output, images, info)
    int8_runner = open_exported(output)
    log.info("checking the INT8 file against the fp32 file")
    fp32, int8 = _run(fp32_runner, images), _run(int8_runner, images)
    report = {"quantizer": description, "calibration_images": compare_outputs(fp32, int8), "bounds": dict(bounds),
              "decisions": decision_changes(info.calibration, fp32, int8), "auroc": None}
    if labelled is not None:
        fp32_l, int8_l = _run(fp32_runner, labelled["images"]), _run(int8_runner, labelled["images"])
        report["labelled_images"] = compare_outputs(fp32_l, int8_l)
        report["auroc"] = auroc_change(fp32_l, int8_l, labelled)
    report["violations"] = violations(report, bounds)
    log.info("INT8 vs fp32: %s", json.dumps(report["calibration_images"]))
    if report["auroc"]:
        log.info("AUROC fp32 -> INT8: %s", json.dumps(report["auroc"]))
    if report["decisions"]:
        log.info("calibrated decisions under INT8: %s", json.dumps(report["decisions"]))
    if report["violations"]:
        message = "; ".join(report["violations"])
        if on_violation == "refuse":
            del int8_runner
            raise ExportedModelError(f"the INT8 file is outside the accuracy bounds ({message}); nothing was "
                                     "written. Loosen the --int8_* bounds, calibrate on more representative "
                                     "images, or keep the fp32 file")
        log.warning("the INT8 file is outside the accuracy bounds (%s); written anyway (--int8_on_violation warn)",
                    message)
    return report
