"""`python test.py --smoke`: the install check the README tells a new user to run, for each method."""
from __future__ import annotations

import pytest
from conftest import run_script

from models import method_names


@pytest.mark.slow
@pytest.mark.parametrize("model", method_names())
def test_smoke_run_trains_and_evaluates_and_keeps_nothing(model, tmp_path, tmp_path_factory):
    # torch (2.14) makes its compiler cache folder under TMPDIR whenever an optimiser is built (torch._dynamo's
    # import): torch's, not the smoke run's, so it goes elsewhere and the check below sees only what the run left.
    torch_cache = tmp_path_factory.mktemp("torchinductor")
    result = run_script("test.py", "--smoke", "--model", model, "--device", "cpu", timeout=180,
                        env={"TMPDIR": str(tmp_path), "TORCHINDUCTOR_CACHE_DIR": str(torch_cache)})
    assert "smoke run passed" in result.stdout
    assert "| mean" in result.stdout and "image AUROC" in result.stdout
    assert "bottle_synth" in result.stdout and "tile_synth" in result.stdout
    assert not list(tmp_path.iterdir())  # its temporary folder is gone, and nothing went to ./results
