"""Gather test.py's results.json files into Markdown tables laid out like the paper's, beside its numbers.

    python summarize.py results/            # prints the tables, writes results/summary.md
    python summarize.py results/ --out SUMMARY.md

Every `results.json` under RESULTS_DIR (any depth) is one dataset; its `dataset` label
(test.py's `--dataset`, e.g. the registry names test.sh passes) picks the paper row.
Values are the `mean` over classes, as percentages with one decimal; "–" marks a metric
that is missing or undefined (null). For each paper dataset three rows follow one
another: this run, the paper, and the difference (run − paper).

Tables (the paper's Table 1 and Table 2):

* Table 1, industrial: image (AUROC, AP, F1-max) and pixel (AUROC, PRO, F1-max).
* Table 2, medical, image level (HeadCT, BrainMRI, Br35H): image (AUROC, AP, F1-max).
* Table 2, medical, pixel level (ISIC, CVC-ColonDB, CVC-ClinicDB, EndoTect, Kvasir):
  pixel (AUROC, PRO, F1-max).

Reading of SPEC §11 for the medical rows: it gives one triple per dataset. For the
image-level datasets it is image (AUROC, AP, F1-max); for the pixel-level ones it is
pixel (AUROC, PRO, F1-max) — the same pixel triple as the industrial table (the middle
value is the AUPRO, not the pixel AP). Only that triple is shown for them.

Average rows: "this run" averages the datasets present; "paper" averages the paper's
values over the same datasets (so the difference compares like with like; with every
dataset present it is the paper's own average). Datasets the paper does not report
appear in a last table, without paper rows. A PRO computed with `--pro_mode exact` is
marked, since the paper used the 200-threshold protocol.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from utils import atomic_write_bytes

RESULTS_FILE = "results.json"
SUMMARY_FILE = "summary.md"
MISSING = "–"
IMAGE_TRIPLE = ("image_auroc", "image_ap", "image_f1")
PIXEL_TRIPLE = ("pixel_auroc", "pixel_aupro", "pixel_f1")
COLUMN_TITLES = {"image_auroc": "image AUROC", "image_ap": "image AP", "image_f1": "image F1-max",
                 "pixel_auroc": "pixel AUROC", "pixel_aupro": "pixel PRO", "pixel_f1": "pixel F1-max"}


@dataclass(frozen=True)
class PaperRow:
    """One dataset of the paper's tables: its title, which table, and the reported values (percent)."""

    title: str
    table: str  # a key of TABLES
    values: dict  # metric key -> percent
    aliases: tuple[str, ...] = ()  # other labels a results.json may carry (compared without case or punctuation)


def _row(title, table, image=None, pixel=None, aliases=()) -> PaperRow:
    values = {}
    if image:
        values.update(zip(IMAGE_TRIPLE, image))
    if pixel:
        values.update(zip(PIXEL_TRIPLE, pixel))
    return PaperRow(title, table, values, aliases)


