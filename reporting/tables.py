"""reproduce.py's tables: per cell the measured mean ± std over seeds, the paper's value and the difference,
as Markdown and LaTeX, with `cells.json` tracing every cell to its runs and a per-class CSV behind each cell.

A cell is one method on one dataset with one row's settings; its runs are (seed, train job,
test job). Values are percentages of the mean over classes in each run's results.json; the
std is the sample standard deviation over the seeds that finished (none for one seed). A
cell with fewer finished seeds than asked is marked `‡`; one with none shows `–`.
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from models import get_method
from metrics import HEADERS
from utils import atomic_write_bytes, atomic_write_json

MISSING = "–"
FEWER = "‡"


def _percent(value):
    return 100.0 * value if isinstance(value, (int, float)) and math.isfinite(value) else None


def mean_std(values: list) -> tuple:
    present = [v for v in values if v is not None]
    if not present:
        return None, None
    mean = sum(present) / len(present)
    if len(present) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in present) / (len(present) - 1))


def run_seed(run: dict):
    """The training seed a run's checkpoint was trained with; a training-free method's run has none."""
    return run["train"].material["training"].get("seed") if run["train"] else None


def read_runs(cell: dict) -> list[dict]:
    """The runs of a cell whose test finished, with their results.json."""
    found = []
    for run in cell["runs"]:
        test = run["test"]
        if test.finished():
            found.append({**run, "results": json.loads((test.folder / "results.json").read_text())})
    return found


def measure(cell: dict, columns) -> dict:
    runs = read_runs(cell)
    measured = {}
    for column in columns:
        values = [_percent(r["results"]["metrics"]["mean"].get(column)) for r in runs]
        mean, std = mean_std(values)
        measured[column] = {"mean": mean, "std": std, "n": sum(v is not None for v in values), "values": values}
    return {"runs": runs, "measured": measured}


def format_value(mean, std, fewer: bool = False) -> str:
    if mean is None:
        return MISSING
    text = f"{mean:.1f}" + (f" ± {std:.1f}" if std is not None else "")
    return text + (f" {FEWER}" if fewer else "")


def _difference(mean, paper) -> str:
    return MISSING if mean is None or paper is None else f"{round(mean - paper, 1) + 0.0:+.1f}"


def per_class_csv(runs: list[dict]) -> bytes:
    """One line per seed and class (and the mean), every metric results.json holds, as fractions."""
    keys = []
    for run in runs:
        for values in run["results"]["metrics"].values():
            keys += [k for k in values if k not in keys]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["seed", "class", *keys, "results"])
    for run in runs:
        seed = run_seed(run)
        for name, values in run["results"]["metrics"].items():
            writer.writerow([seed, name, *("" if values.get(k) is None else values[k] for k in keys),
                             str(run["test"].folder / "results.json")])
    return buffer.getvalue().encode()


def _job_files(job) -> dict:
    record = job.record()
    files = {"folder": str(job.folder), "key": job.key, "state": job.state, "log": str(job.folder / "log.txt"),
             "console": str(job.folder / "console.txt"), "command": record.get("command")}
    files.update({name: str(job.folder / name) for name in job.outputs})
    if job.kind == "train":
        files["checkpoint"] = str(job.folder / job.outputs[0])
    return files


def build_cells(cells: list[dict], columns, seeds_asked: int, out: Path) -> list[dict]:
    entries = []
    for index, cell in enumerate(cells):
        spec = cell["spec"]
        found = measure(cell, columns)
        cell_id = f"{index:03d}-{spec.method}-{spec.dataset}"
        csv_path = out / "per_class" / f"{cell_id}.csv"
        if found["runs"]:
            atomic_write_bytes(csv_path, per_class_csv(found["runs"]))
        measured = found["measured"]
        entries.append({
            "id": cell_id, "row": spec.row, "method": spec.method, "method_title": get_method(spec.method).title,
            "dataset": spec.dataset, "training": spec.training, "settings": {k: list(v) if isinstance(v, tuple) else v
                                                                            for k, v in spec.settings.items()},
            "seeds_asked": seeds_asked, "seeds_done": len(found["runs"]), "measured": measured,
            "paper": dict(spec.paper),
            "delta": {c: (None if measured[c]["mean"] is None or spec.paper.get(c) is None
                          else measured[c]["mean"] - spec.paper[c]) for c in columns},
            "per_class_csv": str(csv_path) if found["runs"] else None,
            "runs": [{"seed": run_seed(run), "train": _job_files(run["train"]) if run["train"] else None,
                      "test": _job_files(run["test"])} for run in cell["runs"]],
        })
    return entries


def averages(entries: list[dict], columns) -> list[dict]:
    """Per method whose default-settings cells span several datasets (a comparison table): the mean over those
    datasets of the measured means, and of the paper's values over the datasets where both exist."""
    rows = []
    for method in dict.fromkeys(e.get("method") for e in entries):
        members = [e for e in entries if e.get("method") == method and not e.get("settings")]
        if len({e.get("dataset") for e in members}) < 2:
            continue
        measured, paper = {}, {}
        for c in columns:
            values = [e["measured"][c]["mean"] for e in members if e["measured"][c]["mean"] is not None]
            measured[c] = sum(values) / len(values) if values else None
            pairs = [e["paper"][c] for e in members if e["measured"][c]["mean"] is not None and c in e["paper"]]
            both = [e["measured"][c]["mean"] for e in members if e["measured"][c]["mean"] is not None
                    and c in e["paper"]]
            paper[c] = sum(pairs) / len(pairs) if pairs else None
            measured[c + ":paired"] = sum(both) / len(both) if both else None
        rows.append({"method": method, "method_title": members[0]["method_title"], "datasets": len(members),
                     "measured": {c: measured[c] for c in columns}, "paper": paper,
                     "delta": {c: None if measured[c + ":paired"] is None or paper[c] is None
                               else measured[c + ":paired"] - paper[c] for c in columns}})
    return rows


