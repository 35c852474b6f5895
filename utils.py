"""Small shared helpers: seeding, devices, precision, logging, atomic writes, Gaussian smoothing.

torch is imported inside the functions that need it, so that `metrics.py`'s command line,
which uses the atomic writers, starts without paying for it.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import logging
import math
import os
import random
import sys
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

PRECISIONS = ("fp32", "bf16", "fp16")
GAUSSIAN_TRUNCATE = 4.0  # scipy.ndimage.gaussian_filter's default, as the reference used it


def positive_int(text: str) -> int:
    """argparse type: counts and sizes that must be at least 1 fail at parse time, not mid-run."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, got {text}")
    return value


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the module docstring's layout and shows each flag's default where it has a real one."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "%(default)" in text or "default" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)"


def precision_dtype(precision: str):
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def set_seed(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def resolve_device(name: str | None) -> torch.device:
    """`auto` (or None) picks CUDA when available; an unavailable CUDA request is an error, not a silent CPU run."""
    import torch

    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: no CUDA device is available here; use --device cpu")
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
    """Data-loading processes when --num_workers is not given."""
    return min(MAX_LOADER_WORKERS, available_cpus())


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


class _LineFormatter(logging.Formatter):
    """Captured warnings end in a newline of their own; drop it so the log has no blank lines."""

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).rstrip("\n")


PROJECT_LOGGER = "vip2"  # parent of every module's logger (vip2.train, vip2.dataset, ...)


def one_line_warning(message, category, filename, lineno, line=None) -> str:
    """`warnings.formatwarning` without the source line: users read the message, not our code."""
    return f"warning: {message}\n"


def setup_logger(name: str, save_path: str | os.PathLike | None) -> logging.Logger:
    """Console plus `save_path/log.txt` (appended), one format for both, for every project logger and for
    Python warnings (e.g. an undefined metric), so that what the console shows, the log keeps."""
    formatter = _LineFormatter("%(asctime)s %(message)s", datefmt="%Y-%m-%d %H:%M:%S")
    handlers = [logging.StreamHandler(sys.stdout)]
    if save_path is not None:
        Path(save_path).mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(Path(save_path) / "log.txt"))
    warnings.formatwarning = one_line_warning
    logging.captureWarnings(True)
    for target in (logging.getLogger(PROJECT_LOGGER), logging.getLogger("py.warnings")):
        for handler in list(target.handlers):  # a second main() in one process must not leak open log files
            handler.close()
            target.removeHandler(handler)
        for handler in handlers:
            handler.setFormatter(formatter)
            target.addHandler(handler)
        target.setLevel(logging.INFO)
        target.propagate = False
    return logging.getLogger(name)


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike):
    """A binary file to write, in `path`'s folder, renamed onto `path` only once complete:
    a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions of a new file
        with os.fdopen(handle, "wb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_file(path) as file:
        file.write(data)


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def atomic_write_json(obj, path: str | os.PathLike) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, allow_nan=False) + "\n").encode())


def atomic_savez(path: str | os.PathLike, **arrays) -> None:
    """Uncompressed: compressing anomaly maps would save about 15% of the bytes and cost
    about 40 ms per 518 px map."""
    with atomic_file(path) as file:
        np.savez(file, **arrays)


def nan_to_none(value):
    """JSON has no NaN: undefined metrics are written as null."""
    if isinstance(value, dict):
        return {k: nan_to_none(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _gaussian_kernel(sigma: float, truncate: float, device, dtype) -> torch.Tensor:
    import torch

    radius = int(truncate * float(sigma) + 0.5)
    x = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
    kernel = torch.exp(-0.5 / float(sigma) ** 2 * x * x)
    return kernel / kernel.sum()


def _reflect_index(size: int, radius: int, device) -> torch.Tensor:
    """Indices of scipy's 'reflect' (half-sample symmetric) padding, also for radius > size."""
    import torch

    index = torch.arange(-radius, size + radius, device=device)
    period = 2 * size
    index = torch.remainder(index, period)
    return torch.where(index >= size, period - 1 - index, index)


@functools.lru_cache(maxsize=16)
def _blur_matrix(size: int, sigma: float, truncate: float, device: str) -> torch.Tensor:
    """`[size, size]` float64 matrix of 1-D Gaussian correlation with scipy's 'reflect' boundary.

    Built on the CPU (the summation order stays fixed), then moved to `device` once."""
    import torch

    kernel = _gaussian_kernel(sigma, truncate, "cpu", torch.float64)
    taps = kernel.numel()
    source = _reflect_index(size, (taps - 1) // 2, "cpu")  # padded position p reads pixel source[p]
    rows = torch.arange(size)[:, None].expand(size, taps)
    columns = source[rows + torch.arange(taps)[None, :]]
    matrix = torch.zeros(size, size, dtype=torch.float64)
    matrix.index_put_((rows.reshape(-1), columns.reshape(-1)), kernel.repeat(size), accumulate=True)
    return matrix.to(device)


def gaussian_blur(maps: torch.Tensor, sigma: float, truncate: float = GAUSSIAN_TRUNCATE) -> torch.Tensor:
    """`scipy.ndimage.gaussian_filter(m, sigma)` for each map of `[N, H, W]`, on the maps' device.

    Separable correlation with 'reflect' boundaries in float64 like scipy, written as two
    matrix products (`rows @ map @ columns.T`): dense, but matrix products are what every
    device does fastest (19x faster than two 1-D convolutions on a CPU). Returned in the
    input dtype. `sigma <= 0` returns the maps unchanged (as scipy does).
    """
    if sigma <= 0:
        return maps
    import torch

    _, height, width = maps.shape
    rows = _blur_matrix(height, float(sigma), float(truncate), str(maps.device))
    columns = _blur_matrix(width, float(sigma), float(truncate), str(maps.device))
    return (rows @ maps.to(torch.float64) @ columns.T).to(maps.dtype)
