"""The optimisation loop `train.py` runs, for any method: batches, the feature cache, steps, validation.

Each epoch draws a fresh shuffled split into batches; the loader and the feature cache
follow the same split, so a cached epoch trains exactly as a recomputed one would. Under
torchrun every rank draws the same global batches and computes its share of each
(`distributed.share`); DistributedDataParallel averages the gradients, each rank's loss
weighted by its share, so N processes train the model one process would.
"""
from __future__ import annotations

import inspect
import logging

import torch
from torch import nn
from tqdm import tqdm

from engine import distributed
from engine.feature_cache import FeatureCache, choose_cache
from models.base import normalize_images
from engine.devices import autocast, precision_dtype


class TrainingStep(nn.Module):
    """The trainable parts of a model as one module whose forward is the method's training losses:
    what DistributedDataParallel wraps (the frozen CLIP stays outside it, never broadcast)."""

    def __init__(self, model):
        super().__init__()
        self.trainable = nn.ModuleList(model.trainable_modules())
        object.__setattr__(self, "model", model)  # not a submodule

    def forward(self, features, masks, labels, cls_names=None):
        if getattr(self.model, "class_conditioned", False):  # its prompts name each image's class
            return self.model.training_losses(features, masks, labels, cls_names=cls_names)
        return self.model.training_losses(features, masks, labels)


