"""Checkpoints: the authors' released format (SPEC §8), plus the settings they were trained with.

A file is `{"prompt_learner": ICA state dict, "Zero_try": FGP state dict}`; files this
project writes add `"settings"` (a `ViP2Config` as a dict) and `"epoch"`, so that
`test.py` can rebuild the model without repeated flags. The authors' files carry no
settings: `n_ctx`, `n_cls` and the prompt quirk are read from the tensors, the rest from
flags or defaults.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from utils import atomic_torch_save

from .config import DEFAULTS, ViP2Config

ICA_KEY = "prompt_learner"
FGP_KEY = "Zero_try"  # the authors' name for the FGP module
FORMAT = "vip2clip/1"
FIXED_BY_CHECKPOINT = ("n_ctx", "n_cls", "fix_quirks")  # tensor shapes and how the prompts were built


class CheckpointError(ValueError):
    """A checkpoint that cannot be used with the requested settings; the message names both."""


def read_checkpoint(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found; check --checkpoint_path / --init_checkpoint")
    try:
        checkpoint = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(f"cannot read checkpoint {path}: {error}") from error
    if not isinstance(checkpoint, dict) or ICA_KEY not in checkpoint or FGP_KEY not in checkpoint:
        raise CheckpointError(f"{path} is not a ViP²-CLIP checkpoint: expected the keys "
                              f"'{ICA_KEY}' and '{FGP_KEY}' (the released format)")
    return checkpoint


def recorded_settings(checkpoint: dict) -> dict:
    """Settings a checkpoint fixes: all of them for this project's files; for the authors', what the tensors tell.

    The prompt quirk shows in the tensors: with it, the normal and the abnormal prompt
    embed the same state word, so their middle-token buffers are equal.
    """
    if "settings" in checkpoint:
        return dict(checkpoint["settings"])
    ica = checkpoint[ICA_KEY]
    return {"n_ctx": int(ica["ctx_pos"].shape[0]), "n_cls": int(ica["cls_ctx"].shape[0]),
            "fix_quirks": not torch.equal(ica["token_middle_pos"], ica["token_middle_neg"])}


def resolve_config(checkpoint: dict, path: str | os.PathLike, overrides: dict) -> ViP2Config:
    """Settings for a checkpoint: explicit values (not None) > recorded settings > the released defaults.

    Values that contradict what the checkpoint's tensors fix are an error naming both.
    """
    recorded = recorded_settings(checkpoint)
    for name in FIXED_BY_CHECKPOINT:
        wanted = overrides.get(name)
        if wanted is not None and name in recorded and wanted != recorded[name]:
            raise CheckpointError(f"{path} was trained with {name}={recorded[name]}, but {wanted} was asked "
                                  f"for: drop --{name} or use another checkpoint")
    values = DEFAULTS.to_dict()
    values.update(recorded)
    values.update({name: value for name, value in overrides.items() if value is not None and name in values})
    return ViP2Config.from_dict(values)


def save_checkpoint(path: str | os.PathLike, model, epoch: int) -> None:
    atomic_torch_save({ICA_KEY: model.prompt_learner.state_dict(), FGP_KEY: model.fgp.state_dict(),
                       "settings": model.config.to_dict(), "epoch": epoch, "format": FORMAT}, path)


def _check_shapes(model, module: torch.nn.Module, state: dict, what: str, path: Path) -> None:
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
             for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or wrong:
        details = "; ".join(filter(None, [
            f"missing {missing}" if missing else "", f"unexpected {unexpected}" if unexpected else "",
            ", ".join(wrong[:4])]))
        config, backbone = model.config, model.backbone
        raise CheckpointError(
            f"{path} ({what}) does not fit the model built with n_ctx={config.n_ctx}, n_cls={config.n_cls} on a "
            f"CLIP with embedding width {backbone.embed_dim} and text width {backbone.text_width}: {details}. "
            f"Use the settings the checkpoint was trained with, or the CLIP weights it was trained on")


def load_weights(model, checkpoint: dict, path: str | os.PathLike) -> None:
    """Load ICA and FGP weights, with an error naming the file and both shapes on any mismatch."""
    path = Path(path)
    _check_shapes(model, model.prompt_learner, checkpoint[ICA_KEY], "prompt learner", path)
    _check_shapes(model, model.fgp, checkpoint[FGP_KEY], "FGP", path)
    model.prompt_learner.load_state_dict(checkpoint[ICA_KEY])
    model.fgp.load_state_dict(checkpoint[FGP_KEY])
