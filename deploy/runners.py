"""One interface over the three ways to run a model: a PyTorch model, an ONNX Runtime session, an OpenVINO model.

    runner = open_exported("vip2.onnx")              # or load_torch_runner("vip2", checkpoint=..., ...)
    maps, scores = runner(images)                    # uint8 [N, 3, S, S] -> float32 [N, S, S], [N]
    if runner.info.set_normalization:                # VCP-CLIP: min-max over the evaluated set
        maps, scores = normalize_over_set(maps, scores)

`predict.py` and `demo.py` see nothing else. Importing this module imports neither torch
nor the project's `models`: an exported file runs with NumPy and its runtime alone, and
its settings (method, image size, set normalisation) come from the metadata `export.py`
wrote into it (`ModelInfo`).
"""
from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import numpy as np

from engine.outputs import OUTPUT_NAMES, InferenceBatch


EXPORT_FORMAT = "zsas-export/1"
METADATA_PREFIX = "zsas."  # ONNX metadata_props keys; OpenVINO keeps the same keys under rt_info["zsas"]
OPENVINO_RT_INFO = "zsas"
INPUT_NAME = "image"
FORMAT_SUFFIXES = {"onnx": ".onnx", "openvino": ".xml"}


class ExportedModelError(ValueError):
    """An exported model that cannot be run here; the message names the file and the fix."""


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What an exported file records about the model it holds (export.py writes it, runners read it)."""

    method: str
    title: str
    image_size: int
    sigma: float
    set_normalization: bool  # True: min-max maps and scores over the evaluated set (VCP-CLIP)
    precision: str = "fp32"
    settings: dict = dataclasses.field(default_factory=dict)  # every model setting, test-time ones included
    checkpoint: str = ""  # the checkpoint's file name
    checkpoint_sha256: str = ""
    clip_fingerprint: str = ""
    exporter: str = ""  # torch, open_clip and opset versions
    format: str = EXPORT_FORMAT
    bound: dict = dataclasses.field(default_factory=dict)  # class name and few-shot references a model was given
    calibration: dict = dataclasses.field(default_factory=dict)  # calibrate.py's thresholds, {} when none

    @classmethod
    def of_model(cls, model, precision: str = "fp32", checkpoint=None, **recorded) -> ModelInfo:
        """What a `models.create_model` model is, for a runner's logs and an exported file's metadata."""
        from models import get_method
        from models.settings import to_dict

        return cls(method=model.method, title=get_method(model.method).title, image_size=model.image_size,
                   sigma=float(model.config.sigma), set_normalization=bool(model.set_normalization),
                   precision=precision, settings=to_dict(model.config),
                   checkpoint=Path(checkpoint).name if checkpoint else "", clip_fingerprint=model.clip_fingerprint,
                   **recorded)

    def to_metadata(self) -> dict[str, str]:
        """Flat string pairs: strings as they are, everything else as JSON."""
        values = dataclasses.asdict(self)
        return {key: value if isinstance(value, str) else json.dumps(value, sort_keys=True)
                for key, value in values.items()}

    @classmethod
    def from_metadata(cls, metadata: dict[str, str], path) -> ModelInfo:
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if "method" not in metadata or "image_size" not in metadata:
            raise ExportedModelError(f"{path} records no model settings (no '{METADATA_PREFIX}method' metadata): "
                                     "it was not written by export.py; export the checkpoint with export.py")
        values = {}
        for key, text in metadata.items():
            if key not in fields:
                continue  # a newer export.py may record more
            try:
                values[key] = text if fields[key].type == "str" else json.loads(text)
            except json.JSONDecodeError:
                raise ExportedModelError(f"{path}: its metadata {key}={text!r} is not valid; export it again "
                                         "with export.py") from None
        return cls(**values)


class Runner:
    """uint8 RGB `[N, 3, S, S]` NumPy batch -> (smoothed maps `[N, S, S]`, image scores `[N]`), float32 NumPy,
    before any set-level step."""

    info: ModelInfo
    description: str  # for logs: the runtime, the device and the file

    def __call__(self, images: np.ndarray) -> InferenceBatch:
        raise NotImplementedError

    @property
    def image_size(self) -> int:
        return self.info.image_size


class TorchRunner(Runner):
    """A model built by `models.create_model`."""

    def __init__(self, model, device, precision: str = "fp32", source: str = "", calibration: dict | None = None):
        self.model, self.device, self.precision = model, device, precision
        self.info = ModelInfo.of_model(model, precision, source, calibration=calibration or {})
        self.description = f"PyTorch on {device}, precision {precision}" + (f", {source}" if source else "")

    def __call__(self, images: np.ndarray) -> InferenceBatch:
        import torch

        from engine.devices import autocast

        with torch.inference_mode(), autocast(self.precision, self.device):
            maps, scores = self.model(torch.from_numpy(np.ascontiguousarray(images)).to(self.device))
        return InferenceBatch(maps.float().cpu().numpy(), scores.float().cpu().numpy())


def load_torch_runner(method: str, *, checkpoint, clip_weights: str = "openai", device: str = "auto",
                      precision: str = "fp32", bind_args=None, **settings) -> TorchRunner:
    """A checkpoint on its CLIP, as predict.py has always run it. `bind_args` (predict.py's arguments): the class
    name and few-shot references of methods that take them (`models.fewshot.bind`)."""
    from engine.devices import configure_precision, resolve_device
    from models import create_model
    from models.checkpoint import read_checkpoint

    resolved = resolve_device(device)  # a torch.device passes through as it is
    configure_precision(precision)
    # read once: the model's weights and calibrate.py's thresholds (none for a training-free method)
    state = read_checkpoint(checkpoint) if checkpoint else None
    model = create_model(method, clip_weights=clip_weights, checkpoint=state, checkpoint_name=checkpoint or None,
                         device=resolved, **settings)
    calibration = checkpoint_calibration(state) if state is not None else {}
    bound = {}
    if bind_args is not None:
        from models import fewshot

        bound = fewshot.bind(model, bind_args, resolved)
    runner = TorchRunner(model, resolved, precision, str(checkpoint or ""), calibration=calibration)
    runner.info = dataclasses.replace(runner.info, bound=bound)
    return runner


def checkpoint_calibration(checkpoint) -> dict:
    """The thresholds calibrate.py stored in a checkpoint (a path or the dict read from it; {} when none)."""
    from models.checkpoint import read_checkpoint

    state = checkpoint if isinstance(checkpoint, dict) else read_checkpoint(checkpoint)
    return dict(state.get("calibration") or {})


class OnnxRunner(Runner):
    """An export.py ONNX file on ONNX Runtime (CPU, or CUDA with onnxruntime-gpu)."""

    def __init__(self, path, device: str = "auto", threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise ExportedModelError(f"{path}: running an ONNX file needs ONNX Runtime: pip install onnxruntime") \
                from None
        available = ort.get_available_providers()
        if device in ("auto", "cpu"):
            providers = ["CPUExecutionProvider"]
        elif device.startswith("cuda"):
            if "CUDAExecutionProvider" not in available:
                raise ExportedModelError(f"--device {device}: this ONNX Runtime has no CUDA provider (it has "
                                         f"{', '.join(available)}); pip install onnxruntime-gpu, or use --device cpu")
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        else:
            raise ExportedModelError(f"--device {device}: ONNX Runtime runs here on 'cpu' or 'cuda'")
        options = ort.SessionOptions()
        options.log_severity_level = 3  # its warnings about unused initialisers are not the user's business
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as error:  # ORT raises its own exception types for unreadable files
            reason = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
            raise ExportedModelError(f"{path} cannot be loaded by ONNX Runtime ({reason}); pass a file written "
                                     "by export.py --format onnx") from None
        metadata = self.session.get_modelmeta().custom_metadata_map
        self.info = ModelInfo.from_metadata(
            {k.removeprefix(METADATA_PREFIX): v for k, v in metadata.items() if k.startswith(METADATA_PREFIX)}, path)
        self.description = f"ONNX Runtime {ort.__version__} ({self.session.get_providers()[0]}), {path}"

    def __call__(self, images: np.ndarray) -> InferenceBatch:
        maps, scores = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: np.ascontiguousarray(images, np.uint8)})
        return InferenceBatch(maps, scores)


class OpenVinoRunner(Runner):
    """An export.py OpenVINO IR (`.xml` + `.bin`), settings in its rt_info; fp32 files run at f32 precision."""

    def __init__(self, path, device: str = "auto", threads: int | None = None):
        try:
            import openvino as ov
        except ImportError:
            raise ExportedModelError(f"{path}: running an OpenVINO model needs OpenVINO: pip install openvino") \
                from None
        core = openvino_core()
        try:
            model = core.read_model(str(path))
        except Exception as error:
            reason = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
            raise ExportedModelError(f"{path} cannot be read by OpenVINO ({reason}); pass the .xml written by "
                                     "export.py --format openvino, with its .bin beside it") from None
        self.info = ModelInfo.from_metadata(read_openvino_metadata(model), path)
        config = {}
        if self.info.precision in ("fp32", "int8"):  # CPUs with bf16 units would otherwise run in bf16 by default
            config["INFERENCE_PRECISION_HINT"] = "f32"
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        target = "CPU" if device in ("auto", "cpu") else device.upper()
        try:
            self.compiled = core.compile_model(model, target, config)
        except Exception as error:
            reason = str(error).strip().splitlines()[0][:300]
            raise ExportedModelError(f"--device {device}: OpenVINO cannot compile {path} there ({reason}); "
                                     f"its devices here: {', '.join(core.available_devices)}") from None
        self.outputs = [self.compiled.output(name) for name in OUTPUT_NAMES]
        self.description = f"OpenVINO {ov.__version__.split('-')[0]} ({target}), {path}"

    def __call__(self, images: np.ndarray) -> InferenceBatch:
        result = self.compiled(np.ascontiguousarray(images, np.uint8))
        return InferenceBatch(*(result[output] for output in self.outputs))


@functools.cache
def openvino_core():
    """The process's one OpenVINO Core, never released before exit. Each Core loads its own CPU plugin, which
    swaps the calling thread's signal stack for one it maps and, when released, puts the previous one back only
    if its own is still current: two Cores released in the order they were made leave the thread on an unmapped
    stack, and the next signal a Python handler catches (SIGCHLD once a DataLoader had workers, SIGINT) kills the
    process with a bare SIGSEGV (docs/TESTING.md). Raises ImportError without OpenVINO."""
    import openvino as ov

    return ov.Core()


def read_openvino_metadata(model) -> dict[str, str]:
    names = [f.name for f in dataclasses.fields(ModelInfo)]
    return {name: model.get_rt_info([OPENVINO_RT_INFO, name]).astype(str) for name in names
            if model.has_rt_info([OPENVINO_RT_INFO, name])}


def exported_format(path) -> str:
    """'onnx' or 'openvino', from the file name."""
    suffix = Path(path).suffix.lower()
    for name, expected in FORMAT_SUFFIXES.items():
        if suffix == expected:
            return name
    raise ExportedModelError(f"{path}: an exported model is a .onnx file or an OpenVINO .xml (with its .bin)")


def open_exported(path, format: str | None = None, device: str = "auto", threads: int | None = None) -> Runner:
    """The runner for an export.py file; `format` defaults to what the suffix says."""
    path = Path(path)
    if not path.is_file():
        raise ExportedModelError(f"{path}: no such file; write one with export.py")
    runner_class = {"onnx": OnnxRunner, "openvino": OpenVinoRunner}[format or exported_format(path)]
    return runner_class(path, device=device, threads=threads)
