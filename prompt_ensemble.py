"""The text prompts of both methods: their templates, and ViP²-CLIP's prompt learner.

ViP-ICA (SPEC §2): two sentences, "X…X <state> X…X", are embedded with CLIP's token
embedding. The placeholder rows are replaced by learnable context (`ctx_pos` / `ctx_neg`)
and by `cls_ctx` plus a meta-net's reading of the global image feature, so every image
gets its own normal and abnormal prompt.

VCP-CLIP's unified text prompt (SPEC_VCP §2): "a photo of a good|damaged <|class|>", the
slot filled per image with learnable category vectors (`models/vcp/text.py`).

APRIL-GAN's fixed ensemble (SPEC_APRILGAN §2): every state phrase of a class in every
template, per state (normal, abnormal); the embeddings are averaged per state.

WinCLIP's compositional prompt ensemble (SPEC_WINCLIP §2), as anomalib writes it: its
state phrases of a class in its templates, per state; the embeddings averaged per state.

This module imports nothing of the project's, so any model module can use it.
"""
from __future__ import annotations

import torch
from torch import nn

CONTEXT_LENGTH = 77  # CLIP's text context, fixed by its tokenizer
NORMAL_STATE_WORD = "good"
ABNORMAL_STATE_WORD = "damaged"
PLACEHOLDER_TOKEN = "X"
META_NET_HIDDEN = 384
PROMPT_INIT_STD = 0.02

# VCP-CLIP: one template per state, the category slot `<|class|>` at its end.
VCP_TEMPLATES = ("a photo of a good", "a photo of a damaged")


# APRIL-GAN (WinCLIP's compositional ensemble): state phrases per class, then templates around them.
APRILGAN_NORMAL_STATES = ("{}", "flawless {}", "perfect {}", "unblemished {}", "{} without flaw", "{} without defect",
                          "{} without damage")
APRILGAN_ABNORMAL_STATES = ("damaged {}", "broken {}", "{} with flaw", "{} with defect", "{} with damage")
APRILGAN_TEMPLATES = (
    "a bad photo of a {}.", "a low resolution photo of the {}.", "a bad photo of the {}.", "a cropped photo of the {}.",
    "a bright photo of a {}.", "a dark photo of the {}.", "a photo of my {}.", "a photo of the cool {}.",
    "a close-up photo of a {}.", "a black and white photo of the {}.", "a bright photo of the {}.",
    "a cropped photo of a {}.", "a jpeg corrupted photo of a {}.", "a blurry photo of the {}.", "a photo of the {}.",
    "a good photo of the {}.", "a photo of one {}.", "a close-up photo of the {}.", "a photo of a {}.",
    "a low resolution photo of a {}.", "a photo of a large {}.", "a blurry photo of a {}.",
    "a jpeg corrupted photo of the {}.", "a good photo of a {}.", "a photo of the small {}.",
    "a photo of the large {}.", "a black and white photo of a {}.", "a dark photo of a {}.",
    "a photo of a cool {}.", "a photo of a small {}.", "there is a {} in the scene.", "there is the {} in the scene.",
    "this is a {} in the scene.", "this is the {} in the scene.", "this is one {} in the scene.")


def aprilgan_sentences(cls_name: str) -> tuple[list[str], list[str]]:
    """The normal and the abnormal sentences of one class, state-major (each state in every template)."""
    return tuple([template.format(state.format(cls_name)) for state in states for template in APRILGAN_TEMPLATES]
                 for states in (APRILGAN_NORMAL_STATES, APRILGAN_ABNORMAL_STATES))


# WinCLIP as anomalib 2.7.0 writes it (SPEC_WINCLIP §2): four abnormal states (no "broken {}"), 21 templates with
# "a jpeg corrupted photo of the {}." twice (kept: it weighs the mean).
WINCLIP_NORMAL_STATES = APRILGAN_NORMAL_STATES
WINCLIP_ANOMALOUS_STATES = ("damaged {}", "{} with flaw", "{} with defect", "{} with damage")
WINCLIP_TEMPLATES = (
    "a cropped photo of the {}.", "a close-up photo of a {}.", "a close-up photo of the {}.", "a bright photo of a {}.",
    "a bright photo of the {}.", "a dark photo of the {}.", "a dark photo of a {}.",
    "a jpeg corrupted photo of the {}.", "a jpeg corrupted photo of the {}.", "a blurry photo of the {}.",
    "a blurry photo of a {}.", "a photo of a {}.", "a photo of the {}.", "a photo of a small {}.",
    "a photo of the small {}.", "a photo of a large {}.", "a photo of the large {}.",
    "a photo of the {} for visual inspection.", "a photo of a {} for visual inspection.",
    "a photo of the {} for anomaly detection.", "a photo of a {} for anomaly detection.")


def winclip_sentences(cls_name: str) -> tuple[list[str], list[str]]:
    """The normal and the anomalous sentences of one class, state-major (each state in every template)."""
    return tuple([template.format(state.format(cls_name)) for state in states for template in WINCLIP_TEMPLATES]
                 for states in (WINCLIP_NORMAL_STATES, WINCLIP_ANOMALOUS_STATES))


def tokenize(texts):
    """CLIP's tokenizer (open_clip's), imported on first use: open_clip takes seconds to import."""
    import open_clip

    return open_clip.tokenize(texts)


