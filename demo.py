"""A local web page to try a model on your images: the heat-map overlay, the image score, a thresholded defect mask.

    python demo.py --demo_fixture                   # the test fixture's tiny model: starts with no downloads
    python demo.py --checkpoint_path checkpoints/mvtec_train/epoch_10.pth --clip_weights ViT-L-14-336px.pt
    python demo.py --model vcp --checkpoint_path train_visa.pth --clip_weights ViT-L-14-336px.pt
    python demo.py --onnx vip2.onnx                 # an export.py file: no PyTorch needed

Then open http://127.0.0.1:7860. Upload images (or give a folder on the server), move the
threshold slider to see which pixels count as defective, and download a zip of the
overlays, the masks and scores.csv. The model can be changed on the page (method,
checkpoint, CLIP weights, settings, or an exported file). VCP-CLIP normalises maps and
scores over the images analysed together (its reference does it per class), so its
scores need at least two images; the raw score is shown beside them.

The page listens on localhost only unless --host says otherwise; --share (a public
Gradio link) is off by default. The functions above `build_app` hold all the model
logic and take and return plain arrays: tests call them without a browser.
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import shlex
import threading
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

from models.registry import DEFAULT_METHOD
from utils import run_cli

ROOT = Path(__file__).resolve().parent
FIXTURES = ROOT / "tests" / "fixtures"  # a method's tiny reference fixture: FIXTURES/<method>_tiny/
FIXTURE_SETTINGS = "--image_size 126 --features_list 1 2 3 4"  # what a fixture's README does not override
DEFAULT_THRESHOLD = 0.5
MASK_COLOUR = np.array([255, 0, 0], dtype=np.float32)
SCORE_COLUMNS = ("name", "image_score", "raw_score", "max_pixel_score", "defect_area_percent")


class DemoError(ValueError):
    """What the page shows as an error message (a file that cannot be used, a missing model...)."""


# ---------------------------------------------------------------- model logic (no UI)

@dataclass(frozen=True)
class ModelSpec:
    """Which model to run: an exported file, or a method's checkpoint on CLIP weights with setting flags."""

    method: str = DEFAULT_METHOD
    checkpoint: str = ""
    clip_weights: str = "openai"
    settings: str = ""  # the method's model flags, as on predict.py's command line
    exported: str = ""  # an export.py .onnx or OpenVINO .xml file, used instead of the above
    device: str = "auto"


@dataclass
class Result:
    name: str
    image: np.ndarray  # [S, S, 3] uint8, the resized input
    anomaly_map: np.ndarray  # [S, S] float32, after the set normalisation where the method has one
    score: float
    raw_score: float  # before the set normalisation (equal to score for other methods)
    overlay_png: bytes = field(repr=False, default=b"")
    decision: str = ""  # with a calibrated model: "pass" or "defect" (calibrate.py's image threshold, raw score)
    pixel_threshold_shown: float | None = None  # the calibrated pixel threshold on this run's map scale


_runners: dict = {}
_runner_lock = threading.Lock()


def settings_from_text(method: str, text: str) -> dict:
    """`--image_size 126 --features_list 1 2 3 4` -> the method's settings, parsed by its own flags."""
    from models import get_method
    from models.settings import add_setting_flags, values_from_args

    config = get_method(method).config
    parser = argparse.ArgumentParser(prog="settings", add_help=False, exit_on_error=False)
    add_setting_flags(parser, config, "test")
    try:
        args, unknown = parser.parse_known_args(shlex.split(text))
    except (argparse.ArgumentError, ValueError) as error:
        raise DemoError(f"settings {text!r}: {error}") from None
    if unknown:
        raise DemoError(f"settings: {' '.join(unknown)} is not a {method} model flag (see predict.py --model "
                        f"{method} --help)")
    return {k: v for k, v in values_from_args(args, config).items() if v is not None}


def load_runner(spec: ModelSpec):
    """The runner for `spec`, built once and kept (a ViT-L takes a while to load)."""
    from deploy import runners
    from models import get_method

    with _runner_lock:
        if spec not in _runners:
            if spec.exported:
                if spec.settings.strip():
                    raise DemoError("an exported file fixes its settings: clear the settings field (or export again)")
                runner = runners.open_exported(spec.exported, device=spec.device)
            elif not spec.checkpoint and get_method(spec.method).trains:
                raise DemoError("no model yet: give a checkpoint path (and CLIP weights) or an exported file")
            else:
                runner = runners.load_torch_runner(spec.method, checkpoint=spec.checkpoint,
                                                   clip_weights=spec.clip_weights, device=spec.device,
                                                   **settings_from_text(spec.method, spec.settings))
            _runners.clear()  # one model in memory at a time
            _runners[spec] = runner
        return _runners[spec]


