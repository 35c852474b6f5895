"""The speed reproduce.py's --dry_run estimates from, measured on the jobs of a finished reproduce.py run.

    python benchmarks/reproduce_speed.py runs/reproduce --note "2-core CPU, tiny fixture" \\
        --out benchmarks/results/reproduce_speed.json

Per job kind and method: seconds per image (train.py: its train_stats.json seconds over epochs x
images; test.py: its results.json run seconds over images) and the start-up per job (the job's
wall time minus that; the median over jobs). Prints the figures; writes them as JSON with --out.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils import atomic_write_json  # noqa: E402


def measure(work: Path) -> dict:
    per_image: dict = {"train": {}, "test": {}}
    startup, jobs = [], []
    for record_path in sorted(work.glob("jobs/*/*/job.json")):
        record = json.loads(record_path.read_text())
        if record.get("status") != "done":
            continue
        folder, material = record_path.parent, record["material"]
        if material["kind"] == "train":
            stats = json.loads((folder / "train_stats.json").read_text())
            images, seconds, method = stats["epochs"] * stats["images"], stats["seconds"], material["method"]
        else:
            run = json.loads((folder / "results.json").read_text())["run"]
            images, seconds, method = run["images"], run["seconds"], material["train"]["method"]
        per_image[material["kind"]].setdefault(method, []).append(seconds / images)
        startup.append(record["wall_seconds"] - seconds)
        jobs.append(record["wall_seconds"])
    if not jobs:
        raise SystemExit(f"no finished reproduce.py job under {work}/jobs")
    return {"train": {m: statistics.median(v) for m, v in per_image["train"].items()},
            "test": {m: statistics.median(v) for m, v in per_image["test"].items()},
            "startup_seconds": statistics.median(startup), "jobs_measured": len(jobs),
            "job_wall_seconds_median": statistics.median(jobs)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("work", help="a reproduce.py --work folder with finished jobs")
    parser.add_argument("--note", default="", help="what was measured where (kept as measured_on)")
    parser.add_argument("--out", default=None, help="write the JSON here")
    args = parser.parse_args(argv)
    speed = {"measured_on": args.note, **measure(Path(args.work))}
    print(json.dumps(speed, indent=2))
    if args.out:
        atomic_write_json(speed, args.out)
    return speed


if __name__ == "__main__":
    main()
