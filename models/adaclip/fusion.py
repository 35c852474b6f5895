"""AdaCLIP's hybrid semantic fusion (SPEC_ADACLIP §5): the most abnormal patches, clustered, as an image feature.

The reference (its "upgraded" HSF, which differs from the paper's) takes the `5 k` patches the
layer-mean patch probabilities call most abnormal, clusters their layer-concatenated tokens with
scikit-learn's KMeans into `k` clusters, averages each cluster's tokens over its members and the
layers, averages the `k` cluster centres, and L2-normalises. Its KMeans draws k-means++ seeds from
NumPy's global generator (no random_state); here Lloyd's algorithm starts from the `k` most
abnormal patches, deterministically, and runs to convergence in torch (batched, exportable).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import HSF_TOKENS_PER_CLUSTER, KMEANS_EXPORT_ITER, KMEANS_MAX_ITER


def _assign(points: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centre (squared Euclidean distance, as differences: no cancellation), `[N, P]`."""
    return (points.unsqueeze(2) - centres.unsqueeze(1)).square().sum(dim=-1).argmin(dim=-1)


def _one_hot(labels: torch.Tensor, clusters: int, dtype) -> torch.Tensor:
    return (labels.unsqueeze(-1) == torch.arange(clusters, device=labels.device)).to(dtype)


def _tracing() -> bool:
    """Whether the code is being traced for export (a data-dependent stop would be frozen into the graph)."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()


def kmeans_labels(points: torch.Tensor, clusters: int, max_iter: int = KMEANS_MAX_ITER) -> torch.Tensor:
    """Lloyd's k-means per batch element from the first `clusters` points: `[N, P, C]` -> labels `[N, P]`.

    Stops when no label changes (a fixed point: further iterations change nothing). While tracing for
    export the loop cannot stop on data, so it runs `KMEANS_EXPORT_ITER` steps. An emptied cluster keeps its
    centre (scikit-learn would move it to a far point; from distinct starting points this is rare)."""
    points = points.detach().double()
    centres = points[:, :clusters]
    labels = _assign(points, centres)
    tracing = _tracing()
    for _ in range(KMEANS_EXPORT_ITER if tracing else max_iter):
        one_hot = _one_hot(labels, clusters, points.dtype)  # [N, P, K]
        counts = one_hot.sum(dim=1)  # [N, K]
        sums = one_hot.transpose(1, 2) @ points
        centres = torch.where(counts.unsqueeze(-1) > 0, sums / counts.clamp(min=1).unsqueeze(-1), centres)
        new_labels = _assign(points, centres)
        if not tracing and torch.equal(new_labels, labels):
            break
        labels = new_labels
    return labels


def hybrid_semantic_fusion(patches: list[torch.Tensor], logits: list[torch.Tensor], clusters: int) -> torch.Tensor:
    """`patches` per layer `[N, L, E]` (normalised), `logits` per layer `[N, L, 2]` -> `[N, E]`, L2-normalised.

    Each cluster's centre is the mean of its members over all layers; the result is the mean of the
    centres, i.e. each selected patch weighted by 1 / (k · its cluster's size), differentiable in the
    tokens (the labels are not)."""
    probability = torch.stack(logits, dim=1).mean(dim=1).softmax(dim=2)[:, :, 1]  # [N, L]
    count = min(probability.shape[1], clusters * HSF_TOKENS_PER_CLUSTER)
    top = torch.topk(probability, k=count, dim=1).indices  # sorted: most abnormal first
    selected = [p.gather(1, top.unsqueeze(-1).expand(-1, -1, p.shape[-1])) for p in patches]
    if count < clusters:
        raise ValueError(f"--k_clusters {clusters} exceeds the {count} patches of the image (scikit-learn's KMeans "
                         "refuses that too): lower --k_clusters")
    labels = kmeans_labels(torch.cat(selected, dim=2), clusters)
    one_hot = _one_hot(labels, clusters, selected[0].dtype)  # [N, count, K]
    sizes = one_hot.sum(dim=1, keepdim=True)  # [N, 1, K]
    weights = (one_hot / (clusters * sizes.clamp(min=1))).sum(dim=2)  # [N, count]
    layer_mean = torch.stack(selected, dim=0).mean(dim=0)  # [N, count, E]
    fused = (weights.unsqueeze(-1) * layer_mean).sum(dim=1)
    return F.normalize(fused, dim=1)