# The paper's ViP²-CLIP numbers (SPEC §11): the one place they live. Order = the paper's row order.
PAPER = {
    "mvtec": _row("MVTec AD", "industrial", (91.2, 96.0, 92.0), (90.5, 87.1, 43.1),
                  ("mvtecad", "mvtec_anomaly_detection")),
    "visa": _row("VisA", "industrial", (88.5, 90.4, 84.8), (95.4, 92.2, 33.6), ("visa_20220922",)),
    "mpdd": _row("MPDD", "industrial", (79.7, 84.5, 82.4), (97.2, 92.6, 35.9)),
    "ksdd": _row("KSDD", "industrial", (98.1, 95.8, 93.2), (98.5, 96.2, 53.0), ("kolektorsdd", "ksdd1")),
    "btad": _row("BTAD", "industrial", (95.0, 98.4, 94.7), (95.6, 86.1, 52.7), ("btech_dataset_transformed",)),
    "dagm": _row("DAGM", "industrial", (98.5, 94.3, 92.6), (97.5, 95.2, 61.2), ("dagm2007", "dagm_kaggleupload")),
    "dtd": _row("DTD-Synthetic", "industrial", (95.5, 98.1, 94.3), (99.0, 96.5, 67.5), ("dtdsynthetic",)),
    "headct": _row("HeadCT", "medical_image", image=(94.3, 93.9, 88.1)),
    "brainmri": _row("BrainMRI", "medical_image", image=(95.3, 96.7, 92.3), aliases=("brain_tumor_dataset",)),
    "br35h": _row("Br35H", "medical_image", image=(95.8, 96.0, 90.1)),
    "isic": _row("ISIC", "medical_pixel", pixel=(90.3, 82.3, 73.7), aliases=("isic2016",)),
    "colondb": _row("CVC-ColonDB", "medical_pixel", pixel=(82.5, 74.8, 36.2), aliases=("cvccolondb",)),
    "clinicdb": _row("CVC-ClinicDB", "medical_pixel", pixel=(86.3, 72.1, 44.9), aliases=("cvcclinicdb",)),
    "endo": _row("EndoTect", "medical_pixel", pixel=(84.5, 63.7, 49.2), aliases=("endotect",)),
    "kvasir": _row("Kvasir", "medical_pixel", pixel=(81.9, 47.8, 47.3), aliases=("kvasirseg",)),
}

# table key -> (heading, metric columns)
TABLES = {
    "industrial": ("Table 1: industrial datasets", IMAGE_TRIPLE + PIXEL_TRIPLE),
    "medical_image": ("Table 2: medical datasets, image level", IMAGE_TRIPLE),
    "medical_pixel": ("Table 2: medical datasets, pixel level", PIXEL_TRIPLE),
    "other": ("Datasets not in the paper", IMAGE_TRIPLE + PIXEL_TRIPLE),
}


@dataclass
class Result:
    label: str  # the results.json `dataset` value
    key: str | None  # PAPER key, None when the paper does not report it
    values: dict  # metric key -> percent (None when undefined)
    source: Path
    pro_mode: str
    checkpoint: str


def _normalised(label: str) -> str:
    return re.sub(r"[^a-z0-9]", "", label.lower())


def paper_key(label: str) -> str | None:
    wanted = _normalised(label)
    for key, row in PAPER.items():
        if wanted in {_normalised(key), _normalised(row.title), *map(_normalised, row.aliases)}:
            return key
    return None


def _percent(value) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return 100.0 * value + 0.0  # + 0.0 turns -0.0 into 0.0
    return None


def read_result(path: Path) -> Result:
    data = json.loads(path.read_text())
    mean = data["metrics"]["mean"]
    label = str(data.get("dataset") or path.parent.name)
    values = {key: _percent(mean.get(key)) for key in COLUMN_TITLES}
    return Result(label, paper_key(label), values, path, str(data.get("pro_mode", "official")),
                  str(data.get("checkpoint", "")))


def gather(results_dir: Path, warn=print) -> list[Result]:
    """Every readable results.json under `results_dir`; for a dataset found twice the newest file wins."""
    by_dataset: dict[str, Result] = {}
    for path in sorted(results_dir.rglob(RESULTS_FILE)):
        try:
            result = read_result(path)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            warn(f"skipped {path}: not a test.py results file ({type(error).__name__}: {error})")
            continue
        if result.key is None:
            warn(f"{path}: dataset label {result.label!r} is not one of the paper's datasets "
                 f"({', '.join(PAPER)}): listed without the paper's numbers; pass test.py --dataset NAME to match")
        name = result.key or _normalised(result.label)
        previous = by_dataset.get(name)
        if previous is not None:
            newer, older = sorted((previous, result), key=lambda r: r.source.stat().st_mtime, reverse=True)
            warn(f"{result.label}: two results files, using the newer {newer.source} (not {older.source})")
            result = newer
        by_dataset[name] = result
    return list(by_dataset.values())


def _cell(value: float | None) -> str:
    return MISSING if value is None else f"{value:.1f}"


def _difference(ours: float | None, paper: float | None) -> str:
    if ours is None or paper is None:
        return MISSING
    return f"{round(ours - paper, 1) + 0.0:+.1f}"


