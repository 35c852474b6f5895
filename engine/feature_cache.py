"""The frozen backbone's features of every training image, kept after the first epoch (`--cache_features`).

Nothing upstream of them trains and, without augmentation, the images are the same each
epoch, so recomputing them would repeat the costliest part of training for nothing. The
cache lives on the GPU if it fits, else in host memory (within this process's limits),
else it is skipped; losses and weights are the same as recomputing.
"""
from __future__ import annotations

import os

import torch



def _first_int(path: str) -> int | None:
    """The first number in a /proc or /sys file (None if absent, or not a number such as cgroup's 'max')."""
    try:
        with open(path) as file:
            return int(file.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _host_bytes_available() -> int:
    """Free host memory, capped by this process's limits (address space, a container's cgroup)."""
    import resource

    candidates = [os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")]
    soft_limit, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft_limit != resource.RLIM_INFINITY:
        used = (_first_int("/proc/self/statm") or 0) * os.sysconf("SC_PAGE_SIZE")
        candidates.append(soft_limit - used)
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        limit, usage = _first_int(limit_file), _first_int(usage_file)
        if limit is not None and usage is not None:
            candidates.append(limit - usage)
    return max(0, min(candidates))


def _free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free
    return _host_bytes_available()


def choose_cache(mode: str, device: torch.device, bytes_needed: int, epochs: int) -> torch.device | None:
    """Where the feature cache lives: the requested place, or for 'auto' the first with room to spare
    (none for a single epoch, which would never read it)."""
    if mode == "off" or (mode == "auto" and epochs == 1):
        return None
    if mode == "gpu":
        if device.type != "cuda":
            raise ValueError("--cache_features gpu needs a CUDA --device")
        return device
    if mode == "cpu":
        return torch.device("cpu")
    for place in ([device] if device.type == "cuda" else []) + [torch.device("cpu")]:
        if bytes_needed < 0.5 * _free_bytes(place):
            return place
    return None


class FeatureCache:
    """Backbone features, masks and labels of every training image, filled during the first epoch."""

    def __init__(self, size: int, first: dict, place: torch.device):
        self.place = place
        # zeros, not empty: under torchrun the ranks' caches are summed into one (distributed.all_sum)
        self.features = [torch.zeros((size, *f.shape[1:]), dtype=f.dtype, device=place) for f in first["features"]]
        self.masks = torch.zeros((size, *first["mask"].shape[1:]), dtype=torch.uint8, device=place)
        self.labels = torch.zeros(size, dtype=torch.long, device=place)
        self.filled = torch.zeros(size, dtype=torch.bool)

    @staticmethod
    def bytes_needed(features: tuple[torch.Tensor, ...], mask: torch.Tensor, images: int) -> int:
        """What caching `images` images takes, measured on one batch's features."""
        batch = mask.shape[0]
        per_image = sum(f.numel() * f.element_size() for f in features) // batch + mask[0].numel()
        return per_image * images

    def store(self, index: torch.Tensor, batch: dict) -> None:
        index_here = index.to(self.place)
        for cached, fresh in zip(self.features, batch["features"]):
            cached[index_here] = fresh.to(self.place)
        self.masks[index_here] = batch["mask"].to(self.place)
        self.labels[index_here] = batch["label"].to(self.place)
        self.filled[index] = True

    def batch(self, index: list[int], device: torch.device) -> dict:
        index_here = torch.as_tensor(index, device=self.place)
        return {"features": tuple(f[index_here].to(device, non_blocking=True) for f in self.features),
                "mask": self.masks[index_here].to(device, non_blocking=True),
                "label": self.labels[index_here].to(device, non_blocking=True)}
