"""train.sh and test.sh, the paper's protocol, run end to end on synthetic data with a tiny random CLIP."""
from __future__ import annotations

import os
import subprocess

import torch
from conftest import ROOT

from generate_dataset_json.synthetic import make_synthetic_dataset
from models.clip_loader import random_clip_state_dict

TINY = "--features_list 1 2 3 4 --image_size 112 --device cpu --num_workers 0"


def run_shell(script: str, **variables) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="2", **{k: str(v) for k, v in variables.items()})
    result = subprocess.run(["bash", str(ROOT / script)], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, f"{script} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def test_train_sh_then_test_sh(tmp_path):
    data = tmp_path / "data"
    make_synthetic_dataset(data / "mvtec", classes=("bottle_synth",), n_normal=2, n_anomalous=2, seed=1)
    make_synthetic_dataset(data / "visa", classes=("pcb_synth",), n_normal=2, n_anomalous=2, seed=2)
    make_synthetic_dataset(data / "mpdd", classes=("metal_synth",), n_normal=2, n_anomalous=2, seed=3)
    weights = tmp_path / "clip_tiny.pt"
    torch.save(random_clip_state_dict("tiny", seed=0), weights)
    checkpoints, results = tmp_path / "checkpoints", tmp_path / "results"

    run_shell("train.sh", DATA_ROOT=data, CLIP_WEIGHTS=weights, CHECKPOINTS=checkpoints,
              EXTRA_ARGS=f"{TINY} --epoch 1")
    for auxiliary in ("mvtec", "visa"):
        assert (checkpoints / f"{auxiliary}_train" / "epoch_1.pth").is_file()

    shown = run_shell("test.sh", DATA_ROOT=data, CLIP_WEIGHTS=weights, RESULTS=results,
                      MVTEC_CHECKPOINT=checkpoints / "mvtec_train" / "epoch_1.pth",
                      VISA_CHECKPOINT=checkpoints / "visa_train" / "epoch_1.pth", EXTRA_ARGS=TINY)
    assert "skipping btad: no" in shown.stdout
    for dataset in ("mvtec", "visa", "mpdd"):
        assert (results / dataset / "results.json").is_file()
    summary = (results / "summary.md").read_text()
    assert "mvtec" in summary.lower() and "mpdd" in summary.lower()
