"""train.py behaviour beyond parity: the feature cache changes nothing, odd batch sizes work, bad flags fail clearly."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import FIXTURE, FIXTURE_SETTINGS, run_script

import train
from engine.feature_cache import choose_cache
from models.checkpoint import read_checkpoint


def train_in_process(folder, clip_pt, *extra):
    args = ["--train_data_path", FIXTURE / "data", "--save_path", folder, "--clip_weights", clip_pt,
            "--init_checkpoint", FIXTURE / "init.pth", *FIXTURE_SETTINGS, "--num_workers", "0", "--device", "cpu",
            *extra]
    last = train.main([str(a) for a in args])
    return json.loads((folder / "losses.json").read_text()), read_checkpoint(last)


def test_feature_cache_gives_the_same_training(tmp_path, clip_pt):
    common = ("--epoch", "3", "--batch_size", "3", "--seed", "5")
    cached_losses, cached = train_in_process(tmp_path / "cached", clip_pt, "--cache_features", "cpu", *common)
    fresh_losses, fresh = train_in_process(tmp_path / "fresh", clip_pt, "--cache_features", "off", *common)
    assert len(cached_losses) == len(fresh_losses) == 9  # 3 epochs of batches 3, 3, 2
    for a, b in zip(cached_losses, fresh_losses):
        assert a["image_loss"] == pytest.approx(b["image_loss"], abs=1e-6)
        assert a["pixel_loss"] == pytest.approx(b["pixel_loss"], abs=1e-6)
    for group in ("prompt_learner", "Zero_try"):
        for key, value in cached[group].items():
            torch.testing.assert_close(value, fresh[group][key], rtol=0, atol=1e-6)


def test_final_batch_of_one_image(tmp_path, clip_pt):
    losses, checkpoint = train_in_process(tmp_path, clip_pt, "--epoch", "1", "--batch_size", "7")
    assert len(losses) == 2  # 7 images, then 1
    assert all(torch.isfinite(torch.tensor([s["image_loss"], s["pixel_loss"]])).all() for s in losses)
    assert checkpoint["epoch"] == 1 and checkpoint["settings"]["image_size"] == 126


def test_fresh_training_is_seeded(tmp_path, clip_pt):
    runs = []
    for name in ("a", "b"):
        train.main([str(a) for a in ["--train_data_path", FIXTURE / "data", "--save_path", tmp_path / name,
                                     "--clip_weights", clip_pt, *FIXTURE_SETTINGS, "--epoch", "1",
                                     "--num_workers", "0", "--device", "cpu", "--seed", "3"]])
        runs.append(read_checkpoint(tmp_path / name / "epoch_1.pth"))
    for key, value in runs[0]["prompt_learner"].items():
        torch.testing.assert_close(value, runs[1]["prompt_learner"][key], rtol=0, atol=0)


@pytest.mark.slow
def test_init_checkpoint_with_other_settings_fails_clearly(tmp_path, clip_pt):
    result = run_script("train.py", "--train_data_path", FIXTURE / "data", "--save_path", tmp_path,
                        "--init_checkpoint", FIXTURE / "init.pth", "--clip_weights", clip_pt, *FIXTURE_SETTINGS,
                        "--n_cls", "2", check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "made with n_cls=3, but this run has n_cls=2: pass --n_cls 3" in result.stderr
    assert not tmp_path.joinpath("log.txt").exists()  # a failed start leaves nothing behind


@pytest.mark.slow
def test_impossible_settings_fail_clearly(tmp_path, clip_pt):
    result = run_script("train.py", "--train_data_path", FIXTURE / "data", "--save_path", tmp_path,
                        "--clip_weights", clip_pt, *FIXTURE_SETTINGS, "--topk", "500", check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "--topk 500 exceeds the 81 patches of a 126 px input" in result.stderr


@pytest.mark.slow
def test_fix_quirks_is_recorded_and_followed_by_test_py(tmp_path, clip_pt):
    settings = ["--clip_weights", clip_pt, *FIXTURE_SETTINGS, "--num_workers", "0", "--device", "cpu"]
    run_script("train.py", "--train_data_path", FIXTURE / "data", "--save_path", tmp_path / "ckpt", "--epoch", "1",
               "--fix_quirks", *settings)
    checkpoint = read_checkpoint(tmp_path / "ckpt" / "epoch_1.pth")
    assert checkpoint["settings"]["fix_quirks"] is True
    ica = checkpoint["prompt_learner"]
    assert not torch.equal(ica["token_middle_pos"], ica["token_middle_neg"])  # "good" vs "damaged"

    results = tmp_path / "results"
    run_script("test.py", "--data_path", FIXTURE / "data", "--checkpoint_path", tmp_path / "ckpt" / "epoch_1.pth",
               "--save_path", results, "--metrics", "image-level", *settings[:2], "--num_workers", "0",
               "--device", "cpu")
    assert json.loads((results / "results.json").read_text())["settings"]["fix_quirks"] is True


def test_released_checkpoint_reveals_its_quirk():
    from models.vip2.model import ViP2CLIP

    assert ViP2CLIP.recorded_settings(read_checkpoint(FIXTURE / "init.pth"))["fix_quirks"] is False


@pytest.mark.slow
def test_fix_quirks_on_a_quirky_init_checkpoint_is_refused(tmp_path, clip_pt):
    result = run_script("train.py", "--train_data_path", FIXTURE / "data", "--save_path", tmp_path,
                        "--init_checkpoint", FIXTURE / "init.pth", "--clip_weights", clip_pt, *FIXTURE_SETTINGS,
                        "--fix_quirks", check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "was made with fix_quirks=False, but this run has fix_quirks=True: drop --fix_quirks" in result.stderr


@pytest.mark.parametrize("model", ["vip2", "vcp"])
def test_zero_counts_are_refused_when_parsing(model, capsys):
    """--save_freq 0 used to fail only after a whole epoch had trained."""
    for flag in ("--save_freq", "--print_freq", "--epoch", "--batch_size"):
        with pytest.raises(SystemExit) as exit_info:
            train.parse_args(["--model", model, "--train_data_path", str(FIXTURE / "data"), flag, "0"])
        assert exit_info.value.code == 2
        assert f"argument {flag}: must be a whole number >= 1, got 0" in capsys.readouterr().err


@pytest.mark.slow
def test_a_folder_with_an_earlier_run_is_refused_unless_overwrite(tmp_path, clip_pt):
    common = ["--train_data_path", FIXTURE / "data", "--save_path", tmp_path, "--clip_weights", clip_pt,
              *FIXTURE_SETTINGS, "--num_workers", "0", "--device", "cpu"]
    run_script("train.py", *common, "--epoch", "2")
    refused = run_script("train.py", *common, "--epoch", "1", check=False)
    assert refused.returncode != 0 and "already holds an earlier run (epoch_1.pth, epoch_2.pth" in refused.stderr
    run_script("train.py", *common, "--epoch", "1", "--overwrite")
    assert sorted(p.name for p in tmp_path.glob("epoch_*.pth")) == ["epoch_1.pth"]
    assert (tmp_path / "log.txt").read_text().count("training ViP²-CLIP on") == 1


def test_auto_cache_is_skipped_for_a_single_epoch():
    device = torch.device("cpu")
    assert choose_cache("auto", device, bytes_needed=1, epochs=1) is None
    assert choose_cache("auto", device, bytes_needed=1, epochs=2) == device
    assert choose_cache("cpu", device, bytes_needed=1, epochs=1) == device
    assert choose_cache("auto", device, bytes_needed=2**62, epochs=5) is None
