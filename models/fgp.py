"""ViP-FGP: fine-grained perception, the text embeddings attending to patch features (SPEC §3)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import FGP_HEADS, TEMPERATURE


class FineGrainedPerception(nn.Module):
    """Multi-head cross-attention from the two text embeddings to a layer's patches.

    Parameter names follow the released checkpoints (`Zero_try` in the authors' files).
    The attention logits are deliberately not scaled by 1/sqrt(d), as in the reference.
    """

    def __init__(self, embed_dim: int, heads: int = FGP_HEADS):
        super().__init__()
        if embed_dim % heads:
            raise ValueError(f"FGP needs an embedding width divisible by {heads} heads, got {embed_dim}")
        self.heads = heads
        self.q_proj_pre = nn.Conv1d(embed_dim, embed_dim, kernel_size=1)
        self.k_proj_pre_1 = nn.Conv1d(embed_dim, embed_dim, kernel_size=1)
        self.v_proj_pre_1 = nn.Conv1d(embed_dim, embed_dim, kernel_size=1)
        self.proj_post_t = nn.Conv1d(embed_dim, embed_dim, kernel_size=1)
        # Unused by the computation; kept because released checkpoints contain it.
        self.prompt_temp_l1 = nn.Parameter(torch.tensor(math.log(1 / TEMPERATURE)))

    def forward(self, text_features: torch.Tensor, patch_features: torch.Tensor) -> torch.Tensor:
        """`text_features [N, 2, E]`, `patch_features [N, L, E]` → refined, L2-normalised `[N, 2, E]`."""
        n, _, width = text_features.shape
        head_dim = width // self.heads
        q = self.q_proj_pre(text_features.transpose(1, 2)).reshape(n, self.heads, head_dim, -1)
        patches = patch_features.transpose(1, 2)
        k = self.k_proj_pre_1(patches).reshape(n, self.heads, head_dim, -1)
        v = self.v_proj_pre_1(patches).reshape(n, self.heads, head_dim, -1)
        attention = torch.einsum("nhdt,nhdl->nhtl", q, k).softmax(dim=-1)
        out = torch.einsum("nhtl,nhdl->nhdt", attention, v).reshape(n, width, -1)
        return F.normalize(self.proj_post_t(out).transpose(1, 2), dim=-1)
