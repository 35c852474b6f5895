"""Issue 27, silent wrong numbers: inputs that used to give a plausible but wrong result now give the right one,
or a warning or refusal naming the file and the fix (docs/INPUTS.md). Through the real commands."""
from __future__ import annotations

import csv
import importlib.util
import json
import math
import shutil
import zlib

import numpy as np
import pytest
import torch
from conftest import FIXTURE, FIXTURE_SETTINGS, ROOT, VCP_FIXTURE, run_script
from PIL import Image

import predict

CPU = ["--num_workers", "0", "--device", "cpu"]
PREDICT_ARGS = ["--checkpoint_path", str(FIXTURE / "init.pth"), "--clip_weights", str(FIXTURE / "clip_tiny.npz"),
                *FIXTURE_SETTINGS, *CPU]


def load_script(name: str):
    """A script's module by path (`import test` would find the standard library's package)."""
    spec = importlib.util.spec_from_file_location(f"zsas_{name}_script", ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_test_main(data, out, *extra, checkpoint=FIXTURE / "init.pth", clip=FIXTURE / "clip_tiny.npz"):
    return load_script("test").main(["--data_path", str(data), "--checkpoint_path", str(checkpoint), "--clip_weights",
                                     str(clip), "--save_path", str(out), *FIXTURE_SETTINGS, *CPU, *map(str, extra)])


@pytest.fixture
def data(tmp_path):
    root = tmp_path / "data"
    shutil.copytree(FIXTURE / "data", root)
    for path in root.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return root


def edit_meta(root, change, name="meta.json"):
    meta = json.loads((root / name).read_text())
    change(meta)
    (root / name).write_text(json.dumps(meta))


def scores_by_name(out_dir) -> dict:
    with open(out_dir / predict.SCORES_FILE, newline="") as file:
        return {row["path"].rsplit("/", 1)[-1]: float(row["image_score"]) for row in csv.DictReader(file)}


# ------------------------------------------------------------------ I08: float and 16-bit images

def test_float_and_16_bit_images_are_read_at_their_range(tmp_path):
    """The same grey picture as 8-bit PNG, float32 TIFF in [0, 1] and in [0, 255], 16-bit PNG and TIFF: one score.
    A float image of another range is refused naming the file (it was read as black before)."""
    rng = np.random.default_rng(3)
    grey = np.asarray(Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).resize((90, 70))
                      .convert("L"))
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(grey, mode="L").save(folder / "eight.png")
    Image.fromarray(grey.astype(np.float32) / 255, mode="F").save(folder / "unit_float.tif")
    Image.fromarray(grey.astype(np.float32), mode="F").save(folder / "byte_float.tif")
    Image.fromarray(grey.astype(np.uint16) * 257).save(folder / "sixteen.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(folder / "sixteen.tif")
    Image.fromarray(grey.astype(np.float32) / 127.5 - 1, mode="F").save(folder / "signed_float.tif")
    assert Image.open(folder / "unit_float.tif").mode == "F" and Image.open(folder / "sixteen.png").mode.startswith("I")

    out = tmp_path / "out"
    assert predict.main([str(folder), "--out", str(out), *PREDICT_ARGS]) == 5
    scores = scores_by_name(out)
    assert set(scores) == {"eight.png", "unit_float.tif", "byte_float.tif", "sixteen.png", "sixteen.tif"}
    for name, score in scores.items():
        assert score == pytest.approx(scores["eight.png"], abs=1e-6), name
    log = (out / "log.txt").read_text()
    assert "signed_float.tif" in log and "neither [0, 1] nor [0, 255]" in log


def test_the_dataset_reads_images_with_the_same_code_as_predict(tmp_path):
    from dataset import read_image
    from deploy.image_io import read_image_array
    from utils import DatasetError

    values = np.linspace(0, 1, 40 * 30, dtype=np.float32).reshape(30, 40)
    Image.fromarray(values, mode="F").save(tmp_path / "x.tif")
    tensor, size = read_image(tmp_path / "x.tif", 32)
    array, _ = read_image_array(tmp_path / "x.tif", 32)
    assert size == (40, 30) and np.array_equal(tensor.numpy(), array)
    assert array.max() == 255  # [0, 1] is scaled to the full 8-bit range, not read as black
    Image.fromarray(values * 1000, mode="F").save(tmp_path / "y.tif")
    with pytest.raises(DatasetError, match=r"y.tif: a float image with values in \[0, 1000\]"):
        read_image(tmp_path / "y.tif", 32)


# ------------------------------------------------------------------ M08, M09, M12, M14: masks

def test_masks_that_are_not_plainly_binary_are_warned_once_per_dataset(data, tmp_path):
    meta = json.loads((data / "meta.json").read_text())
    anomalous = [item for items in meta["test"].values() for item in items if item["anomaly"]]
    assert len(anomalous) >= 4
    inverted, grey, jpeg, unmasked = anomalous[:4]
    mask = data / inverted["mask_path"]
    Image.fromarray(255 - np.asarray(Image.open(mask).convert("L"))).save(mask)  # M08: defect 0, background 255
    mask = data / grey["mask_path"]
    pixels = np.asarray(Image.open(mask).convert("L")).copy()
    pixels[:8] = 128  # M14: a grey "ignore" band
    Image.fromarray(pixels).save(mask)
    mask = data / jpeg["mask_path"]
    Image.open(mask).convert("L").save(mask.with_suffix(".jpg"), quality=90)  # M09: compression noise
    jpeg_path = jpeg["mask_path"]
    unmasked_path = unmasked["img_path"]

    def change(meta):
        for item in (i for items in meta["test"].values() for i in items):
            if item["mask_path"] == jpeg_path:
                item["mask_path"] = jpeg_path.rsplit(".", 1)[0] + ".jpg"
            if item["img_path"] == unmasked_path:
                item["mask_path"] = ""  # M12: anomalous, but no mask
    edit_meta(data, change)

    run_test_main(data, tmp_path / "out", "--metrics", "image-level")
    log = (tmp_path / "out" / "log.txt").read_text()
    lines = [line for line in log.splitlines() if "mask(s) of" in line or "have no mask_path" in line]
    assert len(lines) == 4, lines  # one line per kind of problem, not one per image
    inverted_line = next(line for line in lines if "inverted" in line)
    assert inverted["mask_path"] in inverted_line and "invert those files" in inverted_line
    assert any(jpeg_path.rsplit(".", 1)[0] + ".jpg" in line and "lossy" in line and "--mask_threshold" in line
               for line in lines)
    assert any(grey["mask_path"] in line and "more than two values" in line and "--mask_threshold" in line
               for line in lines)
    assert any(unmasked_path in line and "--metrics image-level" in line for line in lines)


def test_mask_threshold_reads_jpeg_masks_as_the_lossless_ones(data, tmp_path):
    """JPEG noise counted as defect changes the pixel metrics; --mask_threshold 127 gives the PNG masks' numbers."""
    reference = run_test_main(data, tmp_path / "png")

    def to_jpeg(meta):
        for item in (i for items in meta["test"].values() for i in items if i["mask_path"]):
            mask = data / item["mask_path"]
            Image.open(mask).convert("L").save(mask.with_suffix(".jpg"), quality=75)
            item["mask_path"] = item["mask_path"].rsplit(".", 1)[0] + ".jpg"
    edit_meta(data, to_jpeg)
    noisy = run_test_main(data, tmp_path / "jpeg")
    assert "lossy" in (tmp_path / "jpeg" / "log.txt").read_text()
    assert noisy["mean"]["pixel_auroc"] != pytest.approx(reference["mean"]["pixel_auroc"], abs=1e-9)
    thresholded = run_test_main(data, tmp_path / "jpeg_127", "--mask_threshold", "127")
    for key in ("pixel_auroc", "pixel_ap", "pixel_aupro"):
        assert thresholded["mean"][key] == pytest.approx(reference["mean"][key], abs=1e-9), key
    assert "lossy" not in (tmp_path / "jpeg_127" / "log.txt").read_text()


# ------------------------------------------------------------------ J06, J16: the meta file

@pytest.mark.parametrize("spelling", ["./{path}", "{head}//{rest}", "{head}/./{rest}", "elsewhere/../{path}",
                                      "{root}/{path}"])
def test_one_image_under_two_spellings_is_refused(data, tmp_path, spelling):
    def change(meta):
        item = dict(meta["test"]["01"][0])
        head, rest = item["img_path"].split("/", 1)
        item["img_path"] = spelling.format(path=item["img_path"], head=head, rest=rest, root=data)
        meta["test"]["01"].append(item)
    edit_meta(data, change)
    with pytest.raises(ValueError, match=r"is listed twice \(also spelled '01/test/\w+/000.png'\)"):
        run_test_main(data, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_dataset_name_without_its_meta_file(data, tmp_path):
    # only meta.json: the root's data, labelled with the name, and the log says which file was read
    run_test_main(data, tmp_path / "out", "--dataset", "visa", "--metrics", "image-level")
    log = (tmp_path / "out" / "log.txt").read_text()
    assert f"no meta_visa.json; reading {data / 'meta.json'}" in log
    assert json.loads((tmp_path / "out" / "results.json").read_text())["dataset"] == "visa"
    # beside another dataset's meta file, the fallback is refused naming the files there
    shutil.copy(data / "meta.json", data / "meta_mvtec.json")
    with pytest.raises(ValueError, match=r"meta_visa.json not found: .* holds meta_mvtec.json \(and a meta.json\).*"
                                         r"pass --dataset mvtec"):
        run_test_main(data, tmp_path / "out2", "--dataset", "visa")
    assert not (tmp_path / "out2").exists()


# ------------------------------------------------------------------ C14, C20: checkpoints and settings

def test_released_checkpoint_logs_the_clip_weights_it_cannot_be_checked_against(tmp_path):
    assert "clip_fingerprint" not in torch.load(FIXTURE / "init.pth", weights_only=True)  # the released format
    run_test_main(FIXTURE / "data", tmp_path / "out", "--metrics", "image-level")
    log = (tmp_path / "out" / "log.txt").read_text()
    line = next(line for line in log.splitlines() if "records no CLIP fingerprint" in line)
    assert str(FIXTURE / "clip_tiny.npz") in line and "cannot be checked" in line and str(FIXTURE / "init.pth") in line


def _vcp_checkpoint(tmp_path, features_list):
    """The VCP fixture's weights with the settings this project records (as train.py writes them)."""
    config = json.loads((VCP_FIXTURE / "expected.json").read_text())["config"]
    checkpoint = torch.load(VCP_FIXTURE / "init.pth", weights_only=True)
    checkpoint.update({"method": "vcp", "settings": {
        "image_size": config["image_size"], "features_list": features_list, "prompt_len": config["prompt_len"],
        "deep_prompt_len": config["deep_prompt_len"], "total_d_layer_len": config["total_d_layer_len"],
        "use_global": True}})
    path = tmp_path / "epoch_1.pth"
    torch.save(checkpoint, path)
    return path


@pytest.mark.parametrize("layers", [["3", "4"], ["1", "3"], ["2", "4"]])
def test_settings_that_select_trained_parameters_must_match_the_checkpoint(vcp_clip_pt, tmp_path, layers):
    """A checkpoint whose linear heads were trained on layers 1 and 2 is not run with heads on other layers."""
    path = _vcp_checkpoint(tmp_path, [1, 2])
    common = ["--model", "vcp", "--data_path", VCP_FIXTURE / "data", "--dataset", "mvtec", "--checkpoint_path", path,
              "--clip_weights", vcp_clip_pt, "--save_path", tmp_path / "out", *CPU]
    with pytest.raises(ValueError, match=rf"made with features_list=1 2, but this run has features_list="
                                         rf"{' '.join(layers)} \(it selects trained parameters\): pass "
                                         r"--features_list 1 2"):
        load_script("test").main([*map(str, common), "--features_list", *layers])
    assert not (tmp_path / "out").exists()


def test_other_recorded_settings_may_be_overridden_and_each_override_is_logged(vcp_clip_pt, tmp_path):
    path = _vcp_checkpoint(tmp_path, [1, 2, 3, 4])
    load_script("test").main(list(map(str, [
        "--model", "vcp", "--data_path", VCP_FIXTURE / "data", "--dataset", "mvtec", "--checkpoint_path", path,
        "--clip_weights", vcp_clip_pt, "--save_path", tmp_path / "out", *CPU, "--image_size", "112",
        "--features_list", "1", "2", "3", "4", "--metrics", "image-level"])))
    log = (tmp_path / "out" / "log.txt").read_text()
    assert f"--image_size 112 overrides image_size=126 recorded in {path}" in log
    assert "overrides features_list" not in log  # the same value is no override
    assert log.count("overrides image_size") == 1


def test_released_vcp_checkpoint_cannot_check_the_layers_and_says_so(vcp_clip_pt, tmp_path):
    load_script("test").main(list(map(str, [
        "--model", "vcp", "--data_path", VCP_FIXTURE / "data", "--dataset", "mvtec", "--checkpoint_path",
        VCP_FIXTURE / "init.pth", "--clip_weights", vcp_clip_pt, "--save_path", tmp_path / "out", *CPU,
        "--image_size", "126", "--features_list", "1", "2", "3", "4", "--metrics", "image-level"])))
    log = (tmp_path / "out" / "log.txt").read_text()
    assert "does not record the features_list it was trained with, so this cannot be checked" in log


# ------------------------------------------------------------------ F14, F15: numeric flags

def _takes_floats(convert) -> bool:
    try:
        return isinstance(convert("0.5"), float)
    except (ValueError, TypeError):
        return False


def _float_settings():
    """Every float-valued setting flag of every method (model and training), as each script takes it."""
    from models import get_method, method_names
    from models.settings import fields_of, flag_name

    found = []
    for name in method_names():
        method = get_method(name)
        for config, script in ((method.config, "test"), (method.training, "train")):
            for field in fields_of(config, ("test",) if script == "test" else ("train",)):
                convert = field.metadata.get("type")
                if convert is not None and not field.metadata.get("nargs") and _takes_floats(convert):
                    found.append((name, script, flag_name(field)))
    return found


FLOAT_SETTINGS = _float_settings()


def test_the_float_flags_are_found():
    flags = {flag for _, _, flag in FLOAT_SETTINGS}
    assert {"--learning_rate", "--sigma", "--alpha", "--fgp_learning_rate", "--aug_rate"} <= flags


@pytest.mark.parametrize("method,script,flag", FLOAT_SETTINGS)
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN"])
def test_no_float_flag_takes_a_non_finite_value(method, script, flag, value, capsys):
    module = load_script(script)
    with pytest.raises(SystemExit) as exit_info:
        module.parse_args(["--model", method, f"{flag}={value}"] + (["--train_data_path", "x"] if script == "train"
                                                                     else []))
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert f"argument {flag}: must be a finite number" in error and f"got {value}" in error, error


@pytest.mark.parametrize("method", ["vip2", "vcp"])
@pytest.mark.parametrize("value", ["-1e-3", "0", "-0.0"])
def test_learning_rates_must_be_positive(method, value, capsys):
    module = load_script("train")
    with pytest.raises(SystemExit) as exit_info:
        module.parse_args(["--model", method, "--train_data_path", "x", f"--learning_rate={value}"])
    assert exit_info.value.code == 2 and "argument --learning_rate: must be > 0" in capsys.readouterr().err


@pytest.mark.slow
def test_nan_learning_rate_through_the_command(tmp_path):
    result = run_script("train.py", "--train_data_path", FIXTURE / "data", "--save_path", tmp_path / "ckpt",
                        "--learning_rate", "nan", check=False)
    assert result.returncode == 2 and "--learning_rate: must be a finite number, got nan" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "ckpt").exists()


def test_settings_built_in_code_are_checked_too():
    from models import get_method

    with pytest.raises(ValueError, match="--learning_rate must be a finite number"):
        get_method("vip2").training(learning_rate=math.nan)
    with pytest.raises(ValueError, match="--learning_rate must be > 0"):
        get_method("vcp").training(learning_rate=-1.0)


# ------------------------------------------------------------------ E13: predict --overwrite

def test_predict_overwrite_leaves_none_of_the_earlier_runs_files(tmp_path):
    folder = tmp_path / "images"
    for index in range(3):
        (folder / f"part{index}").mkdir(parents=True)
        Image.fromarray(np.full((60, 70, 3), 40 * index + 20, np.uint8)).save(folder / f"part{index}" / "x.png")
    out = tmp_path / "out"
    assert predict.main([str(folder), "--out", str(out), "--save_raw", *PREDICT_ARGS]) == 3
    earlier = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert {"part0/x.png", "part1/x.npy", "part2/x.png", "scores.csv"} <= set(earlier)
    (out / "notes.md").write_text("mine")  # not the earlier run's: stays
    assert predict.main([str(folder / "part1" / "x.png"), "--out", str(out), "--overwrite", *PREDICT_ARGS]) == 1
    now = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert now == ["log.txt", "notes.md", "scores.csv", "x.png"], now
    with open(out / "scores.csv", newline="") as file:
        assert [row["overlay"] for row in csv.DictReader(file)] == ["x.png"]


# ------------------------------------------------------------------ S04: test.sh without a checkpoint

@pytest.mark.slow
def test_test_sh_with_data_but_no_checkpoint_says_why(tmp_path):
    import os
    import subprocess
    import sys

    from generate_dataset_json.synthetic import make_synthetic_dataset

    make_synthetic_dataset(tmp_path / "data" / "mvtec", classes=("synth",), n_normal=1, n_anomalous=1, seed=0)
    env = {**os.environ, "PYTHON": sys.executable, "DATA_ROOT": str(tmp_path / "data"),
           "CHECKPOINTS": str(tmp_path / "none"), "RESULTS": str(tmp_path / "results")}
    result = subprocess.run(["bash", str(ROOT / "test.sh")], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert "test.sh: no checkpoint trained on visa for mvtec: run train.sh, or set VISA_CHECKPOINT" in result.stderr


# ------------------------------------------------------------------ I11: very large images

def huge_png(path, width=20000, height=10000):
    """A PNG whose header says width x height (its pixel data is a 1x1 image's): cheap to write, and enough for
    any reader that checks the size before decoding."""
    Image.new("L", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    start = data.index(b"IHDR")
    data[start + 4:start + 12] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    data[start + 17:start + 21] = zlib.crc32(bytes(data[start:start + 17])).to_bytes(4, "big")
    path.write_bytes(bytes(data))
    return path


def test_a_huge_image_is_refused_with_the_limit_and_the_flag(data, tmp_path):
    huge_png(data / "01/test/ok/001.png")
    with pytest.raises(ValueError, match=r"cannot read image .*01/test/ok/001.png: 20000x10000 is 200,000,000 "
                                         r"pixels, more than the limit of 100,000,000; .*--max_image_pixels 200000000"):
        run_test_main(data, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    # raising the limit lets the header through; this file's pixel data is then found damaged, still in one line
    with pytest.raises(ValueError, match=r"cannot read image .*01/test/ok/001.png"):
        run_test_main(data, tmp_path / "out", "--max_image_pixels", "0")
    with pytest.raises(ValueError, match="more than the limit of 1,000"):
        run_test_main(data, tmp_path / "out", "--max_image_pixels", "1000")


def test_predict_skips_a_huge_image_naming_the_limit(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    huge_png(folder / "huge.png")
    Image.fromarray(np.full((60, 70, 3), 90, np.uint8)).save(folder / "fine.png")
    assert predict.main([str(folder), "--out", str(tmp_path / "out"), *PREDICT_ARGS]) == 1
    log = (tmp_path / "out" / "log.txt").read_text()
    assert "huge.png" in log and "--max_image_pixels" in log
