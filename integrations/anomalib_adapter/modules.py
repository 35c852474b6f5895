"""Every registered method as an anomalib `AnomalibModule`, built by `models.create_model` from a checkpoint.

One subclass of `RegistryAnomalibModule` per row of the method registry (`ADAPTERS`), made by
iterating the registry, so a new method is an anomalib model without an edit here: nothing
below names a method; what differs between methods is read from their model (`class_conditioned`,
`few_shot`, `finalize`). The wrapped torch model (`RegistryTorchModel`) is this repository's
model for normalised images plus the Gaussian smoothing, with everything an exported graph needs
held as buffers; the pre-processor (`PILResize` + CLIP normalisation) makes the same input
`dataset.read_image` makes.
"""
from __future__ import annotations

import re
from typing import Any, ClassVar

import torch
from anomalib import LearningType
from anomalib.data import InferenceBatch
from anomalib.models.components import AnomalibModule
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from torch import nn
from torchvision.transforms.v2 import Compose, Normalize

from models import create_model, fewshot, get_method, method_names
from models.base import CLIP_MEAN, CLIP_STD
from models.checkpoint import method_of, read_checkpoint
from models.smoothing import GAUSSIAN_TRUNCATE, _blur_matrix

from .evaluation import FIELDS, SET_CLASS, AdapterEvaluator, _cpu, gather
from .pil_resize import PILResize

ONNX_OPSET = 18  # export.py's; anomalib's default (14) makes onnxscript try a down-conversion that fails here


def learning_type_of(model) -> LearningType:
    """Few-shot for a model whose settings ask for reference images (its `few_shot` property, models/fewshot.py),
    zero-shot otherwise."""
    return LearningType.FEW_SHOT if getattr(model, "few_shot", False) else LearningType.ZERO_SHOT


