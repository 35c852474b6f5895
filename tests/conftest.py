"""Shared fixtures: the two reference fixtures (tests/fixtures/vip2_tiny, vcp_tiny) and helpers to run the CLIs."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "vip2_tiny"
VCP_FIXTURE = ROOT / "tests" / "fixtures" / "vcp_tiny"
FIXTURE_SETTINGS = ["--image_size", "126", "--features_list", "1", "2", "3", "4"]
sys.path.insert(0, str(ROOT))
torch.set_num_threads(min(2, torch.get_num_threads()))


@contextlib.contextmanager
def project_logging_kept():
    """The scripts' main() set up their logging (the `zsas` logger stops propagating, warnings are captured):
    what a test runs in-process must not change what a later test reads through caplog."""
    loggers = [logging.getLogger(name) for name in ("zsas", "py.warnings")]
    saved = [(lg.handlers[:], lg.propagate, lg.level) for lg in loggers]
    # a library that configures logging on import (logging.config with disable_existing_loggers) disables ours
    children = {name: lg.disabled for name, lg in logging.root.manager.loggerDict.items()
                if name.startswith("zsas") and isinstance(lg, logging.Logger)}
    show, format_warning = warnings.showwarning, warnings.formatwarning
    try:
        yield
    finally:
        logging.captureWarnings(False)
        warnings.showwarning, warnings.formatwarning = show, format_warning
        for lg, (handlers, propagate, level) in zip(loggers, saved):
            for handler in lg.handlers:
                if handler not in handlers:
                    handler.close()
            lg.handlers[:], lg.propagate = handlers, propagate
            lg.setLevel(level)
        for name, lg in logging.root.manager.loggerDict.items():
            if name.startswith("zsas") and isinstance(lg, logging.Logger):
                lg.disabled = children.get(name, False)


@pytest.fixture(autouse=True)
def project_logging_restored():
    with project_logging_kept():
        yield


@pytest.fixture(autouse=True)
def image_pixel_limit_restored():
    """A script run in process (test.py's `main(argv)`) sets the process-wide `--max_image_pixels`; later tests
    must see the default again, whatever order they run in."""
    from deploy import image_io

    limit = image_io.current_max_pixels()
    yield
    image_io.set_max_pixels(limit)


def vcp_settings(config: dict) -> list[str]:
    """The model flags of SPEC_VCP §14 for a fixture's `config`."""
    return ["--image_size", str(config["image_size"]), "--features_list", *map(str, config["features_list"]),
            "--prompt_len", str(config["prompt_len"]), "--deep_prompt_len", str(config["deep_prompt_len"]),
            "--total_d_layer_len", str(config["total_d_layer_len"])]


def run_script(script: str, *args, check: bool = True, timeout: int = 300,
               env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a repository script in a subprocess, from the repository root, as a user would."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="2", **(env or {}))
    result = subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{script} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def fixture_outputs(folder: Path) -> dict:
    """A reference fixture's expected.npz arrays, and its expected.json as `json`."""
    with np.load(folder / "expected.npz") as arrays:
        values = {k: arrays[k] for k in arrays.files}
    values["json"] = json.loads((folder / "expected.json").read_text())
    return values


@pytest.fixture(scope="session")
def expected():
    return fixture_outputs(FIXTURE)


@pytest.fixture(scope="session")
def vcp_expected():
    return fixture_outputs(VCP_FIXTURE)


def _clip_pt(folder: Path, target: Path) -> Path:
    """A fixture's CLIP as a user would hold it: an OpenAI-layout state dict saved with torch.save (float16)."""
    from models.clip_loader import read_clip_state_dict

    torch.save(read_clip_state_dict(folder / "clip_tiny.npz"), target)
    return target


@pytest.fixture(scope="session")
def clip_pt(tmp_path_factory) -> Path:
    return _clip_pt(FIXTURE, tmp_path_factory.mktemp("clip") / "clip_tiny.pt")


@pytest.fixture(scope="session")
def vcp_clip_pt(tmp_path_factory) -> Path:
    return _clip_pt(VCP_FIXTURE, tmp_path_factory.mktemp("vcp_clip") / "clip_tiny.pt")


@pytest.fixture(scope="session")
def tiny_clip():
    from models.clip_loader import load_clip

    return load_clip(str(FIXTURE / "clip_tiny.npz"))


@pytest.fixture(scope="session")
def vcp_clip():
    from models.clip_loader import load_clip

    return load_clip(str(VCP_FIXTURE / "clip_tiny.npz"), quick_gelu=False)


def _batch(dataset):
    return torch.utils.data.default_collate([dataset[i] for i in range(len(dataset))])


@pytest.fixture(scope="session")
def fixture_batch():
    """The ViP² fixture's 8 test images (uint8, as every model takes them), masks and labels."""
    from dataset import AnomalyDataset

    return _batch(AnomalyDataset(FIXTURE / "data", 126))


@pytest.fixture(scope="session")
def vcp_batch():
    from dataset import AnomalyDataset

    return _batch(AnomalyDataset(VCP_FIXTURE / "data", 126, dataset="mvtec"))


def fixture_model(clip, checkpoint: str | None = "init.pth", method: str = "vip2", **settings):
    """A model on a fixture's CLIP, through the factory every script uses."""
    from models import create_model

    folder = FIXTURE if method == "vip2" else VCP_FIXTURE
    settings = {"features_list": (1, 2, 3, 4), "image_size": 126, **settings}
    return create_model(method, clip=clip, checkpoint=folder / checkpoint if checkpoint else None, **settings)


def normalized(images: torch.Tensor) -> torch.Tensor:
    from models.base import normalize_images

    return normalize_images(images)