class EpochBatches(torch.utils.data.Sampler):
    """A fresh shuffled split into batches each epoch, shared by the loader and the feature cache.

    Iterating yields this rank's share of each batch; a rank whose share of a small last batch
    is empty gets the batch's first image with weight 0, so that every rank takes part in
    every gradient exchange."""

    def __init__(self, size: int, batch_size: int, generator: torch.Generator,
                 context: distributed.Context = distributed.SINGLE):
        self.size, self.batch_size, self.generator, self.context = size, batch_size, generator, context
        self.batches: list[list[int]] = []
        self.shares: list[tuple[list[int], float]] = []  # (indices, weight = share of the batch)

    def shuffle(self) -> list[tuple[list[int], float]]:
        """Draw this epoch's batches; the loader and the cache then both follow them."""
        order = torch.randperm(self.size, generator=self.generator)
        # Which images share a batch is random; inside a batch they keep the dataset's order, so that
        # a batch's sums run in one fixed order (the losses then match the reference's to rounding).
        self.batches = [sorted(b.tolist()) for b in order.split(self.batch_size)]
        self.shares = []
        for batch in self.batches:
            mine = distributed.share(batch, self.context)
            self.shares.append((mine, len(mine) / len(batch)) if mine else ([batch[0]], 0.0))
        return self.shares

    def __iter__(self):
        return iter([indices for indices, _ in self.shares])

    def __len__(self) -> int:
        return -(-self.size // self.batch_size)


class Trainer:
    def __init__(self, model, dataset, *, device: torch.device, precision: str, batch_size: int, workers: int,
                 seed: int, epochs: int, cache_mode: str, optimizer, scaler, logger: logging.Logger,
                 context: distributed.Context = distributed.SINGLE):
        self.model, self.dataset, self.device, self.precision = model, dataset, device, precision
        self.optimizer, self.scaler, self.logger, self.epochs = optimizer, scaler, logger, epochs
        self.context = context
        self.step_module = TrainingStep(model)
        if context.enabled:
            ddp = nn.parallel.DistributedDataParallel
            # The prompt buffers never change: no need to send them every step (torch >= 2.x renamed the option).
            no_buffer_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers"
                              in inspect.signature(ddp.__init__).parameters else {"broadcast_buffers": False})
            self.step_module = ddp(self.step_module, device_ids=[device] if device.type == "cuda" else None,
                                   find_unused_parameters=True,  # a method may carry parameters it never uses
                                   **no_buffer_sync)
        self.batches = EpochBatches(len(dataset), batch_size, torch.Generator().manual_seed(seed), context)
        self.loader = torch.utils.data.DataLoader(dataset, batch_sampler=self.batches, num_workers=workers,
                                                  pin_memory=device.type == "cuda")
        self.feature_dtype = precision_dtype(precision)
        # Augmented images differ every epoch: their features cannot be reused.
        self.cache_mode = "off" if dataset.augmentation is not None else cache_mode
        self.cache_place = None
        self.cache: FeatureCache | None = None
        self._cache_decided = False

    def load_batch(self, raw: dict) -> dict:
        images = normalize_images(raw["img"].to(self.device, non_blocking=True))
        with torch.no_grad(), autocast(self.precision, self.device):
            features = self.model.extract_features(images)
        return {"features": features, "mask": raw["img_mask"].to(self.device, non_blocking=True),
                "label": raw["anomaly"].to(self.device, non_blocking=True).long(), "index": raw["index"]}

    def _maybe_cache(self, batch: dict) -> None:
        """Decide where the cache lives on the first batch (its size is measured there), then fill it.
        Under torchrun every rank keeps the whole cache; the ranks agree on the most modest place."""
        if not self._cache_decided:
            self._cache_decided = True
            needed = FeatureCache.bytes_needed(batch["features"], batch["mask"], len(self.dataset))
            place = choose_cache(self.cache_mode, self.device, needed, self.epochs)
            code = torch.tensor([0 if place is None else 1 if place.type == "cpu" else 2])
            if self.context.enabled:
                torch.distributed.all_reduce(code, op=torch.distributed.ReduceOp.MIN,
                                             group=distributed._group_for(code))
            self.cache_place = [None, torch.device("cpu"), self.device][int(code)]
            self.logger.info("feature cache: %s (%.2f GB)", self.cache_place or "off", needed / 1e9)
        if self.cache_place is None:
            return
        try:
            if self.cache is None:
                self.cache = FeatureCache(len(self.dataset), batch, self.cache_place)
            self.cache.store(batch["index"], batch)
        except RuntimeError as error:  # out of memory: train on, recomputing the features
            self.logger.warning("feature cache on %s failed (%s); continuing without it", self.cache_place,
                                str(error).splitlines()[0])
            self.cache = self.cache_place = None

    def step(self, batch: dict, weight: float = 1.0) -> dict[str, float]:
        """One optimiser step on this rank's share (`weight` of the global batch); returns the global
        batch's losses as floats.

        `scaler` (fp16 only) scales the loss so that small fp16 gradients do not flush to zero."""
        with autocast(self.precision, self.device):
            losses = self.step_module(batch["features"], batch["mask"], batch["label"], batch.get("cls_names"))
        self.optimizer.zero_grad(set_to_none=True)
        world = self.context.world_size  # DDP averages over ranks: weight each rank's loss by its share
        self.scaler.scale(losses["loss"] * (weight * world) if self.context.enabled else losses["loss"]).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if not self.context.enabled:
            return {key: value.item() for key, value in losses.items()}
        values = torch.stack([value.detach().float() * weight for value in losses.values()])
        distributed.all_sum(values)
        return dict(zip(losses, values.tolist()))

    def run_epoch(self, epoch: int) -> list[dict]:
        shares = self.batches.shuffle()
        use_cache = self.cache is not None and bool(self.cache.filled.all())
        steps = ((self.cache.batch(index, self.device) for index, _ in shares) if use_cache
                 else (self.load_batch(raw) for raw in self.loader))
        records = []
        progress = tqdm(steps, total=len(self.batches), desc=f"epoch {epoch}/{self.epochs}", leave=False,
                        unit="batch", disable=not self.context.is_main)
        for batch, (indices, weight) in zip(progress, shares):
            batch["features"] = tuple(f.to(self.feature_dtype) for f in batch["features"])
            batch["cls_names"] = [self.dataset.samples[i].cls_name for i in indices]
            if not use_cache and weight > 0:  # a stand-in image (weight 0) is some other rank's to cache
                self._maybe_cache(batch)
            losses = self.step(batch, weight)
            records.append({"epoch": epoch, **losses})
            progress.set_postfix({key: f"{value:.4f}" for key, value in losses.items()})
        if not use_cache and self.context.enabled:
            self._share_cache()
        return records

    def _share_cache(self) -> None:
        """After the first epoch every rank holds the features of its own images: summing the
        zero-initialised caches over ranks gives every rank all of them (the shares are disjoint)."""
        if not self._cache_decided:
            return
        ready = torch.tensor([int(self.cache is not None)])
        torch.distributed.all_reduce(ready, op=torch.distributed.ReduceOp.MIN, group=distributed._group_for(ready))
        if not int(ready):  # some rank could not allocate it: nobody keeps one
            self.cache = self.cache_place = None
            return
        for tensor in (*self.cache.features, self.cache.masks, self.cache.labels):
            distributed.all_sum(tensor)
        filled = self.cache.filled.to(torch.uint8)
        distributed.all_sum(filled)
        self.cache.filled = filled.bool()

    @torch.no_grad()
    def validate(self, dataset) -> dict[str, float]:
        """Mean over classes of the pixel AP of each map the method names (logged only)."""
        import metrics

        self.model.eval()
        loader = torch.utils.data.DataLoader(dataset, batch_size=self.batches.batch_size, shuffle=False)
        maps: dict[str, list[torch.Tensor]] = {}
        masks = []
        conditioned = getattr(self.model, "class_conditioned", False)  # its prompts name each image's class
        for raw in tqdm(loader, desc="validation", leave=False, unit="batch"):
            images = normalize_images(raw["img"].to(self.device))
            with autocast(self.precision, self.device):
                named = (self.model.validation_maps(images, cls_names=list(raw["cls_name"])) if conditioned
                         else self.model.validation_maps(images))
            for name, values in named.items():
                maps.setdefault(name, []).append(values.float().cpu())
            masks.append(raw["img_mask"])
        self.model.train()
        masks_all = torch.cat(masks).numpy()
        names = [s.cls_name for s in dataset.samples]
        return {name: metrics.evaluate(torch.cat(values).numpy(), masks_all, None, None, names,
                                       keys=("pixel_ap",))["mean"]["pixel_ap"]
                for name, values in maps.items()}