def image_paths(uploaded, folder: str = "") -> list[tuple[Path, str]]:
    """(file, display name) of the uploaded files, then of a server folder's images (recursive, as predict.py
    finds them; named by their path below the folder)."""
    import predict
    from reporting import visualization

    uploads = [Path(p) for p in uploaded or []]
    items = list(zip(uploads, visualization.unique_names([visualization.safe_name(p.stem) for p in uploads])))
    if folder and folder.strip():
        root = Path(folder.strip()).expanduser()
        if not root.is_dir():
            raise DemoError(f"folder {root}: not a folder on this machine")
        found, _ = predict.find_images([str(root)], root / ".demo-never-written")
        if not found:
            raise DemoError(f"folder {root}: no image files in it")
        taken = {name for _, name in items}
        names = visualization.unique_names([*taken, *predict.output_names(found)])[len(taken):]
        items += list(zip(found, names))
    if not items:
        raise DemoError("no images: upload some, or give a folder on the server")
    return items


def analyse(runner, items: list[tuple[Path, str]], batch_size: int = 8) -> tuple[list[Result], list[str]]:
    """Maps and scores of every readable image (set-normalised together where the method says so), and a
    message per file that could not be read."""
    import predict
    from reporting import visualization
    from deploy.image_io import read_image_array
    from deploy.calibration import check_record, image_decision
    from engine.set_normalization import normalize_over_set

    images, names, problems = [], [], []
    for path, name in items:
        try:
            images.append(read_image_array(path, runner.image_size)[0])
            names.append(name)
        except predict.UNREADABLE as error:
            problems.append(f"skipped {name}: {error}")
    if not images:
        raise DemoError("none of the files could be read as an image: " + "; ".join(problems))
    outputs = [runner(np.stack(images[i:i + batch_size])) for i in range(0, len(images), batch_size)]
    maps = np.concatenate([m for m, _ in outputs])
    raw_scores = np.concatenate([s for _, s in outputs])
    scores = raw_scores
    shown = calibrated_threshold(runner.info, maps)  # before the set normalisation: VCP-CLIP's is mapped
    if runner.info.set_normalization:
        maps, scores = normalize_over_set(maps, raw_scores)
        if len(images) < 2:
            problems.append(f"{runner.info.title} normalises scores over the images analysed together: with one "
                            "image its score is undefined; see the raw score, or analyse several images")
    results = []
    for name, image, anomaly_map, score, raw in zip(names, images, maps, scores, raw_scores):
        display = visualization.to_display(image)
        title = f"{name}: score {score:.3f}"
        png = visualization.render_overlay(display, anomaly_map, title=title)
        decision = image_decision(check_record(runner.info.calibration), float(raw))[0]["decision"]
        results.append(Result(name, display, anomaly_map, float(score), float(raw), png, decision, shown))
    return results, problems


def calibrated_threshold(info, raw_maps=None) -> float | None:
    """calibrate.py's pixel threshold on the scale the page shows the maps in; None when the model carries none
    (or, for a set-normalised method such as VCP-CLIP, before there are maps to map it onto)."""
    from deploy.calibration import check_record, to_normalised_scale

    threshold = (check_record(info.calibration) or {}).get("pixel_threshold")
    if threshold is None or not info.set_normalization:
        return threshold
    return None if raw_maps is None else to_normalised_scale(threshold, float(np.min(raw_maps)),
                                                             float(np.max(raw_maps)))


def initial_threshold(runner) -> float:
    """Where the page's threshold slider starts: the calibrated pixel threshold, else DEFAULT_THRESHOLD."""
    shown = calibrated_threshold(runner.info) if runner is not None else None
    return DEFAULT_THRESHOLD if shown is None else float(shown)


def defect_mask(anomaly_map: np.ndarray, threshold: float) -> np.ndarray:
    """The pixels whose anomaly score is above the threshold (strictly: calibrate.py's rule)."""
    return np.asarray(anomaly_map) > threshold


def mask_overlay(image: np.ndarray, mask: np.ndarray, opacity: float = 0.5) -> np.ndarray:
    """The image with its defect pixels tinted red, `[S, S, 3]` uint8."""
    blended = image.astype(np.float32)
    blended[mask] = (1 - opacity) * blended[mask] + opacity * MASK_COLOUR
    return blended.round().astype(np.uint8)


def score_text(result: Result, set_normalised: bool) -> str:
    decided = f" — {result.decision} (calibrated threshold)" if result.decision else ""
    if not set_normalised:
        return f"{result.score:.4f}{decided}"
    shown = "undefined (one image)" if not np.isfinite(result.score) else f"{result.score:.4f}"
    return f"{shown} (raw {result.raw_score:.4f}, before the min-max over the images analysed together){decided}"


