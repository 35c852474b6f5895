"""Scoring on a GPU without letting its memory end a long evaluation: one class that does
not fit is scored again on the CPU, with a warning."""

from __future__ import annotations

import sys
import warnings


def is_device_out_of_memory(error: BaseException) -> bool:
    return type(error).__name__ == "OutOfMemoryError" or "out of memory" in str(error).lower()


def release_device_cache() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def on_cpu_if_out_of_memory(compute, backend: str, cls_name: str):
    """`compute(backend)`, computed again with `compute("numpy")` when the device runs out of memory."""
    try:
        return compute(backend)
    except RuntimeError as error:
        if backend == "numpy" or not is_device_out_of_memory(error):
            raise
    # Outside the except block, so that the failed attempt's tensors are freed before the cache is released.
    release_device_cache()
    warnings.warn(f"class {cls_name!r}: out of GPU memory for its metrics; computing them on the CPU",
                  RuntimeWarning, stacklevel=3)
    return compute("numpy")
