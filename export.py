"""Export a model to ONNX or OpenVINO: uint8 RGB images in, smoothed anomaly maps and image scores out.

    python export.py --checkpoint_path checkpoints/mvtec_train/epoch_10.pth --clip_weights ViT-L-14-336px.pt \\
        --output vip2.onnx
    python export.py --model vcp --checkpoint_path train_visa.pth --clip_weights ViT-L-14-336px.pt \\
        --format openvino --output vcp.xml
    python predict.py photos/ --onnx vip2.onnx --out predictions/      # runs it, no PyTorch needed

The graph takes `image`, uint8 RGB [B, 3, S, S] (B dynamic), and returns `anomaly_map`,
float32 [B, S, S] (smoothed, as test.py reports it before any set-level step), and
`image_score`, float32 [B]. CLIP normalisation, the whole model, the upsampling and the
Gaussian smoothing are inside; decoding and the resize to S x S (PIL bicubic) stay
outside (docs/DEPLOY.md). VCP-CLIP normalises maps and scores over the evaluated set:
its graph returns them before that step (predict.py --onnx applies it).

After writing, the file is run with its runtime on batches of 1 and 3 images and compared
with PyTorch; an fp32 file off by more than 1e-4 is not kept (non-zero exit). The method,
image size, sigma, every model setting and the checkpoint's sha256 are recorded in the
file: ONNX metadata_props `zsas.*`, OpenVINO rt_info `zsas`. The file appears only once
written and checked (an OpenVINO .xml after its .bin).
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

from models import get_method
from models.settings import add_method_flag, add_setting_flags, method_from_argv, values_from_args
from deploy.runners import FORMAT_SUFFIXES, INPUT_NAME, OUTPUT_NAMES, ExportedModelError, ModelInfo
from engine.cli import CHECKPOINT_HELP, add_checkpoint_flags, add_overwrite_flag, checkpoint_problem
from utils import HelpFormatter, OutputError, check_output_file, run_cli

OPSET = 18
FP32_TOLERANCE = 1e-4
FP16_WARNING = 1e-2  # fp16 files are checked and reported, not refused, past this they are worth a look
EXPORT_BATCH = 2  # traced with B=2 (B=1 would let the tracer treat the batch as a constant), checked with 1 and 3
CHECK_BATCHES = (1, 3)
ONNX_SINGLE_FILE_LIMIT = 1_800_000_000  # protobuf's 2 GiB ceiling, with room for the graph itself
REQUIRED = {"onnx": ("onnx", "onnxscript", "onnxruntime"), "openvino": ("onnx", "onnxscript", "openvino")}

log = logging.getLogger("zsas.export")


def build_parser(method_name: str) -> argparse.ArgumentParser:
    method = get_method(method_name)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_method_flag(parser, method_name)
    output = parser.add_argument_group("output")
    output.add_argument("--output", required=True, metavar="FILE",
                        help="the file to write: NAME.onnx, or NAME.xml for OpenVINO (its NAME.bin beside it)")
    output.add_argument("--format", choices=tuple(FORMAT_SUFFIXES), default=None,
                        help="onnx (ONNX Runtime) or openvino (an OpenVINO IR); default: what --output's suffix says")
    output.add_argument("--precision", choices=("fp32", "fp16"), default="fp32",
                        help="the exported file's arithmetic (not autocast, as --precision is in the other scripts: "
                             "a file has one precision): fp32 (checked against PyTorch to 1e-4), or fp16: ONNX with float16 weights and "
                             "arithmetic, OpenVINO with float16 weights (the device picks its precision)")
    add_overwrite_flag(output, "an existing --output")
    model = parser.add_argument_group(f"model ({method.title}; settings a train.py checkpoint records are read "
                                      "from it)")
    add_checkpoint_flags(model, checkpoint_help=CHECKPOINT_HELP + " (required unless the method is training-free)")
    add_setting_flags(model, method.config, "test")
    from models import fewshot

    fewshot.add_class_flag(model)
    fewshot.add_flags(parser)

    from deploy.quantize import add_int8_flags

    add_int8_flags(parser)  # --int8 --calibration_dir ... (deploy/quantize.py)
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    args = build_parser(method_from_argv(argv)).parse_args(argv)
    suffix = Path(args.output).suffix.lower()
    if args.format is None:
        args.format = next((name for name, expected in FORMAT_SUFFIXES.items() if expected == suffix), "onnx")
    if suffix != FORMAT_SUFFIXES[args.format]:
        raise OutputError(f"--output {args.output}: a --format {args.format} file must end in "
                          f"{FORMAT_SUFFIXES[args.format]}")
    return args


# ---------------------------------------------------------------- outputs

def output_files(path: Path, fmt: str) -> list[Path]:
    """Every file an export writes, the one to open last (OpenVINO reads NAME.bin beside NAME.xml)."""
    if fmt == "openvino":
        return [path.with_suffix(".bin"), path]
    return [path.with_name(path.name + ".data"), path]  # the data file only for models past 2 GiB


def check_outputs(path: Path, fmt: str, overwrite: bool) -> None:
    for target in output_files(path, fmt):
        check_output_file(target, "--output", overwrite=overwrite)


@contextlib.contextmanager
def staged_files(path: Path, fmt: str):
    """A folder beside `path` to write the export into under its final name(s); once the body succeeds,
    the files are renamed into place, the one that is opened last after the others (`utils.atomic_file`
    for a file that comes with a companion). On failure nothing is left."""
    path.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield stage / path.name
        companion, main_file = output_files(path, fmt)
        for target in (companion, main_file):
            staged = stage / target.name
            if staged.exists():
                with open(staged, "rb+") as file:  # on disk before it gets its name, as utils.atomic_file does
                    os.fsync(file.fileno())
                staged.replace(target)
            elif target == companion and target.exists():
                target.unlink()  # an earlier export's data file that this one does not need (--overwrite)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def sha256_of(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_dependencies(fmt: str) -> None:
    """Fail before the model loads, with the install line, when the exporter or the runtime is missing."""
    import importlib.util

    missing = [name for name in REQUIRED[fmt] if importlib.util.find_spec(name) is None]
    if missing:
        raise ExportedModelError(f"--format {fmt} needs {', '.join(missing)}: pip install {' '.join(missing)} "
                                 "(docs/DEPLOY.md)")


# ---------------------------------------------------------------- export

def model_info(model, precision: str, checkpoint=None, fmt: str = "onnx", bound=None, calibration=None) -> ModelInfo:
    import open_clip
    import torch

    exporter = f"torch {torch.__version__}, open_clip {open_clip.__version__}, ONNX opset {OPSET}"
    if fmt == "openvino":
        import openvino

        exporter += f", OpenVINO {openvino.__version__}"
    return ModelInfo.of_model(model, precision, checkpoint, exporter=exporter,
                              checkpoint_sha256=sha256_of(checkpoint) if checkpoint else "", bound=dict(bound or {}),
                              calibration=dict(calibration or {}))  # calibrate.py's thresholds


def sample_images(batch: int, size: int, seed: int = 0):
    """Smooth random RGB images (a texture at 1/8 resolution, resized): the kind of input the check should see."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = []
    for _ in range(batch):
        small = (rng.random((max(1, size // 8), max(1, size // 8), 3)) * 255).astype(np.uint8)
        images.append(np.asarray(Image.fromarray(small).resize((size, size), Image.BICUBIC)).transpose(2, 0, 1))
    return np.ascontiguousarray(np.stack(images))


def forget_cached_tensors(model) -> None:
    """Empty the models' caches of constant tensors (the `functools.lru_cache`s of `models.*`, and dicts named
    `*_cache` on the model's modules): filled under `torch.inference_mode` they hold inference tensors, which
    torch.export cannot take as constants. The warm-up in `trace` fills them again."""
    for name, module in list(sys.modules.items()):
        if name == "models" or name.startswith("models."):
            for value in list(vars(module).values()):
                if callable(getattr(value, "cache_clear", None)):
                    value.cache_clear()
    for submodule in model.modules():
        for key, value in vars(submodule).items():
            if key.endswith("_cache") and isinstance(value, dict):
                value.clear()


def trace(model):
    """`torch.export` with a symbolic batch: an error here, not a file fixed to one batch size, when some code
    pins it. Runs the model once first (with fresh caches), so the cached constants (CLIP statistics, blur
    matrices, the resized positional embedding) are plain tensors and not the tracer's placeholders."""
    import torch

    forget_cached_tensors(model)
    sample = torch.from_numpy(sample_images(EXPORT_BATCH, model.image_size))
    with torch.no_grad():
        model(sample)
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*lru_cache.*")  # the caches are constants by now (above)
        try:
            return torch.export.export(model, (sample,), dynamic_shapes=({0: batch},), strict=False)
        except torch._dynamo.exc.UserError as error:
            raise ExportedModelError(f"the model's code fixes the batch size, so no graph with a dynamic batch can "
                                     f"be written ({str(error).splitlines()[0]}); this is a bug to report") from None


def to_onnx_proto(program, precision: str):
    """The traced program as an ONNX ModelProto, the batch axis named `batch`; fp16: weights and arithmetic in
    float16, the uint8 input and float32 outputs kept (the Gaussian's float64 stays float64)."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onnx_program = torch.onnx.export(program, (), input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                                         opset_version=OPSET, dynamo=True, verbose=False)
    proto = onnx_program.model_proto
    if precision == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        proto = convert_float_to_float16(proto, keep_io_types=True)
    batch_symbol = proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    if batch_symbol:
        for value in (*proto.graph.input, *proto.graph.output, *proto.graph.value_info):
            for dim in value.type.tensor_type.shape.dim:
                if dim.dim_param == batch_symbol:
                    dim.dim_param = "batch"
    return proto


def save_onnx(proto, path: Path, info: ModelInfo) -> None:
    import onnx

    from deploy.runners import METADATA_PREFIX

    del proto.metadata_props[:]
    for key, value in info.to_metadata().items():
        proto.metadata_props.add(key=METADATA_PREFIX + key, value=value)
    proto.doc_string = (f"{info.title} anomaly maps and scores: image uint8 RGB [B, 3, {info.image_size}, "
                        f"{info.image_size}] -> anomaly_map float32 [B, S, S], image_score float32 [B]")
    large = sum(len(t.raw_data) for t in proto.graph.initializer) > ONNX_SINGLE_FILE_LIMIT
    onnx.save_model(proto, str(path), save_as_external_data=large, all_tensors_to_one_file=True,
                    location=path.name + ".data")


def save_openvino(onnx_path: Path, path: Path, info: ModelInfo) -> None:
    """The fp32 ONNX file converted to an OpenVINO IR, the settings in its rt_info; fp16 compresses the weights."""
    import openvino as ov

    from deploy.runners import OPENVINO_RT_INFO

    ov_model = ov.convert_model(str(onnx_path))
    for key, value in info.to_metadata().items():
        ov_model.set_rt_info(value, [OPENVINO_RT_INFO, key])
    ov.save_model(ov_model, str(path), compress_to_fp16=info.precision == "fp16")  # OpenVINO's default is True


def compare(model, runner) -> dict:
    """Largest absolute differences of maps and scores between PyTorch and the exported file, per batch size."""
    import numpy as np
    import torch

    report = {}
    for batch in CHECK_BATCHES:
        images = sample_images(batch, model.image_size, seed=batch)
        with torch.inference_mode():
            maps, scores = model(torch.from_numpy(images))
        exported_maps, exported_scores = runner(images)
        if exported_maps.shape != tuple(maps.shape) or exported_scores.shape != tuple(scores.shape):
            raise ExportedModelError(f"the exported graph returned shapes {exported_maps.shape} and "
                                     f"{exported_scores.shape} for a batch of {batch}; expected {tuple(maps.shape)} "
                                     f"and {tuple(scores.shape)}")
        finite = bool(np.isfinite(exported_maps).all() and np.isfinite(exported_scores).all())
        report[batch] = {"map": float(np.abs(exported_maps - maps.numpy()).max()),
                         "score": float(np.abs(exported_scores - scores.numpy()).max()), "finite": finite}
    return report


def export_model(model, output, fmt: str = "onnx", precision: str = "fp32", checkpoint=None, bound=None,
                 calibration=None) -> dict:
    """Write `model` (an AnomalyModel on the CPU, eval mode) to `output`, check it against PyTorch, return the
    check's figures. Raises ExportedModelError, leaving no file, when an fp32 file is off by more than 1e-4."""
    from deploy.runners import OnnxRunner, OpenVinoRunner

    output = Path(output)
    info = model_info(model, precision, checkpoint, fmt, bound, calibration)
    start = time.time()
    log.info("tracing %s at %d px with a dynamic batch (torch.export)", info.title, info.image_size)
    program = trace(model)
    log.info("converting to ONNX opset %d%s (%.0f s so far)", OPSET, ", float16" if fmt == "onnx" and
             precision == "fp16" else "", time.time() - start)
    proto = to_onnx_proto(program, precision if fmt == "onnx" else "fp32")
    with staged_files(output, fmt) as staged:
        if fmt == "onnx":
            save_onnx(proto, staged, info)
            runner = OnnxRunner(staged)
        else:
            onnx_path = staged.with_name(staged.stem + ".intermediate.onnx")
            save_onnx(proto, onnx_path, info)
            log.info("converting to OpenVINO IR%s", ", float16 weights" if precision == "fp16" else "")
            save_openvino(onnx_path, staged, info)
            for leftover in (onnx_path, onnx_path.with_name(onnx_path.name + ".data")):
                leftover.unlink(missing_ok=True)
            runner = OpenVinoRunner(staged)
        log.info("checking %s against PyTorch on batches of %s", runner.description.split(",")[0],
                 " and ".join(map(str, CHECK_BATCHES)))
        report = compare(model, runner)
        for batch, figures in report.items():
            log.info("  batch %d: largest difference from PyTorch %.3g (maps), %.3g (scores)", batch,
                     figures["map"], figures["score"])
        worst = max(max(f["map"], f["score"]) for f in report.values())
        if not all(f["finite"] for f in report.values()):
            raise ExportedModelError(f"the exported {precision} model returns NaN or infinite values; nothing was "
                                     f"written to {output}")
        if precision == "fp32" and worst > FP32_TOLERANCE:
            raise ExportedModelError(f"the exported model differs from PyTorch by {worst:.3g} (> {FP32_TOLERANCE:g}); "
                                     f"nothing was written to {output}. This is a bug to report, with the log above")
        if precision == "fp16" and worst > FP16_WARNING:
            log.warning("the fp16 model differs from PyTorch by %.3g: check its maps before relying on them", worst)
    log.info("wrote %s (%s, %s) in %.0f s; largest difference from PyTorch %.3g", output, fmt, precision,
             time.time() - start, worst)
    return {"output": str(output), "format": fmt, "precision": precision, "check": report, "max_difference": worst,
            "seconds": time.time() - start, "info": info}


def main(argv=None) -> dict:
    args = parse_args(argv)
    method = get_method(args.model)
    output = Path(args.output)
    check_outputs(output, args.format, args.overwrite)  # before the long work
    check_dependencies(args.format)
    from deploy.quantize import check_int8_args

    check_int8_args(args)

    from models import create_model
    from models.checkpoint import read_checkpoint
    from utils import setup_logger

    problem = checkpoint_problem(method, args.checkpoint_path, "export.py")
    if problem:
        raise ValueError(problem)
    # an unreadable file is one line, before any log; a training-free method reads none
    checkpoint = read_checkpoint(args.checkpoint_path) if args.checkpoint_path else {}
    setup_logger("zsas.export", None)
    log.info("building %s from %s on CLIP %s", method.title, args.checkpoint_path or "no checkpoint",
             args.clip_weights)
    model = create_model(method.name, clip_weights=args.clip_weights, checkpoint=checkpoint or None,
                         checkpoint_name=args.checkpoint_path, device="cpu", **values_from_args(args, method.config))
    from models import fewshot

    bound = fewshot.bind(model, args, "cpu")  # the class a class-conditioned model names; few-shot references
    calibration = dict(checkpoint.get("calibration") or {})  # calibrate.py's thresholds travel with the file
    if args.int8:
        return export_int8(model, output, args, bound=bound, calibration=calibration)
    return export_model(model, output, args.format, args.precision, checkpoint=args.checkpoint_path, bound=bound,
                        calibration=calibration)


def export_int8(model, output: Path, args, bound=None, calibration=None) -> dict:
    """The fp32 file (checked against PyTorch) in a scratch folder, then its INT8 quantisation, checked against it
    (deploy/quantize.py); only an INT8 file within the bounds (or --int8_on_violation warn) reaches `output`."""
    from deploy import quantize

    images = quantize.calibration_images(args.calibration_dir, model.image_size, args.int8_max_images)
    labelled = quantize.eval_set(args.int8_eval_data, model.image_size) if args.int8_eval_data else None
    bounds = {name: getattr(args, f"int8_{name}") for name in quantize.DEFAULT_BOUNDS}
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{output.name}.fp32.", dir=output.parent) as scratch:
        fp32 = export_model(model, Path(scratch) / f"fp32{FORMAT_SUFFIXES[args.format]}", args.format, "fp32",
                            checkpoint=args.checkpoint_path, bound=bound, calibration=calibration)
        with staged_files(output, args.format) as staged:
            report = quantize.quantize_and_check(fp32["output"], staged, args.format, images, bounds=bounds,
                                                 on_violation=args.int8_on_violation, labelled=labelled)
    log.info("wrote %s (%s, INT8): largest map difference from the fp32 file %.3g", output, args.format,
             report["calibration_images"]["max_map_diff"])
    return {**fp32, "output": str(output), "precision": "int8", "int8": report}


def cli():
    return run_cli(main, "export.py")


if __name__ == "__main__":
    cli()
