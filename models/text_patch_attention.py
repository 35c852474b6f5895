"""The text embeddings attending to a layer's patch features: ViP-FGP (SPEC §3) and Post-VCP (SPEC_VCP §4).

Both methods use the same module (the authors' `Zero_try`, hence its parameter names,
kept so released checkpoints load): multi-head cross-attention from the two text
embeddings (normal, abnormal) to the patches, deliberately without the 1/sqrt(d)
scaling, no residual, L2-normalised output that replaces the text for that layer.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .constants import CLIP_TEMPERATURE, TEXT_PATCH_HEADS



class TextPatchAttention(nn.Module):
    """`[N, 2, text_dim]` text and `[N, L, patch_dim]` patches -> `[N, 2, patch_dim]`, L2-normalised."""

    def __init__(self, text_dim: int, patch_dim: int, heads: int = TEXT_PATCH_HEADS):
        super().__init__()
        if patch_dim % heads:
            raise ValueError(f"text-patch attention needs a width divisible by {heads} heads, got {patch_dim}")
        self.heads = heads
        self.q_proj_pre = nn.Conv1d(text_dim, patch_dim, kernel_size=1)
        self.k_proj_pre_1 = nn.Conv1d(patch_dim, patch_dim, kernel_size=1)
        self.v_proj_pre_1 = nn.Conv1d(patch_dim, patch_dim, kernel_size=1)
        self.proj_post_t = nn.Conv1d(patch_dim, patch_dim, kernel_size=1)
        # A learnable temperature: VCP-CLIP's tau_2; present but unused in ViP²-CLIP's checkpoints.
        self.prompt_temp_l1 = nn.Parameter(torch.tensor(math.log(1 / CLIP_TEMPERATURE)))

    def forward(self, text_features: torch.Tensor, patch_features: torch.Tensor) -> torch.Tensor:
        n = text_features.shape[0]
        width = self.proj_post_t.out_channels
        head_dim = width // self.heads
        q = self.q_proj_pre(text_features.transpose(1, 2)).reshape(n, self.heads, head_dim, -1)
        patches = patch_features.transpose(1, 2)
        k = self.k_proj_pre_1(patches).reshape(n, self.heads, head_dim, -1)
        v = self.v_proj_pre_1(patches).reshape(n, self.heads, head_dim, -1)
        attention = torch.einsum("nhdt,nhdl->nhtl", q, k).softmax(dim=-1)
        out = torch.einsum("nhtl,nhdl->nhdt", attention, v).reshape(n, width, -1)
        return F.normalize(self.proj_post_t(out).transpose(1, 2), dim=-1)
