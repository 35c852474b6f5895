"""VCP-CLIP's text side: the unified text prompt (UTP) and the deep text prompts (DTP) (SPEC_VCP §2).

The frozen text tower of open_clip runs on prompt embeddings: per image and template,
the `<|class|>` slot is filled with that image's category vectors, and learnable prompt
rows are inserted after SOT before the first block and replaced before every later one.
The parameter names are the reference's (they are CLIP parameters there, saved at the
top level of its checkpoints).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from prompt_ensemble import CONTEXT_LENGTH, VCP_TEMPLATES, tokenize

PROMPT_NORM_EPS = 1e-6


class DeepTextPrompts(nn.Module):
    """The DTP parameters; `deep_prompt_embeddings` exists only in deep mode (one row set per later block)."""

    def __init__(self, text_width: int, embed_dim: int, prompt_tokens: int, deep_layers: int, dropout: float = 0.1):
        super().__init__()
        self.prompt_tokens, self.deep_layers = prompt_tokens, deep_layers
        self.prompt_embeddings = nn.Parameter(torch.zeros(1, prompt_tokens, text_width))
        if deep_layers:
            self.deep_prompt_embeddings = nn.Parameter(torch.zeros(deep_layers, prompt_tokens, text_width))
        self.prompt_proj = nn.Linear(text_width, text_width)
        self.prompt_norm = nn.LayerNorm(text_width, eps=PROMPT_NORM_EPS)
        # Trainable in the reference but never used in its forward pass: kept so checkpoints round-trip.
        self.prompt_text_projection = nn.Parameter(torch.zeros(text_width, embed_dim))
        self.dropout = nn.Dropout(dropout)
        nn.init.trunc_normal_(self.prompt_embeddings, std=0.02)
        if deep_layers:
            nn.init.trunc_normal_(self.deep_prompt_embeddings, std=0.02)

    def rows(self, embeddings: torch.Tensor, count: int) -> torch.Tensor:
        """`[1, n, D]` prompt rows projected for `count` sequences, with a fresh dropout mask for each."""
        projected = self.prompt_proj(embeddings).expand(count, -1, -1)
        return self.dropout(projected)


class UnifiedTextEncoder(nn.Module):
    """Normal and abnormal text embeddings per image, `[N, 2, E]`, from its category vectors `[N, r, D]`."""

    def __init__(self, backbone, prompt_len: int, prompts: DeepTextPrompts, templates=VCP_TEMPLATES):
        super().__init__()
        self.backbone = backbone
        self.prompt_len = prompt_len
        self.prompts = prompts
        token_ids = tokenize(list(templates))
        slot = int(token_ids[0].argmax())  # open_clip's tokenizer has no <|class|>: the slot is where EOT lands
        if int(token_ids[1].argmax()) != slot:
            raise ValueError(f"the two VCP-CLIP templates must tokenize to the same length: {list(templates)}")
        if slot + prompt_len + 1 > CONTEXT_LENGTH:
            raise ValueError(f"--prompt_len {prompt_len} does not fit CLIP's {CONTEXT_LENGTH}-token context")
        self.slot = slot
        with torch.no_grad():
            embedded = backbone.embed_tokens(token_ids).float()
        # Rows before the slot, and the rows after it up to EOT (later rows never reach EOT's output).
        self.register_buffer("token_prefix", embedded[:, :slot].clone(), persistent=False)
        self.register_buffer("token_eot", embedded[:, slot:slot + 1].clone(), persistent=False)

    @property
    def eot_position(self) -> int:
        return self.slot + self.prompt_len

    def forward(self, category_vectors: torch.Tensor) -> torch.Tensor:
        n = category_vectors.shape[0]
        clip = self.backbone.clip
        templates = self.token_prefix.shape[0]
        dtype = category_vectors.dtype
        prefix = self.token_prefix.to(dtype).unsqueeze(0).expand(n, -1, -1, -1)
        eot = self.token_eot.to(dtype).unsqueeze(0).expand(n, -1, -1, -1)
        slots = category_vectors.unsqueeze(1).expand(-1, templates, -1, -1)
        x = torch.cat([prefix, slots, eot], dim=2).reshape(n * templates, self.eot_position + 1, -1)
        x = x + clip.positional_embedding[: x.shape[1]].to(dtype)  # image-major: [img0 normal, img0 abnormal, ...]
        x = self._transformer(x)
        x = clip.ln_final(x[:, self.eot_position]) @ clip.text_projection
        x = F.normalize(x.float(), dim=-1)
        return F.normalize(x.reshape(n, templates, -1), dim=-1)  # the mean over one template, normalised again

    def _transformer(self, x: torch.Tensor) -> torch.Tensor:
        prompts = self.prompts
        blocks = self.backbone.num_text_layers
        if not prompts.deep_layers:
            return self.backbone.text_blocks(x, range(blocks))
        count, n = x.shape[0], prompts.prompt_tokens
        x = torch.cat([x[:, :1], prompts.rows(prompts.prompt_embeddings, count).to(x.dtype), x[:, 1:]], dim=1)
        x = self.backbone.text_blocks(x, [0])
        for block in range(1, blocks):
            deep = prompts.rows(prompts.deep_prompt_embeddings[block - 1:block], count).to(x.dtype)
            x = torch.cat([x[:, :1], deep, x[:, 1 + n:]], dim=1)
            x = self.backbone.text_blocks(x, [block])
        x = torch.cat([x[:, :1], x[:, 1 + n:]], dim=1)
        return prompts.prompt_norm(x)
