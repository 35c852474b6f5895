"""AnomalyCLIP parity with the authors' code (zqhang/AnomalyCLIP) on its tiny CLIP fixture: in-process and the CLIs.

tests/fixtures/anomalyclip_tiny/README.md says how the fixture was made. Tolerances are the issue's:
init maps and scores 1e-5, per-step training losses 1e-5, trained maps 1e-4. Every setting comes
from the fixture's `config`, so a fixture made with other settings runs the same way.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import FIXTURE, ROOT, fixture_outputs, normalized, run_script
from scipy.ndimage import gaussian_filter

AC_FIXTURE = ROOT / "tests" / "fixtures" / "anomalyclip_tiny"
DATA = FIXTURE / "data"  # the ViP² fixture's 8 images (BTAD layout); the reference read the same files
INIT_TOLERANCE = 1e-5
TRAINED_TOLERANCE = 1e-4
LOSS_TOLERANCE = 1e-5
METRIC_NAMES = {"pixel-auroc": "pixel_auroc", "pixel-aupro": "pixel_aupro", "image-auroc": "image_auroc",
                "image-ap": "image_ap"}


@pytest.fixture(scope="module")
def ac():
    return fixture_outputs(AC_FIXTURE)


@pytest.fixture(scope="module")
def config(ac):
    return ac["json"]["config"]


@pytest.fixture(scope="module")
def ac_clip():
    from models.clip_loader import load_clip

    return load_clip(str(AC_FIXTURE / "clip_tiny.npz"))


@pytest.fixture(scope="module")
def ac_clip_pt(tmp_path_factory):
    from models.clip_loader import read_clip_state_dict

    path = tmp_path_factory.mktemp("ac_clip") / "clip_tiny.pt"
    torch.save(read_clip_state_dict(AC_FIXTURE / "clip_tiny.npz"), path)
    return path


@pytest.fixture(scope="module")
def ac_batch(config):
    from dataset import AnomalyDataset

    dataset = AnomalyDataset(DATA, config["image_size"])
    return torch.utils.data.default_collate([dataset[i] for i in range(len(dataset))])


def model_settings(config: dict, **overrides) -> dict:
    settings = {"image_size": config["image_size"], "features_list": tuple(config["features_list"]),
                "feature_map_layer": tuple(config["feature_map_layer"]), "dpam_layer": config["dpam_layer"],
                "sigma": float(config["sigma"])}
    return {**settings, **overrides}


def setting_flags(config: dict) -> list[str]:
    """The fixture's settings as flags, with the reference's names."""
    return ["--image_size", config["image_size"], "--features_list", *config["features_list"],
            "--feature_map_layer", *config["feature_map_layer"], "--dpam_layer", config["dpam_layer"],
            "--depth", config["depth"], "--n_ctx", config["n_ctx"], "--t_n_ctx", config["t_n_ctx"]]


def build(clip, config, checkpoint, **overrides):
    from models import create_model

    return create_model("anomalyclip", clip=clip, checkpoint=checkpoint, **model_settings(config, **overrides))


def trained_checkpoint(ac, path):
    """The reference's trained checkpoint, in its layout: init.pth with the tensors training changed (the
    fixture stores only those; the rest was bit-identical to init.pth, as expected.json lists)."""
    state = torch.load(AC_FIXTURE / "init.pth", weights_only=True)["prompt_learner"]
    for key in ac["json"]["trained_changed"]:
        state[key] = torch.from_numpy(ac[f"trained_prompt_learner.{key}"])
    torch.save({"prompt_learner": state}, path)
    return path


# ---------------------------------------------------------------------------------------------- in-process
def test_fixture_order_and_masks(ac_batch, ac):
    assert list(ac_batch["img_path"]) == ac["json"]["init"]["image_paths"]
    assert ac_batch["anomaly"].tolist() == ac["json"]["init"]["labels"]
    np.testing.assert_array_equal(ac_batch["img_mask"].numpy(), ac["gt_masks"])


@pytest.mark.parametrize("stage", ["init", "trained"])
def test_intermediates_match_the_reference(stage, ac_clip, ac_batch, ac, config, tmp_path):
    """Global image feature (no ln_post), the two text features, and each layer's patch probabilities."""
    checkpoint = AC_FIXTURE / "init.pth" if stage == "init" else trained_checkpoint(ac, tmp_path / "t.pth")
    model = build(ac_clip, config, checkpoint)
    with torch.no_grad():
        features = model.extract_features(normalized(ac_batch["img"]))
        text = model.text_features()
        probabilities = torch.stack([model._probabilities(p, text) for p in features[1:]], dim=1)

    def unit(x):
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    np.testing.assert_allclose(features[0].numpy(), unit(ac[f"{stage}_image_features"]), atol=1e-6, rtol=0)
    np.testing.assert_allclose(text.numpy(), unit(ac[f"{stage}_text_features"]), atol=1e-6, rtol=0)
    np.testing.assert_allclose(probabilities.numpy(), ac[f"{stage}_layer_probabilities"], atol=INIT_TOLERANCE, rtol=0)


