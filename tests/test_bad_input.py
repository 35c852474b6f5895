"""Never a silent wrong number, never a lost result: bad input through the real commands, as a user types them.

Each case checks the exit status, that the message names the file or flag and the fix, and
that nothing an earlier run wrote is lost. Cases that need no subprocess run in-process.
"""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import FIXTURE, FIXTURE_SETTINGS, VCP_FIXTURE, run_script

TEST_ARGS = [*FIXTURE_SETTINGS, "--num_workers", "0", "--device", "cpu"]


@pytest.fixture
def data(tmp_path):
    """A writable copy of the ViP² fixture dataset."""
    root = tmp_path / "data"
    shutil.copytree(FIXTURE / "data", root)
    for path in root.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return root


def edit_meta(root, change, name="meta.json"):
    meta = json.loads((root / name).read_text())
    change(meta)
    (root / name).write_text(json.dumps(meta))


def run_test_py(data, clip, out, *extra, checkpoint=FIXTURE / "init.pth"):
    return run_script("test.py", "--data_path", data, "--checkpoint_path", checkpoint, "--clip_weights", clip,
                      "--save_path", out, *TEST_ARGS, *extra, check=False)


def clean_failure(result, *needles):
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    message = result.stderr.strip()
    for needle in needles:
        assert needle in message, (needle, message)
    return message


@pytest.mark.slow
def test_every_inconsistent_item_is_reported_at_once_before_the_model_loads(data, clip_pt, tmp_path):
    def change(meta):
        items = meta["test"]
        anomalous = next(i for i in items["01"] if i["anomaly"])
        normal = next(i for i in items["02"] if not i["anomaly"])
        normal["mask_path"] = anomalous["mask_path"]  # a normal image carrying a defect mask
        items["03"][0]["mask_path"] = "03/ground_truth"  # a folder, not a mask file
        items["03"].append(dict(items["01"][0], cls_name="03"))  # in another class's folder
        items["02"].append(dict(items["02"][0]))  # listed twice
    edit_meta(data, change)
    (data / "03/ground_truth").mkdir(exist_ok=True)
    result = run_test_py(data, clip_pt, tmp_path / "out")
    message = clean_failure(result, "is normal (anomaly 0) but names the mask", "clear its mask_path",
                            "listed twice", "lies in the folder of class '01'")
    assert "problem(s) with the items of" in message and str(data / "meta.json") in message
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_mask_path_that_is_a_folder(data, clip_pt, tmp_path):
    edit_meta(data, lambda meta: meta["test"]["01"][0].update({"mask_path": "01/ground_truth"}))
    clean_failure(run_test_py(data, clip_pt, tmp_path / "out"), "01/ground_truth is a folder, not a file")


@pytest.mark.slow
def test_image_size_off_the_patch_grid_is_warned_with_the_nearest_sizes(data, clip_pt, tmp_path):
    result = run_test_py(data, clip_pt, tmp_path / "out", "--image_size", "130", "--metrics", "image-level")
    assert result.returncode == 0, result.stderr
    assert "--image_size 130 is not a multiple of the 14 px patch" in result.stdout + result.stderr
    assert "126 or 140" in result.stdout + result.stderr


@pytest.mark.slow
def test_training_on_a_dataset_without_anomalies_is_warned(data, clip_pt, tmp_path):
    def normal_only(meta):
        for cls, items in meta["test"].items():
            meta["test"][cls] = [i for i in items if not i["anomaly"]]
    edit_meta(data, normal_only)
    run_script("train.py", "--train_data_path", data, "--save_path", tmp_path / "ckpt", "--clip_weights", clip_pt,
               *TEST_ARGS, "--epoch", "1")
    assert "has no anomalous image" in (tmp_path / "ckpt" / "log.txt").read_text()


