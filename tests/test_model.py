"""Properties of ViP²-CLIP's model code that the fixture alone does not pin down, and of the factory."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import FIXTURE, VCP_FIXTURE, fixture_model, normalized
from scipy.ndimage import gaussian_filter

from models import CheckpointError, create_model, get_method, method_names, resolve_config
from models.checkpoint import read_checkpoint, save_checkpoint
from models.smoothing import gaussian_blur
from models.vip2 import utpa
from models.vip2.config import ViP2Config
from models.vip2.model import ViP2CLIP


def test_prompt_buffers_match_the_reference_checkpoint(tiny_clip):
    """Built from open_clip's tokenizer and the CLIP token embedding, quirk included."""
    model = fixture_model(tiny_clip, checkpoint=None)
    reference = read_checkpoint(FIXTURE / "init.pth")["prompt_learner"]
    ours = model.prompt_learner.state_dict()
    for key in [k for k in reference if k.startswith("token")]:
        torch.testing.assert_close(ours[key], reference[key], rtol=0, atol=0)
    # the quirk: both prompts embed "damaged"
    torch.testing.assert_close(ours["token_middle_pos"], ours["token_middle_neg"], rtol=0, atol=0)


def test_fix_quirks_changes_normal_prompt_and_global_feature(tiny_clip, fixture_batch):
    import open_clip

    native = dict(image_size=84, topk=10)  # the tiny CLIP's own resolution: no positional resize
    quirky = fixture_model(tiny_clip, checkpoint=None, **native)
    fixed = fixture_model(tiny_clip, checkpoint=None, fix_quirks=True, **native)
    assert not torch.equal(fixed.prompt_learner.token_middle_pos, fixed.prompt_learner.token_middle_neg)
    good = tiny_clip.token_embedding.weight[open_clip.tokenize(["good"])[0, 1]]
    torch.testing.assert_close(fixed.prompt_learner.token_middle_pos[0, 0], good)
    images = torch.nn.functional.interpolate(normalized(fixture_batch["img"][:2]), size=84, mode="bilinear")
    standard = torch.nn.functional.normalize(tiny_clip.encode_image(images), dim=-1)
    torch.testing.assert_close(fixed.extract_features(images)[0], standard, rtol=0, atol=1e-6)
    assert not torch.allclose(quirky.extract_features(images)[0], standard, atol=1e-3)


def test_prompt_encoding_equals_open_clip_text_encoder(tiny_clip):
    """Encoding token embeddings (cut after end-of-text) equals open_clip's encode_text on the same ids."""
    import open_clip

    model = fixture_model(tiny_clip, checkpoint=None)
    ids = open_clip.tokenize(["a photo of a damaged bottle", "x x good", "flawless"])
    ours = model.backbone.encode_prompts(model.backbone.embed_tokens(ids), ids)
    theirs = torch.nn.functional.normalize(tiny_clip.encode_text(ids), dim=-1)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=2e-6)


@pytest.mark.parametrize("fixture,quick_gelu", [(FIXTURE, True), (VCP_FIXTURE, False)])
def test_clip_built_on_meta_equals_open_clips_builder(fixture, quick_gelu):
    """build_clip skips the random initialisation (meta device, weights assigned): the same model as open_clip's
    builder reloaded in float32, every weight and buffer (the causal mask) equal, nothing left on meta."""
    from open_clip.model import build_model_from_openai_state_dict

    from models.clip_loader import NON_WEIGHT_KEYS, build_clip, read_clip_state_dict

    state = read_clip_state_dict(fixture / "clip_tiny.npz")
    ours = build_clip(state, quick_gelu=quick_gelu)
    weights = {k: v for k, v in state.items() if k not in NON_WEIGHT_KEYS}
    theirs = build_model_from_openai_state_dict(dict(weights), quick_gelu=quick_gelu, cast_dtype=None).float()
    theirs.load_state_dict({k: v.float() for k, v in weights.items()})
    theirs.requires_grad_(False).eval()
    ours_tensors = {**dict(ours.named_buffers()), **ours.state_dict()}
    theirs_tensors = {**dict(theirs.named_buffers()), **theirs.state_dict()}
    assert ours_tensors.keys() == theirs_tensors.keys() and "attn_mask" in ours_tensors
    for name, tensor in theirs_tensors.items():
        assert not ours_tensors[name].is_meta and ours_tensors[name].dtype == tensor.dtype, name
        assert torch.equal(ours_tensors[name], tensor), name
    ids = torch.randint(0, 1000, (2, 77), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(ours.encode_text(ids), theirs.encode_text(ids))


def test_anomaly_map_equals_per_layer_upsampling(tiny_clip, fixture_batch):
    """The single upsampling of the averaged map equals the reference's upsample-then-average."""
    model = fixture_model(tiny_clip)
    with torch.no_grad():
        alignment = model.align(model.extract_features(normalized(fixture_batch["img"][:3])))
        per_layer = [(m[:, 1] + 1 - m[:, 0]) / 2 for m in model.probability_maps(alignment)]
        reference = torch.stack(per_layer).mean(0)
        ours = model.anomaly_map(alignment)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6)


