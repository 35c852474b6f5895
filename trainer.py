"""The optimisation loop `train.py` runs, for any method: batches, the feature cache, steps, validation.

Each epoch draws a fresh shuffled split into batches; the loader and the feature cache
follow the same split, so a cached epoch trains exactly as a recomputed one would.
"""
from __future__ import annotations

import logging

import torch
from tqdm import tqdm

from feature_cache import FeatureCache, choose_cache
from models.base import normalize_images
from runtime import autocast, precision_dtype


class EpochBatches(torch.utils.data.Sampler):
    """A fresh shuffled split into batches each epoch, shared by the loader and the feature cache."""

    def __init__(self, size: int, batch_size: int, generator: torch.Generator):
        self.size, self.batch_size, self.generator = size, batch_size, generator
        self.batches: list[list[int]] = []

    def shuffle(self) -> list[list[int]]:
        """Draw this epoch's batches; the loader and the cache then both follow them."""
        order = torch.randperm(self.size, generator=self.generator)
        # Which images share a batch is random; inside a batch they keep the dataset's order, so that
        # a batch's sums run in one fixed order (the losses then match the reference's to rounding).
        self.batches = [sorted(b.tolist()) for b in order.split(self.batch_size)]
        return self.batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return -(-self.size // self.batch_size)


class Trainer:
    def __init__(self, model, dataset, *, device: torch.device, precision: str, batch_size: int, workers: int,
                 seed: int, epochs: int, cache_mode: str, optimizer, scaler, logger: logging.Logger):
        self.model, self.dataset, self.device, self.precision = model, dataset, device, precision
        self.optimizer, self.scaler, self.logger, self.epochs = optimizer, scaler, logger, epochs
        self.batches = EpochBatches(len(dataset), batch_size, torch.Generator().manual_seed(seed))
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
        """Decide where the cache lives on the first batch (its size is measured there), then fill it."""
        if not self._cache_decided:
            self._cache_decided = True
            needed = FeatureCache.bytes_needed(batch["features"], batch["mask"], len(self.dataset))
            self.cache_place = choose_cache(self.cache_mode, self.device, needed, self.epochs)
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

    def step(self, batch: dict) -> dict[str, float]:
        """One optimiser step; returns every loss as a float.

        `scaler` (fp16 only) scales the loss so that small fp16 gradients do not flush to zero."""
        with autocast(self.precision, self.device):
            losses = self.model.training_losses(batch["features"], batch["mask"], batch["label"])
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(losses["loss"]).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return {key: value.item() for key, value in losses.items()}

    def run_epoch(self, epoch: int) -> list[dict]:
        epoch_batches = self.batches.shuffle()
        use_cache = self.cache is not None and bool(self.cache.filled.all())
        steps = ((self.cache.batch(index, self.device) for index in epoch_batches) if use_cache
                 else (self.load_batch(raw) for raw in self.loader))
        records = []
        progress = tqdm(steps, total=len(self.batches), desc=f"epoch {epoch}/{self.epochs}", leave=False,
                        unit="batch")
        for batch in progress:
            batch["features"] = tuple(f.to(self.feature_dtype) for f in batch["features"])
            if not use_cache:
                self._maybe_cache(batch)
            losses = self.step(batch)
            records.append({"epoch": epoch, **losses})
            progress.set_postfix({key: f"{value:.4f}" for key, value in losses.items()})
        return records

    @torch.no_grad()
    def validate(self, dataset) -> dict[str, float]:
        """Mean over classes of the pixel AP of each map the method names (logged only)."""
        import metrics

        self.model.eval()
        loader = torch.utils.data.DataLoader(dataset, batch_size=self.batches.batch_size, shuffle=False)
        maps: dict[str, list[torch.Tensor]] = {}
        masks = []
        for raw in tqdm(loader, desc="validation", leave=False, unit="batch"):
            images = normalize_images(raw["img"].to(self.device))
            with autocast(self.precision, self.device):
                named = self.model.validation_maps(images)
            for name, values in named.items():
                maps.setdefault(name, []).append(values.float().cpu())
            masks.append(raw["img_mask"])
        self.model.train()
        masks_all = torch.cat(masks).numpy()
        names = [s.cls_name for s in dataset.samples]
        return {name: metrics.evaluate(torch.cat(values).numpy(), masks_all, None, None, names,
                                       keys=("pixel_ap",))["mean"]["pixel_ap"]
                for name, values in maps.items()}
