"""Gather test.py's results.json files into Markdown tables laid out like each method's paper, beside its numbers.

    python summarize.py results/                 # prints the tables, writes results/summary.md
    python summarize.py results/ --model vcp     # only VCP-CLIP's results
    python summarize.py results/ --out SUMMARY.md

Every `results.json` under RESULTS_DIR (any depth) is one dataset evaluated by one method
(its `method`, ViP²-CLIP for files that do not say); its `dataset` label (test.py's
`--dataset`, e.g. the registry names test.sh passes) picks the paper row. Values are the
`mean` over classes, as percentages with one decimal; "–" marks a metric that is missing
or undefined (null). For each paper dataset three rows follow one another: this run, the
paper, and the difference (run − paper). The tables are the papers' (`models/*/paper.py`):

* ViP²-CLIP: Table 1 (industrial: image AUROC / AP / F1-max, pixel AUROC / PRO / F1-max)
  and Table 2 (medical, image level; medical, pixel level: AUROC / PRO / F1-max).
* VCP-CLIP: Table 1, pixel AUROC / PRO / AP on the ten datasets, plus image AUROC / AP
  on MVTec AD and VisA.

A mean that left a class out (a metric undefined there) is marked `*` and the classes
are named under the table: it is not the paper's mean over every class. Average rows:
"this run" averages the datasets present; "paper" averages the paper's values over the
same datasets. Datasets a paper does not report appear in a last table. A PRO computed
with `--pro_mode exact` is marked, since the papers used the 200-threshold protocol.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from models import DEFAULT_METHOD, get_method, method_names
from metrics import HEADERS, METRIC_KEYS as PAPER_COLUMNS
from utils import atomic_write_bytes, check_output_file, run_cli

RESULTS_FILE = "results.json"
SUMMARY_FILE = "summary.md"
MISSING = "–"
PARTIAL = "*"
OTHER = "other"


@dataclass
class Result:
    label: str  # the results.json `dataset` value
    method: str
    key: str | None  # paper row key, None when the paper does not report it
    values: dict  # metric key -> percent (None when undefined)
    source: Path
    pro_mode: str
    checkpoint: str
    left_out: dict = field(default_factory=dict)  # metric key -> classes whose value is undefined


def _normalised(label: str) -> str:
    return re.sub(r"[^a-z0-9]", "", label.lower())


def paper_key(label: str, method: str = DEFAULT_METHOD) -> str | None:
    """The paper row a results label stands for (registry name, title or an alias), or None."""
    wanted = _normalised(label)
    for key, row in get_method(method).paper_tables().rows.items():
        if wanted in {_normalised(key), _normalised(row.title), *map(_normalised, row.aliases)}:
            return key
    return None


def _percent(value) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return 100.0 * value + 0.0  # + 0.0 turns -0.0 into 0.0
    return None


def read_result(path: Path) -> Result:
    data = json.loads(path.read_text())
    metrics = data["metrics"]
    mean = metrics["mean"]
    method = str(data.get("method") or DEFAULT_METHOD)
    if method not in method_names():
        raise ValueError(f"unknown method {method!r}")
    label = str(data.get("dataset") or path.parent.name)
    values = {key: _percent(mean.get(key)) for key in PAPER_COLUMNS}
    classes = [name for name in metrics if name != "mean"]
    left_out = {key: [name for name in classes if isinstance(metrics[name], dict) and key in metrics[name]
                      and _percent(metrics[name][key]) is None]
                for key in PAPER_COLUMNS}
    return Result(label, method, paper_key(label, method), values, path, str(data.get("pro_mode", "official")),
                  str(data.get("checkpoint", "")), {k: v for k, v in left_out.items() if v})


def gather(results_dir: Path, warn=print, method: str | None = None) -> list[Result]:
    """Every readable results.json under `results_dir`; for a method and dataset found twice the newest file wins."""
    found: dict[tuple[str, str], Result] = {}
    for path in sorted(results_dir.rglob(RESULTS_FILE)):
        try:
            result = read_result(path)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            warn(f"skipped {path}: not a test.py results file ({type(error).__name__}: {error})")
            continue
        if method and result.method != method:
            continue
        paper = get_method(result.method).paper_tables()
        if result.key is None:
            warn(f"{path}: dataset label {result.label!r} is not one of the {paper.title} paper's datasets "
                 f"({', '.join(paper.rows)}): listed without the paper's numbers; pass test.py --dataset NAME to match")
        name = (result.method, result.key or _normalised(result.label))
        previous = found.get(name)
        if previous is not None:
            newer, older = sorted((previous, result), key=lambda r: r.source.stat().st_mtime, reverse=True)
            warn(f"{result.label} ({paper.title}): two results files, using the newer {newer.source} "
                 f"(not {older.source})")
            result = newer
        found[name] = result
    return list(found.values())


def _cell(value: float | None, partial: bool = False) -> str:
    return MISSING if value is None else f"{value:.1f}" + (PARTIAL if partial else "")


def _difference(ours: float | None, paper: float | None) -> str:
    if ours is None or paper is None:
        return MISSING
    return f"{round(ours - paper, 1) + 0.0:+.1f}"


def _mean(values: list) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def _table_lines(columns: tuple, rows: list[list[str]]) -> list[str]:
    header = ["dataset", "", *(HEADERS[c] for c in columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([":--", ":--"] + ["--:"] * len(columns)) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _title(result: Result, paper) -> str:
    title = paper.rows[result.key].title if result.key else result.label
    return title + (" (exact PRO)" if result.pro_mode == "exact" else "")


def _partial_notes(results: list[Result], columns, paper) -> list[str]:
    notes = []
    for result in results:
        for column in columns:
            if result.left_out.get(column):
                notes.append(f"{PARTIAL} {_title(result, paper)}, {HEADERS[column]}: the mean leaves out "
                             f"{', '.join(result.left_out[column])} (undefined there), so it is not comparable with "
                             "a mean over every class")
    return notes


def render_table(paper, table: str, results: list[Result]) -> list[str]:
    """Markdown lines of one table: per dataset 'this run', 'paper', 'difference', then the averages."""
    if table == OTHER:
        heading, columns = "Datasets not in the paper", tuple(dict.fromkeys(
            c for _, cols in paper.tables.values() for c in cols))
    else:
        heading, columns = paper.tables[table]
    rows = []

    def ours(result):
        return [_cell(result.values[c], bool(result.left_out.get(c))) for c in columns]

    if table == OTHER:
        for result in sorted(results, key=lambda r: r.label):
            rows.append([_title(result, paper), "this run", *ours(result)])
        if len(results) > 1:
            rows.append(["**average**", "this run", *(_cell(_mean([r.values[c] for r in results])) for c in columns)])
        return [f"### {heading}", "", *_table_lines(columns, rows), "", *_partial_notes(results, columns, paper), ""]
    order = list(paper.rows)
    results = sorted(results, key=lambda r: order.index(r.key))
    for result in results:
        reported = paper.rows[result.key].values
        rows.append([_title(result, paper), "this run", *ours(result)])
        rows.append(["", "paper", *(_cell(reported.get(c)) for c in columns)])
        rows.append(["", "difference", *(_difference(result.values[c], reported.get(c)) for c in columns)])
    ours_mean, paper_mean = {}, {}
    for column in columns:
        pairs = [(r.values[column], paper.rows[r.key].values.get(column)) for r in results]
        ours_mean[column] = _mean([value for value, _ in pairs])
        paper_mean[column] = _mean([reported for value, reported in pairs if value is not None])
    rows.append(["**average**", "this run", *(_cell(ours_mean[c]) for c in columns)])
    rows.append(["", "paper", *(_cell(paper_mean[c]) for c in columns)])
    rows.append(["", "difference", *(_difference(ours_mean[c], paper_mean[c]) for c in columns)])
    note = ("Average over the datasets listed; the paper row averages the paper's values over the same datasets "
            f"({len(results)} of {sum(row.table == table for row in paper.rows.values())}).")
    return [f"### {heading}", "", *_table_lines(columns, rows), "", note, *_partial_notes(results, columns, paper), ""]


def render_summary(results: list[Result], results_dir: Path) -> str:
    lines = []
    for method in method_names():
        members = [r for r in results if r.method == method]
        if not members:
            continue
        paper = get_method(method).paper_tables()
        lines += [f"## {paper.title} results against the paper", "",
                  f"{len(members)} result file(s) under `{results_dir}`; values in percent, the mean over classes; "
                  f"'{MISSING}': missing or undefined; '{PARTIAL}': a mean that left a class out.", ""]
        for table in (*paper.tables, OTHER):
            in_table = [r for r in members if (paper.rows[r.key].table if r.key else OTHER) == table]
            if in_table:
                lines += render_table(paper, table, in_table)
        lines += ["Sources:", ""]
        for result in sorted(members, key=lambda r: str(r.source)):
            model = f"checkpoint `{result.checkpoint}`" if result.checkpoint else "no checkpoint (training-free)"
            lines.append(f"- {_title(result, paper)}: `{result.source}` ({model}, PRO {result.pro_mode})")
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results_dir", metavar="RESULTS_DIR", help="folder searched (recursively) for results.json")
    parser.add_argument("--model", choices=method_names(), default=None,
                        help="only this method's results (default: every method found, one section each)")
    parser.add_argument("--out", metavar="FILE.md", default=None, help=f"where to write (default RESULTS_DIR/{SUMMARY_FILE})")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing summary file (refused otherwise)")
    args = parser.parse_args(argv)
    results_dir = Path(args.results_dir)
    if not results_dir.is_dir():
        raise SystemExit(f"summarize.py: {results_dir} is not a folder")
    out = Path(args.out) if args.out else results_dir / SUMMARY_FILE
    check_output_file(out, "--out", overwrite=args.overwrite)
    results = gather(results_dir, warn=lambda message: print(f"summarize.py: {message}", file=sys.stderr),
                     method=args.model)
    if not results:
        which = f" of --model {args.model}" if args.model else ""
        raise SystemExit(f"summarize.py: no {RESULTS_FILE}{which} under {results_dir}; run test.py with --save_path there")
    summary = render_summary(results, results_dir)
    atomic_write_bytes(out, summary.encode())
    print(summary)
    print(f"written to {out}", file=sys.stderr)
    return summary


def cli():
    return run_cli(main, "summarize.py")


if __name__ == "__main__":
    cli()
