"""`python -m generate_dataset_json NAME --root DATASET_ROOT [--out PATH] [--overwrite]`.

One sub-command per registry row (their help says the layout and the download page),
plus `mvisa`, which writes the VCP-CLIP authors' meta_<dataset>.json for their
standardised layout, and `synthetic`, which writes a small generated dataset for smoke
runs. An existing meta file is never replaced without `--overwrite`, and then the old
one is kept as `<name>.bak`: meta files get edited by hand.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .files import DatasetError, Problems
from .meta import build_meta, format_table, keep_backup, refuse_to_replace, write_meta
from .mvisa import MVISA_LAYOUT, build_mvisa_meta, mvisa_meta_path
from .registry import DATASETS
from .spec import DatasetSpec
from .synthetic import FORMATS, make_synthetic_dataset

PROG = "python -m generate_dataset_json"
OVERWRITE_HELP = "replace the meta file if it exists, keeping the old one as <name>.bak (default: refuse)"


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
                    "file name; a missing mask is an error naming the image. An existing meta file\n"
                    "is replaced only with --overwrite (the old one is kept as <name>.bak).",
        epilog="Datasets and the layout each expects:\n" + "\n".join(
            f"  {spec.name:<10} {spec.title}: {spec.layout}" for spec in DATASETS.values())
        + f"\n  {'mvisa':<10} the VCP-CLIP authors' layout, meta_<dataset>.json: {MVISA_LAYOUT}"
        + f"\n\n`{PROG} NAME -h` also gives the download page.")
    commands = parser.add_subparsers(dest="name", metavar="NAME", required=True,
                                     help="the dataset (see below), `mvisa`, or `synthetic` to generate one")
    for spec in DATASETS.values():
        command = commands.add_parser(spec.name, help=spec.title, description=_describe(spec),
                                      formatter_class=argparse.RawDescriptionHelpFormatter)
        command.add_argument("--root", required=True, type=Path,
                             help="the folder the dataset was unpacked into; paths in meta.json are relative to it")
        command.add_argument("--out", type=Path, default=None,
                             help="where to write meta.json (default: ROOT/meta.json, where train.py and test.py "
                                  "look for it)")
        command.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
        if spec.convert_masks is not None:
            command.add_argument("--convert_masks", action="store_true", help=spec.convert_help)
    _add_mvisa(commands)
    _add_synthetic(commands)
    return parser


def _add_mvisa(commands: argparse._SubParsersAction) -> None:
    command = commands.add_parser(
        "mvisa", help="meta_<dataset>.json for the VCP-CLIP authors' standardised layout",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Write <root>/meta_<dataset>.json exactly as the VCP-CLIP authors' dataset/make_meta.py\n"
                    "does (same items, order and bytes), for their standardised layout under --root:\n"
                    f"  {MVISA_LAYOUT}\n"
                    "Paths are relative to --root and start with <dataset>/.")
    command.add_argument("--root", required=True, type=Path,
                         help="the authors' data_path: the folder that holds <dataset>/")
    command.add_argument("--dataset", required=True, help="the dataset folder's name under --root, e.g. mvtec or visa")
    command.add_argument("--out", type=Path, default=None, help="where to write it (default: ROOT/meta_<dataset>.json)")
    command.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    command.add_argument("--no_placeholders", action="store_true",
                         help="leave out the item with empty paths that make_meta.py writes for an empty "
                              "train/<specie>/ folder")


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
    command.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)


def _print_warning(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _output_path(args: argparse.Namespace) -> Path:
    if args.name == "synthetic":
        return args.root / "meta.json"
    if args.name == "mvisa":
        return args.out or mvisa_meta_path(args.root, args.dataset)
    return args.out or args.root / "meta.json"


def _run(args: argparse.Namespace) -> dict:
    """The meta dict of the command (`synthetic` also writes its dataset and meta.json;
    `--convert_masks` first writes the dataset's PNG masks)."""
    if args.name == "synthetic":
        return make_synthetic_dataset(args.root, classes=args.classes, n_normal=args.n_normal,
                                      n_anomalous=args.n_anomalous, image_size=args.size, seed=args.seed,
                                      train_normal=args.train_normal, image_format=args.format)
    if args.name == "mvisa":
        return build_mvisa_meta(args.root, args.dataset, placeholders=not args.no_placeholders,
                                warn=_print_warning)
    spec = DATASETS[args.name]
    if getattr(args, "convert_masks", False):
        if not args.root.is_dir():
            raise DatasetError(f"dataset root {args.root} is not a folder (layout: {spec.layout})")
        problems = Problems()
        for line in spec.convert_masks(args.root, spec, problems):
            print(line)  # what was written stays said even when some files failed
        for message in problems.warnings:
            _print_warning(message)
        problems.raise_if_errors()
    return build_meta(args.name, args.root, warn=_print_warning)


def main(argv: list[str] | None = None) -> int:
    """Runs the command; returns the exit status (0 ok, 1 dataset or file error, 2 usage)."""
    args = build_parser().parse_args(argv)
    out = _output_path(args)
    backup = None
    try:
        if not args.overwrite:
            refuse_to_replace(out)  # before any work: nothing is written when it refuses
        elif args.name == "synthetic":
            backup = keep_backup(out)  # make_synthetic_dataset writes root/meta.json itself
        meta = _run(args)
        if args.name != "synthetic":
            if args.overwrite:
                backup = keep_backup(out)
            write_meta(meta, out)
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
    print(f"wrote {out}" + (f" (the previous file is kept as {backup})" if backup else ""))
    return 0
