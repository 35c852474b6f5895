"""`python -m generate_dataset_json NAME --root DATASET_ROOT [--out PATH]`.

One sub-command per registry row (their help says the layout and the download page),
plus `synthetic`, which writes a small generated dataset for smoke runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .files import DatasetError
from .meta import build_meta, format_table, write_meta
from .registry import DATASETS
from .spec import DatasetSpec
from .synthetic import FORMATS, make_synthetic_dataset

PROG = "python -m generate_dataset_json"


def _size(text: str) -> tuple[int, int]:
    """`96` or `128x96` (width x height)."""
    try:
        width, _, height = text.lower().partition("x")
        return int(width), int(height or width)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or WxH, got {text!r}") from None


def _describe(spec: DatasetSpec) -> str:
    """A sub-command's description: the layout it expects and where to download it
    (unwrapped, so the address stays one piece a terminal can open)."""
    text = f"Write meta.json for {spec.title}.\n\nExpected layout:\n  {spec.layout}"
    if spec.url:
        text += f"\n\nDownload: {spec.url}"
        text += "" if spec.url_certain else "\n  (address not verified; search the dataset's name if it moved)"
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Write meta.json (the image list with labels and mask paths that train.py and\n"
                    "test.py read) for a dataset as downloaded. Masks are paired with images by\n"
                    "file name; a missing mask is an error naming the image.",
        epilog="Datasets and the layout each expects:\n" + "\n".join(
            f"  {spec.name:<10} {spec.title}: {spec.layout}" for spec in DATASETS.values())
        + f"\n\n`{PROG} NAME -h` also gives the download page.")
    commands = parser.add_subparsers(dest="name", metavar="NAME", required=True,
                                     help="the dataset (see below), or `synthetic` to generate one")
    for spec in DATASETS.values():
        command = commands.add_parser(spec.name, help=spec.title, description=_describe(spec),
                                      formatter_class=argparse.RawDescriptionHelpFormatter)
        command.add_argument("--root", required=True, type=Path,
                             help="the folder the dataset was unpacked into; paths in meta.json are relative to it")
        command.add_argument("--out", type=Path, default=None,
                             help="where to write meta.json (default: ROOT/meta.json, where train.py and test.py "
                                  "look for it)")
    _add_synthetic(commands)
    return parser


def _add_synthetic(commands: argparse._SubParsersAction) -> None:
    command = commands.add_parser(
        "synthetic", help="generate a small MVTec-layout dataset with painted defects",
        description="Generate textured images with painted defects and exact masks in the MVTec AD "
                    "layout, then write its meta.json: data for smoke runs and benchmarks.")
    command.add_argument("--root", required=True, type=Path, help="a new or empty folder to write the dataset into")
    command.add_argument("--classes", nargs="+", default=["bottle_synth", "tile_synth"],
                         help="class folder names; each class gets its own texture")
    command.add_argument("--n_normal", type=int, default=3, help="normal test images per class")
    command.add_argument("--n_anomalous", type=int, default=3,
                         help="anomalous test images per class (alternating blob and scratch defects)")
    command.add_argument("--train_normal", type=int, default=0, help="normal images per class in train/good")
    command.add_argument("--size", nargs="+", type=_size, default=[(96, 96)],
                         help="image size, N or WxH; several sizes are cycled through so images vary")
    command.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same files")
    command.add_argument("--format", default="png", choices=sorted(FORMATS),
                         help="image file format (masks are always PNG); jpg is lossy, so defect edges blur")


def _print_warning(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Runs the command; returns the exit status (0 ok, 1 dataset or file error, 2 usage)."""
    args = build_parser().parse_args(argv)
    try:
        if args.name == "synthetic":
            meta = make_synthetic_dataset(args.root, classes=args.classes, n_normal=args.n_normal,
                                          n_anomalous=args.n_anomalous, image_size=args.size, seed=args.seed,
                                          train_normal=args.train_normal, image_format=args.format)
            out = args.root / "meta.json"
        else:
            meta = build_meta(args.name, args.root, warn=_print_warning)
            out = write_meta(meta, args.out or args.root / "meta.json")
    except DatasetError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"error: {error.strerror or error}: {error.filename or ''}", file=sys.stderr)
        return 1
    print(format_table(meta))
    print(f"wrote {out}")
    return 0
