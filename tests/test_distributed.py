"""torchrun: sharded evaluation equals one process bit for bit; DDP training reproduces the fixtures.

The subprocess tests run `python -m torch.distributed.run --standalone --nproc_per_node 2` on the
CPU (gloo), one thread per process, against a one-process run with one thread: the same batches
through the same kernels give the same bits.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import FIXTURE, FIXTURE_SETTINGS, ROOT, VCP_FIXTURE, vcp_settings

from engine import distributed

ONE_THREAD = {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def run(script, *args, processes=1):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)] \
        if processes > 1 else [sys.executable]
    result = subprocess.run([*launcher, str(ROOT / script), *map(str, args)], cwd=ROOT, capture_output=True,
                            text=True, timeout=600, env=dict(os.environ, **ONE_THREAD))
    assert result.returncode == 0, f"{script} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.mark.parametrize("count,batch,world", [(8, 3, 2), (10, 4, 3), (5, 8, 2), (1, 1, 4)])
def test_evaluation_shards_cover_every_image_once(count, batch, world):
    shards = [distributed.batches_of_rank(count, batch, distributed.Context(rank, world)) for rank in range(world)]
    flat = sorted(i for shard in shards for b in shard for i in b)
    assert flat == list(range(count))
    assert all(len(b) == batch for shard in shards for b in shard[:-1])  # only a last batch may be short


def test_training_shares_split_each_batch_evenly():
    batch = list(range(10, 18))
    shares = [distributed.share(batch, distributed.Context(rank, 2)) for rank in range(2)]
    assert shares == [[10, 11, 12, 13], [14, 15, 16, 17]]
    assert [distributed.share([5], distributed.Context(rank, 2)) for rank in range(2)] == [[5], []]
    with pytest.raises(ValueError, match="--batch_size 6 .*does not divide evenly between 4 processes"):
        distributed.check_batch(6, distributed.Context(0, 4))


def _vcp_test_args(config, clip, checkpoint, out):
    return ["--model", "vcp", "--data_path", VCP_FIXTURE / "data", "--dataset", config["dataset"], "--clip_weights",
            clip, "--checkpoint_path", checkpoint, *vcp_settings(config), "--device", "cpu", "--batch_size", "3",
            "--save_path", out, "--save_maps", out / "maps.npz"]


@pytest.mark.slow
def test_sharded_evaluation_equals_one_process_bit_for_bit(tmp_path, clip_pt, vcp_clip_pt, vcp_expected):
    vip2 = ["--data_path", FIXTURE / "data", "--checkpoint_path", FIXTURE / "init.pth", "--clip_weights", clip_pt,
            *FIXTURE_SETTINGS, "--device", "cpu", "--batch_size", "3"]
    config = vcp_expected["json"]["config"]
    for name, args in (("vip2", vip2), ("vcp", None)):
        outputs = {}
        for processes in (1, 2):
            out = tmp_path / f"{name}_{processes}"
            command = (args + ["--save_path", out, "--save_maps", out / "maps.npz"]) if args else \
                _vcp_test_args(config, vcp_clip_pt, VCP_FIXTURE / "init.pth", out)
            run("test.py", *command, processes=processes)
            outputs[processes] = np.load(out / "maps.npz")
            assert json.loads((out / "results.json").read_text())["run"]["processes"] == processes
        for key in outputs[1].files:
            np.testing.assert_array_equal(outputs[2][key], outputs[1][key], err_msg=f"{name}: {key}")


@pytest.mark.slow
def test_two_process_training_reproduces_the_trained_fixtures(tmp_path, clip_pt, vcp_clip_pt, vcp_expected, expected):
    """DDP from init.pth, each rank half of every batch; then the trained maps within 1e-4, as the issue asks."""
    ckpt = tmp_path / "vip2"
    run("train.py", "--train_data_path", FIXTURE / "data", "--save_path", ckpt, "--init_checkpoint",
        FIXTURE / "init.pth", "--clip_weights", clip_pt, *FIXTURE_SETTINGS, "--epoch", "5", "--device", "cpu",
        "--num_workers", "0", processes=2)
    assert sorted(p.name for p in ckpt.iterdir()) == ["epoch_1.pth", "epoch_2.pth", "epoch_3.pth", "epoch_4.pth",
                                                       "epoch_5.pth", "log.txt", "losses.json", "train_stats.json"]
    run("test.py", "--data_path", FIXTURE / "data", "--checkpoint_path", ckpt / "epoch_5.pth", "--clip_weights",
        clip_pt, "--device", "cpu", "--save_path", tmp_path / "out", "--save_maps", tmp_path / "out" / "m.npz")
    saved = np.load(tmp_path / "out" / "m.npz")
    np.testing.assert_allclose(saved["anomaly_maps"], expected["trained_maps"], atol=1e-4, rtol=0)

    config = vcp_expected["json"]["config"]
    ckpt = tmp_path / "vcp"
    run("train.py", "--model", "vcp", "--train_data_path", VCP_FIXTURE / "data", "--dataset", config["dataset"],
        "--clip_weights", vcp_clip_pt, "--init_checkpoint", VCP_FIXTURE / "init.pth", *vcp_settings(config),
        "--epoch", config["epochs"], "--batch_size", config["batch_size"], "--learning_rate",
        config["learning_rate"], "--dtp_dropout", "0", "--aug_rate", "-1", "--no_albumentations", "--seed",
        config["run_seed"], "--save_freq", config["epochs"], "--save_path", ckpt, "--device", "cpu", processes=2)
    losses = json.loads((ckpt / "losses.json").read_text())
    for ours, reference in zip(losses, vcp_expected["json"]["train_steps"], strict=True):
        assert ours["loss"] == pytest.approx(reference["loss"], abs=1e-5)
    out = tmp_path / "vcp_out"
    run("test.py", *_vcp_test_args(config, vcp_clip_pt, ckpt / f"epoch_{config['epochs']}.pth", out))
    saved = np.load(out / "maps.npz")
    np.testing.assert_allclose(saved["anomaly_maps"], vcp_expected["trained_maps"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(saved["image_scores"], vcp_expected["trained_scores"], atol=1e-4, rtol=0)


@pytest.mark.slow
def test_sharded_prediction_writes_what_one_process_writes(tmp_path, clip_pt, vcp_clip_pt, vcp_expected):
    """predict.py under torchrun: 5 images in batches of 2 (rank 0 holds two batches, rank 1 one) and an unreadable
    file; rank 0 writes the same scores.csv and maps as one process, for both methods (VCP normalises over the set)."""
    import csv

    from test_predict import write_image

    images = tmp_path / "images"
    for index in range(5):
        write_image(images / f"{index:03d}.png", index)
    (images / "002_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    config = vcp_expected["json"]["config"]
    models = {"vip2": ["--checkpoint_path", FIXTURE / "init.pth", "--clip_weights", clip_pt, *FIXTURE_SETTINGS],
              "vcp": ["--model", "vcp", "--checkpoint_path", VCP_FIXTURE / "init.pth", "--clip_weights", vcp_clip_pt,
                      *vcp_settings(config)]}
    for name, model in models.items():
        outputs = {}
        for processes in (1, 2):
            out = tmp_path / f"{name}_{processes}"
            result = run("predict.py", images, *model, "--device", "cpu", "--batch_size", "2", "--save_raw",
                         "--out", out, processes=processes)
            assert result.stdout.count("cannot read it as an image") == 1, result.stdout  # by rank 0 only
            assert ("2 processes" in result.stdout) == (processes == 2)
            with open(out / "scores.csv", newline="") as file:
                rows = list(csv.DictReader(file))
            outputs[processes] = rows, {row["map"]: np.load(out / row["map"]) for row in rows}
            assert not (out / "log.txt").read_text().count("Traceback")
        (rows_1, maps_1), (rows_2, maps_2) = outputs[1], outputs[2]
        assert [row["path"] for row in rows_2] == [row["path"] for row in rows_1] and len(rows_1) == 5
        for one, two in zip(rows_1, rows_2):
            assert float(two["image_score"]) == pytest.approx(float(one["image_score"]), abs=1e-6), name
            assert float(two["raw_score"]) == pytest.approx(float(one["raw_score"]), abs=1e-6), name
            np.testing.assert_allclose(maps_2[two["map"]], maps_1[one["map"]], atol=1e-6, rtol=0, err_msg=name)
