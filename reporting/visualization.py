"""Figures of anomaly maps, shared by predict.py (overlays) and test.py --visualize (panels).

Everything renders with matplotlib's object-oriented API on an Agg canvas (no pyplot,
no global backend switch, so importing this module changes nothing for its caller),
into PNG bytes that are written with `utils.atomic_write_bytes`: an interrupted run
never leaves half a figure.

Colour scale (one rule per use, stated in each figure's colour bar):

* `predict.py` overlays: fixed [0, 1] by default. The maps are anomaly probabilities,
  so a colour means the same value in every image and a clean image stays cool;
  `--color_scale image` stretches each map to its own min–max instead (useful when all
  values are close, e.g. with untrained weights).
* `test.py --visualize` panels: the class's range (min–max over all maps of the class).
  Panels of one class are comparable with each other, normal against anomalous, and
  the contrast is not lost when a class's scores sit in a narrow band.

Maps are drawn at the input size S (the resized image the model saw), never rescaled
to the original image: they are exactly what the metrics are computed on.
"""
from __future__ import annotations

import io
import math
import re
import sys
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from utils import atomic_write_bytes

COLORMAP = "jet"  # the convention of the anomaly-detection literature (and of the reference's figures)
OVERLAY_ALPHA = 0.5  # weight of the heat map over the image
DPI = 100
FONT_SIZE = 8
MIN_CELL_PX = 224  # small inputs are drawn at least this large, so titles and ticks fit
PANEL_CELL_PX = 384  # test panels draw large inputs (518 px) at most this large: ~120 panels per run stay small
OVERVIEW_CELL_PX = 256
COLORBAR_PX = 64  # gap, bar and tick labels to the right of the images
TITLE_PX = 22  # one line of text above an image
GAP_PX = 6
BOTTOM_PX = 8  # room for the colour bar's lowest tick label
OVERVIEW_COLUMNS = 4
CONTOUR_COLOR = "white"
FIXED_RANGE = (0.0, 1.0)
PNG_COMPRESSION = 3  # zlib level: 3x faster than PIL's default 6 for ~15 % larger files


# ---------------------------------------------------------------- array helpers

def _is_tensor(value) -> bool:
    """Without importing torch: `predict.py --onnx` draws overlays on a machine that may have none."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def to_numpy(value) -> np.ndarray:
    """Tensors on any device (or arrays) as numpy, for plotting."""
    if _is_tensor(value):
        return value.detach().float().cpu().numpy() if value.is_floating_point() else value.detach().cpu().numpy()
    return np.asarray(value)


def to_display(image) -> np.ndarray:
    """The model's uint8 `[3, S, S]` input (tensor or array) as an `[S, S, 3]` image."""
    return np.ascontiguousarray(to_numpy(image).transpose(1, 2, 0))


def display_image(path: Path, size: int) -> np.ndarray:
    """The image as the model saw it (the dataset's own preprocessing), as `[S, S, 3]` uint8."""
    from dataset import read_image

    image, _ = read_image(Path(path), size)
    return to_display(image)


def value_range(maps, scale: str = "fixed") -> tuple[float, float]:
    """Colour-scale limits: `fixed` is [0, 1]; `data` is the min–max of `maps` (widened if constant)."""
    if scale == "fixed":
        return FIXED_RANGE
    values = to_numpy(maps)
    low, high = float(np.nanmin(values)), float(np.nanmax(values))
    if not math.isfinite(low) or not math.isfinite(high):
        return FIXED_RANGE
    if high - low < 1e-6:  # a constant map: centre it in a small band instead of dividing by zero
        low, high = low - 5e-4, high + 5e-4
    return low, high


