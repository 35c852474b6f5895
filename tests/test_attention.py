"""models/attention.py: the SDPA path gives the original attention's values and gradients, on the same weights."""
from __future__ import annotations

import copy
import io
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models.attention import SDPAMultiheadAttention, attention_modules, use_multihead_attention, use_sdpa
from models.backbone import FrozenCLIP

# SDPA against nn.MultiheadAttention in float32: two summation orders of the same arithmetic, so the bound is
# relative to the output's scale. Measured (tests/test_attention.py, every comparison below): at most 6.2e-7 x the
# largest |value| with the default kernels on an AVX-512 CPU and 6.2e-7 with ATEN_CPU_CAPABILITY=avx2
# ONEDNN_MAX_CPU_ISA=AVX2 (the text tower, 1.9e-6 absolute at scale 3.7, broke an absolute 1e-6 there). 1e-5 leaves
# 16x room for other CPUs; a wrong mask or head split moves values by 1e-1 of the scale.
FP32_TOLERANCE_TO_SCALE = 1e-5
GRADIENT_TOLERANCE = 1e-5  # relative to the largest gradient


def tiny_clip() -> nn.Module:
    """Random CLIP with 4 vision heads (the fused fast path's territory) and 2 text heads."""
    from open_clip.model import CLIP

    torch.manual_seed(0)
    model = CLIP(embed_dim=64, quick_gelu=True,
                 vision_cfg={"layers": 2, "width": 128, "head_width": 32, "patch_size": 14, "image_size": 84},
                 text_cfg={"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2})
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def clips():
    """The same weights twice: original attention, and SDPA."""
    original = tiny_clip()
    return original, use_sdpa(copy.deepcopy(original))


def frozen(clip):
    """FrozenCLIP around `clip`, keeping the attention `clip` has (FrozenCLIP itself switches to SDPA)."""
    wanted_sdpa = all(type(attn) is SDPAMultiheadAttention for attn in attention_modules(clip))
    wrapper = FrozenCLIP(clip)
    if not wanted_sdpa:
        use_multihead_attention(wrapper.clip)
    return wrapper


def frozen_features(wrapper, images, layers=(1, 2)):
    """The global feature and the tapped layers' patch features, as ViP²-CLIP reads them."""
    final, taps = wrapper.residual_streams(images, layers)
    return wrapper.project(final[:, 0]), tuple(wrapper.project(taps[layer][:, 1:]) for layer in layers)


def prompt_inputs(batch: int = 3, seed: int = 1):
    """Prompt embeddings and token ids whose end-of-text tokens sit at different positions."""
    generator = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(batch, 77, 64, generator=generator) * 0.1
    token_ids = torch.zeros(batch, 77, dtype=torch.long)
    for row, eot in enumerate(range(9, 9 + 4 * batch, 4)):
        token_ids[row, eot] = 49407
    return embeddings, token_ids


def flatten(nested) -> list[torch.Tensor]:
    """encode_image's (global, (patch features per layer)) as a flat list of tensors."""
    if isinstance(nested, torch.Tensor):
        return [nested]
    return [tensor for item in nested for tensor in flatten(item)]


def assert_close_to_scale(got: torch.Tensor, want: torch.Tensor, tolerance: float):
    """Within `tolerance` of the largest magnitude: gradients here reach ~50, and fp32 sums of
    that size differ by ~1e-6 relative whenever the kernels group their additions differently."""
    torch.testing.assert_close(got, want, rtol=tolerance, atol=tolerance * float(want.abs().max()))


def test_use_sdpa_swaps_every_attention_and_keeps_the_state_dict():
    model = tiny_clip()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    parameters_before = [id(p) for p in model.parameters()]
    assert use_sdpa(model) is model
    swapped = attention_modules(model)
    assert len(swapped) == 4 and all(type(attn) is SDPAMultiheadAttention for attn in swapped)
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert [id(p) for p in model.parameters()] == parameters_before  # nothing copied, nothing added
    model.load_state_dict(before)  # strict: the keys a checkpoint holds are still the model's
    assert all(type(attn) is SDPAMultiheadAttention for attn in attention_modules(copy.deepcopy(model)))
    use_multihead_attention(model)
    assert all(type(attn) is nn.MultiheadAttention for attn in attention_modules(model))
    assert list(model.state_dict()) == list(before)


def test_use_sdpa_finds_the_towers_through_frozen_clip_and_the_visual_tower_alone():
    assert len(attention_modules(FrozenCLIP(tiny_clip()))) == 4
    assert all(type(attn) is SDPAMultiheadAttention for attn in attention_modules(FrozenCLIP(tiny_clip())))
    visual = tiny_clip().visual
    use_sdpa(visual)
    assert all(type(block.attn) is SDPAMultiheadAttention for block in visual.transformer.resblocks)
    with pytest.raises(ValueError, match="no open_clip residual attention blocks"):
        use_sdpa(nn.Linear(2, 2))


def test_image_tower_matches_block_by_block(clips):
    original, sdpa = clips
    images = torch.randn(3, 3, 84, 84, generator=torch.Generator().manual_seed(0))
    outputs = {}
    for name, model in (("original", original), ("sdpa", sdpa)):
        blocks = []
        hooks = [block.register_forward_hook(lambda _m, _i, out: blocks.append(out))
                 for block in model.visual.transformer.resblocks]
        with torch.inference_mode():
            outputs[name] = (model.encode_image(images), blocks)
        for hook in hooks:
            hook.remove()
    for got, want in zip(outputs["sdpa"][1], outputs["original"][1]):
        assert_close_to_scale(got, want, FP32_TOLERANCE_TO_SCALE)
    assert_close_to_scale(outputs["sdpa"][0], outputs["original"][0], FP32_TOLERANCE_TO_SCALE)


@pytest.mark.parametrize("image_size", [112, 140])
def test_resized_positional_embedding(clips, image_size):
    """More tokens than CLIP was built for (65 and 101 instead of 37), as FrozenCLIP feeds them."""
    images = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(image_size))
    want = frozen_features(frozen(clips[0]), images)
    got = frozen_features(frozen(clips[1]), images)
    for got_tensor, want_tensor in zip((got[0], *got[1]), (want[0], *want[1])):
        assert_close_to_scale(got_tensor, want_tensor, FP32_TOLERANCE_TO_SCALE)


@pytest.mark.parametrize("length", [None, 77])
def test_text_tower_with_causal_and_sliced_masks(clips, length):
    """FrozenCLIP cuts the prompts (and the mask, to [L, L]) after the last end-of-text token."""
    embeddings, token_ids = prompt_inputs()
    want = frozen(clips[0]).encode_prompts(embeddings, token_ids, length=length)
    got = frozen(clips[1]).encode_prompts(embeddings, token_ids, length=length)
    assert_close_to_scale(got, want, FP32_TOLERANCE_TO_SCALE)
    with torch.no_grad():
        token_ids = torch.randint(0, 49407, (2, 77), generator=torch.Generator().manual_seed(2))
        assert_close_to_scale(clips[1].encode_text(token_ids), clips[0].encode_text(token_ids), FP32_TOLERANCE_TO_SCALE)


def test_causal_float_mask_equals_is_causal(clips):
    """Why the float mask is passed as is: SDPA gives the same values as with is_causal=True."""
    mask = clips[0].attn_mask[:20, :20]
    q, k, v = torch.randn(3, 2, 4, 20, 16, generator=torch.Generator().manual_seed(3)).unbind(0)
    assert_close_to_scale(F.scaled_dot_product_attention(q, k, v, attn_mask=mask),
                               F.scaled_dot_product_attention(q, k, v, is_causal=True), FP32_TOLERANCE_TO_SCALE)
    attn = clips[1].transformer.resblocks[0].attn
    x = torch.randn(2, 20, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert_close_to_scale(attn(x, x, x, need_weights=False, attn_mask=mask, is_causal=True)[0],
                                   attn(x, x, x, need_weights=False, attn_mask=mask)[0], FP32_TOLERANCE_TO_SCALE)


def test_gradients_reach_the_inputs_in_training_mode(clips):
    """Prompt learning: frozen weights, gradients to the prompt embeddings (and to the images)."""
    embeddings, token_ids = prompt_inputs()
    images = torch.randn(2, 3, 84, 84, generator=torch.Generator().manual_seed(5))
    gradients = {}
    for name, model in zip(("original", "sdpa"), clips):
        model.train()
        try:
            prompts = embeddings.clone().requires_grad_(True)
            pixels = images.clone().requires_grad_(True)
            x = prompts + model.positional_embedding
            x = model.transformer(x, attn_mask=model.attn_mask)
            text = model.ln_final(x)[torch.arange(len(x)), token_ids.argmax(dim=-1)] @ model.text_projection
            image = model.encode_image(pixels)
            (text.square().sum() + image.square().sum()).backward()
            gradients[name] = (prompts.grad, pixels.grad)
        finally:
            model.eval()
    assert gradients["sdpa"][0].abs().sum() > 0
    for got, want in zip(gradients["sdpa"], gradients["original"]):
        assert_close_to_scale(got, want, GRADIENT_TOLERANCE)
    assert all(p.grad is None for p in clips[1].parameters())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast(clips, dtype):
    """Under autocast the projections are low precision while open_clip's mask stays float32."""
    embeddings, token_ids = prompt_inputs()
    images = torch.randn(2, 3, 84, 84, generator=torch.Generator().manual_seed(6))
    results = []
    for model in clips:
        wrapper = frozen(model)
        with torch.autocast("cpu", dtype=dtype), torch.inference_mode():
            results.append((wrapper.encode_prompts(embeddings, token_ids), *frozen_features(wrapper, images, (2,))))
    for got, want in zip(flatten(results[1]), flatten(results[0])):
        torch.testing.assert_close(got.float(), want.float(), rtol=0, atol=2e-2)


def test_calls_outside_the_sdpa_path_run_the_original_code(clips):
    """need_weights=True, key padding masks and cross-attention give the parent's results, weights included."""
    original, sdpa = (model.visual.transformer.resblocks[0].attn for model in clips)
    x, y = torch.randn(2, 2, 10, 128, generator=torch.Generator().manual_seed(7)).unbind(0)
    padding = torch.zeros(2, 10, dtype=torch.bool)
    padding[1, -3:] = True
    with torch.no_grad():
        out, weights = sdpa(x, x, x)  # nn.MultiheadAttention's default: need_weights=True
        assert weights is not None
        for got, want in zip((out, weights), original(x, x, x)):
            assert_close_to_scale(got, want, FP32_TOLERANCE_TO_SCALE)
        for kwargs in ({"key_padding_mask": padding, "need_weights": False}, {"need_weights": False}):
            key = x if "key_padding_mask" in kwargs else y
            assert_close_to_scale(sdpa(x, key, key, **kwargs)[0], original(x, key, key, **kwargs)[0],
                                  FP32_TOLERANCE_TO_SCALE)


@pytest.mark.parametrize("mask_kind", ["bool", "float_3d"])
@pytest.mark.parametrize("batch_first", [True, False])
def test_other_masks_and_layouts(mask_kind, batch_first):
    torch.manual_seed(8)
    original = nn.MultiheadAttention(32, 4, batch_first=batch_first).eval()
    sdpa = copy.deepcopy(original)
    sdpa.__class__ = SDPAMultiheadAttention
    x = torch.randn(2, 12, 32) if batch_first else torch.randn(12, 2, 32)
    if mask_kind == "bool":
        mask = torch.rand(12, 12) > 0.7
        mask.fill_diagonal_(False)  # every query keeps one key
    else:
        mask = torch.randn(2 * 4, 12, 12)
    with torch.no_grad():
        got = sdpa(x, x, x, need_weights=False, attn_mask=mask)
        want = original(x, x, x, need_weights=False, attn_mask=mask)
    assert got[1] is None
    assert_close_to_scale(got[0], want[0], FP32_TOLERANCE_TO_SCALE)


def test_onnx_export_of_the_sdpa_towers(clips):
    """SDPA exports (TorchScript exporter, opset >= 14) and onnxruntime gives the same features."""
    pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    model = clips[1]
    images = torch.randn(2, 3, 84, 84, generator=torch.Generator().manual_seed(9))
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notices
        torch.onnx.export(model.visual, (images,), buffer, dynamo=False, opset_version=14,
                          input_names=["images"], dynamic_axes={"images": {0: "batch"}})
    session = onnxruntime.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    more_images = torch.randn(3, 3, 84, 84, generator=torch.Generator().manual_seed(10))
    got = torch.from_numpy(session.run(None, {"images": more_images.numpy()})[0])
    with torch.no_grad():
        torch.testing.assert_close(got, model.visual(more_images), rtol=1e-5, atol=1e-5)
