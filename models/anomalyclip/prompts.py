"""AnomalyCLIP's object-agnostic prompt learner (SPEC_ANOMALYCLIP §2) and the text tower it feeds (§3).

Two sentences, "X … X object." and "X … X damaged object.", are embedded with CLIP's token
embedding; the `n_ctx` placeholder rows are replaced by the learnable `ctx_pos` / `ctx_neg`.
Inside the text tower, blocks 1 … depth-1 (0-based) first overwrite positions 1 … t_n_ctx with
their own learnable tokens (`compound_prompts_text`), rounded to float16 as the reference does.
Parameter and buffer names and shapes are the reference's, so its checkpoints load as they are.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from prompt_ensemble import CONTEXT_LENGTH, PLACEHOLDER_TOKEN, PROMPT_INIT_STD, tokenize

from .config import PROJECTION_WIDTH

CLASS_NAME = "object"  # the object-agnostic class name
NORMAL_TEMPLATE = "{}"
ABNORMAL_TEMPLATE = "damaged {}"


def sentence(template: str, n_ctx: int) -> str:
    return " ".join([PLACEHOLDER_TOKEN] * n_ctx) + " " + template.format(CLASS_NAME) + "."


class ObjectAgnosticPrompts(nn.Module):
    """The reference's `AnomalyCLIP_PromptLearner` for one class ("object"), one normal and one abnormal state."""

    def __init__(self, token_embedding: nn.Embedding, n_ctx: int, depth: int, t_n_ctx: int):
        super().__init__()
        width = token_embedding.weight.shape[1]
        self.n_ctx, self.depth, self.t_n_ctx = n_ctx, depth, t_n_ctx
        sentences = (sentence(NORMAL_TEMPLATE, n_ctx), sentence(ABNORMAL_TEMPLATE, n_ctx))
        words = len(sentences[1].split()) + 2  # + start, end (the full stop is its own token)
        if words > CONTEXT_LENGTH:
            raise ValueError(f"--n_ctx {n_ctx} makes the prompt {sentences[1]!r} longer than CLIP's "
                             f"{CONTEXT_LENGTH}-token context")
        if t_n_ctx >= CONTEXT_LENGTH:
            raise ValueError(f"--t_n_ctx {t_n_ctx} leaves no room in CLIP's {CONTEXT_LENGTH}-token context")
        # Initialised in the reference's order (ctx_pos, ctx_neg, the deep tokens, one projection then copies).
        self.ctx_pos = nn.Parameter(torch.empty(1, 1, n_ctx, width).normal_(std=PROMPT_INIT_STD))
        self.ctx_neg = nn.Parameter(torch.empty(1, 1, n_ctx, width).normal_(std=PROMPT_INIT_STD))
        self.compound_prompts_text = nn.ParameterList(
            [nn.Parameter(torch.empty(t_n_ctx, width).normal_(std=PROMPT_INIT_STD)) for _ in range(depth - 1)])
        # Trained by nothing and used by nothing (the reference builds them and never calls them); kept so that
        # checkpoints keep the reference's layout in both directions.
        projection = nn.Linear(width, PROJECTION_WIDTH)
        self.compound_prompt_projections = nn.ModuleList([copy.deepcopy(projection) for _ in range(depth - 1)])
        token_ids = tokenize(list(sentences)).to(torch.int32)
        with torch.no_grad():
            embedded = token_embedding(token_ids.long()).float()
        for index, suffix in enumerate(("pos", "neg")):
            rows = embedded[index].reshape(1, 1, CONTEXT_LENGTH, width)
            self.register_buffer(f"token_prefix_{suffix}", rows[:, :, :1].clone())
            self.register_buffer(f"token_suffix_{suffix}", rows[:, :, 1 + n_ctx:].clone())
            self.register_buffer(f"tokenized_prompts_{suffix}", token_ids[index].reshape(1, 1, CONTEXT_LENGTH).clone())
        # Where the sequences can be cut (after the last end-of-text token; the deep tokens must fit): a
        # Python int, so the text tower never reads token ids back from the device.
        self.sequence_length = min(CONTEXT_LENGTH, max(int(token_ids.argmax(-1).max()) + 1, 1 + t_n_ctx))

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt embeddings `[2, 77, D]` (normal, abnormal) and their token ids `[2, 77]`."""
        width = self.ctx_pos.shape[-1]
        normal = torch.cat([self.token_prefix_pos, self.ctx_pos, self.token_suffix_pos], dim=2)
        abnormal = torch.cat([self.token_prefix_neg, self.ctx_neg, self.token_suffix_neg], dim=2)
        prompts = torch.cat([normal.reshape(-1, CONTEXT_LENGTH, width), abnormal.reshape(-1, CONTEXT_LENGTH, width)])
        token_ids = torch.cat([self.tokenized_prompts_pos.reshape(-1, CONTEXT_LENGTH),
                               self.tokenized_prompts_neg.reshape(-1, CONTEXT_LENGTH)])
        return prompts, token_ids


def encode_text(backbone, learner: ObjectAgnosticPrompts) -> torch.Tensor:
    """The normal and abnormal text features `[2, E]`, float32, L2-normalised (SPEC_ANOMALYCLIP §3).

    Block 0 sees the prompt as built; before block i (1 <= i < depth) positions 1 … t_n_ctx are
    replaced by `compound_prompts_text[i - 1]`, rounded to float16 and back (the reference's `.half()`;
    its backward rounds each prompt's gradient to float16). The end-of-text row is projected."""
    prompts, token_ids = learner()
    clip = backbone.clip
    length = learner.sequence_length
    x = prompts[:, :length] + clip.positional_embedding[:length].to(prompts.dtype)
    deep = list(learner.compound_prompts_text)
    end = 1 + learner.t_n_ctx
    for index in range(backbone.num_text_layers):
        if 1 <= index <= len(deep):
            # expanded to both prompts first, then rounded: each prompt's gradient is rounded to float16
            # on its own before the two are summed, as in the reference
            tokens = deep[index - 1][:length - 1].unsqueeze(0).expand(x.shape[0], -1, -1).half().to(x.dtype)
            x = torch.cat([x[:, :1], tokens, x[:, end:]], dim=1)
        x = backbone.text_blocks(x, (index,))
    x = clip.ln_final(x)
    eot = token_ids.argmax(dim=-1)
    x = x[torch.arange(x.shape[0], device=x.device), eot] @ clip.text_projection
    x = x.float()
    return x / x.norm(dim=-1, keepdim=True)
