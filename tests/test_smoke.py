"""`python test.py --smoke`: the install check the README tells a new user to run."""
from __future__ import annotations

import json

from conftest import run_script


def test_smoke_run_trains_and_evaluates(tmp_path):
    result = run_script("test.py", "--smoke", "--save_path", tmp_path, "--device", "cpu", timeout=120)
    assert "smoke run passed" in result.stdout
    assert "| mean" in result.stdout and "image AUROC" in result.stdout
    metrics = json.loads((tmp_path / "smoke" / "results.json").read_text())["metrics"]
    assert set(metrics) == {"bottle_synth", "tile_synth", "mean"}
    assert all(0.0 <= value <= 1.0 for value in metrics["mean"].values() if value is not None)
