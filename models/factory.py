"""`create_model`: the one way every script, benchmark and test builds a model (open_clip's factory is the model followed).

    model = create_model("vip2", clip_weights="ViT-L-14-336px.pt", checkpoint="epoch_10.pth")
    maps, scores = model(uint8_images)            # smoothed maps [N, S, S], image scores [N]

Settings come, in order of precedence, from the keyword arguments (None: not given), what
the checkpoint recorded (or its tensors tell), and the method's defaults. torch and
open_clip are imported only when a model is built.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from .registry import get_method

log = logging.getLogger("zsas.models")


def resolve_config(name: str, checkpoint: dict | None = None, path=None, flag: str = "--checkpoint_path",
                   log_overrides: bool = True, **settings):
    """The method's settings for a model (and a checkpoint, when one is given), checked; `log_overrides`:
    log the flags that override what the checkpoint recorded (create_model does, once)."""
    from .checkpoint import check_method, resolve_settings

    method = get_method(name)
    if checkpoint is None:
        return resolve_settings(method.config, {}, settings, path, flag)
    check_method(checkpoint, method, path, flag)
    recorded = method.model_class().recorded_settings(checkpoint)
    return resolve_settings(method.config, recorded, settings, path, flag, log_overrides)


def create_model(name: str, *, clip_weights: str = "openai", checkpoint: str | os.PathLike | dict | None = None,
                 checkpoint_flag: str = "--checkpoint_path", checkpoint_name=None, clip=None, device=None,
                 config=None, **settings):
    """Build method `name`'s model on a frozen CLIP, optionally loading a checkpoint.

    checkpoint: a path, or a dict already read with `models.checkpoint.read_checkpoint` (then
    `checkpoint_name`, its path, names it in messages).
    clip: an already built open_clip CLIP (tests reuse one); otherwise `clip_weights` is loaded.
    config: the settings `resolve_config` already resolved for this checkpoint (a script that needs the image
    size before the model is built resolves them once and passes them on); `settings` then only say which
    values the user gave, for error messages.
    Returns the model in eval mode, on `device` when given.
    """
    from .checkpoint import read_checkpoint
    from .clip_loader import load_clip

    method = get_method(name)
    model_class = method.model_class()
    path = Path(checkpoint_name) if checkpoint_name else None
    if checkpoint is not None and not isinstance(checkpoint, dict):
        path = Path(checkpoint)
        checkpoint = read_checkpoint(path, checkpoint_flag)
    if config is None:
        config = resolve_config(name, checkpoint, path, checkpoint_flag, **settings)
    if clip is None:
        clip = load_clip(clip_weights, quick_gelu=model_class.quick_gelu)
    try:
        model = model_class(clip, config)
    except ValueError as error:
        raise ValueError(_blame(str(error), checkpoint, settings, path)) from None
    from .checkpoint import clip_fingerprint

    model.clip_fingerprint = clip_fingerprint(clip)
    if checkpoint is not None:
        model.load_checkpoint(checkpoint, path)
        recorded = checkpoint.get("clip_fingerprint")
        if recorded and recorded != model.clip_fingerprint:
            log.warning("%s was trained on other CLIP weights (fingerprint %s) than --clip_weights %s (%s): "
                        "its maps and scores will not be what it was trained for", path, recorded, clip_weights,
                        model.clip_fingerprint)
        elif not recorded:  # the authors' released files record no fingerprint
            log.log(logging.INFO if clip_weights == "openai" else logging.WARNING,
                    "CLIP weights: --clip_weights %s (fingerprint %s); %s records no CLIP fingerprint (the "
                        "authors' released format), so it cannot be checked against them: the maps and scores "
                        "are right only if these are the CLIP weights it was trained on (the authors': OpenAI's "
                        "ViT-L-14-336px)", clip_weights, model.clip_fingerprint, path)
        else:
            log.info("CLIP weights: --clip_weights %s (fingerprint %s, as %s records)", clip_weights,
                     model.clip_fingerprint, path)
    if device is not None:
        model.to(device)
    return model.eval()


def _blame(message: str, checkpoint: dict | None, settings: dict, path) -> str:
    """A setting the user never passed but the checkpoint recorded is named as the checkpoint's."""
    if not checkpoint or not isinstance(checkpoint.get("settings"), dict):
        return message
    from_checkpoint = [name for name, value in checkpoint["settings"].items()
                       if settings.get(name) is None and f"--{name}" in message]
    if not from_checkpoint:
        return message
    recorded = ", ".join(f"{name}={checkpoint['settings'][name]}" for name in from_checkpoint)
    return (f"{message} — {recorded} comes from {path}, which recorded the settings it was trained with: use the "
            "CLIP weights it was trained on, or pass the flag to override it")
