"""Shared fixtures: the reference fixture (tests/fixtures/vip2_tiny) and helpers to run the CLIs as a user does."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "vip2_tiny"
FIXTURE_SETTINGS = ["--image_size", "126", "--features_list", "1", "2", "3", "4"]
sys.path.insert(0, str(ROOT))
torch.set_num_threads(min(2, torch.get_num_threads()))


def run_script(script: str, *args, check: bool = True, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run a repository script in a subprocess, from the repository root, as a user would."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="2")
    result = subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{script} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="session")
def expected():
    with np.load(FIXTURE / "expected.npz") as arrays:
        values = {k: arrays[k] for k in arrays.files}
    values["json"] = json.loads((FIXTURE / "expected.json").read_text())
    return values


@pytest.fixture(scope="session")
def clip_pt(tmp_path_factory) -> Path:
    """The fixture CLIP as a user would hold it: an OpenAI-layout state dict saved with torch.save (float16)."""
    from models.clip_loader import read_clip_state_dict

    path = tmp_path_factory.mktemp("clip") / "clip_tiny.pt"
    torch.save(read_clip_state_dict(FIXTURE / "clip_tiny.npz"), path)
    return path


@pytest.fixture(scope="session")
def tiny_clip():
    from models import load_clip

    return load_clip(str(FIXTURE / "clip_tiny.npz"))


@pytest.fixture(scope="session")
def fixture_batch():
    from dataset import AnomalyDataset

    dataset = AnomalyDataset(FIXTURE / "data", 126)
    return torch.utils.data.default_collate([dataset[i] for i in range(len(dataset))])


def fixture_model(clip, checkpoint: str = "init.pth", **settings):
    from models import ViP2CLIP, ViP2Config
    from models.checkpoint import load_weights, read_checkpoint

    config = ViP2Config(**{"features_list": (1, 2, 3, 4), "image_size": 126, **settings})
    model = ViP2CLIP(clip, config)
    if checkpoint:
        load_weights(model, read_checkpoint(FIXTURE / checkpoint), FIXTURE / checkpoint)
    return model.eval()
