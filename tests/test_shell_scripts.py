"""train.sh and test.sh, the papers' protocols, run end to end on synthetic data with a tiny random CLIP."""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import fields

import pytest
import torch
from conftest import ROOT

from generate_dataset_json.synthetic import make_synthetic_dataset
from models import get_method, method_names
from models.clip_loader import random_clip_state_dict
from models.paper import training_datasets

TINY_NO_LAYERS = "--image_size 112 --device cpu --num_workers 0"  # a method whose layers follow the tower (AdaCLIP)
TINY = f"--features_list 1 2 3 4 {TINY_NO_LAYERS}"
RUN = "--device cpu --num_workers 0"


def run_shell(script: str, check: bool = True, **variables) -> subprocess.CompletedProcess:
    """As a user would, but with this interpreter as PYTHON (a virtual environment's python may not be on PATH)."""
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHON": sys.executable, **{k: str(v) for k, v in variables.items()}}
    env["PATH"] = "/usr/bin:/bin"  # no `python` on PATH: the scripts must use $PYTHON
    result = subprocess.run(["bash", str(ROOT / script)], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=600)
    if check:
        assert result.returncode == 0, f"{script} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "clip_tiny.pt"
    torch.save(random_clip_state_dict("tiny", seed=0), path)
    return path


def checkpoint_variable(training_set: str) -> str:
    """test.sh's variable for a training set's checkpoint: MVTEC_CHECKPOINT, MVTEC_COLONDB_CHECKPOINT (mvtec+colondb)."""
    return training_set.upper().replace("+", "_") + "_CHECKPOINT"


@pytest.mark.slow
@pytest.mark.parametrize("method", method_names())
def test_train_sh_then_test_sh(method, tmp_path, tiny_weights):
    """Every training set of the protocol trains (several datasets in one run where the set names several, as
    AdaCLIP's MVTec AD + ColonDB), and test.sh takes each dataset's checkpoint from its training set."""
    paper = get_method(method).paper_tables()
    data = tmp_path / "data"
    # one more dataset where the protocol has one (APRIL-GAN's has only the two)
    extra = next((name for name in paper.evaluation if name not in ("mvtec", "visa")), None)
    evaluated = ("mvtec", "visa", extra) if extra else ("mvtec", "visa")
    trained_on = [name for training_set, _ in paper.training for name in training_datasets(training_set)]
    for seed, name in enumerate(dict.fromkeys((*evaluated, *trained_on))):
        make_synthetic_dataset(data / name, classes=(f"{name}_synth",), n_normal=2, n_anomalous=2, seed=seed)
    checkpoints, results = tmp_path / "checkpoints", tmp_path / "results"

    tiny = TINY if any(f.name == "features_list" for f in fields(get_method(method).config)) else TINY_NO_LAYERS
    run_shell("train.sh", METHOD=method, DATA_ROOT=data, CLIP_WEIGHTS=tiny_weights, CHECKPOINTS=checkpoints,
              EXTRA_ARGS=f"{tiny} --epoch 1")
    for training_set, flags in paper.training:
        recorded = torch.load(checkpoints / f"{training_set}_train" / "epoch_1.pth", weights_only=True)["training_data"]
        assert [d["dataset"] for d in recorded] == list(training_datasets(training_set))
        if "--augment_datasets" in flags:  # the augmentation only where the paper's protocol applies it
            named = flags[flags.index("--augment_datasets") + 1:]
            named = named[:next((i for i, f in enumerate(named) if f.startswith("--")), len(named))]
            assert [d["augmented"] for d in recorded] == [d["dataset"] in named for d in recorded]

    # each dataset's checkpoint as test.sh finds it without $CHECKPOINTS: the training set's variable
    if paper.training:  # (a training-free method's protocol has no checkpoint to find)
        first = paper.evaluation[next(name for name in paper.evaluation if (data / name).is_dir())]
        unset = run_shell("test.sh", check=False, METHOD=method, DATA_ROOT=data, CHECKPOINTS=tmp_path / "none")
        assert unset.returncode != 0 and f"set {checkpoint_variable(first)}" in unset.stderr
    variables = {checkpoint_variable(t): checkpoints / f"{t}_train" / "epoch_1.pth" for t, _ in paper.training}
    shown = run_shell("test.sh", METHOD=method, DATA_ROOT=data, CLIP_WEIGHTS=tiny_weights, RESULTS=results,
                      CHECKPOINTS=tmp_path / "none", EXTRA_ARGS=RUN, **variables)
    if "dagm" in paper.evaluation:
        assert "skipping dagm: no" in shown.stdout
    for dataset in evaluated:
        assert (results / dataset / "results.json").is_file()
    summary = (results / "summary.md").read_text()
    assert f"## {paper.title} results" in summary and paper.rows["mvtec"].title in summary

    again = run_shell("test.sh", check=False, METHOD=method, DATA_ROOT=data, CLIP_WEIGHTS=tiny_weights,
                      RESULTS=results, CHECKPOINTS=checkpoints, EXTRA_ARGS=RUN)
    assert again.returncode != 0 and "--overwrite" in again.stderr  # an earlier run's results are never replaced


@pytest.mark.slow
def test_test_sh_without_any_dataset_fails(tmp_path, tiny_weights):
    (tmp_path / "data").mkdir()
    result = run_shell("test.sh", check=False, DATA_ROOT=tmp_path / "data", CLIP_WEIGHTS=tiny_weights,
                       RESULTS=tmp_path / "results", EXTRA_ARGS=RUN)
    assert result.returncode != 0 and "nothing was evaluated" in result.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_runs_side_by_side_and_under_torchrun(tmp_path, tiny_weights):
    """GPUS=a,b runs the trainings side by side (one device each); NPROC=2 shards every evaluation."""
    data = tmp_path / "data"
    for seed, name in enumerate(("mvtec", "visa")):
        make_synthetic_dataset(data / name, classes=(f"{name}_synth",), n_normal=2, n_anomalous=2, seed=seed)
    checkpoints, results = tmp_path / "checkpoints", tmp_path / "results"
    trained = run_shell("train.sh", DATA_ROOT=data, CLIP_WEIGHTS=tiny_weights, CHECKPOINTS=checkpoints, GPUS="0,1",
                        EXTRA_ARGS=f"{TINY} --epoch 1")
    assert "started training on mvtec on GPU 0" in trained.stdout and "started training on visa on GPU 1" in trained.stdout
    assert (checkpoints / "visa_train.console.txt").read_text().count("trained 1 epochs") == 1
    run_shell("test.sh", DATA_ROOT=data, CLIP_WEIGHTS=tiny_weights, RESULTS=results, CHECKPOINTS=checkpoints,
              NPROC=2, EXTRA_ARGS=RUN, OMP_NUM_THREADS=1)
    import json

    assert json.loads((results / "visa" / "results.json").read_text())["run"]["processes"] == 2
    refused = run_shell("test.sh", check=False, NPROC=2, GPUS="0,1", DATA_ROOT=data)
    assert refused.returncode == 2 and "not both" in refused.stderr