def blend(image: np.ndarray, anomaly_map: np.ndarray, limits: tuple[float, float], *,
          alpha: float = OVERLAY_ALPHA, cmap: str = COLORMAP) -> np.ndarray:
    """The heat map laid over the image: `(1 - alpha) * image + alpha * colormap(map)`, `[S, S, 3]` in [0, 1]."""
    mappable = ScalarMappable(Normalize(*limits, clip=True), cmap)
    heat = mappable.to_rgba(anomaly_map.astype(np.float64))[..., :3]
    return (1 - alpha) * image.astype(np.float64) / 255.0 + alpha * heat


def safe_name(text: str) -> str:
    """A file-name-safe version of a class name or path part (letters, digits, '-', '_', '.')."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")
    return cleaned or "_"


def name_from_path(relative_path: str | Path) -> str:
    """`bottle/test/good/000.png` -> `bottle_test_good_000`: unique across folders, readable."""
    parts = Path(relative_path).with_suffix("").parts
    return "_".join(safe_name(part) for part in parts if part not in ("", ".", ".."))


def unique_names(names: list[str]) -> list[str]:
    """Append `_2`, `_3`, … to repeated names, in order, so no figure overwrites another."""
    used: set[str] = set()
    result = []
    for name in names:
        candidate, count = name, 1
        while candidate in used:
            count += 1
            candidate = f"{name}_{count}"
        used.add(candidate)
        result.append(candidate)
    return result


# ---------------------------------------------------------------- figure plumbing

class _PixelLayout:
    """A figure laid out in pixels: each image axis gets a whole number of pixels, so nothing is cropped."""

    def __init__(self, width: int, height: int):
        self.width, self.height = int(width), int(height)
        self.figure = Figure(figsize=(self.width / DPI, self.height / DPI), dpi=DPI)
        FigureCanvasAgg(self.figure)

    def axes(self, left: float, top: float, width: float, height: float):
        """An axis whose box starts `left` px from the left and `top` px from the top."""
        bottom = self.height - top - height
        return self.figure.add_axes((left / self.width, bottom / self.height, width / self.width,
                                     height / self.height))

    def png(self) -> bytes:
        buffer = io.BytesIO()
        self.figure.savefig(buffer, format="png", dpi=DPI, pil_kwargs={"compress_level": PNG_COMPRESSION})
        return buffer.getvalue()


def _cell_px(size: int, largest: int | None = None) -> int:
    """Display size of one S×S image: at least MIN_CELL_PX, at most `largest` (None: native)."""
    cell = max(int(size), MIN_CELL_PX)
    return min(cell, largest) if largest else cell


def _show(axis, pixels, title: str | None = None, **kwargs) -> None:
    axis.imshow(pixels, interpolation="antialiased", **kwargs)
    axis.set_axis_off()
    if title:
        axis.set_title(title, fontsize=FONT_SIZE, pad=3)


def _contour(axis, mask: np.ndarray) -> None:
    """The ground-truth outline; an all-zero mask (normal image) has none to draw."""
    if mask is not None and mask.any():
        axis.contour(mask.astype(np.float32), levels=[0.5], colors=CONTOUR_COLOR, linewidths=1.0)


def _colorbar(layout: _PixelLayout, left: float, top: float, height: float, limits, cmap: str, label: str):
    axis = layout.axes(left + GAP_PX, top, 10, height)
    bar = layout.figure.colorbar(ScalarMappable(Normalize(*limits), cmap), cax=axis)
    bar.ax.tick_params(labelsize=FONT_SIZE - 1, length=2, pad=1)
    bar.set_label(label, fontsize=FONT_SIZE - 1, labelpad=2)
    return bar


# ---------------------------------------------------------------- figures

def overlay_canvas_size(size: int) -> tuple[int, int]:
    """(width, height) in pixels of `render_overlay`'s PNG for input size `size`."""
    cell = _cell_px(size)
    return cell + COLORBAR_PX, TITLE_PX + cell + BOTTOM_PX