def test_batch_composition_does_not_change_outputs(tiny_clip, fixture_batch):
    model = fixture_model(tiny_clip)
    with torch.no_grad():
        maps_all, scores_all = model(fixture_batch["img"])
        singles = [model(image[None]) for image in fixture_batch["img"]]
    torch.testing.assert_close(maps_all, torch.cat([m for m, _ in singles]), rtol=0, atol=1e-6)
    torch.testing.assert_close(scores_all, torch.cat([s for _, s in singles]), rtol=0, atol=1e-6)


@pytest.mark.parametrize("settings", [dict(n_ctx=5, n_cls=2, topk=20, image_size=98, features_list=(2, 4)),
                                      dict(n_ctx=9, n_cls=1, topk=1, image_size=140, features_list=(1, 2, 3, 4),
                                           feature_map_layer=(2, 3))])
def test_other_settings_give_well_formed_outputs(tiny_clip, settings):
    config = ViP2Config(**settings)
    model = ViP2CLIP(tiny_clip, config).eval()
    images = torch.randint(0, 256, (2, 3, config.image_size, config.image_size), dtype=torch.uint8)
    with torch.no_grad():
        maps, scores = model(images)
    assert maps.shape == (2, config.image_size, config.image_size)
    assert scores.shape == (2,)
    assert torch.all((maps >= 0) & (maps <= 1)) and torch.all((scores >= 0) & (scores <= 1))


def test_image_logits_pool_topk_raw_similarities():
    similarity = torch.tensor([[[0.1, 0.9], [0.5, 0.2], [0.3, 0.4]]])
    probability = (similarity / 0.07).softmax(-1)
    logits = utpa.image_logits([similarity], [probability], topk=2)
    # abnormal probability ranks patches 0 and 2 first
    torch.testing.assert_close(logits, torch.tensor([[(0.1 + 0.3) / 2, (0.9 + 0.4) / 2]]) / 0.07)


def test_topk_larger_than_patch_count_is_a_clear_error(tiny_clip):
    with pytest.raises(ValueError, match="--topk 200 exceeds the 81 patches of a 126 px input"):
        ViP2CLIP(tiny_clip, ViP2Config(topk=200, image_size=126, features_list=(1, 2, 3, 4)))


def test_features_list_outside_the_tower_is_a_clear_error(tiny_clip):
    with pytest.raises(ValueError, match="outside the vision tower's layers 1..4"):
        ViP2CLIP(tiny_clip, ViP2Config(image_size=126))  # default 6 12 18 24 on a 4-block tower


@pytest.mark.parametrize("shape,sigma", [((3, 126, 126), 8), ((2, 20, 37), 8), ((1, 5, 9), 1.5), ((1, 64, 64), 0)])
def test_gaussian_blur_equals_scipy(shape, sigma):
    maps = np.random.default_rng(0).random(shape).astype(np.float32)
    expected = np.stack([gaussian_filter(m, sigma=sigma) for m in maps]) if sigma else maps
    np.testing.assert_array_equal(gaussian_blur(torch.from_numpy(maps), sigma).numpy(), expected)  # bit for bit


def test_checkpoint_records_settings_and_round_trips(tiny_clip, tmp_path):
    model = fixture_model(tiny_clip, n_ctx=7, topk=30)
    save_checkpoint(tmp_path / "epoch_3.pth", model, epoch=3)
    checkpoint = read_checkpoint(tmp_path / "epoch_3.pth")
    assert checkpoint["epoch"] == 3 and set(checkpoint) >= {"prompt_learner", "Zero_try", "settings"}
    assert checkpoint["method"] == "vip2" and checkpoint["clip_fingerprint"] == model.clip_fingerprint
    config = resolve_config("vip2", checkpoint, "x", topk=None, image_size=None)
    assert config == model.config
    assert resolve_config("vip2", checkpoint, "x", topk=10).topk == 10
    with pytest.raises(CheckpointError, match="made with n_ctx=7, but this run has n_ctx=4: pass --n_ctx 7"):
        resolve_config("vip2", checkpoint, "x", n_ctx=4)
    clone = fixture_model(tiny_clip, checkpoint=None, topk=30)
    clone.load_checkpoint(checkpoint, tmp_path / "epoch_3.pth")
    for key, value in model.prompt_learner.state_dict().items():
        torch.testing.assert_close(clone.prompt_learner.state_dict()[key], value, rtol=0, atol=0)
    assert [p.name for p in tmp_path.iterdir()] == ["epoch_3.pth"]


def test_released_checkpoint_with_other_shapes_names_both(tiny_clip):
    model = fixture_model(tiny_clip, checkpoint=None, n_ctx=5, n_cls=2)
    with pytest.raises(CheckpointError, match=r"n_ctx=5, n_cls=2.*ctx_pos: checkpoint \(7, 128\) vs model \(5, 128\)"):
        model.load_checkpoint(read_checkpoint(FIXTURE / "init.pth"), FIXTURE / "init.pth")