def _mean(values: list) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def _table_lines(columns: tuple, rows: list[list[str]]) -> list[str]:
    header = ["dataset", "", *(COLUMN_TITLES[c] for c in columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([":--", ":--"] + ["--:"] * len(columns)) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _title(result: Result) -> str:
    title = PAPER[result.key].title if result.key else result.label
    return title + (" (exact PRO)" if result.pro_mode == "exact" else "")


def render_table(table: str, results: list[Result]) -> list[str]:
    """Markdown lines of one table: per dataset 'this run', 'paper', 'difference', then the averages."""
    heading, columns = TABLES[table]
    rows = []
    if table == "other":
        for result in sorted(results, key=lambda r: r.label):
            rows.append([_title(result), "this run", *(_cell(result.values[c]) for c in columns)])
        if len(results) > 1:
            rows.append(["**average**", "this run",
                         *(_cell(_mean([r.values[c] for r in results])) for c in columns)])
        return [f"### {heading}", "", *_table_lines(columns, rows), ""]
    order = list(PAPER)
    results = sorted(results, key=lambda r: order.index(r.key))
    for result in results:
        paper = PAPER[result.key].values
        rows.append([_title(result), "this run", *(_cell(result.values[c]) for c in columns)])
        rows.append(["", "paper", *(_cell(paper.get(c)) for c in columns)])
        rows.append(["", "difference", *(_difference(result.values[c], paper.get(c)) for c in columns)])
    ours_mean, paper_mean = {}, {}
    for column in columns:
        pairs = [(r.values[column], PAPER[r.key].values.get(column)) for r in results]
        ours_mean[column] = _mean([ours for ours, _ in pairs])
        paper_mean[column] = _mean([paper for ours, paper in pairs if ours is not None])
    rows.append(["**average**", "this run", *(_cell(ours_mean[c]) for c in columns)])
    rows.append(["", "paper", *(_cell(paper_mean[c]) for c in columns)])
    rows.append(["", "difference", *(_difference(ours_mean[c], paper_mean[c]) for c in columns)])
    note = ("Average over the datasets listed; the paper row averages the paper's values over the same datasets "
            f"({len(results)} of {sum(row.table == table for row in PAPER.values())}).")
    return [f"### {heading}", "", *_table_lines(columns, rows), "", note, ""]


def render_summary(results: list[Result], results_dir: Path) -> str:
    lines = ["## ViP²-CLIP results against the paper", "",
             f"{len(results)} result file(s) under `{results_dir}`; values in percent, the mean over classes; "
             f"'{MISSING}': missing or undefined.", ""]
    for table in TABLES:
        members = [r for r in results if (PAPER[r.key].table if r.key else "other") == table]
        if members:
            lines += render_table(table, members)
    lines += ["Sources:", ""]
    for result in sorted(results, key=lambda r: str(r.source)):
        lines.append(f"- {_title(result)}: `{result.source}` (checkpoint `{result.checkpoint}`, "
                     f"PRO {result.pro_mode})")
    return "\n".join(lines) + "\n"


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results_dir", metavar="RESULTS_DIR", help="folder searched (recursively) for results.json")
    parser.add_argument("--out", metavar="FILE.md", default=None, help=f"where to write (default RESULTS_DIR/{SUMMARY_FILE})")
    args = parser.parse_args(argv)
    results_dir = Path(args.results_dir)
    if not results_dir.is_dir():
        raise SystemExit(f"summarize.py: {results_dir} is not a folder")
    results = gather(results_dir, warn=lambda message: print(f"summarize.py: {message}", file=sys.stderr))
    if not results:
        raise SystemExit(f"summarize.py: no {RESULTS_FILE} under {results_dir}; run test.py with --save_path there")
    summary = render_summary(results, results_dir)
    out = Path(args.out) if args.out else results_dir / SUMMARY_FILE
    atomic_write_bytes(out, summary.encode())
    print(summary)
    print(f"written to {out}", file=sys.stderr)
    return summary


if __name__ == "__main__":
    main()