def template(state_word: str, n_ctx: int, n_cls: int) -> str:
    return " ".join([PLACEHOLDER_TOKEN] * n_ctx + [state_word] + [PLACEHOLDER_TOKEN] * n_cls)


class MetaNet(nn.Module):
    """Global image feature (+ a learnable bias) → `n_cls` prompt rows, one small MLP each."""

    def __init__(self, embed_dim: int, text_width: int, n_cls: int, hidden: int = META_NET_HIDDEN):
        super().__init__()
        self.bias = nn.Parameter(torch.empty(1, embed_dim).normal_(std=PROMPT_INIT_STD))
        self.fc = nn.ModuleList(
            nn.Sequential(nn.Linear(embed_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, text_width))
            for _ in range(n_cls))

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        x = image_features + self.bias
        return torch.stack([mlp(x) for mlp in self.fc], dim=1)


class PromptLearner(nn.Module):
    """Builds the per-image normal and abnormal prompt embeddings; buffer names follow the released checkpoints."""

    def __init__(self, token_embedding: nn.Embedding, embed_dim: int, n_ctx: int, n_cls: int,
                 fix_quirks: bool = False):
        super().__init__()
        width = token_embedding.weight.shape[1]
        room = CONTEXT_LENGTH - 3  # start, state word, end
        if n_ctx + n_cls > room:
            raise ValueError(f"--n_ctx {n_ctx} plus --n_cls {n_cls} exceeds the {room} prompt tokens CLIP's "
                             f"{CONTEXT_LENGTH}-token context leaves")
        self.n_ctx, self.n_cls = n_ctx, n_cls
        self.sequence_length = 2 + n_ctx + n_cls + 1  # SOS, ctx, state word, cls, EOT: a Python int, so
        # the text encoder can cut its sequences without reading token ids back from the GPU
        self.ctx_pos = nn.Parameter(torch.empty(n_ctx, width).normal_(std=PROMPT_INIT_STD))
        self.ctx_neg = nn.Parameter(torch.empty(n_ctx, width).normal_(std=PROMPT_INIT_STD))
        self.cls_ctx = nn.Parameter(torch.empty(n_cls, width).normal_(std=PROMPT_INIT_STD))
        # Quirk (SPEC §2): the reference embeds the normal prompt from the abnormal sentence
        # (its token ids still come from the normal one; only their end-of-text position is used).
        normal_word = NORMAL_STATE_WORD if fix_quirks else ABNORMAL_STATE_WORD
        self._register_sentence("pos", template(NORMAL_STATE_WORD, n_ctx, n_cls),
                                template(normal_word, n_ctx, n_cls), token_embedding)
        self._register_sentence("neg", template(ABNORMAL_STATE_WORD, n_ctx, n_cls),
                                template(ABNORMAL_STATE_WORD, n_ctx, n_cls), token_embedding)
        self.cls_prompter = MetaNet(embed_dim, width, n_cls)

    def _register_sentence(self, suffix: str, sentence: str, embedded_sentence: str,
                           token_embedding: nn.Embedding) -> None:
        token_ids, embedded_ids = tokenize([sentence, embedded_sentence]).split(1)
        for ids, text in ((token_ids, sentence), (embedded_ids, embedded_sentence)):
            if int(ids.argmax(-1)) + 1 != self.sequence_length:
                raise ValueError(f"the prompt {text!r} does not tokenize to one token per word")
        with torch.no_grad():
            embedding = token_embedding(embedded_ids).float()
        middle = 1 + self.n_ctx
        self.register_buffer(f"token_prefix_{suffix}", embedding[:, :1].clone())
        self.register_buffer(f"token_middle_{suffix}", embedding[:, middle:middle + 1].clone())
        self.register_buffer(f"token_suffix_{suffix}", embedding[:, middle + 1 + self.n_cls:].clone())
        self.register_buffer(f"tokenized_prompts_{suffix}", token_ids.to(torch.int32))

    def _sentence(self, suffix: str, context: torch.Tensor, class_rows: torch.Tensor) -> torch.Tensor:
        n = class_rows.shape[0]
        parts = (getattr(self, f"token_prefix_{suffix}"), context.unsqueeze(0),
                 getattr(self, f"token_middle_{suffix}"))
        head = torch.cat([p.expand(n, -1, -1).to(class_rows.dtype) for p in parts], dim=1)
        tail = getattr(self, f"token_suffix_{suffix}").expand(n, -1, -1).to(class_rows.dtype)
        return torch.cat([head, class_rows, tail], dim=1)

    def forward(self, image_features: torch.Tensor):
        """`image_features [N, E]` → prompts `[2N, 77, D]` (N normal then N abnormal) and token ids `[2N, 77]`."""
        class_rows = self.cls_ctx.unsqueeze(0) + self.cls_prompter(image_features)
        prompts = torch.cat([self._sentence("pos", self.ctx_pos, class_rows),
                             self._sentence("neg", self.ctx_neg, class_rows)], dim=0)
        n = image_features.shape[0]
        token_ids = torch.cat([self.tokenized_prompts_pos.expand(n, -1), self.tokenized_prompts_neg.expand(n, -1)])
        return prompts, token_ids
