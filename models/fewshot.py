"""Few-shot references for any method that has a few-shot mode: which normal images, read once, handed to the model.

A method opts in with `supports_few_shot = True`, a `few_shot` property (its settings ask for
references, or, with `references_switch_few_shot = True`, the reference flags alone do: WinCLIP+) and `set_references(cls_name, uint8 images [K, 3, S, S], paths)`, which keeps what it
needs as buffers (so the memory travels with the model and into exported files). The images are
either `--k_shot K` normal images of each evaluated class drawn from the dataset's `train` split
with `--seed`, or the files under `--reference_dir` (a sub-folder per class, or one folder for
every class). Methods without a few-shot mode refuse these flags.
"""
from __future__ import annotations

import logging
from pathlib import Path

MODES = ("zero_shot", "few_shot")  # the --mode values of the methods with a few-shot mode
DEFAULT_K_SHOT = 4  # the released APRIL-GAN test_few_shot.sh
DEFAULT_SEED = 42  # idem
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}

log = logging.getLogger("zsas.models")


class FewShotError(ValueError):
    pass


def add_flags(parser) -> None:
    group = parser.add_argument_group("few-shot references (methods with a few-shot mode)")
    group.add_argument("--k_shot", type=int, default=None,
                       help=f"normal reference images per class, drawn from the dataset's train split "
                            f"(default: {DEFAULT_K_SHOT} in few-shot mode)")
    group.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the --k_shot draw")
    group.add_argument("--reference_dir", default=None,
                       help="use these normal images instead: DIR/<class>/* per class, or DIR/* for every class")


def requested(args) -> bool:
    return getattr(args, "k_shot", None) is not None or getattr(args, "reference_dir", None) is not None


def check(model, args) -> None:
    """Refuse reference flags the model cannot use, and few-shot mode without a way to get references."""
    if not getattr(model, "supports_few_shot", False):
        if requested(args):
            raise FewShotError(f"--model {model.method} has no few-shot mode: drop --k_shot / --reference_dir")
        return
    if requested(args) and getattr(model, "references_switch_few_shot", False):
        model.few_shot_requested = True
    if requested(args) and not model.few_shot:
        raise FewShotError("--k_shot / --reference_dir are for few-shot mode: add --mode few_shot")
    if args.k_shot is not None and args.k_shot < 1:
        raise FewShotError(f"--k_shot must be >= 1, got {args.k_shot}")


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def choose(dataset, class_names, k_shot: int | None, seed: int, reference_dir=None) -> dict[str, list[Path]]:
    """The reference files of each class (absolute paths)."""
    import torch

    if reference_dir is not None:
        root = Path(reference_dir)
        if not root.is_dir():
            raise FewShotError(f"--reference_dir {root} is not a folder")
        chosen = {}
        for name in class_names:
            folder = root / name if (root / name).is_dir() else root
            images = _images_in(folder)
            if not images:
                raise FewShotError(f"--reference_dir: no images for class {name!r} in {folder}")
            chosen[name] = images
        return chosen
    from dataset import read_meta, samples_from_meta

    k_shot = DEFAULT_K_SHOT if k_shot is None else k_shot
    meta, meta_path = read_meta(dataset.root, dataset.meta_path)
    try:
        train = samples_from_meta(meta, "train", dataset.root, meta_path)
    except Exception as error:  # no train split at all
        raise FewShotError(f"{meta_path} has no usable 'train' split for --k_shot ({error}); pass --reference_dir") \
            from None
    generator = torch.Generator().manual_seed(seed)
    chosen = {}
    for name in class_names:  # one stream over the classes in order, so a seed fixes every class's draw
        pool = [s for s in train if s.cls_name == name and not s.anomaly]
        if not pool:
            raise FewShotError(f"{meta_path}: class {name!r} has no normal image in its train split; pass "
                               "--reference_dir")
        if len(pool) < k_shot:
            log.warning("class %r has %d normal train images, fewer than --k_shot %d: using all", name, len(pool),
                        k_shot)
        order = torch.randperm(len(pool), generator=generator)[:k_shot].tolist()
        chosen[name] = [dataset.root / pool[i].img_path for i in sorted(order)]
    return chosen


def prepare(model, args, dataset, device, class_names=None) -> dict[str, list[str]] | None:
    """Give a few-shot model its references for every class of `dataset` (or `class_names`); returns the files
    used per class (for the results), or None when the model runs zero-shot. Without a dataset (predict.py,
    export.py) the references come from --reference_dir."""
    import torch

    from dataset import read_image

    check(model, args)
    if not getattr(model, "few_shot", False):
        return None
    if dataset is None and args.reference_dir is None:
        raise FewShotError("few-shot mode here needs --reference_dir (normal images of the class): there is no "
                           "dataset to draw --k_shot images from")
    classes = list(class_names) if class_names is not None else dataset.class_names
    chosen = choose(dataset, classes, args.k_shot, args.seed, args.reference_dir)
    used = {}
    for name, paths in chosen.items():
        images = torch.stack([read_image(path, model.image_size)[0] for path in paths]).to(device)
        model.set_references(name, images, paths)
        used[name] = [str(path) for path in paths]
    return used


def add_class_flag(parser) -> None:
    parser.add_argument("--class_name", default=None,
                        help="the object class the prompts name, for methods whose prompts name it (APRIL-GAN): "
                             "every image of the run is taken to be of this class")


def bind(model, args, device) -> dict:
    """For a run without a dataset (predict.py, export.py): the class a class-conditioned model names, and its
    few-shot references. Returns what was bound (recorded with the outputs)."""
    class_name = getattr(args, "class_name", None)
    if class_name is None and getattr(model, "generic_class_name", None):  # a method with a generic word for it
        class_name = model.generic_class_name
        log.info("no --class_name: the prompts name the generic %r", class_name)
    if not getattr(model, "class_conditioned", False):
        if class_name is not None:
            raise FewShotError(f"--model {model.method} does not name the class in its prompts: drop --class_name")
        check(model, args)
        return {}
    if class_name is None:
        raise FewShotError(f"--model {model.method}'s prompts name the object class: pass --class_name NAME (the "
                           "class name it was evaluated with, e.g. the meta file's class key)")
    model.bind_class(class_name)
    bound = {"class_name": class_name}
    references = prepare(model, args, None, device, class_names=[class_name])
    if references is not None:
        bound["references"] = references[class_name]
    return bound
