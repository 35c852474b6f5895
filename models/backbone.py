"""The frozen CLIP towers, exposed the way both methods read them (SPEC §1, SPEC_VCP §1).

open_clip builds the network; this wrapper only walks its blocks so that intermediate
residual streams can be tapped, resizes the positional embedding for inputs larger than
CLIP's own, and runs the text tower on prompt *embeddings* (not token ids).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import use_sdpa

# How each method resizes the vision positional embedding to the input's patch grid.
POSITIONAL_INTERPOLATIONS = {
    "bilinear": {"mode": "bilinear", "align_corners": False},  # ViP²-CLIP
    "bicubic-antialias": {"mode": "bicubic", "align_corners": False, "antialias": True},  # VCP-CLIP, open_clip's own
    "bicubic": {"mode": "bicubic", "align_corners": False},  # AdaCLIP (its copy of an older open_clip)
}


class FrozenCLIP(nn.Module):
    """Image and text encoders of a frozen open_clip `CLIP` (OpenAI ViT layout)."""

    def __init__(self, clip: nn.Module, positional_interpolation: str = "bilinear"):
        super().__init__()
        if positional_interpolation not in POSITIONAL_INTERPOLATIONS:
            raise ValueError(f"unknown positional interpolation {positional_interpolation!r}")
        # Every attention through scaled_dot_product_attention: same values, none of the [N, heads, L, L]
        # score tensors that nn.MultiheadAttention's inference path materialises (models/attention.py).
        self.clip = use_sdpa(clip.eval().requires_grad_(False))
        self.positional_interpolation = positional_interpolation
        self._positional_cache: dict = {}

    @property
    def embed_dim(self) -> int:
        return self.clip.text_projection.shape[1]

    @property
    def text_width(self) -> int:
        return self.clip.ln_final.weight.shape[0]

    @property
    def vision_width(self) -> int:
        return self.clip.visual.conv1.out_channels

    @property
    def patch_size(self) -> int:
        return self.clip.visual.conv1.kernel_size[0]

    @property
    def num_vision_layers(self) -> int:
        return len(self.clip.visual.transformer.resblocks)

    @property
    def num_text_layers(self) -> int:
        return len(self.clip.transformer.resblocks)

    def grid_size(self, image_size: int) -> int:
        return image_size // self.patch_size

    def train(self, mode: bool = True):
        super().train(mode)
        self.clip.eval()  # frozen: never in training mode
        return self

    def embed_tokens(self, token_ids: torch.Tensor) -> torch.Tensor:
        return self.clip.token_embedding(token_ids.long())

    def positional_embedding(self, grid: int) -> torch.Tensor:
        """The class row kept as is, the patch rows resized to `grid`×`grid` (cached)."""
        weight = self.clip.visual.positional_embedding
        key = (grid, weight.device, weight.dtype)
        if key not in self._positional_cache:
            side = round((weight.shape[0] - 1) ** 0.5)
            if side == grid:
                resized = weight
            else:
                patch = weight[1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
                patch = F.interpolate(patch, size=(grid, grid),
                                      **POSITIONAL_INTERPOLATIONS[self.positional_interpolation])
                patch = patch.reshape(weight.shape[1], grid * grid).t()
                resized = torch.cat([weight[:1], patch], dim=0)
            self._positional_cache = {key: resized.detach()}
        return self._positional_cache[key]

    @torch.no_grad()
    def residual_streams(self, images: torch.Tensor, layers) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """The final residual stream `[N, 1+L, W]` and the stream after each 1-based block in `layers`."""
        visual = self.clip.visual
        x = visual.conv1(images)
        grid = x.shape[-1]
        x = x.flatten(2).transpose(1, 2)
        class_token = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([class_token, x], dim=1) + self.positional_embedding(grid).to(x.dtype)
        x = visual.ln_pre(x)
        wanted = set(layers)
        taps = {}
        for index, block in enumerate(visual.transformer.resblocks, start=1):
            x = block(x)
            if index in wanted:
                taps[index] = x
        return x, taps

    def project(self, tokens: torch.Tensor, through_ln_post: bool = True) -> torch.Tensor:
        """Vision tokens into the joint embedding space (`ln_post`, then `visual.proj`)."""
        visual = self.clip.visual
        return (visual.ln_post(tokens) if through_ln_post else tokens) @ visual.proj

    def encode_prompts(self, prompt_embeddings: torch.Tensor, token_ids: torch.Tensor,
                       length: int | None = None, normalize: bool = True) -> torch.Tensor:
        """Encode `[M, 77, D]` prompt embeddings; returns `[M, E]` float32 features, L2-normalised unless
        `normalize` is False (WinCLIP averages the raw ones).

        With the causal mask, the end-of-text row depends only on the positions up to it,
        so the sequence is cut after the last end-of-text token: same result, a fraction of the work.
        `length` (that token's position + 1), when the caller knows it, spares a device sync.
        """
        eot = token_ids.argmax(dim=-1)
        if length is None:
            length = int(eot.max()) + 1
        clip = self.clip
        x = prompt_embeddings[:, :length] + clip.positional_embedding[:length].to(prompt_embeddings.dtype)
        x = self.text_blocks(x, range(self.num_text_layers))
        x = clip.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), eot] @ clip.text_projection
        return F.normalize(x.float(), dim=-1) if normalize else x.float()

    def text_blocks(self, x: torch.Tensor, blocks) -> torch.Tensor:
        """Run the text tower's blocks `blocks` (0-based indices) on `[M, length, D]` with the causal mask."""
        length = x.shape[1]
        mask = self.clip.attn_mask[:length, :length].to(x.device)
        resblocks = self.clip.transformer.resblocks
        for index in blocks:
            x = resblocks[index](x, attn_mask=mask)
        return x