def markdown(table: str, heading: str, columns, entries: list[dict]) -> str:
    lines = [f"# {table}", "", heading, "",
             "Values in percent: the mean over classes, mean ± sample std over the seeds that finished; "
             f"'{FEWER}': fewer seeds than asked; '{MISSING}': no result or no paper number. Every cell's runs "
             "(results.json, checkpoint, log, command line) are in cells.json.", "",
             "| row | method | | seeds | " + " | ".join(HEADERS[c] for c in columns) + " |",
             "|:--|:--|:--|--:|" + "--:|" * len(columns)]
    for e in entries:
        fewer = e["seeds_done"] < e["seeds_asked"]
        m = e["measured"]
        lines.append(f"| {e['row']} | {e['method_title']} | this run | {e['seeds_done']}/{e['seeds_asked']} | "
                     + " | ".join(format_value(m[c]["mean"], m[c]["std"], fewer) for c in columns) + " |")
        if e["paper"]:
            lines.append("| | | paper | | " + " | ".join(
                MISSING if e["paper"].get(c) is None else f"{e['paper'][c]:.1f}" for c in columns) + " |")
            lines.append("| | | difference | | " + " | ".join(
                _difference(m[c]["mean"], e["paper"].get(c)) for c in columns) + " |")
    for row in averages(entries, columns):
        lines.append(f"| **average** ({row['datasets']} datasets) | {row['method_title']} | this run | | "
                     + " | ".join(format_value(row["measured"][c], None) for c in columns) + " |")
        lines.append("| | | paper (same datasets) | | " + " | ".join(
            MISSING if row["paper"][c] is None else f"{row['paper'][c]:.1f}" for c in columns) + " |")
        lines.append("| | | difference | | " + " | ".join(
            MISSING if row["delta"][c] is None else f"{round(row['delta'][c], 1) + 0.0:+.1f}" for c in columns) + " |")
    return "\n".join(lines) + "\n"


def _tex(text: str) -> str:
    text = str(text).replace("\\", "\\textbackslash{}")
    for char in "&%$#_{}":
        text = text.replace(char, "\\" + char)
    return text.replace("²", "$^2$").replace("±", "$\\pm$").replace("‡", "$^\\ddagger$").replace("–", "--")


def latex(table: str, heading: str, columns, entries: list[dict]) -> str:
    lines = ["% " + _tex(table) + ": " + _tex(heading).replace("\n", " "),
             "\\begin{tabular}{ll" + "r" * len(columns) + "}", "\\hline",
             "row & method & " + " & ".join(_tex(HEADERS[c]) for c in columns) + " \\\\", "\\hline"]
    for e in entries:
        fewer = e["seeds_done"] < e["seeds_asked"]
        cells = []
        for c in columns:
            value = _tex(format_value(e["measured"][c]["mean"], e["measured"][c]["std"], fewer))
            paper = e["paper"].get(c)
            if paper is not None:
                value += f" {{\\scriptsize ({paper:.1f}, {_tex(_difference(e['measured'][c]['mean'], paper))})}}"
            cells.append(value)
        lines.append(f"{_tex(e['row'])} & {_tex(e['method_title'])} & " + " & ".join(cells) + " \\\\")
    lines += ["\\hline", "\\end{tabular}",
              "% cells: measured mean $\\pm$ std over seeds {\\scriptsize (paper, difference)}"]
    return "\n".join(lines) + "\n"


def write_table(out: Path, table: str, heading: str, columns, cells: list[dict], seeds_asked: int, *,
                figures: bool = True, data_roots: dict | None = None, figure_images: int = 4) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    entries = build_cells(cells, columns, seeds_asked, out)
    atomic_write_bytes(out / "table.md", markdown(table, heading, columns, entries).encode())
    atomic_write_bytes(out / "table.tex", latex(table, heading, columns, entries).encode())
    written = {}
    if figures:
        from . import table_figures

        written = table_figures.write_all(out, entries, columns, data_roots or {}, figure_images)
    atomic_write_json({"table": table, "heading": heading, "columns": list(columns), "figures": written,
                       "cells": entries, "averages": averages(entries, columns)}, out / "cells.json")
    return out / "table.md"