@pytest.mark.slow
def test_an_earlier_evaluation_is_never_replaced_or_mixed(clip_pt, tmp_path):
    out = tmp_path / "out"
    first = run_test_py(FIXTURE / "data", clip_pt, out, "--save_maps", out / "maps.npz", "--metrics", "image-level")
    assert first.returncode == 0, first.stderr
    before = (out / "results.json").read_text()
    refused = run_test_py(FIXTURE / "data", clip_pt, out, "--metrics", "image-level")
    clean_failure(refused, f"--save_path {out} already holds an earlier run's results", "--overwrite")
    assert (out / "results.json").read_text() == before and (out / "maps.npz").is_file()
    replaced = run_test_py(FIXTURE / "data", clip_pt, out, "--metrics", "image-level", "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    assert not (out / "maps.npz").exists()  # the earlier run's maps do not stay beside the new numbers
    taken = run_test_py(FIXTURE / "data", clip_pt, tmp_path / "other", "--save_maps", out / "results.json")
    clean_failure(taken, "--save_maps", "already exists", "--overwrite")


@pytest.mark.slow
def test_unwritable_outputs_fail_before_any_work(clip_pt, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("in the way")
    message = clean_failure(run_test_py(FIXTURE / "data", clip_pt, blocker), f"--save_path {blocker} is a file")
    assert "evaluating" not in message
    clean_failure(run_test_py(FIXTURE / "data", clip_pt, tmp_path / "out", "--save_maps", blocker / "maps.npz"),
                  "--save_maps", f"{blocker} is a file, not a folder")
    assert not (tmp_path / "out").exists()
    train = run_script("train.py", "--train_data_path", FIXTURE / "data", "--save_path", blocker / "ckpt",
                       "--clip_weights", clip_pt, *TEST_ARGS, check=False)
    clean_failure(train, "--save_path", "which is a file, not a folder")
    predict = run_script("predict.py", FIXTURE / "data", "--out", blocker, "--checkpoint_path", FIXTURE / "init.pth",
                         "--clip_weights", clip_pt, *TEST_ARGS, check=False)
    clean_failure(predict, f"--out {blocker} is a file")


def test_a_late_failure_keeps_the_metrics(monkeypatch, clip_pt, tmp_path):
    import importlib.util

    from engine import inference
    from conftest import ROOT

    # by path: `import test` would find the standard library's package
    spec = importlib.util.spec_from_file_location("zsas_test_script", ROOT / "test.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(inference, "save_maps", full_disk)
    with pytest.raises(ValueError, match=r"the metrics are in .*results.json, but --save_maps .*No space left"):
        script.main(["--data_path", str(FIXTURE / "data"), "--checkpoint_path", str(FIXTURE / "init.pth"),
                     "--clip_weights", str(clip_pt), *map(str, TEST_ARGS), "--save_path", str(tmp_path / "out"),
                     "--save_maps", str(tmp_path / "maps.npz"), "--metrics", "image-level"])
    assert json.loads((tmp_path / "out" / "results.json").read_text())["metrics"]["mean"]["image_auroc"] is not None


@pytest.mark.slow
def test_files_that_are_not_checkpoints_are_named_for_what_they_are(clip_pt, tmp_path):
    out = tmp_path / "out"
    clean_failure(run_test_py(FIXTURE / "data", clip_pt, out, checkpoint=FIXTURE / "data" / "meta.json"),
                  "meta.json is a JSON file (a meta.json?), not a checkpoint", "epoch_N.pth")
    clean_failure(run_test_py(FIXTURE / "data", clip_pt, out, checkpoint=FIXTURE / "clip_tiny.npz"),
                  "clip_tiny.npz is a NumPy archive")
    clean_failure(run_test_py(FIXTURE / "data", clip_pt, out, checkpoint=clip_pt), "holds CLIP weights",
                  "pass it as --clip_weights")
    message = clean_failure(run_test_py(FIXTURE / "data", clip_pt, out, checkpoint=FIXTURE), "is a folder",
                            "init.pth")
    assert "weights_only" not in message and "not found" not in message
    assert not out.exists()


@pytest.mark.slow
def test_a_stray_temporary_file_of_a_killed_training(clip_pt, tmp_path):
    common = ["--train_data_path", FIXTURE / "data", "--save_path", tmp_path, "--clip_weights", clip_pt, *TEST_ARGS,
              "--epoch", "1"]
    stray = tmp_path / ".epoch_3.pth.k1ll3d.tmp"
    stray.write_bytes(b"half a checkpoint")
    clean_failure(run_script("train.py", *common, check=False), ".epoch_3.pth.k1ll3d.tmp", "--overwrite")
    run_script("train.py", *common, "--overwrite")
    assert not stray.exists() and (tmp_path / "epoch_1.pth").is_file()


@pytest.mark.slow
def test_settings_from_the_checkpoint_are_blamed_on_it(clip_pt, tmp_path):
    checkpoint = torch.load(FIXTURE / "init.pth", weights_only=True)
    checkpoint["settings"] = {"n_ctx": 7, "n_cls": 3, "features_list": [6, 12], "image_size": 126}
    path = tmp_path / "epoch_9.pth"
    torch.save(checkpoint, path)
    message = clean_failure(run_script("test.py", "--data_path", FIXTURE / "data", "--checkpoint_path", path,
                                       "--clip_weights", clip_pt, "--save_path", tmp_path / "out", "--device", "cpu",
                                       check=False),
                            "outside the vision tower's layers 1..4", f"comes from {path}")
    assert "features_list=[6, 12]" in message


@pytest.mark.slow
def test_checkpoint_used_with_other_clip_weights_is_warned(clip_pt, tmp_path):
    from models.clip_loader import read_clip_state_dict

    run_script("train.py", "--train_data_path", FIXTURE / "data", "--save_path", tmp_path / "ckpt", "--clip_weights",
               clip_pt, *TEST_ARGS, "--epoch", "1")
    weights = read_clip_state_dict(FIXTURE / "clip_tiny.npz")
    weights["visual.proj"] = weights["visual.proj"] * 1.5
    other = tmp_path / "other_clip.pt"
    torch.save(weights, other)
    result = run_test_py(FIXTURE / "data", other, tmp_path / "out", "--metrics", "image-level",
                     checkpoint=tmp_path / "ckpt" / "epoch_1.pth")
    assert result.returncode == 0, result.stderr
    assert "was trained on other CLIP weights" in result.stdout + result.stderr


@pytest.mark.slow
def test_vcp_inputs_get_the_same_discipline(vcp_clip_pt, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(VCP_FIXTURE / "data", data)
    for path in data.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    base = ["--model", "vcp", "--data_path", data, "--clip_weights", vcp_clip_pt, *TEST_ARGS,
            "--save_path", tmp_path / "out"]
    clean_failure(run_script("test.py", *base, "--dataset", "visa", "--checkpoint_path", VCP_FIXTURE / "init.pth",
                             check=False), "meta_visa.json not found", "holds meta_mvtec.json", "pass --dataset mvtec")
    clean_failure(run_script("test.py", *base, "--dataset", "mvtec", "--checkpoint_path", FIXTURE / "init.pth",
                             check=False), "is a ViP²-CLIP checkpoint, not VCP-CLIP: pass --model vip2")
    broken = torch.load(VCP_FIXTURE / "init.pth", weights_only=True)
    del broken["prompt_proj.bias"]
    torch.save(broken, tmp_path / "broken.pth")
    clean_failure(run_script("test.py", *base, "--dataset", "mvtec", "--checkpoint_path", tmp_path / "broken.pth",
                             check=False), "deep text prompts", "missing ['prompt_proj.bias']")
    edit_meta(data, lambda meta: meta["test"]["c01"][0].update({"anomaly": 0}), name="meta_mvtec.json")
    clean_failure(run_script("test.py", *base, "--dataset", "mvtec", "--checkpoint_path", VCP_FIXTURE / "init.pth",
                             check=False), "mvtec_crack_000000.bmp", "is normal (anomaly 0) but names the mask")
    refused = run_script("test.py", *base, "--dataset", "mvtec", "--checkpoint_path", VCP_FIXTURE / "init.pth",
                         "--use_global", check=False)
    assert refused.returncode == 2 and "--no_global_context" in refused.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.parametrize("script", ["train.py", "test.py", "predict.py"])
def test_help_imports_no_torch(script):
    """--help builds every flag from the registry without importing torch (it used to take ~10 s)."""
    import subprocess
    import sys

    from conftest import ROOT

    code = (f"import runpy, sys; sys.argv = ['{script}', '--model', 'vcp', '--help']\n"
            f"try:\n    runpy.run_path('{script}', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "--prompt_len" in result.stdout
