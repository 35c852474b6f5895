"""reproduce.py's figures beside each table (matplotlib, Agg canvas, PNG):

* `qualitative.png`: rows of test images of one dataset; columns: the image, its ground truth, and each
  cell's anomaly map (the first finished seed; from test.py's --save_maps), all on one colour scale
  (the min–max over every map shown, stated in the colour bar);
* `aupro_per_class.png`: per dataset, the per-class pixel AUPRO of every cell (mean over seeds);
* `seed_spread.png`: per cell, the mean of one metric with a ± std error bar and each seed's value.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from metrics import HEADERS
from utils import atomic_write_bytes

from .visualization import COLORMAP

DPI = 100


def _save(figure: Figure, path: Path) -> Path:
    import io

    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _label(entry: dict) -> str:
    return f"{entry['method_title']}: {entry['row']}" if entry["row"] else entry["method_title"]


def _first_maps(entry: dict) -> Path | None:
    for run in entry["runs"]:
        if run["test"]["state"] == "done" and Path(run["test"]["maps.npz"]).is_file():
            return Path(run["test"]["maps.npz"])
    return None


def qualitative(path: Path, entries: list[dict], data_roots: dict, rows: int) -> Path | None:
    shown = [(e, _first_maps(e)) for e in entries]
    shown = [(e, m) for e, m in shown if m is not None]
    if not shown:
        return None
    dataset = shown[0][0]["dataset"]
    shown = [(e, m) for e, m in shown if e["dataset"] == dataset]
    loaded = []
    for entry, maps_path in shown:
        with np.load(maps_path) as arrays:
            loaded.append((entry, {k: arrays[k] for k in ("anomaly_maps", "gt_masks", "labels", "img_paths")}))
    first = loaded[0][1]
    order = [i for i in range(len(first["labels"])) if first["labels"][i]] + \
            [i for i in range(len(first["labels"])) if not first["labels"][i]]
    picks = [str(first["img_paths"][i]) for i in order[:rows]]
    index = [{str(p): i for i, p in enumerate(maps["img_paths"])} for _, maps in loaded]
    picks = [p for p in picks if all(p in ix for ix in index)]
    maps = [[maps["anomaly_maps"][ix[p]] for p in picks] for (_, maps), ix in zip(loaded, index)]
    values = np.concatenate([np.ravel(m) for column in maps for m in column])
    low, high = float(values.min()), float(values.max())
    high = high if high > low else low + 1e-6
    size = first["anomaly_maps"].shape[-1]
    columns = 2 + len(loaded)
    figure = Figure(figsize=(1.8 * columns + 1.6, 1.8 * len(picks) + 0.6))
    grid = figure.subplots(len(picks), columns, squeeze=False)
    root = data_roots.get(dataset)
    for r, img_path in enumerate(picks):
        image = None
        if root:
            try:
                from .visualization import display_image

                image = display_image(Path(root) / img_path, size)
            except Exception:  # an unreadable image leaves its cell blank, the maps still show
                image = None
        panels = [("image", image, {}), ("ground truth", first["gt_masks"][index[0][img_path]], {"cmap": "gray"})]
        panels += [(_label(entry), column[r], {"cmap": COLORMAP, "vmin": low, "vmax": high})
                   for (entry, _), column in zip(loaded, maps)]
        for c, (title, pixels, style) in enumerate(panels):
            axis = grid[r][c]
            axis.set_xticks([]), axis.set_yticks([])
            if pixels is not None:
                axis.imshow(pixels, **style)
            if r == 0:
                axis.set_title(title, fontsize=7)
        grid[r][0].set_ylabel(Path(img_path).name, fontsize=6)
    figure.colorbar(ScalarMappable(Normalize(low, high), COLORMAP), ax=list(grid.ravel()), fraction=0.02,
                    label="anomaly map, one scale")
    figure.suptitle(f"{dataset}: test images, ground truth and each cell's map", fontsize=8)
    return _save(figure, path)


def _per_class(entry: dict, metric: str) -> dict:
    """Class -> the mean over finished seeds of a per-class metric (percent)."""
    sums: dict = {}
    for run in entry["runs"]:
        if run["test"]["state"] != "done":
            continue
        metrics = json.loads(Path(run["test"]["results.json"]).read_text())["metrics"]
        for name, values in metrics.items():
            value = values.get(metric) if name != "mean" else None
            if isinstance(value, (int, float)):
                sums.setdefault(name, []).append(100 * value)
    return {name: sum(v) / len(v) for name, v in sums.items()}


def aupro_per_class(path: Path, entries: list[dict], metric: str = "pixel_aupro") -> Path | None:
    datasets = list(dict.fromkeys(e["dataset"] for e in entries))
    values = {e["id"]: _per_class(e, metric) for e in entries}
    if not any(values.values()):
        return None
    figure = Figure(figsize=(8, 2.8 * len(datasets)))
    axes = figure.subplots(len(datasets), 1, squeeze=False)[:, 0]
    for axis, dataset in zip(axes, datasets):
        members = [e for e in entries if e["dataset"] == dataset and values[e["id"]]]
        classes = sorted({c for e in members for c in values[e["id"]]})
        width = 0.8 / max(len(members), 1)
        for k, entry in enumerate(members):
            axis.bar([i + k * width for i in range(len(classes))],
                     [values[entry["id"]].get(c, np.nan) for c in classes], width, label=_label(entry))
        axis.set_xticks([i + 0.4 - width / 2 for i in range(len(classes))], classes, fontsize=7)
        axis.set_ylabel(f"{HEADERS[metric]} (%)", fontsize=7)
        axis.set_title(dataset, fontsize=8)
        axis.legend(fontsize=6)
    figure.tight_layout()
    return _save(figure, path)


def seed_spread(path: Path, entries: list[dict], metric: str) -> Path | None:
    members = [e for e in entries if e["measured"][metric]["n"]]
    if not members:
        return None
    figure = Figure(figsize=(max(4, 0.9 * len(members) + 2), 3.2))
    axis = figure.subplots()
    for i, entry in enumerate(members):
        measured = entry["measured"][metric]
        seeds = [v for v in measured["values"] if v is not None]
        axis.errorbar([i], [measured["mean"]], yerr=[measured["std"] or 0.0], fmt="o", capsize=4, color="C0")
        axis.scatter([i] * len(seeds), seeds, s=10, color="C1", zorder=3)
        if entry["paper"].get(metric) is not None:
            axis.scatter([i], [entry["paper"][metric]], marker="x", color="C3", zorder=3)
    axis.set_xticks(range(len(members)), [f"{_label(e)}\n{e['dataset']}" for e in members], fontsize=6,
                    rotation=30, ha="right")
    axis.set_ylabel(f"{HEADERS[metric]} (%)", fontsize=7)
    axis.set_title("mean ± std over seeds (dots: seeds; x: paper)", fontsize=8)
    figure.tight_layout()
    return _save(figure, path)


def write_all(out: Path, entries: list[dict], columns, data_roots: dict, rows: int) -> dict:
    metric = "pixel_aupro" if "pixel_aupro" in columns else columns[0]
    written = {"qualitative": qualitative(out / "qualitative.png", entries, data_roots, rows),
               "aupro_per_class": aupro_per_class(out / "aupro_per_class.png", entries),
               "seed_spread": seed_spread(out / "seed_spread.png", entries, metric)}
    return {name: str(p) for name, p in written.items() if p is not None}
