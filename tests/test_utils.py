"""Helpers the scripts share: CPU counting for loader processes, atomic files."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from engine import devices as runtime
import utils


@pytest.mark.parametrize(("files", "cpus"), [
    ({"cpu.max": "max 100000\n"}, None),
    ({"cpu.max": "250000 100000\n"}, 3),
    ({"cpu.max": "50000 100000\n"}, 1),
    ({"cpu/cpu.cfs_quota_us": "400000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 4),
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
    ({"cpu.max": "garbage"}, None),
    ({}, None),
])
def test_cgroup_cpu_quota(tmp_path, files, cpus):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert runtime.cgroup_cpu_quota(tmp_path) == cpus


def test_default_workers_follow_the_quota_and_the_cap(monkeypatch):
    monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    monkeypatch.setattr(runtime, "cgroup_cpu_quota", lambda: 6)
    assert runtime.default_workers() == 6
    monkeypatch.setattr(runtime, "cgroup_cpu_quota", lambda: None)
    assert runtime.default_workers() == runtime.MAX_LOADER_WORKERS


class _Unsaveable:
    def __array__(self, dtype=None, copy=None):
        raise ValueError("cannot be an array")


def test_atomic_savez_leaves_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "maps.npz"
    utils.atomic_savez(path, a=np.arange(3))
    with pytest.raises(ValueError):
        utils.atomic_savez(path, a=np.arange(4), b=_Unsaveable())
    with np.load(path) as saved:
        np.testing.assert_array_equal(saved["a"], np.arange(3))
    assert [p.name for p in tmp_path.iterdir()] == ["maps.npz"]  # no temporary file left behind


def test_small_shared_memory_is_reported_before_loader_processes_start(monkeypatch):
    monkeypatch.setattr(runtime.os, "statvfs", lambda folder: SimpleNamespace(f_bavail=16384, f_frsize=4096))  # 64 MB
    message = runtime.shared_memory_warning(workers=16, images_per_task=2, image_size=518)
    assert "64 MB free" in message and "--shm-size" in message and "--num_workers" in message
    assert runtime.shared_memory_warning(workers=0, images_per_task=2, image_size=518) is None
    assert runtime.shared_memory_warning(workers=2, images_per_task=1, image_size=112) is None  # 0.2 MB needed


def test_native_bf16_needs_the_instructions_and_kernels_that_use_them(monkeypatch):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    assert runtime.native_bf16({"avx512f", "avx512_bf16"}, "AVX512")
    assert not runtime.native_bf16({"avx2", "avx512f"}, "AVX512")  # an AVX-512 CPU without bf16 instructions
    assert not runtime.native_bf16({"avx512f", "avx512_bf16"}, "AVX2")  # ATEN_CPU_CAPABILITY=avx2
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert not runtime.native_bf16({"avx512f", "avx512_bf16"}, "AVX512")


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 other\n")
    assert runtime.cpu_flags(cpuinfo) == {"avx2", "avx512f", "avx512_bf16"}
    assert runtime.cpu_flags(tmp_path / "missing") == set()


def test_bf16_on_a_cpu_without_native_bf16_is_warned_about(monkeypatch):
    import torch

    monkeypatch.setattr(runtime, "native_bf16", lambda: False)
    warning = runtime.precision_warning("bf16", torch.device("cpu"))
    assert "--precision bf16" in warning and "fp32" in warning
    assert runtime.precision_warning("fp32", torch.device("cpu")) is None
    assert runtime.precision_warning("bf16", torch.device("cuda")) is None
    monkeypatch.setattr(runtime, "native_bf16", lambda: True)
    assert runtime.precision_warning("bf16", torch.device("cpu")) is None
