"""The authors' way of running a model, for side-by-side timing: one image at a time, fp32, nn.MultiheadAttention.

    python benchmarks/reference_loop.py --model vcp --data_path DATA --checkpoint_path CKPT --clip_weights W

The same model weights and images as `test.py`, run as both references run them: each
image through the network on its own (batch 1) with CLIP's original attention module, CLIP
built as their loaders build it (randomly initialised, then the weights copied in),
the Gaussian smoothing with scipy per image, VCP-CLIP's per-class normalisation in NumPy,
and the metrics with scikit-learn on every pixel plus the reference's 200-threshold
AUPRO loop (`tests/metrics_oracle.py`). Prints one JSON line of timings; used by
`benchmarks/cpu_speed.py`, not by the project.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

START = time.perf_counter()
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.ndimage import gaussian_filter  # noqa: E402

from dataset import AnomalyDataset  # noqa: E402
from metrics_oracle import oracle_class_metrics  # noqa: E402
from models import create_model  # noqa: E402
from models.attention import use_multihead_attention  # noqa: E402
from models.base import normalize_images  # noqa: E402


def reference_clip(method: str, clip_weights: str):
    """CLIP as the references load it: built with random values, then the weights loaded into it."""
    from open_clip.model import build_model_from_openai_state_dict

    from models import get_method
    from models.clip_loader import NON_WEIGHT_KEYS, read_clip_state_dict, resolve_clip_weights

    state = read_clip_state_dict(resolve_clip_weights(clip_weights))
    weights = {k: v for k, v in state.items() if k not in NON_WEIGHT_KEYS}
    quick_gelu = get_method(method).model_class().quick_gelu
    clip = build_model_from_openai_state_dict(dict(weights), quick_gelu=quick_gelu, cast_dtype=None).float()
    clip.load_state_dict({k: v.float() for k, v in weights.items()})
    return clip.requires_grad_(False).eval()


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vip2")
    parser.add_argument("--data_path", required=True)
    parser.add_argument("--checkpoint_path", default=None, help="required unless the method is training-free")
    parser.add_argument("--clip_weights", required=True)
    parser.add_argument("--image_size", type=int, default=None, help="a training-free method's input size")
    args = parser.parse_args(argv)
    size = {"image_size": args.image_size} if args.image_size else {}
    model = create_model(args.model, clip=reference_clip(args.model, args.clip_weights),
                         checkpoint=args.checkpoint_path, **size)
    use_multihead_attention(model.backbone.clip)  # the references' attention module
    dataset = AnomalyDataset(args.data_path, model.image_size)
    loaded = time.perf_counter()
    maps, scores, masks = [], [], []
    with torch.no_grad():
        for index in range(len(dataset)):
            item = dataset[index]
            images = normalize_images(item["img"][None])
            raw_map, score = (model.predict(images, [item["cls_name"]]) if model.class_conditioned
                              else model.predict(images))
            maps.append(gaussian_filter(raw_map[0].numpy(), sigma=model.config.sigma) if model.config.sigma
                        else raw_map[0].numpy())
            scores.append(float(score[0]))
            masks.append(item["img_mask"].numpy())
    inferred = time.perf_counter()
    maps, scores = np.stack(maps), np.asarray(scores, dtype=np.float32)
    names = np.array([s.cls_name for s in dataset.samples])
    labels = np.array([s.anomaly for s in dataset.samples])
    masks = np.stack(masks)
    results = {}
    for cls_name in dict.fromkeys(names.tolist()):
        index = names == cls_name
        class_maps, class_scores = maps[index], scores[index]
        if model.set_normalization:  # VCP-CLIP's per-class min-max, as its test.py does it
            class_maps = (class_maps - class_maps.min()) / (class_maps.max() - class_maps.min())
            class_scores = (class_scores - class_scores.min()) / (class_scores.max() - class_scores.min())
        results[cls_name] = oracle_class_metrics(class_maps, masks[index], class_scores, labels[index])
    done = time.perf_counter()
    report = {"images": len(dataset), "model_seconds": inferred - loaded, "metrics_seconds": done - inferred,
              "seconds": done - loaded, "process_seconds": done - START}
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