def render_overlay(image: np.ndarray, anomaly_map: np.ndarray, *, limits: tuple[float, float] = FIXED_RANGE,
                   title: str | None = None, alpha: float = OVERLAY_ALPHA, cmap: str = COLORMAP) -> bytes:
    """PNG bytes: the heat map over the image, with a colour bar of the scale used and an optional title.

    `image` is `[S, S, 3]` uint8 (the resized input), `anomaly_map` `[S, S]`; the PNG is
    `overlay_canvas_size(S)` pixels.
    """
    anomaly_map = to_numpy(anomaly_map)
    cell = _cell_px(anomaly_map.shape[0])
    layout = _PixelLayout(*overlay_canvas_size(anomaly_map.shape[0]))
    _show(layout.axes(0, TITLE_PX, cell, cell), blend(image, anomaly_map, limits, alpha=alpha, cmap=cmap))
    if title:
        layout.figure.text(cell / 2 / layout.width, 1 - (TITLE_PX / 2) / layout.height, title,
                           ha="center", va="center", fontsize=FONT_SIZE, wrap=True)
    _colorbar(layout, cell, TITLE_PX, cell, limits, cmap, "anomaly score")
    return layout.png()


def render_test_panel(image: np.ndarray, anomaly_map, gt_mask, *, title: str,
                      limits: tuple[float, float] = FIXED_RANGE, cmap: str = COLORMAP) -> bytes:
    """PNG bytes: image | anomaly map over the image | map with the ground-truth contour, one colour bar."""
    anomaly_map, gt_mask = to_numpy(anomaly_map), to_numpy(gt_mask)
    cell = _cell_px(anomaly_map.shape[0], PANEL_CELL_PX)
    top = 2 * TITLE_PX  # the panel title, then the column titles
    width = 3 * cell + 2 * GAP_PX + COLORBAR_PX
    layout = _PixelLayout(width, top + cell + BOTTOM_PX)
    layout.figure.text(0.5, 1 - (TITLE_PX / 2) / layout.height, title, ha="center", va="center",
                       fontsize=FONT_SIZE + 1, wrap=True)
    _show(layout.axes(0, top, cell, cell), image, "image")
    _show(layout.axes(cell + GAP_PX, top, cell, cell), blend(image, anomaly_map, limits, cmap=cmap),
          "anomaly map")
    contour_axis = layout.axes(2 * (cell + GAP_PX), top, cell, cell)
    _show(contour_axis, anomaly_map, "ground truth over map" if gt_mask.any() else "ground truth: none",
          cmap=cmap, vmin=limits[0], vmax=limits[1])
    _contour(contour_axis, gt_mask)
    _colorbar(layout, 3 * cell + 2 * GAP_PX, top, cell, limits, cmap, "anomaly score")
    return layout.png()


def render_overview(images: list[np.ndarray], maps: list, masks: list, titles: list[str], *, title: str,
                    limits: tuple[float, float] = FIXED_RANGE, cmap: str = COLORMAP,
                    columns: int = OVERVIEW_COLUMNS) -> bytes:
    """PNG bytes: a grid of map-over-image overlays with ground-truth contours, one colour bar for all."""
    if not images:
        raise ValueError("render_overview needs at least one image")
    cell = _cell_px(to_numpy(maps[0]).shape[0], OVERVIEW_CELL_PX)
    columns = min(columns, len(images))
    rows = math.ceil(len(images) / columns)
    grid_width = columns * cell + (columns - 1) * GAP_PX
    step = TITLE_PX + cell + GAP_PX
    layout = _PixelLayout(grid_width + COLORBAR_PX, TITLE_PX + rows * step - GAP_PX + BOTTOM_PX)
    layout.figure.text(0.5, 1 - (TITLE_PX / 2) / layout.height, title, ha="center", va="center",
                       fontsize=FONT_SIZE + 1, wrap=True)
    for index, (image, anomaly_map, mask, cell_title) in enumerate(zip(images, maps, masks, titles)):
        row, column = divmod(index, columns)
        axis = layout.axes(column * (cell + GAP_PX), TITLE_PX + row * step + TITLE_PX, cell, cell)
        _show(axis, blend(image, to_numpy(anomaly_map), limits, cmap=cmap), cell_title)
        _contour(axis, to_numpy(mask))
    _colorbar(layout, grid_width, 2 * TITLE_PX, cell, limits, cmap, "anomaly score")
    return layout.png()