def score_rows(results: list[Result], threshold: float) -> list[list]:
    return [[r.name, round(r.score, 6), round(r.raw_score, 6), round(float(r.anomaly_map.max()), 6),
             round(100 * float(defect_mask(r.anomaly_map, threshold).mean()), 2)] for r in results]


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def results_zip(results: list[Result], threshold: float) -> bytes:
    """overlays/NAME.png, masks/NAME.png (white: defect at the threshold) and scores.csv, as one zip."""
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow([*SCORE_COLUMNS, "threshold"])
    for row in score_rows(results, threshold):
        writer.writerow([*row, threshold])
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("scores.csv", table.getvalue())
        for result in results:
            archive.writestr(f"overlays/{result.name}.png", result.overlay_png)
            mask = defect_mask(result.anomaly_map, threshold).astype(np.uint8) * 255
            archive.writestr(f"masks/{result.name}.png", _png(mask))
    return buffer.getvalue()


# ---------------------------------------------------------------- the page

def build_app(defaults: ModelSpec, work_dir: str | None = None, threshold: float = DEFAULT_THRESHOLD):
    """The Gradio page; every handler is a thin wrapper over the functions above."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no internet here, and no reason to phone home
    import tempfile

    import gradio as gr

    from models import method_names

    downloads = Path(work_dir or tempfile.mkdtemp(prefix="zsas_demo_"))

    def write_zip(results, threshold) -> str:
        folder = Path(tempfile.mkdtemp(dir=downloads))
        path = folder / "anomaly_results.zip"
        path.write_bytes(results_zip(results, threshold))
        return str(path)

    def selected_view(state, index, threshold):
        result = state["results"][index]
        mask = mask_overlay(result.image, defect_mask(result.anomaly_map, threshold))
        zoom = max(1, 256 // mask.shape[0])  # small inputs shown larger, pixel for pixel
        return score_text(result, state["set_normalised"]), mask.repeat(zoom, axis=0).repeat(zoom, axis=1)

    def run(files, folder, method, checkpoint, clip_weights, settings, exported, threshold):
        spec = replace(defaults, method=method, checkpoint=(checkpoint or "").strip(),
                       clip_weights=(clip_weights or "").strip() or "openai", settings=settings or "",
                       exported=(exported or "").strip())
        try:
            runner = load_runner(spec)
            results, problems = analyse(runner, image_paths(files, folder))
        except (ValueError, RuntimeError) as error:  # the project's user errors (bad files, flags, weights)
            raise gr.Error(str(error)) from None
        state = {"results": results, "set_normalised": runner.info.set_normalization}
        score, mask = selected_view(state, 0, threshold)
        gallery = [(np.asarray(Image.open(io.BytesIO(r.overlay_png)).convert("RGB")), r.name) for r in results]
        status = f"**{runner.info.title}** at {runner.image_size} px — {runner.description}"
        if results[0].pixel_threshold_shown is not None:
            status += f"\n\ncalibrated pixel threshold on these maps' scale: {results[0].pixel_threshold_shown:.3f}"
        status += "".join(f"\n\n⚠ {problem}" for problem in problems)
        return (gallery, score, mask, score_rows(results, threshold), write_zip(results, threshold), status, state, 0)

    def on_threshold(state, index, threshold):
        if not state:
            return None, None, None
        _, mask = selected_view(state, index, threshold)
        return mask, score_rows(state["results"], threshold), write_zip(state["results"], threshold)

    def on_select(state, threshold, event):
        score, mask = selected_view(state, event.index, threshold)
        return score, mask, event.index

    on_select.__annotations__["event"] = gr.SelectData  # how Gradio knows to pass the click (a real class, not
    # the string `from __future__ import annotations` would leave)

    with gr.Blocks(title="Zero-shot anomaly segmentation") as app:
        gr.Markdown("## Zero-shot anomaly segmentation\nUpload images, press **Analyse**, move the threshold.")
        state, selected = gr.State(None), gr.State(0)
        with gr.Row():
            with gr.Column(scale=1):
                files = gr.File(label="images", file_count="multiple", file_types=["image"], elem_id="images")
                folder = gr.Textbox(label="or a folder on the server", placeholder="/data/photos")
                with gr.Accordion("model", open=not defaults.checkpoint and not defaults.exported):
                    method = gr.Dropdown(list(method_names()), value=defaults.method, label="method")
                    checkpoint = gr.Textbox(defaults.checkpoint, label="checkpoint (.pth)")
                    clip_weights = gr.Textbox(defaults.clip_weights, label="CLIP weights")
                    settings = gr.Textbox(defaults.settings, label="model flags", placeholder=FIXTURE_SETTINGS)
                    exported = gr.Textbox(defaults.exported, label="or an exported file (.onnx / .xml)")
                threshold = gr.Slider(0, 1, value=threshold, step=0.001, label="defect threshold",
                                      elem_id="threshold")
                button = gr.Button("Analyse", variant="primary", elem_id="analyse")
                status = gr.Markdown(elem_id="status")
            with gr.Column(scale=2):
                gallery = gr.Gallery(label="anomaly maps (click one to select it)", format="png", columns=3,
                                     object_fit="contain", height=380, elem_id="gallery")
                with gr.Row():
                    score = gr.Textbox(label="image score", interactive=False, elem_id="image-score")
                    mask = gr.Image(label="defect mask at the threshold", format="png", interactive=False,
                                    height=260, elem_id="mask")
                table = gr.Dataframe(headers=list(SCORE_COLUMNS), label="scores", interactive=False, elem_id="table")
                download = gr.File(label="download: overlays, masks, scores.csv", interactive=False,
                                   elem_id="download")
        button.click(run, [files, folder, method, checkpoint, clip_weights, settings, exported, threshold],
                     [gallery, score, mask, table, download, status, state, selected], api_name="analyse")
        threshold.release(on_threshold, [state, selected, threshold], [mask, table, download], api_name="threshold")
        gallery.select(on_select, [state, threshold], [score, mask, selected], api_name=False)
    app.downloads_dir = downloads
    return app


# ---------------------------------------------------------------- command line

def fixture_folder(method: str) -> Path | None:
    folder = FIXTURES / f"{method}_tiny"
    checkpoint = fixture_checkpoint(method, folder)
    return folder if (checkpoint is None or checkpoint.is_file()) and (folder / "clip_tiny.npz").is_file() else None


def fixture_checkpoint(method: str, folder: Path) -> Path | None:
    """A fixture's initial checkpoint; None for a training-free method, which has none."""
    from models import get_method

    return folder / "init.pth" if get_method(method).trains else None


