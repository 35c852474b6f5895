"""How a script runs: device, precision, seeding, loader processes, GPU memory figures.

torch is imported inside the functions that need it, so that `--help` and the metrics
command line start without paying for it.
"""
from __future__ import annotations

import contextlib
import os
import random
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

PRECISIONS = ("fp32", "bf16", "fp16")
CACHE_MODES = ("auto", "gpu", "cpu", "off")  # train.py --cache_features
# Images per forward pass by default. On a CPU one at a time is fastest: ViT-L/14@336 at 518 px
# with SDPA took 5.7 s/image at batch 1, 6.1 at 2 and 6.2 at 8 on 2 cores (attention_bench.py);
# larger batches only spill the caches. A GPU wants large batches.
GPU_BATCH_SIZE, CPU_BATCH_SIZE = 32, 1
BATCH_SIZE_HELP = f"images per forward pass (default {GPU_BATCH_SIZE} on GPU, {CPU_BATCH_SIZE} on CPU, the fastest there)"


def default_batch_size(device) -> int:
    return GPU_BATCH_SIZE if device.type == "cuda" else CPU_BATCH_SIZE


DEVICE_HELP = "'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'"
PRECISION_HELP = "backbone and heads precision; fp32 reproduces the reference, bf16/fp16 autocast on top"