def write_png(path: str | Path, png: bytes) -> Path:
    atomic_write_bytes(path, png)
    return Path(path)


# ---------------------------------------------------------------- test.py --visualize

def select_samples(labels: list[int], max_count: int) -> list[int]:
    """Deterministic pick of up to `max_count` positions: half anomalous, half normal (anomalous get the odd one),
    each kind the first in dataset order, topped up from the other kind when one runs short."""
    if max_count <= 0:
        return []
    anomalous = [i for i, label in enumerate(labels) if label]
    normal = [i for i, label in enumerate(labels) if not label]
    take_anomalous = min(len(anomalous), math.ceil(max_count / 2))
    take_normal = min(len(normal), max_count - take_anomalous)
    take_anomalous = min(len(anomalous), max_count - take_normal)
    return anomalous[:take_anomalous] + normal[:take_normal]


def _below_class_folder(img_path: str, cls_name: str) -> str:
    """`bottle/test/good/000.png` -> `test/good/000.png` inside the `bottle` folder; other layouts unchanged."""
    parts = Path(img_path).parts
    return str(Path(*parts[1:])) if len(parts) > 1 and parts[0] == cls_name else img_path


def save_test_panels(outputs: dict, dataset, out_dir: str | Path, max_per_class: int = 8,
                     cmap: str = COLORMAP) -> int:
    """Per class: `out_dir/{cls}/{image path below the class folder}.png` panels and `out_dir/{cls}_overview.png`; returns files written.

    `outputs` holds test.py's tensors (any device): `anomaly_maps` `[N, S, S]` (smoothed),
    `image_scores` `[N]`, `gt_masks` `[N, S, S]`, `labels` `[N]`, in `dataset.samples`
    order. Up to `max_per_class` images per class are drawn (see `select_samples`),
    anomalous first; the colour scale is the class's min–max (see the module docstring).
    """
    out_dir = Path(out_dir)
    maps = to_numpy(outputs["anomaly_maps"])
    scores = to_numpy(outputs["image_scores"])
    masks = to_numpy(outputs["gt_masks"])
    labels = to_numpy(outputs["labels"]).astype(int)
    written = 0
    class_folders = unique_names([safe_name(c) for c in dataset.class_names])
    for cls_name, folder in zip(dataset.class_names, class_folders):
        members = [i for i, sample in enumerate(dataset.samples) if sample.cls_name == cls_name]
        chosen = [members[i] for i in select_samples([labels[i] for i in members], max_per_class)]
        if not chosen:
            continue
        limits = value_range(maps[members], "data")
        names = unique_names([name_from_path(_below_class_folder(dataset.samples[i].img_path, cls_name))
                              for i in chosen])
        images, titles = [], []
        for index, name in zip(chosen, names):
            sample = dataset.samples[index]
            image = display_image(dataset.root / sample.img_path, dataset.image_size)
            kind = "anomalous" if labels[index] else "normal"
            images.append(image)
            titles.append(f"{kind} · {scores[index]:.3f}")
            panel = render_test_panel(image, maps[index], masks[index], limits=limits, cmap=cmap,
                                      title=f"{cls_name} · {kind} · image score {scores[index]:.3f} · "
                                            f"{sample.img_path}")
            write_png(out_dir / folder / f"{name}.png", panel)
            written += 1
        overview = render_overview(images, [maps[i] for i in chosen], [masks[i] for i in chosen], titles,
                                   title=f"{cls_name} (colours: class range)", limits=limits, cmap=cmap)
        write_png(out_dir / f"{folder}_overview.png", overview)
        written += 1
    return written
