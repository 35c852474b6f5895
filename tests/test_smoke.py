"""`python test.py --smoke`: the install check the README tells a new user to run, for each method."""
from __future__ import annotations

import pytest
from conftest import run_script

from models import method_names


@pytest.mark.slow
@pytest.mark.parametrize("model", method_names())
def test_smoke_run_trains_and_evaluates_and_keeps_nothing(model, tmp_path):
    result = run_script("test.py", "--smoke", "--model", model, "--device", "cpu", timeout=180,
                        env={"TMPDIR": str(tmp_path)})
    assert "smoke run passed" in result.stdout
    assert "| mean" in result.stdout and "image AUROC" in result.stdout
    assert "bottle_synth" in result.stdout and "tile_synth" in result.stdout
    assert not list(tmp_path.iterdir())  # its temporary folder is gone, and nothing went to ./results
