"""Load a frozen OpenAI-layout CLIP through open_clip, architecture read from the weights.

Three sources are accepted (the `--clip_weights` flag):

* OpenAI's TorchScript archive (`ViT-L-14-336px.pt`, as the authors used it);
* a state dict in OpenAI key layout saved with `torch.save` (float16 or float32 values),
  optionally wrapped as `{"state_dict": ...}`; `.safetensors` files work too;
* the tag `openai`: `~/.cache/clip/ViT-L-14-336px.pt` if present, else open_clip's
  download of the `openai` weights (needs the internet; fails fast without it).

The model always runs in float32 here, as the reference does (SPEC §1); lower
precision is applied at run time through autocast (`--precision`).
"""
from __future__ import annotations

import os
import socket
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch

from .errors import ClipWeightsError

OPENAI_TAG = "openai"
OPENAI_MODEL_NAME = "ViT-L-14-336"
OPENAI_FILE_NAME = "ViT-L-14-336px.pt"
DEFAULT_CACHE = Path("~/.cache/clip").expanduser()
# Entries of some OpenAI-layout files that are not weights (open_clip rebuilds them).
NON_WEIGHT_KEYS = ("input_resolution", "context_length", "vocab_size", "attn_mask")
CLIP_VOCAB_SIZE = 49408  # CLIP's BPE vocabulary, fixed by its tokenizer
_DOWNLOAD_HOSTS = ("huggingface.co", "openaipublic.azureedge.net")






def _hint() -> str:
    return (
        "Pass --clip_weights PATH with OpenAI's ViT-L-14-336px.pt (TorchScript) or an OpenAI-layout "
        "state dict; see README.md, section 'CLIP weights'."
    )


def _online(timeout: float = 3.0) -> bool:
    """A cheap reachability probe, so an offline machine fails in seconds, not after a minute of retries."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    for host in _DOWNLOAD_HOSTS:
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            return True
        except OSError:
            continue
    return False


def resolve_clip_weights(spec: str) -> Path:
    """Turn a `--clip_weights` value into a local file, downloading only for the `openai` tag."""
    if spec != OPENAI_TAG:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise ClipWeightsError(f"--clip_weights {spec!r}: no such file. {_hint()}")
        return path
    cached = DEFAULT_CACHE / OPENAI_FILE_NAME
    if cached.is_file():
        return cached
    if not _online():
        raise ClipWeightsError(
            f"--clip_weights openai: {cached} does not exist and the download hosts cannot be reached "
            f"(offline?). {_hint()}")
    from open_clip.pretrained import download_pretrained, get_pretrained_cfg

    try:
        target = download_pretrained(get_pretrained_cfg(OPENAI_MODEL_NAME, OPENAI_TAG))
    except Exception as error:  # any download failure is a weights problem for the user
        raise ClipWeightsError(f"--clip_weights openai: download failed ({error}). {_hint()}") from error
    return Path(target)


def _densify(arrays: dict) -> dict:
    """Expand the sparse token-embedding storage the test fixture uses (rows + values)."""
    state = {k: v for k, v in arrays.items() if not k.startswith("token_embedding.")}
    if "token_embedding.rows" in arrays:
        values = arrays["token_embedding.values"]
        weight = np.zeros((CLIP_VOCAB_SIZE, values.shape[1]), dtype=values.dtype)
        weight[arrays["token_embedding.rows"]] = arrays["token_embedding.values"]
        state["token_embedding.weight"] = weight
    elif "token_embedding.weight" in arrays:
        state["token_embedding.weight"] = arrays["token_embedding.weight"]
    return {k: torch.from_numpy(np.asarray(v)) for k, v in state.items()}


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives are zip files with a `code/` folder; `torch.save` files have none."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name for name in archive.namelist())


def read_clip_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read an OpenAI-layout CLIP state dict from a TorchScript archive, torch.save file, safetensors or npz."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".npz":
            with np.load(path) as arrays:
                return _densify({k: arrays[k] for k in arrays.files})
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        if _is_torchscript(path):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
                return torch.jit.load(str(path), map_location="cpu").state_dict()
        loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    except ClipWeightsError:
        raise
    except Exception as error:
        raise ClipWeightsError(
            f"could not read CLIP weights from {path}: not a readable TorchScript archive, torch.save file, "
            f".safetensors or .npz ({type(error).__name__}: {error}). {_hint()}") from error
    if isinstance(loaded, dict) and "state_dict" in loaded:
        loaded = {k.removeprefix("module."): v for k, v in loaded["state_dict"].items()}
    if not isinstance(loaded, dict) or "visual.proj" not in loaded:
        raise ClipWeightsError(
            f"{path} is not a ViT CLIP state dict in OpenAI key layout (no 'visual.proj'). {_hint()}")
    return loaded


def build_clip(state_dict: dict[str, torch.Tensor], quick_gelu: bool = True):
    """Build an open_clip CLIP from an OpenAI-layout state dict, in float32, frozen and in eval mode.

    `quick_gelu`: the MLP activation. CLIP was trained with QuickGELU (ViP²-CLIP keeps it);
    VCP-CLIP's reference runs the same weights with the exact GELU (SPEC_VCP §1)."""
    from open_clip.model import build_model_from_openai_state_dict

    state_dict = {k: v for k, v in state_dict.items() if k not in NON_WEIGHT_KEYS}
    try:
        # Built on the meta device (no memory, no random initialisation: 10-15 s for a ViT-L on 2 cores), then
        # the float32 weights are taken as they are (open_clip's builder alone would round them to float16).
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # its own load into meta tensors: a no-op, said per key
            model = build_model_from_openai_state_dict(dict(state_dict), quick_gelu=quick_gelu, cast_dtype=None)
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()},
                              assign=True)
    except (KeyError, RuntimeError) as error:
        raise ClipWeightsError(f"the CLIP weights do not form an OpenAI ViT CLIP: {error}. {_hint()}") from error
    _materialize_buffers(model)
    model.requires_grad_(False)
    return model.eval()