def test_released_checkpoint_settings_come_from_shapes():
    config = resolve_config("vip2", read_checkpoint(FIXTURE / "init.pth"), "init.pth", image_size=126)
    assert (config.n_ctx, config.n_cls, config.image_size, config.topk) == (7, 3, 126, 50)


def _clip_cli_env(home):
    import os

    return dict(os.environ, HOME=str(home), HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")


@pytest.mark.slow
def test_openai_tag_uses_the_clip_cache(tmp_path, clip_pt):
    """`--clip_weights openai` (the default) finds ~/.cache/clip/ViT-L-14-336px.pt without any network."""
    import shutil
    import subprocess
    import sys

    from conftest import FIXTURE_SETTINGS, ROOT

    cache = tmp_path / ".cache" / "clip"
    cache.mkdir(parents=True)
    shutil.copy(clip_pt, cache / "ViT-L-14-336px.pt")
    result = subprocess.run([sys.executable, str(ROOT / "test.py"), "--data_path", str(FIXTURE / "data"),
                             "--checkpoint_path", str(FIXTURE / "init.pth"), *FIXTURE_SETTINGS, "--metrics",
                             "image-level", "--save_path", str(tmp_path / "out"), "--num_workers", "0",
                             "--device", "cpu"], env=_clip_cli_env(tmp_path), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "results.json").is_file()


@pytest.mark.slow
def test_openai_tag_offline_without_cache_fails_fast_naming_the_flag(tmp_path):
    import subprocess
    import sys

    from conftest import ROOT

    result = subprocess.run([sys.executable, str(ROOT / "test.py"), "--data_path", str(FIXTURE / "data"),
                             "--checkpoint_path", str(FIXTURE / "init.pth"), "--image_size", "126",
                             "--features_list", "1", "2", "3", "4", "--save_path", str(tmp_path / "out")],
                            env=_clip_cli_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "--clip_weights openai" in result.stderr and "cannot be reached" in result.stderr


def test_input_smaller_than_a_patch_is_a_clear_error(tiny_clip):
    with pytest.raises(ValueError, match="--image_size 10 is smaller than one 14 px CLIP patch"):
        ViP2CLIP(tiny_clip, ViP2Config(image_size=10, features_list=(1,)))


def test_prompt_longer_than_the_context_is_a_clear_error(tiny_clip):
    with pytest.raises(ValueError, match="--n_ctx 70 plus --n_cls 5 exceeds the 74 prompt tokens"):
        ViP2CLIP(tiny_clip, ViP2Config(n_ctx=70, n_cls=5, image_size=126, features_list=(1,)))


def test_every_method_is_registered_and_torch_free_to_list():
    assert method_names()[0] == "vip2" and "vcp" in method_names()
    with pytest.raises(ValueError, match="unknown method 'nope': choose one of " + ", ".join(method_names())):
        get_method("nope")


def test_a_checkpoint_of_the_other_method_names_the_right_model(tiny_clip):
    with pytest.raises(CheckpointError, match=r"is a VCP-CLIP checkpoint, not ViP²-CLIP: pass --model vcp"):
        create_model("vip2", clip=tiny_clip, checkpoint=VCP_FIXTURE / "init.pth", image_size=126,
                     features_list=(1, 2, 3, 4))
    with pytest.raises(CheckpointError, match=r"is a ViP²-CLIP checkpoint, not VCP-CLIP: pass --model vip2"):
        resolve_config("vcp", read_checkpoint(FIXTURE / "init.pth"), FIXTURE / "init.pth")


def test_checkpoint_used_with_other_clip_weights_is_warned(tiny_clip, tmp_path, caplog):
    model = fixture_model(tiny_clip)
    save_checkpoint(tmp_path / "epoch_1.pth", model, epoch=1)
    other = fixture_model(tiny_clip)  # same weights: no warning
    checkpoint = read_checkpoint(tmp_path / "epoch_1.pth")
    checkpoint["clip_fingerprint"] = "0123456789abcdef"
    with caplog.at_level("WARNING", logger="zsas.models"):
        create_model("vip2", clip=tiny_clip, checkpoint=checkpoint)
    assert "trained on other CLIP weights" in caplog.text and other.clip_fingerprint == model.clip_fingerprint


def test_image_size_off_the_patch_grid_is_warned(tiny_clip):
    with pytest.warns(UserWarning, match="--image_size 130 is not a multiple of the 14 px patch.*126 or 140"):
        fixture_model(tiny_clip, checkpoint=None, image_size=130)


def test_the_model_takes_uint8_only(tiny_clip, fixture_batch):
    model = fixture_model(tiny_clip)
    with pytest.raises(ValueError, match="expects uint8 RGB images"):
        model(normalized(fixture_batch["img"][:1]))