def precision_dtype(precision: str):
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def set_seed(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


class DeviceError(ValueError):
    """A --device that cannot be used here; the scripts print it as one line."""


def resolve_device(name) -> torch.device:
    """`auto` (or None) picks CUDA when available; an unavailable CUDA request is an error, not a silent CPU run.
    A `torch.device` is returned as it is: a device is resolved once, after parsing."""
    import torch

    if isinstance(name, torch.device):
        return name
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"--device {name}: not a device name; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"--device {name}: no CUDA device is available here; use --device cpu")
    return device


def autocast(precision: str, device: torch.device):
    """Mixed precision for the backbone and heads; fp32 runs without autocast (the parity path)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    import torch

    return torch.autocast(device_type=device.type, dtype=precision_dtype(precision))


def configure_precision(precision: str) -> None:
    """fp32 means fp32: cuDNN would otherwise run convolutions in TF32 on recent GPUs
    (PyTorch's default), which moves outputs by about 1e-3 and breaks parity."""
    import torch

    strict = precision == "fp32"
    torch.backends.cudnn.allow_tf32 = not strict
    torch.backends.cuda.matmul.allow_tf32 = not strict


# CPU instruction sets that decide which kernels torch runs (and so its speed and last float32 bits).
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "avx512_vnni")
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# ONEDNN_MAX_CPU_ISA values that still allow oneDNN's bf16 instructions
ONEDNN_BF16_ISAS = ("ALL", "DEFAULT", "AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16",
                    "AVX10_1_512", "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16")


def cpu_flags(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> set[str]:
    """The `CPU_FLAGS` this CPU reports (empty where /proc/cpuinfo is not there)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split()) & set(CPU_FLAGS)
    return set()


def native_bf16(flags: set[str] | None = None, capability: str | None = None) -> bool:
    """Whether torch runs bf16 matrix products in hardware here: the CPU has bf16 instructions, and neither
    ATEN_CPU_CAPABILITY nor ONEDNN_MAX_CPU_ISA keeps torch from them."""
    import torch

    flags = cpu_flags() if flags is None else flags
    capability = torch.backends.cpu.get_cpu_capability() if capability is None else capability
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper()
    return bool(flags & set(NATIVE_BF16_FLAGS)) and capability.startswith("AVX512") and isa in ONEDNN_BF16_ISAS


def cpu_description() -> str:
    """For the logs: the kernels torch chose and the instruction sets behind them (figures depend on both)."""
    import torch

    flags = sorted(cpu_flags())
    return (f"CPU: torch kernels {torch.backends.cpu.get_cpu_capability()}, flags {' '.join(flags) or 'unknown'}, "
            f"native bf16 {'yes' if native_bf16() else 'no'}")


def precision_warning(precision: str, device: torch.device) -> str | None:
    """bf16 on a CPU without bf16 instructions is emulated: a ViT-L block took 8.9 s in bf16 against 1.7 s in fp32
    (2 threads, ATEN_CPU_CAPABILITY=avx2; benchmarks/results/bf16_cpu_avx2.json), where the same CPU with its
    avx512_bf16 in use runs bf16 1.8x faster than fp32."""
    if device.type != "cpu" or precision != "bf16" or native_bf16():
        return None
    return ("--precision bf16 on a CPU without native bf16 (no avx512_bf16/amx_bf16 in use): torch emulates it, "
            "which is several times slower than fp32 here (python benchmarks/bf16_cpu.py measures it); use --precision fp32")


def log_machine(logger, precision: str, device: torch.device) -> None:
    """Every run's log says which CPU features its figures were made with, and warns of emulated bf16."""
    logger.info(cpu_description())
    warning = precision_warning(precision, device)
    if warning:
        logger.warning(warning)


def peak_gpu_memory_gb(device: torch.device) -> float | None:
    """Peak GPU memory held by PyTorch's allocator since `reset_peak_gpu_memory` (None off CUDA):
    what the card must have free, besides the CUDA context's few hundred MB."""
    if device.type != "cuda":
        return None
    import torch

    return torch.cuda.max_memory_reserved(device) / 2**30


def reset_peak_gpu_memory(device: torch.device) -> None:
    if device.type == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats(device)


def memory_note(device: torch.device) -> str:
    peak = peak_gpu_memory_gb(device)
    return f", peak GPU memory {peak:.1f} GiB" if peak is not None else ""


# At about 30 ms per 1024 px PNG (decode and resize), 16 processes feed some 500 images/s,
# past the ~300 images/s reported for the frozen ViT-L alone in bf16 on an H100; more
# processes would only cost memory.
MAX_LOADER_WORKERS = 16


def cgroup_cpu_quota(cgroup_root: str | os.PathLike = "/sys/fs/cgroup") -> int | None:
    """CPUs a container's cgroup allows (v2 `cpu.max`, else v1 `cpu.cfs_quota_us`), rounded up; None if unlimited."""
    root = Path(cgroup_root)
    candidates = [(root / "cpu.max", None), (root / "cpu" / "cpu.cfs_quota_us", root / "cpu" / "cpu.cfs_period_us"),
                  (root / "cpu.cfs_quota_us", root / "cpu.cfs_period_us")]
    for quota_file, period_file in candidates:
        try:
            fields = quota_file.read_text().split()
            if period_file is not None:
                fields.append(period_file.read_text().strip())
            quota, period = fields[0], fields[1]
        except (OSError, IndexError):
            continue
        if quota in ("max", "-1") or not quota.isdigit() or not period.isdigit() or int(period) == 0:
            return None
        return max(1, -(-int(quota) // int(period)))
    return None


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a container's CPU quota."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    return min(cpus, quota) if quota else cpus


def default_workers() -> int:
    """Data-loading processes a GPU run uses when --num_workers is not given."""
    return min(MAX_LOADER_WORKERS, available_cpus())


def loader_workers(requested: int | None, device: torch.device) -> int:
    """--num_workers, or its default: none on a CPU-only run (decoding would compete with the model for the
    cores: measured fastest there), `default_workers()` with a GPU."""
    if requested is not None:
        return requested
    return default_workers() if device.type == "cuda" else 0


LOADER_PREFETCH = 2  # torch DataLoader's prefetch_factor: batches each worker may hold ready


def shared_memory_warning(workers: int, images_per_task: int, image_size: int,
                          folder: str = "/dev/shm") -> str | None:
    """Loader processes hand their batches over through /dev/shm, which containers often keep
    small (Docker: 64 MB); too small, and the workers die with a bus error mid-run."""
    if workers == 0:
        return None
    try:
        stat = os.statvfs(folder)
    except OSError:
        return None
    free = stat.f_bavail * stat.f_frsize
    needed = workers * LOADER_PREFETCH * images_per_task * 4 * image_size ** 2  # uint8 RGB image and mask
    if free >= 2 * needed:
        return None
    return (f"{folder} has {free / 2**20:.0f} MB free, and {workers} loader processes may need "
            f"{needed / 2**20:.0f} MB there at once: if they die with a bus error, give the container more "
            f"(docker run --shm-size=2g, or --ipc=host) or pass a smaller --num_workers (0: no loader processes)")
