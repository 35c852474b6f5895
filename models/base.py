"""What every method's model is to the scripts: uint8 RGB images in, smoothed maps and image scores out.

A method subclasses `AnomalyModel` and fills in the hooks below; `train.py`, `test.py`,
`predict.py`, `export.py` and the benchmarks use nothing else, so a new method needs no
edit to them. The whole input path lives here, once: uint8 batch -> CLIP normalisation
-> the method's forward -> Gaussian smoothing.
"""
from __future__ import annotations

import functools
import logging
import warnings

import torch
from torch import nn

from engine.outputs import InferenceBatch

from . import settings
from .smoothing import gaussian_blur

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

log = logging.getLogger("zsas.models")


@functools.lru_cache(maxsize=None)
def _clip_statistics(device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP's mean and std as `[3, 1, 1]` tensors, made once per device: building them per batch
    would copy from host memory and wait for the GPU each time."""
    return (torch.tensor(CLIP_MEAN, device=device).view(3, 1, 1), torch.tensor(CLIP_STD, device=device).view(3, 1, 1))


def normalize_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 `[..., 3, S, S]` -> [0, 1] -> CLIP normalisation, float32, on the images' device
    (torchvision's ToTensor + Normalize, value for value)."""
    if images.dtype != torch.uint8:  # normalising twice would run silently and shift every value
        raise ValueError(f"the model expects uint8 RGB images, got {images.dtype}: read them with "
                         "dataset.read_image (or AnomalyDataset), which keep uint8")
    mean, std = _clip_statistics(str(images.device))
    return (images.float().div(255) - mean) / std


def check_image_size(image_size: int, patch_size: int) -> None:
    """The reference floors the patch grid: pixels past the last whole patch are never seen."""
    if image_size < patch_size:
        raise ValueError(f"--image_size {image_size} is smaller than one {patch_size} px CLIP patch")
    if image_size % patch_size:
        lower = image_size // patch_size * patch_size
        warnings.warn(f"--image_size {image_size} is not a multiple of the {patch_size} px patch: the last "
                      f"{image_size - lower} pixel rows and columns are never seen by CLIP (as in the reference); "
                      f"{lower} or {lower + patch_size} avoid that", UserWarning, stacklevel=3)


class AnomalyModel(nn.Module):
    """Base class of the methods' models.

    Class attributes a method sets: `method` (its registry name), `quick_gelu` (the MLP
    activation its CLIP runs with) and `positional_interpolation` (how the vision
    positional embedding is resized to the input grid).
    """

    method: str = ""
    quick_gelu: bool = True
    positional_interpolation: str = "bilinear"
    set_normalization = False  # True: `finalize` normalises over the evaluated set (VCP-CLIP)
    # True: the prompts name the image's class, so `forward`, `predict` and `training_losses` take
    # `cls_names` (one per image), which inference and the trainer pass (APRIL-GAN).
    class_conditioned = False
    # True: a few-shot mode fed by `models/fewshot.py` (`few_shot` property, `set_references`).
    supports_few_shot = False

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.clip_fingerprint = ""

    @property
    def image_size(self) -> int:
        return self.config.image_size

    # ------------------------------------------------------------------ class names (class-conditioned methods)
    bound_class: str | None = None  # the class of every image of a run without class names (predict.py, exports)

    def bind_class(self, cls_name: str) -> None:
        """Take every image of a run without class names to be `cls_name`; prepares what that class needs before
        a trace (export.py), so nothing text-related is computed inside an exported graph."""
        self.bound_class = cls_name
        self.prepare_class(cls_name)

    def prepare_class(self, cls_name: str) -> None:
        """What a class-conditioned method computes once per class name (its text, its tokens)."""

    def class_of_unbound_run(self) -> str:
        """The class of a run that names none and has none bound: refused by default."""
        raise ValueError(f"--model {self.method}: its prompts name the object class: give each image's class "
                         "name (predict.py / export.py --class_name)")

    def batch_classes(self, cls_names, count: int) -> list[str] | str:
        """Each image's class, or one class name (str) for the whole batch (then nothing depends on its size)."""
        if cls_names is not None:
            if len(cls_names) != count:
                raise ValueError(f"{len(cls_names)} class names for {count} images")
            names = [self.unnamed_class() if not name else name for name in cls_names]
            return names[0] if len(set(names)) == 1 else names
        if self.bound_class is None:
            return self.class_of_unbound_run()
        return self.bound_class

    def unnamed_class(self) -> str:
        """The class of an image whose meta file names none (an empty string, kept as is by default)."""
        return ""

    # ------------------------------------------------------------------ inference
    def forward(self, images: torch.Tensor, cls_names=None) -> InferenceBatch:
        """uint8 RGB `[N, 3, S, S]` -> `InferenceBatch(anomaly_map=[N, S, S], image_score=[N])`, float32, maps smoothed.

        `cls_names` (one per image) reach `predict` only for a `class_conditioned` method (APRIL-GAN's prompts
        name the class). For methods that normalise over a whole set (VCP-CLIP), these are the values before
        `finalize`."""
        normalized = normalize_images(images)
        maps, scores = self.predict(normalized, cls_names) if self.class_conditioned else self.predict(normalized)
        return InferenceBatch(gaussian_blur(maps.float(), self.config.sigma), scores.float())

    def predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised images -> (raw, unsmoothed maps `[N, S, S]`, image scores `[N]`)."""
        raise NotImplementedError

    def finalize(self, outputs: dict, cls_names) -> dict:
        """Dataset-level post-processing of `test.py`'s outputs (maps and scores of every image, in order;
        `cls_names` per image): the per-class min-max over the set for a method with `set_normalization`
        (the same function predict.py, the demo and exported files' runs use), nothing for the others."""
        if not self.set_normalization:
            return outputs
        from engine.set_normalization import normalize_over_set

        maps, scores = normalize_over_set(outputs["anomaly_maps"], outputs["image_scores"], cls_names)
        return dict(outputs, anomaly_maps=maps, image_scores=scores, image_scores_unnormalized=outputs["image_scores"])

    # ------------------------------------------------------------------ training
    def extract_features(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """What the frozen backbone gives for normalised images, as tensors with a leading batch
        axis: nothing upstream of them trains, so they can be cached across epochs."""
        raise NotImplementedError

    def training_losses(self, features: tuple[torch.Tensor, ...], masks: torch.Tensor,
                        labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Losses of one batch; `loss` is what is minimised, the other entries are logged."""
        raise NotImplementedError

    def make_optimizer(self, training) -> torch.optim.Optimizer:
        raise NotImplementedError

    def trainable_modules(self) -> list[nn.Module]:
        """The modules whose parameters train (everything but the frozen CLIP)."""
        raise NotImplementedError

    def configure_training(self, training) -> None:
        """Apply training-only settings (dropout rates...) before the first step."""

    def validation_maps(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named `[N, S, S]` maps whose pixel AP the optional per-epoch validation logs."""
        maps, _ = self.predict(images)
        return {"ap": maps}

    # ------------------------------------------------------------------ checkpoints
    @classmethod
    def recognizes(cls, checkpoint: dict) -> bool:
        """Whether a checkpoint has this method's key layout (for files that do not say)."""
        raise NotImplementedError

    @classmethod
    def recorded_settings(cls, checkpoint: dict) -> dict:
        """Settings a checkpoint fixes: all of them for this project's files; for the authors',
        what the tensors tell."""
        raise NotImplementedError

    def load_checkpoint(self, checkpoint: dict, path) -> None:
        raise NotImplementedError

    def checkpoint_state(self) -> dict:
        """The trained tensors in the method's released layout."""
        raise NotImplementedError

    def recorded_config(self) -> dict:
        """The settings a checkpoint records (test-time-only ones are not)."""
        recorded = settings.fields_of(type(self.config), ("shape", "recorded", "output"))
        values = settings.to_dict(self.config)
        return {f.name: values[f.name] for f in recorded}
