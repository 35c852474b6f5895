"""Checkpoint files common to every method: reading them with clear errors, and resolving settings.

Each method knows its own key layout (the authors' released format, so that either code
base reads the other's files). Files this project writes add `method`, `settings` (the
model settings they were trained with), `epoch`, `format`, `clip_fingerprint` and
`training_data` (the datasets that trained it), so `test.py` needs no repeated flags and can
tell a checkpoint used with other CLIP weights.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from pathlib import Path

import torch

from utils import atomic_torch_save

from . import settings as settings_module
from .errors import CheckpointError

log = logging.getLogger("zsas.models")
FORMAT = "zsas-clip/2"
# Files that are plainly something else; naming what they are beats torch's unpickling advice.
NOT_CHECKPOINTS = {".json": "a JSON file (a meta.json?)", ".npz": "a NumPy archive (CLIP weights or saved maps?)",
                   ".npy": "a NumPy array", ".csv": "a CSV file", ".txt": "a text file", ".md": "a text file",
                   ".png": "an image", ".jpg": "an image", ".jpeg": "an image", ".bmp": "an image",
                   ".onnx": "an exported ONNX model (predict.py --onnx runs it)",
                   ".safetensors": "a safetensors file (CLIP weights? --clip_weights takes them)"}
# What save_checkpoint adds to a method's released layout (so a method's `recognizes` can look past them)
PROJECT_KEYS = ("method", "settings", "epoch", "format", "clip_fingerprint", "training_data")
FINGERPRINT_KEYS = ("visual.proj", "text_projection", "visual.class_embedding", "ln_final.weight")


def _listing(folder: Path) -> str:
    found = sorted(p.name for p in folder.glob("*.pth"))
    return (", ".join(found[:5]) + (" …" if len(found) > 5 else "")) if found else "no .pth files in it"


def read_checkpoint(path: str | os.PathLike, flag: str = "--checkpoint_path") -> dict:
    """The dict a checkpoint file holds (on the CPU, tensors only: `weights_only=True`)."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{flag} {path} is a folder; pass one checkpoint file in it ({_listing(path)})")
    if not path.is_file():
        raise CheckpointError(f"{flag} {path}: no such file")
    what = NOT_CHECKPOINTS.get(path.suffix.lower())
    if what:
        raise CheckpointError(f"{flag} {path} is {what}, not a checkpoint: pass train.py's epoch_N.pth "
                              "or one of the authors' released .pth files")
    try:
        checkpoint = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # torch's message suggests weights_only=False, which is not the fix here
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{flag} {path} is not a readable PyTorch checkpoint ({reason[:200]}); pass "
                              "train.py's epoch_N.pth or one of the authors' released .pth files") from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{flag} {path} holds a {type(checkpoint).__name__}, not a checkpoint dict")
    return checkpoint


def method_of(checkpoint: dict) -> str | None:
    """Which registered method wrote a checkpoint: recorded by this project, else told by its keys."""
    from .registry import get_method, method_names

    if isinstance(checkpoint.get("method"), str):
        return checkpoint["method"]
    for name in method_names():
        if get_method(name).model_class().recognizes(checkpoint):
            return name
    return None


def check_method(checkpoint: dict, method, path, flag: str = "--checkpoint_path") -> None:
    """Refuse a checkpoint of another method (or of none), naming the `--model` that fits."""
    from .registry import get_method

    found = method_of(checkpoint)
    if found == method.name:
        return
    keys = ", ".join(sorted(map(str, checkpoint))[:8])
    if "visual.proj" in checkpoint or "state_dict" in checkpoint:
        raise CheckpointError(f"{flag} {path} holds CLIP weights, not a trained {method.title} checkpoint: pass it as "
                              f"--clip_weights, and train.py's epoch_N.pth (or a released file) as {flag}")
    if found is None:
        raise CheckpointError(f"{flag} {path} is not a checkpoint of any method here (top-level keys: {keys}); "
                              f"--model {method.name} expects {method.title}'s released layout")
    raise CheckpointError(f"{flag} {path} is a {get_method(found).title} checkpoint, not {method.title}: "
                          f"pass --model {found} (its keys: {keys})")