def _materialize_buffers(model) -> None:
    """The buffers a state dict does not hold (the text tower's causal mask), built on the CPU."""
    for module in model.modules():
        for name, buffer in list(module.named_buffers(recurse=False)):
            if not buffer.is_meta:
                continue
            if name != "attn_mask" or buffer.dim() != 2:
                raise ClipWeightsError(f"the CLIP weights leave {type(module).__name__}.{name} unset. {_hint()}")
            mask = torch.full(buffer.shape, float("-inf")).triu_(1)  # open_clip's causal mask: -inf above
            module.register_buffer(name, mask, persistent=False)
    left = [name for name, tensor in [*model.named_parameters(), *model.named_buffers()] if tensor.is_meta]
    if left:
        raise ClipWeightsError(f"the CLIP weights leave {', '.join(left[:5])} unset. {_hint()}")


def load_clip(spec: str = OPENAI_TAG, quick_gelu: bool = True):
    """Resolve, read and build the frozen CLIP named by `--clip_weights`."""
    return build_clip(read_clip_state_dict(resolve_clip_weights(spec)), quick_gelu=quick_gelu)


# Architectures for runs without real weights: the smoke run and tests ("tiny", the
# fixtures' vision tower; its text width equals the embedding width, as VCP-CLIP needs)
# and benchmarks (the paper's backbones with random values).
TINY_CLIP = {"embed_dim": 64, "vision_cfg": {"layers": 4, "width": 128, "patch_size": 14, "image_size": 84},
             "text_cfg": {"context_length": 77, "vocab_size": CLIP_VOCAB_SIZE, "width": 64, "heads": 1, "layers": 2}}


def random_clip_state_dict(architecture: str = "tiny", seed: int = 0) -> dict[str, torch.Tensor]:
    """A randomly initialised CLIP in OpenAI key layout: `tiny` or an open_clip name such as `ViT-L-14-336`."""
    import open_clip
    from open_clip.model import CLIP

    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        if architecture == "tiny":
            model = CLIP(TINY_CLIP["embed_dim"], TINY_CLIP["vision_cfg"], TINY_CLIP["text_cfg"], quick_gelu=True)
        else:
            model = open_clip.create_model(architecture, pretrained=None)
    finally:
        torch.random.set_rng_state(generator_state)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
