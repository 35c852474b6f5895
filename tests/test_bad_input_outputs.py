"""Issue 27, lost files and tracebacks: an earlier run's files survive until a new run is complete, Ctrl-C ends
in one line and status 130 (a real SIGINT), and environment problems end in one line. Through the real commands."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import FIXTURE, FIXTURE_SETTINGS, ROOT, run_script
from PIL import Image
from test_bad_input_numbers import CPU, PREDICT_ARGS, load_script, run_test_main

import predict
from utils import INTERRUPTED_STATUS, STAGING_FOLDER

TRAIN_ARGS = ["--train_data_path", str(FIXTURE / "data"), "--clip_weights", str(FIXTURE / "clip_tiny.npz"),
              *FIXTURE_SETTINGS, *CPU, "--epoch", "2"]


def interrupted(module, argv, monkeypatch, capsys) -> str:
    """Run a script's cli() as the user would, with `argv`; returns stderr once it ended with Ctrl-C's status."""
    monkeypatch.setattr("sys.argv", [module.__name__, *map(str, argv)])
    with pytest.raises(SystemExit) as exit_info:
        module.cli()
    assert exit_info.value.code == INTERRUPTED_STATUS
    return capsys.readouterr().err


# ------------------------------------------------------------------ K01, K05: --overwrite and Ctrl-C

def test_interrupted_evaluation_keeps_the_earlier_results(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    run_test_main(FIXTURE / "data", out, "--metrics", "image-level", "--save_maps", out / "maps.npz")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert {"results.json", "maps.npz", "log.txt"} <= set(before)

    script = load_script("test")

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(script.metrics, "evaluate", ctrl_c)  # after the model ran, before any result
    err = interrupted(script, ["--data_path", FIXTURE / "data", "--checkpoint_path", FIXTURE / "init.pth",
                               "--clip_weights", FIXTURE / "clip_tiny.npz", "--save_path", out, *FIXTURE_SETTINGS,
                               *CPU, "--metrics", "image-level", "--overwrite"], monkeypatch, capsys)
    assert f"the earlier results in {out} are unchanged" in err and "Traceback" not in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing lost, nothing half-written left

    monkeypatch.undo()
    run_test_main(FIXTURE / "data", out, "--metrics", "image-level", "--overwrite")
    assert sorted(p.name for p in out.iterdir()) == ["log.txt", "results.json"]  # the earlier maps went with it
    assert "the earlier run's results in" in (out / "log.txt").read_text()


def test_interrupted_training_keeps_the_earlier_checkpoints(tmp_path, monkeypatch, capsys):
    from engine.training import Trainer

    train = load_script("train")
    save = tmp_path / "ckpt"
    train.main([*TRAIN_ARGS, "--save_path", str(save)])
    before = {p.name: p.read_bytes() for p in save.iterdir()}
    assert {"epoch_1.pth", "epoch_2.pth", "losses.json", "log.txt"} <= set(before)

    real_epoch = Trainer.run_epoch

    def second_epoch_interrupted(self, epoch):
        if epoch == 2:
            raise KeyboardInterrupt
        return real_epoch(self, epoch)

    monkeypatch.setattr(Trainer, "run_epoch", second_epoch_interrupted)
    err = interrupted(train, [*TRAIN_ARGS, "--save_path", save, "--overwrite", "--seed", "5"], monkeypatch, capsys)
    assert f"the earlier run in {save} is unchanged" in err and STAGING_FOLDER in err
    assert {p.name: p.read_bytes() for p in save.iterdir() if p.is_file()} == before
    assert (save / STAGING_FOLDER / "epoch_1.pth").is_file()  # the interrupted run's epoch, kept aside

    without = load_script("train")
    with pytest.raises(ValueError, match=rf"already holds an earlier run .*{STAGING_FOLDER}"):
        without.main([*TRAIN_ARGS, "--save_path", str(save)])  # what it left is named, never mixed in
    monkeypatch.undo()
    last = load_script("train").main([*TRAIN_ARGS, "--save_path", str(save), "--overwrite", "--seed", "5"])
    assert last == save / "epoch_2.pth" and last.is_file()
    assert not (save / STAGING_FOLDER).exists()
    assert (save / "epoch_2.pth").read_bytes() != before["epoch_2.pth"]  # another seed: the new run's weights


# ------------------------------------------------------------------ X04, X07: metrics.py and summarize.py

def _maps_file(path):
    rng = np.random.default_rng(0)
    masks = np.zeros((4, 8, 8), np.uint8)
    masks[2:, 2:5, 2:5] = 1
    np.savez(path, anomaly_maps=rng.random((4, 8, 8)).astype(np.float32), image_scores=rng.random(4),
             gt_masks=masks, labels=np.array([0, 0, 1, 1]), cls_names=np.array(["a"] * 4),
             img_paths=np.array([f"{i}.png" for i in range(4)]))
    return path


@pytest.mark.slow
def test_metrics_json_is_never_replaced_unasked(tmp_path):
    maps, out = _maps_file(tmp_path / "maps.npz"), tmp_path / "metrics.json"
    out.write_text("earlier")
    result = run_script("metrics.py", maps, "--json", out, check=False)
    assert result.returncode != 0 and "--json" in result.stderr and "--overwrite" in result.stderr
    assert "Traceback" not in result.stderr and out.read_text() == "earlier"
    run_script("metrics.py", maps, "--json", out, "--overwrite")
    assert "mean" in json.loads(out.read_text())


def test_summary_is_never_replaced_unasked(tmp_path):
    import summarize

    folder = tmp_path / "results" / "visa"
    folder.mkdir(parents=True)
    mean = {"pixel_auroc": 0.9, "image_auroc": 0.8}
    (folder / "results.json").write_text(json.dumps({"dataset": "visa", "checkpoint": "c.pth", "pro_mode": "official",
                                                     "settings": {}, "metrics": {"x": mean, "mean": mean}}))
    for out, extra in ((tmp_path / "mine.md", ["--out", str(tmp_path / "mine.md")]),
                       (tmp_path / "results" / summarize.SUMMARY_FILE, [])):
        out.write_text("earlier")
        with pytest.raises(ValueError, match=r"--out .* already exists; .*--overwrite"):
            summarize.main([str(tmp_path / "results"), *extra])
        assert out.read_text() == "earlier"
        summarize.main([str(tmp_path / "results"), *extra, "--overwrite"])
        assert "visa" in out.read_text().lower()


# ------------------------------------------------------------------ K07, K08: a real Ctrl-C

def _start(script, *args):
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, str(ROOT / script), *map(str, args)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _interrupt_when(process, ready, timeout=240):
    deadline = time.time() + timeout
    while not ready():
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline, "never got ready"
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    return process.returncode, out, err


@pytest.mark.slow
def test_ctrl_c_during_predict_leaves_no_partial_overlays(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(240):  # enough that the run is still going when the interrupt lands, on a fast machine too
        Image.fromarray(np.full((40, 50, 3), index, np.uint8)).save(folder / f"{index:03d}.png")
    out = tmp_path / "out"
    process = _start("predict.py", folder, "--out", out, *PREDICT_ARGS, "--batch_size", "1")
    status, stdout, err = _interrupt_when(process, lambda: any((out / STAGING_FOLDER).glob("*.png")))
    assert status == INTERRUPTED_STATUS, (status, stdout[-2000:], err[-2000:])
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    said = [line for line in err.replace("\r", "\n").splitlines() if "interrupted" in line]
    assert len(said) == 1 and "predict.py: interrupted" in said[0] and "this run's overlays were removed" in said[0]
    assert sorted(p.name for p in out.iterdir()) == ["log.txt"]  # no overlay, no scores.csv, no staging folder


@pytest.mark.slow
def test_ctrl_c_during_export_is_one_line(tmp_path):
    pytest.importorskip("onnx")
    output = tmp_path / "model.onnx"
    process = _start("export.py", "--checkpoint_path", FIXTURE / "init.pth", "--clip_weights",
                     FIXTURE / "clip_tiny.npz", *FIXTURE_SETTINGS, "--output", output)
    lines = []

    def building():
        line = process.stdout.readline()
        lines.append(line)
        return "building" in line

    status, _, err = _interrupt_when(process, building)
    assert status == INTERRUPTED_STATUS, (lines, err)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert [line for line in err.splitlines() if "interrupted" in line] == [err.strip().splitlines()[-1]]
    assert err.strip().splitlines()[-1].startswith("export.py: interrupted")
    assert not [p for p in tmp_path.iterdir()]  # no half-written model


# ------------------------------------------------------------------ Y04, outputs that cannot be created

@pytest.mark.slow
def test_demo_without_gradio_says_what_to_install_before_loading(tmp_path):
    code = ("import runpy, sys; sys.modules['gradio'] = None; "
            f"sys.argv = ['demo.py', '--checkpoint_path', {str(FIXTURE / 'init.pth')!r}, '--clip_weights', "
            f"{str(FIXTURE / 'clip_tiny.npz')!r}]; runpy.run_path('demo.py', run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "pip install -r requirements-deploy.txt" in result.stderr and "gradio" in result.stderr
    assert "loading" not in result.stdout  # said before any model work


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs a /proc file system")
@pytest.mark.parametrize("below", ["/proc/zsas_results", "/proc/self/zsas/results", "/sys/zsas"])
def test_an_output_folder_that_cannot_be_created_is_one_line(tmp_path, below):
    with pytest.raises(ValueError, match=r"--save_path .*: cannot (create anything in|write in) /"):
        run_test_main(FIXTURE / "data", below)
    with pytest.raises(ValueError, match=r"--out .*: cannot (create anything in|write in) /"):
        predict.main([str(FIXTURE / "data" / "01"), "--out", below, *PREDICT_ARGS])


@pytest.mark.slow
def test_unwritable_save_path_through_the_command():
    result = run_script("test.py", "--data_path", FIXTURE / "data", "--checkpoint_path", FIXTURE / "init.pth",
                        "--clip_weights", FIXTURE / "clip_tiny.npz", "--save_path", "/proc/zsas/out", *CPU,
                        check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("test.py: --save_path /proc/zsas/out: cannot")


def test_an_oserror_while_writing_is_one_line(tmp_path, monkeypatch, capsys):
    from utils import run_cli

    def full_disk():
        raise OSError(28, "No space left on device", str(tmp_path / "x.png"))

    with pytest.raises(SystemExit) as exit_info:
        run_cli(full_disk, "predict.py")
    assert str(exit_info.value.code) == f"predict.py: [Errno 28] No space left on device: '{tmp_path / 'x.png'}'"


# ------------------------------------------------------------------ predict.py on a dataset folder

def test_predict_skips_mask_folders_unless_asked(tmp_path):
    out = tmp_path / "out"
    assert predict.main([str(FIXTURE / "data"), "--out", str(out), *PREDICT_ARGS]) == 8
    with open(out / predict.SCORES_FILE, newline="") as file:
        paths = [row["path"] for row in csv.DictReader(file)]
    assert all("/test/" in path for path in paths), paths
    log = (out / "log.txt").read_text()
    assert "in mask folders" in log and "ground_truth" in log and "--include_mask_folders" in log
    masks = len(list((FIXTURE / "data").rglob("ground_truth/**/*.png")))
    assert masks > 0
    assert predict.main([str(FIXTURE / "data"), "--out", str(tmp_path / "all"), "--include_mask_folders",
                         *PREDICT_ARGS]) == 8 + masks
    # a mask folder named as PATH is what the user asked for
    assert predict.main([str(FIXTURE / "data" / "01" / "ground_truth"), "--out", str(tmp_path / "gt"),
                         *PREDICT_ARGS]) > 0