@pytest.mark.parametrize("stage", ["init", "trained"])
def test_maps_and_scores_match_the_reference(stage, ac_clip, ac_batch, ac, config, tmp_path):
    checkpoint = AC_FIXTURE / "init.pth" if stage == "init" else trained_checkpoint(ac, tmp_path / "t.pth")
    model = build(ac_clip, config, checkpoint)
    with torch.no_grad():
        maps, scores = model(ac_batch["img"])
    np.testing.assert_allclose(maps.numpy(), ac[f"{stage}_maps"], atol=INIT_TOLERANCE, rtol=0)
    np.testing.assert_allclose(scores.numpy(), ac[f"{stage}_scores"], atol=INIT_TOLERANCE, rtol=0)


def test_feature_map_layer_uses_only_its_first_value_as_a_threshold(ac_clip, ac_batch, ac, config):
    """`--feature_map_layer 1 0`: the layers of features_list from position 1 on, whatever follows. The
    expected map is built from the reference's own per-layer probabilities, upsampled and smoothed as its
    test.py does (bilinear, then scipy's gaussian_filter)."""
    model = build(ac_clip, config, AC_FIXTURE / "init.pth", feature_map_layer=(1, 0))
    assert model.config.map_layers == tuple(config["features_list"][1:])
    with torch.no_grad():
        maps, _ = model(ac_batch["img"])
    layers = torch.from_numpy(ac["init_layer_probabilities"][:, 1:])  # [N, layers, L, 2]
    side = round(layers.shape[2] ** 0.5)
    expected = 0
    for i in range(layers.shape[1]):
        grid = layers[:, i].reshape(-1, side, side, 2).permute(0, 3, 1, 2)
        up = F.interpolate(grid, (config["image_size"],) * 2, mode="bilinear").permute(0, 2, 3, 1)
        expected = expected + (up[..., 1] + 1 - up[..., 0]) / 2
    expected = np.stack([gaussian_filter(m, sigma=config["sigma"]) for m in expected.numpy()])
    np.testing.assert_allclose(maps.numpy(), expected, atol=INIT_TOLERANCE, rtol=0)
    assert np.abs(maps.numpy() - ac["init_maps"]).max() > 0.1  # one layer fewer than the fixture's maps


def test_training_steps_reproduce_the_reference(ac_clip, ac_batch, ac, config):
    """The reference's five steps, each on its batch in the reference's order (expected.json), from init.pth:
    losses within 1e-5, then the trained model's maps within 1e-4 of the reference's trained maps."""
    from models.anomalyclip.config import AnomalyCLIPTraining

    model = build(ac_clip, config, AC_FIXTURE / "init.pth")
    training = AnomalyCLIPTraining(learning_rate=config["learning_rate"], batch_size=config["batch_size"])
    optimizer = model.make_optimizer(training)
    with torch.no_grad():
        features = model.extract_features(normalized(ac_batch["img"]))
    paths = list(ac_batch["img_path"])
    model.train()
    for step in ac["json"]["train_steps"]:
        order = [paths.index(p) for p in step["batch_order"]]
        losses = model.training_losses(tuple(f[order] for f in features), ac_batch["img_mask"][order],
                                       ac_batch["anomaly"][order].long())
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
        assert losses["loss"].item() == pytest.approx(step["loss"], abs=LOSS_TOLERANCE)
        assert losses["image_loss"].item() == pytest.approx(step["image_loss"], abs=LOSS_TOLERANCE)
        terms = [value for _, value in step["pixel_loss_terms"]]
        assert losses["pixel_loss"].item() == pytest.approx(4 * sum(terms), abs=LOSS_TOLERANCE)
    model.eval()
    with torch.no_grad():
        maps, scores = model(ac_batch["img"])
    np.testing.assert_allclose(maps.numpy(), ac["trained_maps"], atol=TRAINED_TOLERANCE, rtol=0)
    np.testing.assert_allclose(scores.numpy(), ac["trained_scores"], atol=TRAINED_TOLERANCE, rtol=0)
    unchanged = model.prompt_learner.state_dict()
    reference = torch.load(AC_FIXTURE / "init.pth", weights_only=True)["prompt_learner"]
    for key in ac["json"]["trained_unchanged"]:  # the unused projections get no gradient here either
        assert torch.equal(unchanged[key], reference[key]), key


