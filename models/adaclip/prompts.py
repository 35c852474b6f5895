"""AdaCLIP's learnable prompts and its text side (SPEC_ADACLIP §2-§4): the modules under the authors' key
names, the prompt ensemble, the text tower with prompts replacing token positions.

Every prompt is rounded to float16 before it enters a tower, as the reference does (`.half()`),
so its gradient is rounded to float16 too.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

NORMAL_STATES = ("{}", "flawless {}", "perfect {}", "unblemished {}", "{} without flaw", "{} without defect",
                 "{} without damage")
ABNORMAL_STATES = ("damaged {}", "broken {}", "{} with flaw", "{} with defect", "{} with damage")
TEMPLATES = ("a bad photo of a {}.", "a low resolution photo of the {}.", "a bad photo of the {}.",
             "a cropped photo of the {}.")


def sentences(cls_name: str) -> tuple[list[str], list[str]]:
    """The normal and the abnormal sentences of one class (state-major); '-' in the name becomes a space."""
    name = cls_name.replace("-", " ")
    return tuple([template.format(state.format(name)) for state in states for template in TEMPLATES]
                 for states in (NORMAL_STATES, ABNORMAL_STATES))


class StaticPrompts(nn.Module):
    """`static_prompts.{j}`: `[length, width]` per prompted block, N(0, 0.02)."""

    def __init__(self, length: int, width: int, depth: int):
        super().__init__()
        self.static_prompts = nn.ParameterList(
            [nn.Parameter(torch.empty(length, width).normal_(std=0.02)) for _ in range(depth)])


class Heads(nn.Module):
    """`head.{i}`: one `nn.Linear` per output (the reference's ProjectLayer)."""

    def __init__(self, in_features: int, out_features: int, count: int):
        super().__init__()
        self.head = nn.ModuleList([nn.Linear(in_features, out_features) for _ in range(count)])


class Learnable(nn.Module):
    """Everything AdaCLIP trains, under the names the authors' checkpoints use (after `clip_model.`)."""

    def __init__(self, config, vision_width: int, text_width: int, embed_dim: int, output_layers: int):
        super().__init__()
        depth, length = config.prompting_depth, config.prompting_length
        # creation order follows the reference's (its random initialisation draws in this order)
        if config.text_prompts and config.static:
            self.text_prompter = StaticPrompts(length, text_width, depth)
        if config.visual_prompts and config.static:
            self.visual_prompter = StaticPrompts(length, vision_width, depth)
        self.patch_token_layer = Heads(vision_width, embed_dim, output_layers)
        self.cls_token_layer = Heads(embed_dim, embed_dim, 1)
        if config.dynamic:
            self.dynamic_visual_prompt_generator = Heads(embed_dim, vision_width, length)
            self.dynamic_text_prompt_generator = Heads(embed_dim, text_width, length)


def block_context(static: StaticPrompts | None, dynamic: torch.Tensor | None, block: int,
                  count: int) -> torch.Tensor:
    """The prompts of one block for `count` sequences, `[count, length, width]`, rounded to float16: static +
    dynamic, or either. Expanded before the rounding, as the reference: the gradient is rounded to float16 per
    sequence, then summed."""
    context = None
    if static is not None:
        context = static.static_prompts[block].unsqueeze(0).expand(count, -1, -1)
    if dynamic is not None:
        context = dynamic.expand(count, -1, -1) if context is None else dynamic + context
    return context.half()


class Tokens(NamedTuple):
    """One class's 48 sentences, tokenised once (plain Python numbers besides the ids: nothing data-dependent
    is left for an export to trace)."""

    ids: torch.Tensor  # [48, 77], normal first
    normal_count: int
    eot: tuple[int, ...]  # each sentence's end-of-text position
    cut: int  # the stream is cut after the last end-of-text token


def class_tokens(cls_name: str) -> Tokens:
    from prompt_ensemble import tokenize

    normal, abnormal = sentences(cls_name)
    ids = tokenize(normal + abnormal)
    eot = tuple(int(i) for i in ids.argmax(dim=-1).tolist())
    return Tokens(ids, len(normal), eot, max(eot) + 1)


def encode_sentences(backbone, tokens: Tokens, contexts, groups: int = 1) -> torch.Tensor:
    """`[G, E, 2]` (normal, abnormal): `groups` copies of one class's sentences through the text tower, with
    `contexts[j]` (`[G * M, length, D]`, one per sentence, or None) replacing positions 1..length of the stream
    entering block j (j >= 1); each sentence encoded and normalised, the mean per state normalised again.

    The causal mask lets the stream be cut after the last end-of-text token (the reference runs all 77)."""
    clip = backbone.clip
    device = clip.text_projection.device
    cut, count = tokens.cut, tokens.ids.shape[0]
    ids = tokens.ids[:, :cut].to(device)
    x = backbone.embed_tokens(ids) + clip.positional_embedding[:cut]
    x = x.unsqueeze(0).expand(groups, -1, -1, -1).reshape(-1, cut, x.shape[-1])
    mask = clip.attn_mask[:cut, :cut].to(x.device)
    for index, block in enumerate(clip.transformer.resblocks):
        context = contexts[index] if index < len(contexts) else None
        if index > 0 and context is not None:
            length = context.shape[1]
            inside = max(0, min(length, cut - 1))  # positions past the cut never reach an end-of-text row
            x = torch.cat([x[:, :1], context[:, :inside].to(x.dtype), x[:, 1 + inside:]], dim=1)
        x = block(x, attn_mask=mask)
    x = clip.ln_final(x).reshape(groups, count, cut, -1)
    x = x[:, torch.arange(count, device=device), torch.tensor(tokens.eot, device=device)] @ clip.text_projection
    x = x / x.norm(dim=-1, keepdim=True)
    states = []
    for part in (x[:, :tokens.normal_count], x[:, tokens.normal_count:]):
        mean = part.mean(dim=1)
        states.append(mean / mean.norm(dim=-1, keepdim=True))
    return torch.stack(states, dim=2)


def text_features(backbone, learnable: Learnable, config, cls_names, count: int,
                  dynamic: torch.Tensor | None, cache: dict, tokenized: dict) -> torch.Tensor:
    """`[N, E, 2]`, L2-normalised over E, for `count` images of classes `cls_names` (a list, one per image, or
    one name for all, which keeps the batch size free for export): per image when the text prompts are
    dynamic, else per class (`cache`d when the text tower carries no prompts). `tokenized`: class name ->
    Tokens, filled on first use (a class bound before an export is tokenised before tracing: the tokenizer's
    text handling cannot be traced)."""
    device = backbone.clip.text_projection.device
    static = getattr(learnable, "text_prompter", None) if config.text_prompts else None
    per_image = config.text_prompts and dynamic is not None
    depth = config.prompting_depth if config.text_prompts else 0

    def encode(name: str, images) -> torch.Tensor:
        """`[G, E, 2]` for the images `images` (a slice or index list) of class `name`; G = 1 unless per image."""
        if not config.text_prompts and name in cache and cache[name].device == device:
            return cache[name]
        if name not in tokenized:
            tokenized[name] = class_tokens(name)
        tokens = tokenized[name]
        sentences_count = tokens.ids.shape[0]
        if per_image:
            chosen = dynamic[images]
            groups = chosen.shape[0]
            chosen = chosen.repeat_interleave(sentences_count, dim=0)
        else:
            chosen, groups = None, 1
        contexts = [block_context(static, chosen, j, groups * sentences_count) for j in range(depth)]
        with torch.set_grad_enabled(torch.is_grad_enabled() and config.text_prompts):
            feature = encode_sentences(backbone, tokens, contexts, groups)
        if not config.text_prompts:
            cache[name] = feature
        return feature

    if isinstance(cls_names, str):  # one class for every image
        feature = encode(cls_names, slice(None))
        return F.normalize(feature.expand(count, -1, -1) if feature.shape[0] == 1 else feature, dim=1)
    by_class = {}
    for name in dict.fromkeys(cls_names):
        indices = [i for i, n in enumerate(cls_names) if n == name]
        by_class[name] = (indices, encode(name, indices))
    out = [None] * count
    for indices, feature in by_class.values():
        for row, i in enumerate(indices):
            out[i] = feature[row if feature.shape[0] > 1 else 0]
    return F.normalize(torch.stack(out), dim=1)
