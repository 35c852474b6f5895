"""The command-line surface the scripts share: each shared flag declared once, here (detectron2's shared argument
groups are the model followed). torch-free, so that every script's `--help` starts at once.

A script builds its own groups and calls these helpers for the flags it shares with the others; a default that
differs between scripts is given by the caller together with the help text saying why.
"""
from __future__ import annotations

from engine.devices import BATCH_SIZE_HELP, DEVICE_HELP, PRECISION_HELP, PRECISIONS
from utils import non_negative_float, non_negative_int, positive_int

CLIP_WEIGHTS_HELP = "OpenAI's ViT-L-14-336px.pt (TorchScript), an OpenAI-layout state dict, or 'openai'"
CHECKPOINT_HELP = "train.py's epoch_{n}.pth or one of the authors' released files"
WORKERS_HELP = ("data-loading processes (default: 0 on a CPU-only run, where decoding would compete with the model "
                "for the cores; with a GPU the CPUs available, at most {cap})")


def add_checkpoint_flags(group, *, required: bool = False, checkpoint_help: str = CHECKPOINT_HELP) -> None:
    """--checkpoint_path and --clip_weights: what a trained model is made of."""
    group.add_argument("--checkpoint_path", required=required, help=checkpoint_help)
    add_clip_weights_flag(group)


def checkpoint_problem(method, checkpoint_path, script: str) -> str | None:
    """A training-free method (its registry row's `trains` False) reads no checkpoint; every other needs one."""
    if not method.trains:
        if checkpoint_path:
            return (f"--model {method.name} ({method.title}) is training-free and reads no checkpoint: drop "
                    f"--checkpoint_path {checkpoint_path}")
        return None
    if not checkpoint_path:
        return f"--checkpoint_path is required by {script} for --model {method.name}"
    return None


def add_clip_weights_flag(group) -> None:
    group.add_argument("--clip_weights", default="openai", help=CLIP_WEIGHTS_HELP)


def add_device_flag(group, help: str = DEVICE_HELP) -> None:
    group.add_argument("--device", default="auto", help=help)


def add_run_flags(group, *, batch_size: bool = True, workers_help: str | None = None) -> None:
    """--device, --precision, --batch_size and --num_workers, as every script that runs a model takes them."""
    from engine.devices import MAX_LOADER_WORKERS

    add_device_flag(group)
    group.add_argument("--precision", choices=PRECISIONS, default="fp32", help=PRECISION_HELP)
    if batch_size:
        group.add_argument("--batch_size", type=positive_int, default=None, help=BATCH_SIZE_HELP)
    group.add_argument("--num_workers", type=non_negative_int, default=None,
                       help=workers_help or WORKERS_HELP.format(cap=MAX_LOADER_WORKERS))


def add_overwrite_flag(group, what: str) -> None:
    group.add_argument("--overwrite", action="store_true", help=f"replace {what} (refused otherwise)")


def add_image_limit_flag(group) -> None:
    """--max_image_pixels: the one limit on an input image's size (deploy/image_io.py checks it)."""
    from deploy.image_io import DEFAULT_MAX_PIXELS, MAX_PIXELS_HELP

    group.add_argument("--max_image_pixels", type=non_negative_int, default=DEFAULT_MAX_PIXELS, metavar="N",
                       help=MAX_PIXELS_HELP)


def add_mask_flags(group) -> None:
    """--mask_threshold: which mask values are defect (dataset.anomalous_pixels); and the image limit."""
    group.add_argument("--mask_threshold", type=non_negative_float, default=0.0, metavar="T",
                       help="mask values above T are defect (default 0: any non-zero value); e.g. 127 for JPEG "
                            "masks or masks with a grey 'ignore' band")
    add_image_limit_flag(group)