def test_checkpoints_keep_the_reference_layout(ac_clip, config):
    """What this project writes loads into the reference's prompt learner: the same keys, shapes and dtypes
    as the reference's own file (its `load_state_dict` is strict)."""
    from models.checkpoint import method_of

    reference = torch.load(AC_FIXTURE / "init.pth", weights_only=True)
    assert method_of(reference) == "anomalyclip"
    model = build(ac_clip, config, None, n_ctx=config["n_ctx"], depth=config["depth"], t_n_ctx=config["t_n_ctx"])
    ours = model.checkpoint_state()["prompt_learner"]
    assert sorted(ours) == sorted(reference["prompt_learner"])
    for key, value in reference["prompt_learner"].items():
        assert (tuple(ours[key].shape), ours[key].dtype) == (tuple(value.shape), value.dtype), key
    # buffers made from the same CLIP are the reference's, value for value
    for key in ("token_prefix_pos", "token_suffix_pos", "token_prefix_neg", "token_suffix_neg",
                "tokenized_prompts_pos", "tokenized_prompts_neg"):
        assert torch.equal(ours[key], reference["prompt_learner"][key]), key


def test_settings_come_from_the_reference_tensors(ac_clip, config):
    """The authors' files record nothing: n_ctx, depth and t_n_ctx are read from their tensors."""
    from models.anomalyclip.model import AnomalyCLIP

    reference = torch.load(AC_FIXTURE / "init.pth", weights_only=True)
    assert AnomalyCLIP.recorded_settings(reference) == {"n_ctx": config["n_ctx"], "depth": config["depth"],
                                                        "t_n_ctx": config["t_n_ctx"]}
    model = build(ac_clip, config, AC_FIXTURE / "init.pth")
    assert (model.config.n_ctx, model.config.depth, model.config.t_n_ctx) == (4, 3, 2)
    with pytest.raises(Exception, match="n_ctx"):
        build(ac_clip, config, AC_FIXTURE / "init.pth", n_ctx=5)


def test_other_methods_checkpoints_are_not_taken_for_anomalyclip(ac_clip, config):
    from models import CheckpointError, resolve_config
    from models.checkpoint import method_of, read_checkpoint

    assert method_of(torch.load(FIXTURE / "init.pth", weights_only=True)) == "vip2"
    with pytest.raises(CheckpointError, match="ViP²-CLIP checkpoint, not AnomalyCLIP: pass --model vip2"):
        build(ac_clip, config, FIXTURE / "init.pth")
    with pytest.raises(CheckpointError, match="AnomalyCLIP checkpoint, not ViP²-CLIP: pass --model anomalyclip"):
        resolve_config("vip2", read_checkpoint(AC_FIXTURE / "init.pth"), AC_FIXTURE / "init.pth")


def test_dpam_beyond_the_tower_covers_every_block_with_a_warning(ac_clip, config):
    with pytest.warns(UserWarning, match="--dpam_layer 20 asks for the value-value path in the top 19 blocks"):
        model = build(ac_clip, config, None, dpam_layer=20)
    assert model.first_dpam_block == 1
    assert build(ac_clip, config, None, dpam_layer=3).first_dpam_block == 2


@pytest.mark.parametrize("overrides, message", [
    ({"features_list": (1, 4)}, "--features_list"),
    ({"feature_map_layer": (3,)}, "--feature_map_layer"),
])
def test_impossible_settings_are_refused(overrides, message, ac_clip, config):
    with pytest.raises(ValueError, match=message):
        build(ac_clip, config, None, **overrides)