def resolve_settings(config_class, recorded: dict, requested: dict, path, flag: str = "--checkpoint_path",
                     log_overrides: bool = True):
    """Settings for a model: requested values (not None) > what the checkpoint recorded > the defaults.

    A requested value that contradicts a setting the checkpoint's tensors fix (`shape`,
    `recorded`) or a setting that selects trained parameters (`trained=True`) is an error
    naming both, and the flag to change. Any other recorded setting may be overridden; each
    override is logged. A trained-parameter setting the checkpoint does not record (the
    authors' files) cannot be checked: that is logged too."""
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    values = settings_module.to_dict(config_class())
    values.update({k: v for k, v in recorded.items() if k in fields})
    for name, wanted in requested.items():
        if wanted is None or name not in fields:
            continue
        wanted = tuple(wanted) if isinstance(wanted, list) else wanted
        kind = fields[name].metadata.get("kind")
        trained = settings_module.selects_trained_parameters(fields[name])
        had = recorded.get(name)
        had = tuple(had) if isinstance(had, list) else had
        option = settings_module.flag_name(fields[name])
        if (kind in ("shape", "recorded") or trained) and had is not None and wanted != had:
            if isinstance(had, bool):
                fix = f"{'pass' if had != fields[name].default else 'drop'} {option}"
            else:
                fix = f"pass {option} {' '.join(map(str, had)) if isinstance(had, tuple) else had}"
            why = " (it selects trained parameters)" if trained and kind not in ("shape", "recorded") else ""
            raise CheckpointError(f"{flag} {path} was made with {name}={_show(had)}, but this run has "
                                  f"{name}={_show(wanted)}{why}: {fix} (or use another checkpoint)")
        if log_overrides and had is not None and wanted != had:
            log.info("%s %s overrides %s=%s recorded in %s (no trained parameter depends on it)", option,
                     _show(wanted), name, _show(had), path)
        elif log_overrides and path is not None and had is None and trained and kind not in ("shape", "recorded"):
            log.warning("%s %s: %s does not record the %s it was trained with, so this cannot be checked; its "
                        "trained parameters are used as they are on these values", option, _show(wanted), path,
                        name)
        values[name] = wanted
    return settings_module.from_dict(config_class, values)


def _show(value) -> str:
    return " ".join(map(str, value)) if isinstance(value, tuple) else str(value)


def check_state(module: torch.nn.Module, state: dict, what: str, path, context: str) -> None:
    """Missing, unexpected or mis-shaped tensors of one part of a checkpoint: one error naming them all."""
    expected = module.state_dict()
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: its {what} entry is a {type(state).__name__}, not a state dict")
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
             for k, v in expected.items() if k in state and hasattr(state[k], "shape")
             and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or wrong:
        details = "; ".join(filter(None, [
            f"missing {missing[:6]}" if missing else "", f"unexpected {unexpected[:6]}" if unexpected else "",
            ", ".join(wrong[:4])]))
        raise CheckpointError(f"{path} ({what}) does not fit the model built with {context}: {details}. "
                              "Use the settings the checkpoint was trained with, or the CLIP weights it was "
                              "trained on")


def clip_fingerprint(clip: torch.nn.Module) -> str:
    """A short hash of a few CLIP tensors, rounded to float16 (OpenAI's own precision), so that the
    same weights stored as float16 or float32 give the same fingerprint."""
    state = clip.state_dict()
    digest = hashlib.sha256()
    for key in FINGERPRINT_KEYS:
        if key in state:
            digest.update(key.encode())
            digest.update(state[key].detach().to("cpu", torch.float16).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def save_checkpoint(path: str | os.PathLike, model, epoch: int, training_data: list | None = None) -> None:
    """Write the method's released layout plus what this project records, atomically; `training_data`
    (train.py's): the datasets that trained it (label, meta file, images, augmented or not)."""
    state = model.checkpoint_state()
    state.update({"method": model.method, "settings": model.recorded_config(), "epoch": epoch, "format": FORMAT,
                  "clip_fingerprint": model.clip_fingerprint})
    if training_data is not None:
        state["training_data"] = training_data
    atomic_torch_save(state, path)
