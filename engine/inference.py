"""Batched inference over a dataset, as `test.py` (and the benchmarks) run it, for any method.

Loader processes decode a few images each (so every worker helps fill the first batch),
the pieces are joined into batches on the device, and maps, masks and scores stay there
for smoothing and scoring: no per-image Python loop, no device sync per batch.
"""
from __future__ import annotations

import time

import numpy as np
import torch
from tqdm import tqdm

from engine.devices import autocast
from utils import atomic_savez

BATCH_KEYS = ("img", "img_mask", "anomaly")


def loader_chunk(batch_size: int, workers: int) -> int:
    """Images per data-loading task: the largest divisor of the batch that lets every worker
    help fill it. One worker decoding a whole batch of large PNGs would leave the GPU idle
    for the first batch's full decoding time."""
    if workers <= 1:
        return batch_size
    share = -(-batch_size // workers)
    return max(d for d in range(1, share + 1) if batch_size % d == 0)


def device_batches(loader, batch_size: int, device: torch.device, keys=BATCH_KEYS):
    """Join the loader's chunks, in order, into batches of `batch_size` (the last may be smaller) on `device`."""
    pending, count = [], 0
    for chunk in loader:
        pending.append({key: chunk[key].to(device, non_blocking=True) for key in keys})
        count += len(chunk[keys[0]])
        while count >= batch_size:
            joined = {key: torch.cat([part[key] for part in pending]) for key in pending[0]}
            yield {key: values[:batch_size] for key, values in joined.items()}
            count -= batch_size
            pending = [{key: values[batch_size:] for key, values in joined.items()}] if count else []
    if pending:
        yield {key: torch.cat([part[key] for part in pending]) for key in pending[0]}


@torch.inference_mode()
def predict_dataset(model, dataset, device: torch.device, *, batch_size: int, workers: int, precision: str,
                    indices=None) -> dict:
    """Smoothed maps `[N, S, S]`, scores `[N]`, masks and labels, all on `device`, in dataset order
    (of `indices`, when only a part of the dataset is wanted). Before the method's `finalize`."""
    subset = dataset if indices is None else torch.utils.data.Subset(dataset, list(indices))
    size, count = model.image_size, len(subset)
    maps = torch.empty((count, size, size), dtype=torch.float32, device=device)
    masks = torch.empty((count, size, size), dtype=torch.uint8, device=device)
    scores = torch.empty(count, dtype=torch.float32, device=device)
    labels = torch.empty(count, dtype=torch.long, device=device)
    # A class-conditioned method (its prompts name the class) gets each image's class name.
    names = ([dataset.samples[i].cls_name for i in (range(len(dataset)) if indices is None else indices)]
             if getattr(model, "class_conditioned", False) else None)
    loader = torch.utils.data.DataLoader(subset, batch_size=loader_chunk(batch_size, workers), shuffle=False,
                                         num_workers=workers, pin_memory=device.type == "cuda")
    start = 0
    with tqdm(total=count, desc="inference", unit="img", leave=False) as progress:
        for batch in device_batches(loader, batch_size, device):
            stop = start + batch["img"].shape[0]
            with autocast(precision, device):
                batch_maps, batch_scores = (model(batch["img"]) if names is None
                                            else model(batch["img"], names[start:stop]))
            maps[start:stop] = batch_maps
            scores[start:stop] = batch_scores
            masks[start:stop] = batch["img_mask"]
            labels[start:stop] = batch["anomaly"]
            progress.update(stop - start)
            start = stop
    return {"anomaly_maps": maps, "image_scores": scores, "gt_masks": masks, "labels": labels}


@torch.inference_mode()
def warm_up(model, device: torch.device, precision: str) -> float:
    """On a GPU, one pass over two blank images before the clock starts: CUDA's one-time set-up
    (kernel loading, library handles) belongs with model loading, not with images/s."""
    if device.type != "cuda" or getattr(model, "class_conditioned", False):  # no class to name for blank images
        return 0.0
    start = time.time()
    size = model.image_size
    with autocast(precision, device):
        model(torch.zeros((2, 3, size, size), dtype=torch.uint8, device=device))
    torch.cuda.synchronize(device)
    return time.time() - start


def save_maps(path, outputs: dict, samples) -> None:
    """What `metrics.py` re-scores: every array of `outputs` plus classes and image paths."""
    arrays = {key: value.cpu().numpy() for key, value in outputs.items()}
    atomic_savez(path, **arrays, cls_names=np.array([s.cls_name for s in samples]),
                 img_paths=np.array([s.img_path for s in samples]))
