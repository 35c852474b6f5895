"""Switches added for the papers' ablation tables: each changes the output, and its default is the paper's model."""
from __future__ import annotations

import torch
from conftest import fixture_model, normalized

import train
from models.vcp.config import VCPConfig


def test_vcp_without_post_vcp_uses_the_pre_vcp_branch_alone(vcp_clip, vcp_batch):
    assert VCPConfig().post_vcp is True  # the paper's model
    images = vcp_batch["img"][:3]
    default = fixture_model(vcp_clip, method="vcp")
    ablated = fixture_model(vcp_clip, method="vcp", post_vcp=False)
    with torch.no_grad():
        maps, scores = default.predict(normalized(images))
        ablated_maps, ablated_scores = ablated.predict(normalized(images))
        new, raw = default.branch_maps(default.extract_features(normalized(images)))
    # the default is the fused map of both branches, unchanged
    torch.testing.assert_close(maps, 0.2 * raw + 0.8 * new)
    # the ablation: the Pre-VCP map alone, and a different output
    torch.testing.assert_close(ablated_maps, raw)
    assert (ablated_maps - maps).abs().max() > 1e-4 and (ablated_scores - scores).abs().max() > 1e-4


def test_vcp_without_post_vcp_does_not_train_post_vcp(vcp_clip, vcp_batch):
    masks, labels = vcp_batch["img_mask"][:2], vcp_batch["anomaly"][:2]
    for post_vcp in (True, False):
        model = fixture_model(vcp_clip, method="vcp", post_vcp=post_vcp)
        features = model.extract_features(normalized(vcp_batch["img"][:2]))
        losses = model.training_losses(features, masks, labels)
        expected = losses["loss_base"] + (losses["loss_new"] if post_vcp else 0)
        torch.testing.assert_close(losses["loss"], expected)
        losses["loss"].backward()
        gradients = [p.grad for p in model.post_vcp.parameters() if p.requires_grad]
        assert any(g is not None and g.abs().sum() > 0 for g in gradients) == post_vcp


def test_no_post_vcp_is_a_train_flag_recorded_in_the_checkpoint():
    parse = lambda *flags: train.build_parser("vcp").parse_args(["--model", "vcp", "--train_data_path", "x", *flags])
    assert parse().post_vcp is True and parse("--no_post_vcp").post_vcp is False


def test_vip2_without_fgp_aligns_the_unrefined_text(tiny_clip, fixture_batch):
    from models.vip2 import utpa
    from models.vip2.config import ViP2Config

    assert ViP2Config().fgp is True  # the paper's model
    images = normalized(fixture_batch["img"][:3])
    default = fixture_model(tiny_clip)
    ablated = fixture_model(tiny_clip, fgp=False)
    with torch.no_grad():
        maps, scores = default.predict(images)
        ablated_maps, ablated_scores = ablated.predict(images)
        features = default.extract_features(images)
        text = default.text_features(features[0])
        expected = [utpa.align(patches, text)[1] for patches in features[1:]]
        refined = [utpa.align(patches, default.fgp(text, patches))[1] for patches in features[1:]]
        with_fgp = default.align(features).probabilities
        without = ablated.align(ablated.extract_features(images)).probabilities
    for got, want in zip(with_fgp, refined):  # the default: FGP's refined text, unchanged
        torch.testing.assert_close(got, want)
    for got, want in zip(without, expected):
        torch.testing.assert_close(got, want)
    assert (ablated_maps - maps).abs().max() > 1e-4 and (ablated_scores - scores).abs().max() > 1e-6
    parse = lambda *flags: train.build_parser("vip2").parse_args(["--train_data_path", "x", *flags])
    assert parse().fgp is True and parse("--no_fgp").fgp is False


def test_vcp_template_and_state_words_change_the_text_and_are_recorded(vcp_clip, vcp_batch, tmp_path):
    from models import resolve_config
    from models.checkpoint import read_checkpoint, save_checkpoint
    from prompt_ensemble import VCP_TEMPLATES

    assert VCPConfig().templates == VCP_TEMPLATES  # the paper's (and the reference's) prompt by default
    images = normalized(vcp_batch["img"][:2])
    default = fixture_model(vcp_clip, method="vcp")
    explicit = fixture_model(vcp_clip, method="vcp", template="a photo of a {state}", state_words=("good", "damaged"))
    words = fixture_model(vcp_clip, method="vcp", state_words=("perfect", "flawed"))
    template = fixture_model(vcp_clip, method="vcp", template="this is a {state} photo of")
    with torch.no_grad():
        outputs = [model.predict(images)[0] for model in (default, explicit, words, template)]
    torch.testing.assert_close(outputs[1], outputs[0], rtol=0, atol=0)
    assert (outputs[2] - outputs[0]).abs().max() > 1e-4 and (outputs[3] - outputs[0]).abs().max() > 1e-4
    save_checkpoint(tmp_path / "epoch_1.pth", words, epoch=1)
    recorded = resolve_config("vcp", read_checkpoint(tmp_path / "epoch_1.pth"), "epoch_1.pth")
    assert recorded.state_words == ("perfect", "flawed") and recorded.template == "a photo of a {state}"
    parse = lambda *flags: train.build_parser("vcp").parse_args(["--model", "vcp", "--train_data_path", "x", *flags])
    assert parse("--state_words", "normal", "abnormal").state_words == ["normal", "abnormal"]
    import pytest

    with pytest.raises(ValueError, match="--state_words needs a normal and an abnormal word"):
        VCPConfig(state_words=("good",))
    with pytest.raises(ValueError, match="--template must hold"):
        VCPConfig(template="a photo of a")