def test_dpam_layer_one_means_no_value_value_path(ac_clip, ac_batch, config):
    """DPAM_layer 1 (the reference's comment: "no DPAM is used"; its code fails there): plain CLIP taps."""
    model = build(ac_clip, config, AC_FIXTURE / "init.pth", dpam_layer=1)
    with torch.no_grad():
        final, taps = model.vision_tokens(normalized(ac_batch["img"][:2]))
        plain, streams = model.backbone.residual_streams(normalized(ac_batch["img"][:2]), config["features_list"])
    torch.testing.assert_close(final, plain, atol=1e-5, rtol=0)
    for layer in config["features_list"]:
        torch.testing.assert_close(taps[layer], streams[layer], atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------- command lines
def _test_command(config, clip, checkpoint, out, maps):
    return ["--model", "anomalyclip", "--data_path", DATA, "--clip_weights", clip, "--checkpoint_path", checkpoint,
            *setting_flags(config), "--sigma", config["sigma"], "--device", "cpu", "--save_path", out,
            "--save_maps", maps]


def _check_maps(path, stage, ac, tolerance):
    with np.load(path) as saved:
        assert [str(p) for p in saved["img_paths"]] == ac["json"][stage]["image_paths"]
        np.testing.assert_allclose(saved["anomaly_maps"], ac[f"{stage}_maps"], atol=tolerance, rtol=0)
        np.testing.assert_allclose(saved["image_scores"], ac[f"{stage}_scores"], atol=tolerance, rtol=0)


@pytest.mark.slow
def test_test_command_reproduces_init(ac_clip_pt, tmp_path, ac, config):
    out = tmp_path / "results"
    run_script("test.py", *_test_command(config, ac_clip_pt, AC_FIXTURE / "init.pth", out, tmp_path / "maps.npz"))
    _check_maps(tmp_path / "maps.npz", "init", ac, INIT_TOLERANCE)
    results = json.loads((out / "results.json").read_text())
    assert results["method"] == "anomalyclip"
    for cls_name, reference in ac["json"]["init"]["metrics"].items():
        for key, ours in METRIC_NAMES.items():
            assert results["metrics"][cls_name][ours] == pytest.approx(reference[key], abs=1e-4), (cls_name, key)


@pytest.mark.slow
def test_train_command_then_test(ac_clip_pt, tmp_path, ac, config):
    """train.py from init.pth with the reference's settings (batch 8 = the whole split: one step per epoch),
    then test.py on what it saved."""
    epochs = config["epochs"]
    ckpt = tmp_path / "ckpt"
    run_script("train.py", "--model", "anomalyclip", "--train_data_path", DATA, "--clip_weights", ac_clip_pt,
               "--init_checkpoint", AC_FIXTURE / "init.pth", *setting_flags(config), "--epoch", epochs,
               "--batch_size", config["batch_size"], "--learning_rate", config["learning_rate"], "--seed",
               config["seed"], "--save_freq", epochs, "--save_path", ckpt, "--device", "cpu")
    checkpoints = list(ckpt.glob("*.pth"))
    assert [p.name for p in checkpoints] == [f"epoch_{epochs}.pth"]
    saved = torch.load(checkpoints[0], weights_only=True)
    assert saved["method"] == "anomalyclip" and saved["settings"]["dpam_layer"] == config["dpam_layer"]
    losses = json.loads((ckpt / "losses.json").read_text())
    assert len(losses) == len(ac["json"]["train_steps"])
    for ours, reference in zip(losses, ac["json"]["train_steps"]):
        assert ours["loss"] == pytest.approx(reference["loss"], abs=LOSS_TOLERANCE)
        assert ours["image_loss"] == pytest.approx(reference["image_loss"], abs=LOSS_TOLERANCE)
    run_script("test.py", *_test_command(config, ac_clip_pt, checkpoints[0], tmp_path / "out", tmp_path / "m.npz"))
    _check_maps(tmp_path / "m.npz", "trained", ac, TRAINED_TOLERANCE)


@pytest.mark.slow
def test_reference_trained_checkpoint_through_the_cli(ac_clip_pt, tmp_path, ac, config):
    checkpoint = trained_checkpoint(ac, tmp_path / "trained.pth")
    run_script("test.py", *_test_command(config, ac_clip_pt, checkpoint, tmp_path / "out", tmp_path / "m.npz"))
    _check_maps(tmp_path / "m.npz", "trained", ac, INIT_TOLERANCE)


@pytest.mark.slow
def test_two_process_training_reproduces_the_reference(ac_clip_pt, tmp_path, ac, config):
    """torchrun --nproc_per_node 2 (gloo, each rank half of every batch): the losses and trained maps as one process."""
    import os
    import subprocess
    import sys

    ckpt = tmp_path / "ckpt"
    epochs = config["epochs"]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(ROOT / "train.py"), "--model", "anomalyclip", "--train_data_path", DATA, "--clip_weights",
               ac_clip_pt, "--init_checkpoint", AC_FIXTURE / "init.pth", *setting_flags(config), "--epoch", epochs,
               "--batch_size", config["batch_size"], "--learning_rate", config["learning_rate"], "--seed",
               config["seed"], "--save_freq", epochs, "--save_path", ckpt, "--device", "cpu", "--num_workers", "0"]
    result = subprocess.run([str(part) for part in command], cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    losses = json.loads((ckpt / "losses.json").read_text())
    for ours, reference in zip(losses, ac["json"]["train_steps"], strict=True):
        # 2e-5, not 1e-5: each rank sums half a batch and DDP adds the halves, so the gradients differ from
        # one process's by rounding, which the reference's float16 rounding of the deep tokens' gradients
        # turns into float16 steps (measured: 1.5e-5 at step 4 of losses about 16; one process: 3.8e-6)
        assert ours["loss"] == pytest.approx(reference["loss"], abs=2 * LOSS_TOLERANCE)
    run_script("test.py", *_test_command(config, ac_clip_pt, ckpt / f"epoch_{epochs}.pth", tmp_path / "out",
                                         tmp_path / "m.npz"))
    _check_maps(tmp_path / "m.npz", "trained", ac, TRAINED_TOLERANCE)