def fixture_settings(folder: Path) -> str:
    """The model flags a fixture was made with: its `demo_settings.txt` when it has one."""
    custom = folder / "demo_settings.txt"
    return custom.read_text().strip() if custom.is_file() else FIXTURE_SETTINGS


def build_parser() -> argparse.ArgumentParser:
    from engine.cli import add_checkpoint_flags, add_device_flag
    from models import method_names

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=method_names(), default=DEFAULT_METHOD,
                        help="the method of --checkpoint_path")
    add_checkpoint_flags(parser)
    parser.add_argument("--settings", default="", metavar="FLAGS",
                        help=f"the method's model flags as one string, e.g. '{FIXTURE_SETTINGS}'")
    parser.add_argument("--onnx", "--openvino", dest="exported", default="", metavar="FILE",
                        help="an export.py file (.onnx or OpenVINO .xml) instead of a checkpoint")
    parser.add_argument("--demo_fixture", action="store_true",
                        help="the test fixture's tiny model of --model (random-like weights: the maps mean nothing, "
                             "but the page works with no download)")
    add_device_flag(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=7860, help="port to listen on")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link (needs internet)")
    return parser


def spec_from_args(args) -> ModelSpec:
    if args.demo_fixture:
        folder = fixture_folder(args.model)
        if folder is None:
            from models import method_names

            having = [name for name in method_names() if fixture_folder(name)]
            raise DemoError(f"--demo_fixture: no fixture for --model {args.model} (choose {' or '.join(having)})")
        checkpoint = fixture_checkpoint(args.model, folder)
        return ModelSpec(method=args.model, checkpoint=str(checkpoint) if checkpoint else "",
                         clip_weights=str(folder / "clip_tiny.npz"), settings=fixture_settings(folder),
                         device=args.device)
    return ModelSpec(method=args.model, checkpoint=args.checkpoint_path or "", clip_weights=args.clip_weights,
                     settings=args.settings, exported=args.exported, device=args.device)


def check_extras() -> None:
    """demo.py needs gradio, an optional extra: say so before any model loads, not after."""
    import importlib.util

    if importlib.util.find_spec("gradio") is None:
        raise ValueError("the demo needs gradio, which is not installed: pip install -r requirements-deploy.txt")


def main(argv=None):
    args = build_parser().parse_args(argv)
    check_extras()
    spec = spec_from_args(args)
    runner = None
    if spec.checkpoint or spec.exported:
        print(f"loading {spec.exported or spec.checkpoint} ...", flush=True)
        runner = load_runner(spec)  # fail now, in the terminal, rather than on the first click
    app = build_app(spec, threshold=initial_threshold(runner))  # a calibrated model's pixel threshold
    app.queue().launch(server_name=args.host, server_port=args.port, share=args.share, inbrowser=False,
                       ssr_mode=False, allowed_paths=[str(app.downloads_dir)])


def cli():
    return run_cli(main, "demo.py")


if __name__ == "__main__":
    cli()
