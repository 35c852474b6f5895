"""Several training datasets in one run: `train.py --train_data_path A B --dataset a b`.

AdaCLIP's authors train on two datasets at once (their `get_data` concatenates the datasets of
`--training_data` with torch's `ConcatDataset`: MVTec AD + ColonDB, VisA + ClinicDB), each dataset
keeping its own items, classes and mosaic; only their MVTec AD class draws the mosaic (0.2).
Here any method can: the roots are read one by one, every item checked as for one root, in the
order given, and `--augment_datasets` names the datasets the method's training augmentation
applies to (default: all). One root is read exactly as before: a plain `AnomalyDataset`.
"""
from __future__ import annotations

import bisect
import itertools
from pathlib import Path

import torch

from dataset import AnomalyDataset, same_file_key
from utils import DatasetError


def training_labels(roots: list[str], names: list[str] | None, augmented: list[str] | None = None) -> list[str]:
    """Each training dataset's label (its --dataset name, else its folder's name), once the flags are checked to
    agree with each other; nothing is read."""
    if names is not None and len(names) != len(roots):
        raise ValueError(f"--dataset gives {len(names)} name(s) but --train_data_path gives {len(roots)} root(s): "
                         "pass one --dataset name per root, in the same order (or no --dataset)")
    labels = [name or Path(root).name for root, name in zip(roots, names or [None] * len(roots))]
    for name in augmented or ():
        if name not in labels:
            raise ValueError(f"--augment_datasets {name}: no training dataset is labelled so (they are "
                             f"{', '.join(labels)}: their --dataset names, else their folders' names)")
        if labels.count(name) > 1:
            raise ValueError(f"--augment_datasets {name}: {labels.count(name)} training datasets are labelled so; "
                             "tell them apart with --dataset (one name per root)")
    return labels


def training_dataset(roots: list[str], names: list[str] | None, augmented: list[str] | None, image_size: int, *,
                     split: str, augmentation=None, **inputs):
    """One root: its `AnomalyDataset`. Several: a `CombinedDataset` of them, in the given order, the
    augmentation only on the datasets `augmented` names (all when None)."""
    labels = training_labels(roots, names, augmented)
    parts = [AnomalyDataset(root, image_size, split=split, dataset=name,
                            augmentation=augmentation if augmented is None or label in augmented else None, **inputs)
             for root, name, label in zip(roots, names or [None] * len(roots), labels)]
    if len(parts) == 1:
        return parts[0]
    return CombinedDataset(parts, labels)


def _check_no_overlap(parts: list[AnomalyDataset]) -> None:
    """The same meta file, or the same image in two meta files, would train on those images twice."""
    seen: dict = {}
    for part in parts:
        meta = part.meta_path.resolve()
        if meta in seen:
            raise DatasetError(f"{part.meta_path} is given twice (--train_data_path / --dataset): each training "
                               "dataset once")
        seen[meta] = part.meta_path
    owner: dict[str, Path] = {}
    root_of = {id(part): part.root.resolve() for part in parts}
    for part in parts:
        for sample in part.samples:
            key = same_file_key(sample.img_path, root_of[id(part)])
            if key in owner and owner[key] != part.meta_path:
                raise DatasetError(f"image {key} is listed in both {owner[key]} and {part.meta_path}: a combined "
                                   "training set takes each image once; remove it from one of them")
            owner[key] = part.meta_path


class CombinedDataset(torch.utils.data.Dataset):
    """Training datasets one after the other (as torch's `ConcatDataset`), with what the trainer reads of
    one dataset: `samples`, `class_names`, `anomalous_count`, `image_size`, `augmentation`, and in each
    item its index in the whole (the key of the feature cache and of the batch sampler's shares).
    Each item comes from its own dataset: its mosaic draws from its class there."""

    def __init__(self, parts: list[AnomalyDataset], labels: list[str]):
        sizes = {part.image_size for part in parts}
        if len(sizes) != 1:
            raise ValueError(f"the training datasets are read at different sizes {sorted(sizes)}")
        _check_no_overlap(parts)
        self.parts, self.labels = list(parts), list(labels)
        self.image_size = parts[0].image_size
        self.ends = list(itertools.accumulate(len(part) for part in parts))
        self.samples = [sample for part in parts for sample in part.samples]
        self.meta_paths = [part.meta_path for part in parts]
        augmented = [part.augmentation for part in parts if part.augmentation is not None]
        # One augmented dataset is enough for the features to change every epoch (no feature cache).
        self.augmentation = augmented[0] if augmented else None

    @property
    def meta_path(self) -> str:
        """The meta files, for the logs."""
        return " + ".join(map(str, self.meta_paths))

    @property
    def class_names(self) -> list[str]:
        return list(dict.fromkeys(sample.cls_name for sample in self.samples))

    @property
    def anomalous_count(self) -> int:
        return sum(part.anomalous_count for part in self.parts)

    def __len__(self) -> int:
        return self.ends[-1]

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} training images")
        which = bisect.bisect_right(self.ends, index)
        item = self.parts[which][index - (self.ends[which - 1] if which else 0)]
        item["index"] = index
        return item


def parts_of(dataset) -> list[tuple[str | None, AnomalyDataset]]:
    """(label, dataset) of each training dataset: one unlabelled for a plain `AnomalyDataset`."""
    if isinstance(dataset, CombinedDataset):
        return list(zip(dataset.labels, dataset.parts))
    return [(None, dataset)]


def training_record(dataset, labels: list[str]) -> list[dict]:
    """What a checkpoint records of the data that trained it (train.py's `training_data`)."""
    return [{"dataset": label, "meta": str(part.meta_path), "images": len(part),
             "augmented": part.augmentation is not None}
            for label, (_, part) in zip(labels, parts_of(dataset))]