class RegistryTorchModel(nn.Module):
    """CLIP-normalised images `[B, 3, S, S]` -> `InferenceBatch(pred_score [B], anomaly_map [B, S, S])`.

    `AnomalyModel.forward` minus its input normalisation (the pre-processor's here): the method's
    `predict`, then `models.smoothing.gaussian_blur`'s two float64 matrix products, with the
    matrix as a buffer rather than a cached tensor, so that a traced graph holds it."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model
        self.sigma = float(model.config.sigma)
        size = model.image_size
        blur = _blur_matrix(size, self.sigma, GAUSSIAN_TRUNCATE, "cpu").clone() if self.sigma > 0 else torch.eye(
            size, dtype=torch.float64)
        self.register_buffer("blur", blur)

    def forward(self, images: torch.Tensor) -> InferenceBatch:
        # a class-conditioned model names the class it was bound to (RegistryAnomalibModule.bind_class)
        maps, scores = self.model.predict(images, None) if self.model.class_conditioned else self.model.predict(images)
        maps = maps.float()
        if self.sigma > 0:  # as gaussian_blur: each pass sums in float64, rounded to float32 after it
            maps = (self.blur @ maps.to(torch.float64)).to(torch.float32)
            maps = (maps.to(torch.float64) @ self.blur.T).to(torch.float32)
        return InferenceBatch(pred_score=scores.float(), anomaly_map=maps)


class RegistryAnomalibModule(AnomalibModule):
    """A method of this repository as an anomalib model (subclassed once per registered method: `ADAPTERS`).

    checkpoint_path: `train.py`'s `epoch_N.pth` or the method's released file; None for a method
    that needs none (training-free: its model is built from the CLIP weights alone), or untrained
    prompts for smoke checks. clip_weights: as `--clip_weights`. settings: the model settings, as
    `create_model` takes them (`sigma=4`, `mode="few_shot"`, ...), over what the checkpoint recorded.
    class_name: for a method whose prompts name the object class, the class every image is of
    (default: each datamodule's category, or its name for `Folder`, when a run starts).
    reference_dir / k_shot / seed: a few-shot model's normal reference images, as `test.py`'s
    `--reference_dir` (DIR/<class>/* or DIR/*) or, without it, `--k_shot` images drawn with
    `--seed` from the datamodule's normal training images (anomalib's few-shot convention); they
    are held as buffers of the model. The pre-processor, the post-processor (anomalib's, with
    normalisation off so that scores and maps stay this repository's; thresholds are still
    computed) and the evaluator can be replaced as in anomalib.
    """

    method: ClassVar[str] = ""

    def __init__(self, checkpoint_path: str | None = None, clip_weights: str = "openai",
                 settings: dict[str, Any] | None = None, class_name: str | None = None,
                 reference_dir: str | None = None, k_shot: int | None = None, seed: int = fewshot.DEFAULT_SEED,
                 pre_processor: nn.Module | bool = True, post_processor: nn.Module | bool = True,
                 evaluator: nn.Module | bool = True, visualizer: nn.Module | bool = True) -> None:
        model = create_model(self.method, clip_weights=clip_weights, checkpoint=checkpoint_path,
                             **dict(settings or {}))
        self._image_size = model.image_size  # a plain int may be set before nn.Module.__init__; read below
        super().__init__(pre_processor=pre_processor, post_processor=post_processor, evaluator=evaluator,
                         visualizer=visualizer)
        self.model = RegistryTorchModel(model)
        self.test_outputs: dict = {}
        if (reference_dir is not None or k_shot is not None) and learning_type_of(model) != LearningType.FEW_SHOT:
            raise ValueError(f"{get_method(self.method).title} runs zero-shot with these settings: reference_dir= "
                             "and k_shot= are for a few-shot mode (settings=, as test.py's --mode few_shot)")
        if k_shot is not None and k_shot < 1:
            raise ValueError(f"k_shot must be >= 1, got {k_shot}")
        self.reference_dir, self.k_shot, self.seed = reference_dir, k_shot, seed
        self.fixed_class: str | None = None
        if class_name is not None:
            self.bind_class(class_name)
        elif reference_dir is not None and not model.class_conditioned:
            self._ensure_references(None)

    # ------------------------------------------------------------------ anomalib's hooks
    @property
    def learning_type(self) -> LearningType:
        return learning_type_of(self.model.model)

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        return {}  # nothing trains here: train.py trains, this loads what it wrote

    @property
    def image_size(self) -> int:
        return self._image_size

    @property
    def class_name(self) -> str | None:
        """The class a class-conditioned model is bound to (None: not bound, or not class-conditioned)."""
        return getattr(self.model.model, "bound_class", None)

    def setup(self, stage: str | None = None) -> None:
        """At the start of each Lightning run: a class-conditioned model takes the datamodule's class (unless
        `class_name=` fixed one), and a few-shot model gets that class's reference images."""
        del stage
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        if self.fixed_class is None and datamodule is not None and self.model.model.class_conditioned:
            name = getattr(datamodule, "category", "") or getattr(datamodule, "name", "")
            if name:
                self._bind(str(name))
        if self.model.model.class_conditioned and self.class_name is None:
            raise ValueError(f"{get_method(self.method).title}'s prompts name the object class: pass class_name= "
                             "(the run's datamodule gives no category to take it from)")
        self._ensure_references(datamodule)

    def bind_class(self, class_name: str) -> None:
        """Name the class of every image that follows, whatever a datamodule's category (class-conditioned
        methods; others refuse)."""
        if not self.model.model.class_conditioned:
            raise ValueError(f"{get_method(self.method).title} does not name the class in its prompts: drop "
                             "class_name=")
        self.fixed_class = class_name
        self._bind(class_name)

    def _bind(self, class_name: str) -> None:
        self.model.model.bind_class(class_name)
        if self.reference_dir is not None:  # otherwise drawn from the datamodule when a run starts (setup)
            self._ensure_references(None)

    def _ensure_references(self, datamodule) -> None:
        """Give a few-shot model its references for the run's class, once per class, as `test.py` reads them."""
        model = self.model.model
        if learning_type_of(model) != LearningType.FEW_SHOT:
            return
        name = self.class_name or SET_CLASS
        if name in model.reference_classes:
            return
        if self.reference_dir is not None:
            paths = fewshot.choose(None, [name], None, self.seed, self.reference_dir)[name]
        elif datamodule is not None and getattr(datamodule, "train_data", None) is not None:
            paths = _drawn_references(datamodule.train_data, self.k_shot, self.seed)
        elif self._trainer is None:
            return  # checked again when a run starts (setup) with its datamodule
        else:
            raise ValueError(f"few-shot {get_method(self.method).title} needs normal reference images of {name!r}: "
                             "pass reference_dir=, or a datamodule with normal training images")
        from dataset import read_image

        images = torch.stack([read_image(path, self._image_size)[0] for path in paths]).to(self.device)
        model.set_references(name, images, paths)

    def configure_pre_processor(self, image_size=None) -> PreProcessor:
        """`dataset.read_image`'s Pillow bicubic resize to S x S, then CLIP's normalisation."""
        if image_size is not None and tuple(image_size) != (self._image_size,) * 2:
            raise ValueError(f"{get_method(self.method).title} runs at {self._image_size} px (its checkpoint's "
                             f"image_size), not {image_size}")
        return PreProcessor(transform=Compose([PILResize(self._image_size),
                                               Normalize(mean=list(CLIP_MEAN), std=list(CLIP_STD))]))

    def configure_post_processor(self) -> PostProcessor:
        return PostProcessor(enable_normalization=False)

    def configure_evaluator(self) -> AdapterEvaluator:
        return AdapterEvaluator()

    def configure_optimizers(self) -> None:
        return None

    def training_step(self, batch, *args, **kwargs):
        raise RuntimeError(f"{type(self).__name__} does not train inside anomalib: train with train.py and load its "
                           "checkpoint (Engine.fit of a zero-shot model only validates)")

    def val_dataloader(self) -> list:
        """No validation data of its own. anomalib validates a zero-shot model before `Engine.predict` to set the
        thresholds, and `Engine.predict(model, data_path=...)` gives it none, which would stop Lightning; with
        this, that validation runs over nothing and the thresholds stay unset (NaN: no `pred_label` or
        `pred_mask`). A datamodule's validation set, when given, takes precedence."""
        return []

    def validation_step(self, batch, *args, **kwargs):
        del args, kwargs
        return batch.update(**self.model(batch.image)._asdict())

    # ------------------------------------------------------------------ the set-level step
    def finalize_outputs(self, outputs: dict, cls_names=None) -> dict:
        """The method's `finalize` (what `test.py` applies over the evaluated set) over a whole set of outputs
        (`anomaly_map`, `pred_score`, any other keys kept): VCP-CLIP's per-class min-max normalisation,
        APRIL-GAN's few-shot score fusion, nothing for other methods. `cls_names`: one per image (default: the
        whole set is one class, the bound one if any). Values it changed stay as `anomaly_map_raw` /
        `pred_score_raw`."""
        maps, scores = outputs["anomaly_map"].float(), outputs["pred_score"].float()
        names = list(cls_names) if cls_names is not None else [self.class_name or SET_CLASS] * len(scores)
        done = self.model.model.finalize({"anomaly_maps": maps, "image_scores": scores}, names)
        result = dict(outputs, anomaly_map=done["anomaly_maps"], pred_score=done["image_scores"])
        if done["anomaly_maps"] is not maps:
            result["anomaly_map_raw"] = outputs["anomaly_map"]
        if done["image_scores"] is not scores:
            result["pred_score_raw"] = outputs["pred_score"]
        return result

    def finalize_predictions(self, predictions, cls_names=None) -> dict:
        """What `Engine.predict` returned (a list of batches, or of lists of batches per dataloader) as one dict
        of `image_path`, `pred_score`, `anomaly_map` (and `pred_label`, `pred_mask` when thresholds were set), after
        the method's set-level step (`finalize_outputs`; `cls_names` as there)."""
        batches = [b for item in predictions for b in (item if isinstance(item, list) else [item])]
        outputs = gather([{key: _cpu(getattr(batch, key, None)) for key in FIELDS} for batch in batches])
        if not self._thresholds_set():  # anomalib passes the scores through as "labels" without a threshold
            outputs = {key: value for key, value in outputs.items() if key not in ("pred_label", "pred_mask")}
        return self.finalize_outputs(outputs, cls_names)

    def _thresholds_set(self) -> bool:
        post = self.post_processor
        return bool(post is not None and getattr(post, "enable_thresholding", False)
                    and torch.isfinite(post.image_threshold).item() and torch.isfinite(post.pixel_threshold).item())

    # ------------------------------------------------------------------ export
    def prepare_for_export(self, input_size=None) -> tuple[int, int]:
        """Ready the module for `torch.export` at `input_size` (default S x S), returned as (height, width): the
        models' caches of constant tensors emptied (Lightning fills them under inference mode, which torch.export
        cannot take as constants) and filled again by one plain pass, and the Pillow weights for that input
        size held as buffers of the pre-processor's export transform. A class-conditioned model exports the class
        it is bound to, a few-shot model the references it holds (buffers)."""
        height, width = (int(v) for v in (input_size or (self._image_size,) * 2))
        if self.model.model.class_conditioned and self.class_name is None:
            raise ValueError(f"{get_method(self.method).title}'s prompts name the object class: an export holds one "
                             "class's text; pass class_name= to load_model (or call bind_class) first")
        for module in self.modules():
            for key, value in list(vars(module).items()):
                if key.endswith("_cache") and isinstance(value, dict):
                    value.clear()
        if self.pre_processor is not None:  # torchvision's Compose keeps its transforms in a list, not as modules
            for transform in (getattr(self.pre_processor, "transform", None),
                              getattr(self.pre_processor, "export_transform", None)):
                for resize in _pil_resizes(transform):
                    resize.prepare(height, width)
                    resize.to(self.device)
        with torch.no_grad():
            self.model(torch.zeros(1, 3, self._image_size, self._image_size, device=self.device))
        return height, width

    def to_onnx(self, export_root, model_file_name: str = "model", input_size=None, **kwargs):
        """anomalib's ONNX export, at a fixed input size (default S x S; the batch stays dynamic). The graph takes
        float images in [0, 1] of that size and holds the Pillow resize from it (`input_size=(H, W)`)."""
        input_size = self.prepare_for_export(input_size)
        kwargs.setdefault("opset_version", ONNX_OPSET)
        return super().to_onnx(export_root, model_file_name, input_size, **kwargs)

    def to_openvino(self, export_root, model_file_name: str = "model", input_size=None, *args, **kwargs):
        """anomalib's OpenVINO export (through `to_onnx` above), at a fixed input size as there."""
        return super().to_openvino(export_root, model_file_name, input_size or (self._image_size,) * 2, *args,
                                   **kwargs)


def _pil_resizes(transform):
    """The `PILResize`s in a transform, through nested `Compose`s."""
    if isinstance(transform, PILResize):
        yield transform
    for child in getattr(transform, "transforms", None) or ():
        yield from _pil_resizes(child)


def class_name_of(method: str) -> str:
    return "".join(part.capitalize() for part in re.split(r"[^0-9A-Za-z]+", method) if part) + "Anomalib"


def _make_adapters() -> dict[str, type[RegistryAnomalibModule]]:
    adapters = {}
    for name in method_names():
        method = get_method(name)
        adapters[name] = type(class_name_of(name), (RegistryAnomalibModule,), {
            "method": name, "__module__": __name__,
            "__doc__": f"{method.title} as an anomalib model (see RegistryAnomalibModule)."})
    return adapters


ADAPTERS = _make_adapters()
globals().update({cls.__name__: cls for cls in ADAPTERS.values()})  # importable by name (jsonargparse, pickle)


def _drawn_references(train_data, k_shot: int | None, seed: int) -> list[str]:
    """`k_shot` normal images of an anomalib dataset's training split, drawn as `models.fewshot.choose` draws
    them from a meta file's (sorted paths; one class)."""
    samples = train_data.samples
    pool = sorted(str(p) for p in samples.loc[samples.label_index == 0, "image_path"])
    if not pool:
        raise ValueError("few-shot: the datamodule has no normal training image to draw references from; pass "
                         "reference_dir=")
    k_shot = fewshot.DEFAULT_K_SHOT if k_shot is None else k_shot
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:k_shot].tolist()
    return [pool[i] for i in sorted(order)]


def load_model(checkpoint_path=None, clip_weights: str = "openai", method: str | None = None,
               **kwargs) -> RegistryAnomalibModule:
    """The anomalib model of a checkpoint; the method is what the checkpoint records or its layout tells
    (`method=` for files that say neither, and for a training-free method, whose model needs no checkpoint).
    kwargs: `settings=`, `class_name=`, `reference_dir=`, `pre_processor=`, `evaluator=`, ..."""
    if checkpoint_path is None:
        if method is None:
            raise ValueError(f"no checkpoint: pass method= one of {', '.join(ADAPTERS)} (a training-free method "
                             "needs only clip_weights=)")
        return _adapter(method)(clip_weights=str(clip_weights), **kwargs)
    if method is None:
        method = method_of(read_checkpoint(checkpoint_path))
        if method is None:
            raise ValueError(f"{checkpoint_path} does not tell its method; pass method= one of "
                             f"{', '.join(ADAPTERS)}")
    return _adapter(method)(checkpoint_path=str(checkpoint_path), clip_weights=str(clip_weights), **kwargs)


def _adapter(method: str) -> type[RegistryAnomalibModule]:
    if method not in ADAPTERS:
        raise ValueError(f"unknown method {method!r}: choose one of {', '.join(ADAPTERS)}")
    return ADAPTERS[method]
