"""Train ViP²-CLIP's prompt learner (ViP-ICA) and FGP on an auxiliary dataset; CLIP stays frozen.

    python train.py --train_data_path data/mvtec --save_path checkpoints/mvtec --clip_weights ViT-L-14-336px.pt

As in the reference, training uses the *test* split of the auxiliary dataset's
meta.json, all classes. Since the backbone is frozen and nothing is augmented, its
features are computed once and reused for every later epoch (`--cache_features`).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from dataset import AnomalyDataset, DatasetError, normalize_images
from models import DEFAULTS, ClipWeightsError, ViP2CLIP, ViP2Config, load_clip
from models.checkpoint import CheckpointError, load_weights, read_checkpoint, recorded_settings, save_checkpoint
from models.clip_loader import CLIP_WEIGHTS_HELP
from models.losses import pixel_loss
from utils import (
    PRECISIONS,
    HelpFormatter,
    atomic_write_json,
    autocast,
    configure_precision,
    default_workers,
    memory_note,
    non_negative_int,
    peak_gpu_memory_gb,
    positive_int,
    precision_dtype,
    reset_peak_gpu_memory,
    resolve_device,
    set_seed,
    setup_logger,
    shared_memory_warning,
)

TRAIN_SPLIT = "test"  # the reference trains on the auxiliary dataset's annotated test split
CACHE_MODES = ("auto", "gpu", "cpu", "off")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--train_data_path", required=True, help="dataset root holding meta.json (its test split is used)")
    data.add_argument("--save_path", default="./checkpoints", help="folder for epoch_{n}.pth, log.txt and losses.json")
    data.add_argument("--dataset", default="mvtec", help="a label for the logs (classes come from meta.json)")
    data.add_argument("--image_size", type=positive_int, default=DEFAULTS.image_size, help="input size in pixels")
    model = parser.add_argument_group("model")
    model.add_argument("--clip_weights", default="openai", help=CLIP_WEIGHTS_HELP)
    model.add_argument("--n_ctx", type=positive_int, default=DEFAULTS.n_ctx, help="learnable context tokens per prompt")
    model.add_argument("--n_cls", type=positive_int, default=DEFAULTS.n_cls, help="image-conditioned tokens per prompt")
    model.add_argument("--topk", type=positive_int, default=DEFAULTS.topk, help="patches pooled per layer for the image logit")
    model.add_argument("--features_list", type=positive_int, nargs="+", default=list(DEFAULTS.features_list),
                       help="1-based vision layers whose patch features are aligned")
    model.add_argument("--feature_map_layer", type=non_negative_int, nargs="+", default=None,
                       help="indices into --features_list averaged into test-time anomaly maps (default: all; recorded)")
    model.add_argument("--fix_quirks", action="store_true",
                       help="use the paper's evident intent instead of the reference's quirks (README: 'Quirks')")
    model.add_argument("--init_checkpoint", default=None, help="start from these ICA/FGP weights (released format)")
    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--epoch", type=positive_int, default=10, help="number of epochs")
    optim.add_argument("--learning_rate", type=float, default=1e-3, help="Adam learning rate of the prompt learner")
    optim.add_argument("--fgp_learning_rate", type=float, default=1e-5, help="Adam learning rate of FGP")
    optim.add_argument("--batch_size", type=positive_int, default=8, help="images per step")
    optim.add_argument("--seed", type=int, default=111, help="seed for initialisation and shuffling")
    run = parser.add_argument_group("run")
    run.add_argument("--print_freq", type=positive_int, default=1, help="log the mean losses every N epochs")
    run.add_argument("--save_freq", type=positive_int, default=1, help="save epoch_{n}.pth every N epochs (the last always)")
    run.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda' or 'cuda:N'")
    run.add_argument("--precision", choices=PRECISIONS, default="fp32",
                     help="backbone and heads precision; fp32 reproduces the reference")
    run.add_argument("--cache_features", choices=CACHE_MODES, default="auto",
                     help="keep the frozen backbone's features after epoch 1: on the GPU, in host memory, "
                          "or not at all; 'auto' picks the first with room (within this process's memory "
                          "limits), and none for a single epoch")
    run.add_argument("--overwrite", action="store_true",
                     help="replace an earlier run's checkpoints and logs in --save_path (refused otherwise)")
    run.add_argument("--num_workers", type=non_negative_int, default=None, help="data-loading processes (default: the CPUs available, at most 16)")
    return parser


class EpochBatches(torch.utils.data.Sampler):
    """A fresh shuffled split into batches each epoch, shared by the loader and the feature cache."""

    def __init__(self, size: int, batch_size: int, generator: torch.Generator):
        self.size, self.batch_size, self.generator = size, batch_size, generator
        self.batches: list[list[int]] = []

    def shuffle(self) -> list[list[int]]:
        """Draw this epoch's batches; the loader and the cache then both follow them."""
        order = torch.randperm(self.size, generator=self.generator)
        self.batches = [b.tolist() for b in order.split(self.batch_size)]
        return self.batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return -(-self.size // self.batch_size)


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
            raise SystemExit("--cache_features gpu needs a CUDA --device")
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
        features = first["features"]
        self.place = place
        self.global_feature = torch.empty((size, *features.global_feature.shape[1:]),
                                          dtype=features.global_feature.dtype, device=place)
        self.patch_features = [torch.empty((size, *p.shape[1:]), dtype=p.dtype, device=place)
                               for p in features.patch_features]
        self.masks = torch.empty((size, *first["mask"].shape[1:]), dtype=torch.uint8, device=place)
        self.labels = torch.empty(size, dtype=torch.long, device=place)
        self.filled = torch.zeros(size, dtype=torch.bool)

    @staticmethod
    def bytes_per_image(model: ViP2CLIP, dtype: torch.dtype) -> int:
        backbone, size = model.backbone, model.config.image_size
        patches = backbone.grid_size(size) ** 2
        values = backbone.embed_dim * (1 + patches * len(model.config.features_list))
        return values * torch.tensor([], dtype=dtype).element_size() + size * size

    def store(self, index: torch.Tensor, batch: dict) -> None:
        index_here = index.to(self.place)
        self.global_feature[index_here] = batch["features"].global_feature.to(self.place)
        for cached, fresh in zip(self.patch_features, batch["features"].patch_features):
            cached[index_here] = fresh.to(self.place)
        self.masks[index_here] = batch["mask"].to(self.place)
        self.labels[index_here] = batch["label"].to(self.place)
        self.filled[index] = True

    def batch(self, index: list[int], device: torch.device) -> dict:
        from models import ImageFeatures

        index_here = torch.as_tensor(index, device=self.place)
        features = ImageFeatures(self.global_feature[index_here].to(device, non_blocking=True),
                                 tuple(p[index_here].to(device, non_blocking=True) for p in self.patch_features))
        return {"features": features, "mask": self.masks[index_here].to(device, non_blocking=True),
                "label": self.labels[index_here].to(device, non_blocking=True)}


def train_step(model: ViP2CLIP, optimizer, scaler, batch: dict, precision: str, device: torch.device):
    """One optimiser step; returns (image loss, summed pixel loss) as floats.

    `scaler` (fp16 only) scales the loss so that small fp16 gradients do not flush to zero.
    """
    with autocast(precision, device):
        alignment = model.align(batch["features"])
        maps = [m.float() for m in model.probability_maps(alignment)]
    image_loss = F.cross_entropy(alignment.logits.float(), batch["label"])
    mask_loss = pixel_loss(maps, batch["mask"].float())
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(image_loss + mask_loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return image_loss.item(), mask_loss.item()


RUN_FILES = ("log.txt", "losses.json", "train_stats.json")


def clear_earlier_run(save_path: Path, overwrite: bool) -> None:
    """Never mix two runs in one folder: refuse, or with --overwrite remove the earlier run's files."""
    earlier = sorted(save_path.glob("epoch_*.pth")) + [save_path / f for f in RUN_FILES if (save_path / f).exists()]
    if not earlier:
        return
    if not overwrite:
        names = ", ".join(p.name for p in earlier[:6]) + (" …" if len(earlier) > 6 else "")
        raise SystemExit(f"train.py: {save_path} already holds an earlier run ({names}); choose another "
                         "--save_path, or pass --overwrite to replace it")
    for path in earlier:
        path.unlink()


def check_init_checkpoint(path: str, config: ViP2Config) -> dict:
    checkpoint = read_checkpoint(path)
    recorded = recorded_settings(checkpoint)
    for name in ("n_ctx", "n_cls"):
        if recorded.get(name) is not None and recorded[name] != getattr(config, name):
            raise SystemExit(f"--init_checkpoint {path} was made with {name}={recorded[name]}, "
                             f"but --{name} is {getattr(config, name)}: pass --{name} {recorded[name]}")
    if recorded.get("fix_quirks") is not None and recorded["fix_quirks"] != config.fix_quirks:
        fix = "add --fix_quirks" if recorded["fix_quirks"] else "drop --fix_quirks"
        raise SystemExit(f"--init_checkpoint {path} was made with fix_quirks={recorded['fix_quirks']}, "
                         f"but this run has fix_quirks={config.fix_quirks}: {fix}")
    return checkpoint


def main(argv=None) -> Path:
    args = build_parser().parse_args(argv)
    save_path = Path(args.save_path)
    clear_earlier_run(save_path, args.overwrite)
    logger = setup_logger("vip2.train", save_path)
    config = ViP2Config(n_ctx=args.n_ctx, n_cls=args.n_cls, topk=args.topk, features_list=args.features_list,
                        image_size=args.image_size, fix_quirks=args.fix_quirks,
                        feature_map_layer=args.feature_map_layer)
    device = resolve_device(args.device)
    configure_precision(args.precision)
    dataset = AnomalyDataset(args.train_data_path, config.image_size, split=TRAIN_SPLIT, normalize=False)
    init = check_init_checkpoint(args.init_checkpoint, config) if args.init_checkpoint else None

    set_seed(args.seed)
    model = ViP2CLIP(load_clip(args.clip_weights), config)
    if init is not None:
        load_weights(model, init, args.init_checkpoint)
    model.to(device)
    model.train()
    reset_peak_gpu_memory(device)
    parameters = model.trainable_parameters()
    optimizer = torch.optim.Adam([{"params": parameters["prompt_learner"], "lr": args.learning_rate},
                                  {"params": parameters["fgp"], "lr": args.fgp_learning_rate}])

    scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "fp16")
    workers = default_workers() if args.num_workers is None else args.num_workers
    shm_warning = shared_memory_warning(workers, args.batch_size, config.image_size)
    if shm_warning:
        logger.warning(shm_warning)
    generator = torch.Generator().manual_seed(args.seed)
    batches = EpochBatches(len(dataset), args.batch_size, generator)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=workers,
                                         pin_memory=device.type == "cuda", persistent_workers=False)
    feature_dtype = precision_dtype(args.precision)
    cache_place = choose_cache(args.cache_features, device,
                               FeatureCache.bytes_per_image(model, feature_dtype) * len(dataset), args.epoch)
    cache = None
    logger.info("training on %s (%s, %d images, %d classes) on %s, precision %s, feature cache: %s",
                args.train_data_path, args.dataset, len(dataset), len(dataset.class_names), device,
                args.precision, cache_place or "off")
    logger.info("settings: %s", json.dumps(config.to_dict()))

    history, last_saved, training_start = [], None, time.time()
    for epoch in range(1, args.epoch + 1):
        epoch_batches = batches.shuffle()
        start, epoch_losses = time.time(), []
        use_cache = cache is not None and bool(cache.filled.all())
        steps = ((cache.batch(index, device) for index in epoch_batches) if use_cache
                 else (load_batch(model, raw, device, args.precision) for raw in loader))
        progress = tqdm(steps, total=len(batches), desc=f"epoch {epoch}/{args.epoch}", leave=False, unit="batch")
        for batch in progress:
            batch["features"] = cast_features(batch["features"], feature_dtype)
            if cache_place is not None and not use_cache:
                try:
                    if cache is None:
                        cache = FeatureCache(len(dataset), batch, cache_place)
                    cache.store(batch["index"], batch)
                except RuntimeError as error:  # out of memory: train on, recomputing the features
                    logger.warning("feature cache on %s failed (%s); continuing without it", cache_place,
                                   str(error).splitlines()[0])
                    cache = cache_place = None
            image_loss, mask_loss = train_step(model, optimizer, scaler, batch, args.precision, device)
            epoch_losses.append({"epoch": epoch, "image_loss": image_loss, "pixel_loss": mask_loss})
            progress.set_postfix(image=f"{image_loss:.4f}", pixel=f"{mask_loss:.4f}")
        history.extend(epoch_losses)
        atomic_write_json(history, save_path / "losses.json")
        if epoch % args.print_freq == 0 or epoch == args.epoch:
            logger.info("epoch [%d/%d], loss:%.4f, image_loss:%.4f (%.1f s)", epoch, args.epoch,
                        _mean(epoch_losses, "pixel_loss"), _mean(epoch_losses, "image_loss"), time.time() - start)
        if epoch % args.save_freq == 0 or epoch == args.epoch:
            last_saved = save_path / f"epoch_{epoch}.pth"
            save_checkpoint(last_saved, model, epoch)
            logger.info("saved %s", last_saved)
    seconds = time.time() - training_start
    stats = {"epochs": args.epoch, "images": len(dataset), "seconds": seconds,
             "images_per_second": args.epoch * len(dataset) / seconds, "precision": args.precision,
             "feature_cache": str(cache_place or "off"), "device": str(device),
             "peak_gpu_memory_gb": peak_gpu_memory_gb(device)}
    atomic_write_json(stats, save_path / "train_stats.json")
    logger.info("trained %d epochs in %.1f s (%.1f images/s)%s", args.epoch, seconds, stats["images_per_second"],
                memory_note(device))
    return last_saved


def _mean(steps: list[dict], key: str) -> float:
    return sum(step[key] for step in steps) / len(steps)


def cast_features(features, dtype: torch.dtype):
    """Heads see features in the run's precision, whether cached or fresh, so caching changes nothing."""
    from models import ImageFeatures

    return ImageFeatures(features.global_feature.to(dtype), tuple(p.to(dtype) for p in features.patch_features))


def load_batch(model: ViP2CLIP, raw: dict, device: torch.device, precision: str) -> dict:
    images = normalize_images(raw["img"].to(device, non_blocking=True))
    with torch.no_grad(), autocast(precision, device):
        features = model.extract_features(images)
    return {"features": features, "mask": raw["img_mask"].to(device, non_blocking=True),
            "label": raw["anomaly"].to(device, non_blocking=True).long(), "index": raw["index"]}


def run_cli() -> None:
    try:
        main()
    except (DatasetError, CheckpointError, ClipWeightsError, ValueError) as error:
        raise SystemExit(f"train.py: {error}")


if __name__ == "__main__":
    run_cli()
