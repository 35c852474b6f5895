"""CLIP's attention through `F.scaled_dot_product_attention`, on CLIP's own parameters.

Why: in inference mode, `nn.MultiheadAttention` takes its fused "fast path"
(`torch._native_multi_head_attention`), which on a CPU materialises the full
`[N, heads, L, L]` score tensor for every layer: about 1 GB per layer for a batch of 8
ViT-L/14 images at 518 px (1370 tokens), allocated and freed 24 times per batch.
`scaled_dot_product_attention` picks a tiled kernel (flash attention on a CPU, flash or
memory-efficient attention on a GPU) that never holds that tensor.

How: `use_sdpa(clip)` changes the class of every `block.attn` in both towers to
`SDPAMultiheadAttention`, a subclass of `nn.MultiheadAttention` that only overrides
`forward`. The module object, its parameters and its place in the model stay the same,
so `state_dict()` keys and values are unchanged, checkpoints load as before, and no
weight is copied. Calls the subclass does not cover (attention weights asked for,
key padding masks, cross-attention, unbatched inputs) run the original code.
`use_multihead_attention(clip)` turns it back.

The text tower's causal mask is passed to SDPA as the float mask it is, not turned into
`is_causal=True`: recognising a causal mask means reading its values (a device sync on a
GPU, and a data-dependent branch a tracer cannot follow), and both give the same result
(tests/test_attention.py checks it).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SDPAMultiheadAttention", "use_sdpa", "use_multihead_attention", "attention_modules"]


class SDPAMultiheadAttention(nn.MultiheadAttention):
    """`nn.MultiheadAttention` whose self-attention runs through `F.scaled_dot_product_attention`.

    Not built directly: `use_sdpa` gives an existing `nn.MultiheadAttention` this class, so it
    keeps its parameters (`in_proj_weight`, `in_proj_bias`, `out_proj`) and their names.
    Same call signature and return value as the parent; attention weights are never returned
    by the SDPA path (ask for them with `need_weights=True` and the parent's code runs).
    """

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        if need_weights or key_padding_mask is not None or query.dim() != 3 or not (query is key and key is value):
            return super().forward(query, key, value, key_padding_mask=key_padding_mask, need_weights=need_weights,
                                   attn_mask=attn_mask, average_attn_weights=average_attn_weights,
                                   is_causal=is_causal)
        return self._sdpa_self_attention(query, attn_mask, is_causal), None

    def _sdpa_self_attention(self, x: torch.Tensor, attn_mask: torch.Tensor | None, is_causal: bool) -> torch.Tensor:
        if not self.batch_first:
            x = x.transpose(0, 1)
        batch, length, width = x.shape
        # One projection for q, k and v, as the parent does; [N, L, 3D] -> three [N, heads, L, head_dim] views.
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.view(batch, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if is_causal:
            # nn.MultiheadAttention treats is_causal as a promise that attn_mask is the causal mask.
            attn_mask = None
        else:
            attn_mask = _sdpa_mask(attn_mask, batch, self.num_heads, q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal,
                                             dropout_p=self.dropout if self.training else 0.0)
        out = self.out_proj(out.transpose(1, 2).reshape(batch, length, width))
        return out if self.batch_first else out.transpose(0, 1)


def _sdpa_mask(attn_mask: torch.Tensor | None, batch: int, num_heads: int, dtype: torch.dtype):
    """An `nn.MultiheadAttention` mask in SDPA's conventions.

    Float masks are added to the scores in both APIs; they are cast to the queries' dtype
    (under autocast the projections are bf16/fp16 while open_clip hands over a float32 mask).
    Boolean masks mean "masked out" for nn.MultiheadAttention but "may attend" for SDPA,
    hence the negation. 3-D masks `[N * heads, L, S]` become `[N, heads, L, S]`.
    """
    if attn_mask is None:
        return None
    attn_mask = ~attn_mask if attn_mask.dtype == torch.bool else attn_mask.to(dtype)
    if attn_mask.dim() == 3:
        attn_mask = attn_mask.view(batch, num_heads, *attn_mask.shape[-2:])
    return attn_mask


def _supports_sdpa(attn: nn.MultiheadAttention) -> bool:
    """Configurations the SDPA path reproduces exactly; the others keep the original class."""
    return (attn._qkv_same_embed_dim and attn.in_proj_weight is not None and attn.bias_k is None
            and attn.bias_v is None and not attn.add_zero_attn)


def attention_modules(model: nn.Module) -> list[nn.MultiheadAttention]:
    """The `attn` of every residual block in `model.visual.transformer` and `model.transformer`.

    Works on an open_clip `CLIP`, on its `VisionTransformer` alone, or on anything holding
    one as `.clip` (the repository's `FrozenCLIP`).
    """
    model = getattr(model, "clip", model)
    transformers = [getattr(getattr(model, "visual", None), "transformer", None), getattr(model, "transformer", None)]
    found, seen = [], set()
    for transformer in transformers:
        for block in getattr(transformer, "resblocks", ()):
            attn = getattr(block, "attn", None)
            if isinstance(attn, nn.MultiheadAttention) and id(attn) not in seen:
                seen.add(id(attn))
                found.append(attn)
    return found


def use_sdpa(model: nn.Module) -> nn.Module:
    """Run the attention of both CLIP towers through SDPA, in place; returns `model`.

    Only the class of each `nn.MultiheadAttention` changes: no parameter is created, copied
    or renamed. Raises if the model has no open_clip residual blocks, so a wrong argument
    does not silently leave the slow path in place.
    """
    modules = attention_modules(model)
    if not modules:
        raise ValueError(f"use_sdpa: no open_clip residual attention blocks found in {type(model).__name__} "
                         "(expected .visual.transformer.resblocks and/or .transformer.resblocks)")
    for attn in modules:
        if type(attn) is nn.MultiheadAttention and _supports_sdpa(attn):
            attn.__class__ = SDPAMultiheadAttention
    return model


def use_multihead_attention(model: nn.Module) -> nn.Module:
    """Undo `use_sdpa`: every attention of both towers back on `nn.MultiheadAttention`'s own code."""
    for attn in attention_modules(model):
        if type(attn) is SDPAMultiheadAttention:
            attn.__class__ = nn.MultiheadAttention
    return model
