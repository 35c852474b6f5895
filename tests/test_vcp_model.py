"""VCP-CLIP's model code beyond the fixture: checkpoints in the authors' layout, settings, modes, bad input."""
from __future__ import annotations

import argparse

import pytest
import torch
from conftest import VCP_FIXTURE, fixture_model, normalized

from models import CheckpointError, resolve_config
from models.checkpoint import read_checkpoint, save_checkpoint
from models.settings import add_setting_flags
from models.vcp.config import VCPConfig


def vcp(clip, checkpoint="init.pth", **settings):
    return fixture_model(clip, checkpoint, method="vcp", **settings)


def test_checkpoint_round_trip_keeps_the_authors_layout(vcp_clip, tmp_path):
    model = vcp(vcp_clip)
    save_checkpoint(tmp_path / "epoch_5.pth", model, epoch=5)
    ours, theirs = read_checkpoint(tmp_path / "epoch_5.pth"), read_checkpoint(VCP_FIXTURE / "init.pth")
    assert set(theirs) <= set(ours) and set(ours) - set(theirs) == {"method", "settings", "epoch", "format",
                                                                      "clip_fingerprint"}
    for key, value in theirs.items():
        if isinstance(value, dict):
            assert ours[key].keys() == value.keys()
            for name, tensor in value.items():
                torch.testing.assert_close(ours[key][name], tensor, rtol=0, atol=0)
        else:  # the CLIP prompt parameters themselves, at the top level, as the reference saves them
            assert isinstance(ours[key], torch.nn.Parameter)
            torch.testing.assert_close(ours[key].data, value.data, rtol=0, atol=0)
    assert ours["settings"]["total_d_layer_len"] == 1 and "alpha" not in ours["settings"]


def test_released_layout_tells_its_settings():
    recorded = resolve_config("vcp", read_checkpoint(VCP_FIXTURE / "init.pth"), "init.pth")
    assert (recorded.prompt_len, recorded.deep_prompt_len, recorded.total_d_layer_len) == (2, 1, 1)


def test_other_settings_than_the_checkpoint_are_named(vcp_clip):
    with pytest.raises(CheckpointError, match="made with prompt_len=2, but this run has prompt_len=3: "
                                              "pass --prompt_len 2"):
        vcp(vcp_clip, prompt_len=3)
    with pytest.raises(CheckpointError, match=r"linear layer.*features_list of 2 layers.*unexpected \['fc.2.bias'"):
        vcp(vcp_clip, features_list=(1, 2))


def test_a_missing_key_is_an_error_not_random_weights(vcp_clip):
    checkpoint = read_checkpoint(VCP_FIXTURE / "init.pth")
    del checkpoint["Zero_try"]["proj_post_t.bias"]
    model = vcp(vcp_clip, checkpoint=None)
    with pytest.raises(CheckpointError, match=r"Post-VCP.*missing \['proj_post_t.bias'\]"):
        model.load_checkpoint(checkpoint, "x.pth")


def test_shallow_prompts_and_depth_checks(vcp_clip, vcp_batch):
    shallow = vcp(vcp_clip, checkpoint=None, total_d_layer_len=0)
    assert not hasattr(shallow.text_prompts, "deep_prompt_embeddings")
    with torch.no_grad():
        maps, scores = shallow(vcp_batch["img"][:2])
    assert maps.shape == (2, 126, 126) and torch.isfinite(scores).all()
    with pytest.raises(ValueError, match="--total_d_layer_len 5: .*2 blocks, so it must be 0 .* or 1"):
        vcp(vcp_clip, checkpoint=None, total_d_layer_len=5)


def test_without_global_context_the_prompt_ignores_the_image(vcp_clip, vcp_batch):
    model = vcp(vcp_clip, use_global=False)
    with torch.no_grad():
        features = model.extract_features(normalized(vcp_batch["img"][:2]))
        vectors = model.context_prompting(features[0], use_global=False)
    torch.testing.assert_close(vectors[0], vectors[1], rtol=0, atol=0)


def test_reference_use_global_flag_is_refused_with_the_reason():
    parser = argparse.ArgumentParser()
    add_setting_flags(parser, VCPConfig, "test")
    with pytest.raises(SystemExit):
        parser.parse_args(["--use_global"])
    assert parser.parse_args(["--no_global_context"]).use_global is False
    assert parser.parse_args([]).use_global is None  # the checkpoint's


def test_repeated_layers_and_impossible_sizes_are_refused(vcp_clip):
    with pytest.raises(ValueError, match="repeats a layer"):
        VCPConfig(features_list=(1, 1, 2))
    with pytest.raises(ValueError, match="--alpha must lie in \\[0, 1\\]"):
        VCPConfig(alpha=1.5)
    with pytest.raises(ValueError, match="--score_topk 99999 exceeds the 15876 pixels"):
        vcp(vcp_clip, score_topk=99999)


def test_batch_composition_does_not_change_outputs(vcp_clip, vcp_batch):
    model = vcp(vcp_clip)
    with torch.no_grad():
        maps, scores = model(vcp_batch["img"])
        singles = [model(image[None]) for image in vcp_batch["img"]]
    torch.testing.assert_close(maps, torch.cat([m for m, _ in singles]), rtol=0, atol=1e-6)
    torch.testing.assert_close(scores, torch.cat([s for _, s in singles]), rtol=0, atol=1e-6)


def test_per_class_normalisation(vcp_clip, vcp_batch):
    model = vcp(vcp_clip)
    with torch.no_grad():
        maps, scores = model(vcp_batch["img"])
    out = model.finalize({"anomaly_maps": maps, "image_scores": scores}, vcp_batch["cls_name"])
    for cls_name in set(vcp_batch["cls_name"]):
        index = [i for i, name in enumerate(vcp_batch["cls_name"]) if name == cls_name]
        assert out["anomaly_maps"][index].min() == 0 and out["anomaly_maps"][index].max() == 1
        assert out["image_scores"][index].min() == 0 and out["image_scores"][index].max() == 1
    single = model.finalize({"anomaly_maps": torch.full_like(maps[:1], 0.3), "image_scores": scores[:1]}, ["a"])
    assert torch.isnan(single["image_scores"]).all()  # the reference's unguarded division: reported undefined
    assert (single["anomaly_maps"] == 0).all()  # a constant class map becomes zeros, as the reference does


def test_dropout_is_active_only_in_training(vcp_clip, vcp_batch):
    from models.vcp.config import VCPTraining

    model = vcp(vcp_clip)
    model.configure_training(VCPTraining(dtp_dropout=0.5))
    features = model.extract_features(normalized(vcp_batch["img"][:2]))
    model.eval()
    with torch.no_grad():
        first, second = model.branch_logits(features)[0][0], model.branch_logits(features)[0][0]
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    model.train()
    with torch.no_grad():
        first, second = model.branch_logits(features)[0][0], model.branch_logits(features)[0][0]
    assert not torch.equal(first, second)
