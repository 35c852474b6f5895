"""Every table of both papers from one command: plan the jobs, run train.py and test.py, write the table.

    python reproduce.py --list                                    # the tables every method's paper.py declares
    python reproduce.py --table vip2:industrial --data_root data --clip_weights ViT-L-14-336px.pt --dry_run
    python reproduce.py --table vcp:layers --seeds 111 222 333 --data_root data --clip_weights ViT-L-14-336px.pt
    python reproduce.py --table grid --methods vip2 vcp --datasets mvtec visa --grid topk=10,50 --seeds 1 2
    python reproduce.py --table grid --grid_file grid.json        # {"methods", "datasets", "settings", "seeds"}

A comparison table (`METHOD:TABLE` of a paper's `tables`) runs every registered method on
that table's datasets under that paper's protocol (which training set's checkpoint tests
which dataset); each method brings its own flags for a training set (its paper's). An
ablation table (`METHOD:KEY` of a paper's `ablations`) runs its rows' settings. A grid runs
methods x datasets x settings x seeds. Each job (one train.py or test.py command line) is
keyed by what determines its result and lives in WORK/jobs/; a finished job is never run
again, a killed run resumes where it stopped, and results of different settings never mix.
The table (Markdown, LaTeX, cells.json, per-class CSVs, figures) goes to WORK/tables/NAME/.
docs/REPRODUCE.md tells more.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import itertools
import json
import shlex
import signal
import sys
import time
from pathlib import Path

import train as train_script
from engine.jobs import Job, Runner, clip_fingerprint, file_sha256, job_folder, source_hash
from models import get_method, method_names
from metrics import METRIC_KEYS
from models.paper import Ablation, training_datasets
from models.settings import flag_name, values_from_args
from reporting import tables as tables_out

GRID = "grid"


def _load_script(name: str):
    """A script of this folder by its path: `import test` may find the standard library's package instead."""
    spec = importlib.util.spec_from_file_location(f"zsas_{name}_script", Path(__file__).resolve().parent / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


test_script = _load_script("test")
DEFAULT_SPEED = Path(__file__).resolve().parent / "benchmarks" / "results" / "reproduce_speed.json"


# ----------------------------------------------------------------------------------------------- the tables
def table_names() -> list[str]:
    names = []
    for method in method_names():
        paper = get_method(method).paper_tables()
        if paper is None:
            continue
        names += [f"{method}:{key}" for key in paper.tables] + [f"{method}:all"]
        names += [f"{method}:{key}" for key in paper.ablations]
    return names + [GRID]


@dataclasses.dataclass
class CellSpec:
    """One cell group of a table before planning: a method on a dataset with some settings."""

    row: str  # the table row's label
    method: str
    dataset: str
    training: str  # the training set (registry names joined by models.paper.COMBINED: trained together)
    train_flags: tuple  # the training set's flags from the method's paper
    settings: dict  # setting name -> value (beyond the defaults)
    paper: dict  # metric -> the paper's percent


def _paper_flags(method: str, training: str) -> tuple:
    paper = get_method(method).paper_tables()
    return tuple(dict(paper.training).get(training, ())) if paper else ()


def comparison_specs(owner: str, key: str, methods, datasets) -> tuple[str, tuple, list[CellSpec]]:
    paper = get_method(owner).paper_tables()
    if key == "all":
        heading = f"{paper.title}: every dataset of its tables"
        columns = tuple(dict.fromkeys(c for _, cols in paper.tables.values() for c in cols))
        names = list(paper.rows)
    else:
        heading, columns = paper.tables[key]
        names = [name for name, row in paper.rows.items() if row.table == key]
    names = [n for n in names if not datasets or n in datasets]
    specs = []
    for name in names:
        # the paper's protocol; a dataset it gives no checkpoint for is tested by its first training set's
        training = paper.evaluation.get(name) or (paper.training[0][0] if paper.training else name)
        for method in methods:
            own = get_method(method).paper_tables()
            reported = own.rows[name].values if own and name in own.rows else {}
            specs.append(CellSpec(paper.rows[name].title, method, name, training, _paper_flags(method, training), {},
                                  {c: reported[c] for c in columns if c in reported}))
    return f"{heading} (protocol of {paper.title}; every registered method)", columns, specs


def ablation_specs(owner: str, ablation: Ablation, datasets) -> tuple[str, tuple, list[CellSpec]]:
    targets = datasets or [ablation.dataset]
    specs = [CellSpec(row.label, owner, dataset, ablation.training, _paper_flags(owner, ablation.training),
                      dict(row.settings), dict(row.values) if dataset == ablation.dataset else {})
             for dataset in targets for row in ablation.rows]
    return ablation.heading + (f". {ablation.note}" if ablation.note else ""), ablation.columns, specs


def _typed(method: str, name: str, text: str):
    """A grid value from text, typed as the setting's dataclass field ('6 12' for a list, true/false)."""
    info = get_method(method)
    fields = {f.name: f for cls in (info.config, info.training) for f in dataclasses.fields(cls)}
    if name not in fields:
        raise SystemExit(f"reproduce.py: {info.title} has no setting {name!r} (known: {', '.join(sorted(fields))})")
    meta, default = fields[name].metadata, fields[name].default
    if isinstance(default, bool):
        return text.strip().lower() in ("1", "true", "yes", "on")
    convert = meta.get("type") or (lambda v: v)
    if meta.get("nargs"):
        return tuple(convert(v) for v in text.split())
    return convert(text.strip())


def grid_specs(args) -> tuple[str, tuple, list[CellSpec]]:
    spec = json.loads(Path(args.grid_file).read_text()) if args.grid_file else {}
    methods = args.methods or spec.get("methods") or list(method_names())
    datasets = args.datasets or spec.get("datasets")
    if not datasets:
        raise SystemExit("reproduce.py: a grid needs --datasets (or 'datasets' in --grid_file)")
    if args.seeds is None and spec.get("seeds"):
        args.seeds = [int(s) for s in spec["seeds"]]
    train_on = args.train_on or spec.get("train_on")
    raw_rows = list(spec.get("settings") or [{}])
    if args.grid:
        axes = [(name, values.split(",")) for name, _, values in (g.partition("=") for g in args.grid)]
        raw_rows = [dict(zip([n for n, _ in axes], combo)) for combo in itertools.product(*(v for _, v in axes))]
    specs = []
    for method in methods:
        paper = get_method(method).paper_tables()
        for dataset in datasets:
            training = train_on or (paper.evaluation.get(dataset) if paper else None) or dataset
            reported = paper.rows[dataset].values if paper and dataset in paper.rows else {}
            for raw in raw_rows:
                settings = {k: (_typed(method, k, v) if isinstance(v, str) else
                                tuple(v) if isinstance(v, list) else v) for k, v in raw.items()}
                label = ", ".join(f"{k}={_show(v)}" for k, v in settings.items()) or "defaults"
                title = paper.rows[dataset].title if paper and dataset in paper.rows else dataset
                specs.append(CellSpec(f"{title}: {label}", method, dataset, training,
                                      _paper_flags(method, training), settings,
                                      reported if not settings else {}))
    columns = tuple(spec.get("columns") or args.columns or ("image_auroc", "image_ap", "pixel_auroc", "pixel_aupro",
                                                             "pixel_ap", "pixel_f1"))
    return "Grid: methods x datasets x settings x seeds", columns, specs


def resolve_table(args) -> tuple[str, tuple, list[CellSpec]]:
    if args.table == GRID:
        return grid_specs(args)
    owner, _, key = args.table.partition(":")
    if owner not in method_names() or not key:
        raise SystemExit(f"reproduce.py: unknown --table {args.table!r}; choose one of: {', '.join(table_names())}")
    paper = get_method(owner).paper_tables()
    if key in paper.ablations:
        return ablation_specs(owner, paper.ablations[key], args.datasets)
    if key in paper.tables or key == "all":
        return comparison_specs(owner, key, args.methods or list(method_names()), args.datasets)
    raise SystemExit(f"reproduce.py: unknown --table {args.table!r}; choose one of: {', '.join(table_names())}")


def _show(value) -> str:
    return " ".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)


# ----------------------------------------------------------------------------------------------- planning
def setting_flags(method: str, settings: dict) -> tuple[list, list]:
    """train.py and test.py flags for settings (test-only settings go to test.py, the rest to train.py)."""
    info = get_method(method)
    fields = {f.name: f for cls in (info.config, info.training) for f in dataclasses.fields(cls)}
    train_flags, test_flags = [], []
    for name, value in settings.items():
        if name not in fields:
            raise SystemExit(f"reproduce.py: {info.title} has no setting {name!r}")
        field = fields[name]
        target = test_flags if field.metadata.get("kind") == "test" else train_flags
        if isinstance(field.default, bool):
            if value != field.default:
                target.append(flag_name(field))
        elif isinstance(value, (tuple, list)):
            target += [flag_name(field), *map(str, value)]
        elif value is not None:
            target += [flag_name(field), str(value)]
    return train_flags, test_flags


def data_path(name: str, args) -> Path | None:
    """As scripts_common.sh: --data NAME=PATH, else DATA_ROOT/NAME (meta.json or meta_NAME.json), else DATA_ROOT."""
    given = dict(d.partition("=")[::2] for d in args.data or [])
    if name in given:
        return Path(given[name])
    root = Path(args.data_root)
    if (root / name / "meta.json").is_file() or (root / name / f"meta_{name}.json").is_file():
        return root / name
    if (root / f"meta_{name}.json").is_file():
        return root
    return None


def meta_of(root: Path, name: str) -> Path | None:
    for candidate in (root / f"meta_{name}.json", root / "meta.json"):
        if candidate.is_file():
            return candidate
    found = sorted(root.glob("meta_*.json"))
    return found[0] if len(found) == 1 else None


def test_images(meta: Path | None) -> int | None:
    if meta is None:
        return None
    return sum(len(items) for items in json.loads(meta.read_text()).get("test", {}).values())


class Planner:
    def __init__(self, args, work: Path):
        self.args, self.work = args, work
        self.code = args.code_version or source_hash()
        try:
            self.clip = clip_fingerprint(args.clip_weights, work / "clip_fingerprints.json")
        except FileNotFoundError as error:
            raise SystemExit(f"reproduce.py: {error}") from None
        self.jobs: dict[str, Job] = {}
        self.missing: set[str] = set()
        self._data: dict = {}

    def data(self, name: str):
        if name not in self._data:
            root = data_path(name, self.args)
            root = root.resolve() if root else None  # jobs run from the repository's folder
            meta = meta_of(root, name) if root else None
            self._data[name] = (root, meta, file_sha256(meta) if meta else None, test_images(meta))
            if meta is None:
                self.missing.add(name)
        return self._data[name]

    def _common(self) -> list:
        args = self.args
        return ["--clip_weights", str(args.clip_weights), "--device", args.device, "--precision", args.precision]

    def training_data(self, training_set: str):
        """`data` for a training set: one dataset's, or for several (trained together) the roots, the meta
        hashes and the image count of all (None where one is missing)."""
        parts = [self.data(name) for name in training_datasets(training_set)]
        if len(parts) == 1:
            root, _, meta_hash, images = parts[0]
            return [root], meta_hash, images
        counts = [images for *_, images in parts]
        return ([root for root, *_ in parts], [meta_hash for _, _, meta_hash, _ in parts],
                None if None in counts else sum(counts))

    def train_job(self, spec: CellSpec, seed) -> Job:
        roots, meta_hash, images = self.training_data(spec.training)
        row_flags = setting_flags(spec.method, spec.settings)[0]
        seed_flags = ["--seed", str(seed)] if seed is not None else []
        tail = [*spec.train_flags, *shlex.split(self.args.train_args), *row_flags, *seed_flags]
        parsed = train_script.build_parser(spec.method).parse_args(
            ["--model", spec.method, "--train_data_path", *(str(root or ".") for root in roots), *tail])
        info = get_method(spec.method)
        material = {"kind": "train", "method": spec.method, "dataset": spec.training, "data": meta_hash,
                    "settings": values_from_args(parsed, info.config),
                    "training": values_from_args(parsed, info.training), "precision": self.args.precision,
                    "clip": self.clip, "code": self.code}
        if self.args.nproc > 1:  # DDP draws dropout and augmentation per process: another result
            material["processes"] = self.args.nproc
        folder = job_folder(self.work, "train", spec.method, spec.training, material)
        epochs = material["training"]["epoch"]
        argv = ["train.py", "--model", spec.method, "--dataset", *training_datasets(spec.training),
                "--train_data_path", *map(str, roots),
                "--save_path", str(folder), *self._common(), *tail]
        return self._add(Job("train", spec.method, spec.training, material, argv, folder,
                             (f"epoch_{epochs}.pth", "train_stats.json"), images, epochs))

    def test_job(self, spec: CellSpec, trained: Job | None) -> Job:
        """The evaluation of `spec` with `trained`'s checkpoint, or with none for a training-free method."""
        root, _, meta_hash, images = self.data(spec.dataset)
        tail = [*shlex.split(self.args.test_args), *setting_flags(spec.method, spec.settings)[1]]
        parsed = test_script.build_parser(spec.method).parse_args(["--model", spec.method, *tail])
        info = get_method(spec.method)
        test_settings = values_from_args(parsed, info.config)
        for field in dataclasses.fields(info.config):  # test-only settings: not given = the default, not recorded
            if field.metadata.get("kind") == "test" and test_settings.get(field.name) is None:
                test_settings[field.name] = field.default
        material = {"kind": "test", "train": trained.material if trained else None, "dataset": spec.dataset,
                    "data": meta_hash,
                    "test_settings": test_settings, "metrics": parsed.metrics,
                    "pro_mode": self.args.pro_mode, "precision": self.args.precision, "clip": self.clip,
                    "code": self.code}
        folder = job_folder(self.work, "test", spec.method, spec.dataset, material)
        checkpoint = ["--checkpoint_path", str(trained.folder / trained.outputs[0])] if trained else []
        argv = ["test.py", "--model", spec.method, "--dataset", spec.dataset, "--data_path", str(root),
                *checkpoint, "--save_path", str(folder),
                "--save_maps", str(folder / "maps.npz"), "--pro_mode", self.args.pro_mode, *self._common(), *tail]
        return self._add(Job("test", spec.method, spec.dataset, material, argv, folder,
                             ("results.json", "maps.npz"), images, 1, depends=trained))

    def _add(self, job: Job) -> Job:
        job = self.jobs.setdefault(job.key, job)
        if job.state == "todo" and job.finished():
            job.state = "done"
        return job

    def plan(self, specs: list[CellSpec], seeds: list) -> list[dict]:
        """One cell per spec, each with its (seed, train job, test job) runs; jobs shared where keys agree."""
        cells = []
        for spec in specs:
            runs = []
            trains = get_method(spec.method).trains
            for seed in seeds if trains else [None]:  # a training-free method: one deterministic run
                trained = self.train_job(spec, seed) if trains else None
                runs.append({"seed": seed, "train": trained, "test": self.test_job(spec, trained)})
            cells.append({"spec": spec, "runs": runs})
        for job in self.jobs.values():
            datasets = {name for named in (job.dataset, job.depends.dataset if job.depends else job.dataset)
                        for name in training_datasets(named)}
            if job.state == "todo" and datasets & self.missing:
                job.state = "no data"
        return cells


# ----------------------------------------------------------------------------------------------- time estimate
def load_speed(args) -> tuple[dict, str]:
    if args.seconds_per_image is not None:
        speed = {"train": {}, "test": {}, "default": args.seconds_per_image, "startup_seconds": 0.0}
        return speed, "--seconds_per_image"
    path = Path(args.speed)
    if not path.is_file():
        return {}, f"no speed file {path}"
    speed = json.loads(path.read_text())
    return speed, f"{path} ({speed.get('measured_on', 'no note')})"


def seconds_of(job: Job, speed: dict) -> float | None:
    if not speed:
        return None
    default = speed.get("default")
    per_image = speed.get(job.kind, {}).get(job.method, default)
    if per_image is None:
        known = list(speed.get(job.kind, {}).values())
        per_image = max(known) if known else None
    if per_image is None or job.images is None:
        return None
    return speed.get("startup_seconds", 0.0) + per_image * job.images * job.epochs


def print_plan(jobs: list[Job], speed: dict, source: str, missing: set, out=print) -> dict:
    counts = {state: sum(j.state == state for j in jobs) for state in ("done", "todo", "no data")}
    total, unknown, whole = 0.0, 0, 0.0
    for job in jobs:
        seconds = seconds_of(job, speed)
        whole += seconds or 0.0
        seconds = seconds if job.state != "done" else 0.0
        if seconds is None:
            unknown += 1
        else:
            total += seconds
        images = "?" if job.images is None else job.images * job.epochs
        out(f"  [{job.state:7}] {job.kind:5} {job.method:6} {job.dataset:10} seed "
            f"{job.material.get('training', job.material.get('train', {}).get('training', {})).get('seed')}"
            f"  {images} images  {job.folder}")
    trains = sum(j.kind == "train" for j in jobs)
    out(f"{len(jobs)} jobs ({trains} train, {len(jobs) - trains} test): {counts['done']} done, {counts['todo']} to "
        f"run, {counts['no data']} without data ({', '.join(sorted(missing)) or 'none'}: not run)")
    estimate = f"about {total / 60:.1f} min" + (f" plus {unknown} job(s) without an estimate (no data or no "
                                                 "speed)" if unknown else "")
    out(f"time estimate for the jobs not done: {estimate} (all {len(jobs)} jobs: {whole / 60:.1f} min), from "
        f"{source}")
    return {"estimate_all_seconds": whole, "jobs": len(jobs), "train": trains, "test": len(jobs) - trains,
            "done": counts["done"],
            "todo": counts["todo"], "no_data": counts["no data"], "estimate_seconds": total,
            "without_estimate": unknown}


# ----------------------------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--table", help="METHOD:TABLE (comparison), METHOD:ABLATION, METHOD:all, or 'grid' (--list)")
    p.add_argument("--list", action="store_true", help="print the tables and exit")
    p.add_argument("--data_root", default="./data", help="DATA_ROOT/NAME/meta.json or DATA_ROOT/meta_NAME.json")
    p.add_argument("--data", nargs="+", metavar="NAME=PATH", help="a dataset's root, overriding --data_root")
    p.add_argument("--clip_weights", default="openai", help="as train.py; its sha256 is part of every job's key")
    p.add_argument("--work", default="./runs/reproduce", help="jobs in WORK/jobs/, tables in WORK/tables/")
    p.add_argument("--out", default=None, help="the table's folder (default WORK/tables/NAME)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="train and test each (default: each method's)")
    p.add_argument("--methods", nargs="+", choices=method_names(), default=None,
                   help="comparison tables and grids: these methods (default: every registered method)")
    p.add_argument("--datasets", nargs="+", default=None, help="only these of the table's datasets (grid: these)")
    p.add_argument("--grid", nargs="+", metavar="SETTING=V1,V2", help="grid axes (lists: '6 12,24')")
    p.add_argument("--grid_file", default=None, help="JSON: methods, datasets, settings (list of dicts), seeds")
    p.add_argument("--train_on", default=None, help="grid: the training set (default: each method's protocol)")
    p.add_argument("--columns", nargs="+", choices=METRIC_KEYS, default=None, help="grid: the metrics")
    p.add_argument("--train_args", default="", help="extra train.py flags for every job (part of the key)")
    p.add_argument("--test_args", default="", help="extra test.py flags for every job (part of the key)")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    p.add_argument("--pro_mode", default="official", choices=("official", "exact"))
    p.add_argument("--gpus", default="", help="e.g. 0,1: jobs side by side, one per GPU (as train.sh's GPUS)")
    p.add_argument("--nproc", type=int, default=1, help="each job under torchrun with N processes (NPROC)")
    p.add_argument("--dry_run", action="store_true", help="print the plan, job count and time estimate only")
    p.add_argument("--speed", default=str(DEFAULT_SPEED), help="JSON of measured seconds per image")
    p.add_argument("--seconds_per_image", type=float, default=None, help="instead of --speed")
    p.add_argument("--code_version", default=None, help="instead of the source hash (reuse jobs across edits)")
    p.add_argument("--no_figures", action="store_true", help="write the tables only")
    p.add_argument("--figure_images", type=int, default=4, help="rows of the qualitative figure")
    return p


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    if args.list:
        print("\n".join(table_names()))
        return {}
    if not args.table:
        build_parser().error("--table is required (--list shows them)")
    gpus = [g for g in args.gpus.split(",") if g.strip()]
    if gpus and args.nproc > 1:
        raise SystemExit("reproduce.py: set --nproc (several processes per job) or --gpus (jobs side by side), "
                         "not both")
    heading, columns, specs = resolve_table(args)
    if not specs:
        raise SystemExit(f"reproduce.py: --table {args.table} has no cell with these --methods/--datasets")
    work = Path(args.work).resolve()
    if args.clip_weights != "openai" and Path(args.clip_weights).exists():
        args.clip_weights = str(Path(args.clip_weights).resolve())
    planner = Planner(args, work)
    seeds = args.seeds or [None]
    cells = planner.plan(specs, seeds)
    jobs = sorted(planner.jobs.values(), key=lambda j: j.kind != "train")
    speed, source = load_speed(args)
    print(f"{args.table}: {heading}")
    summary = print_plan(jobs, speed, source, planner.missing)
    if args.dry_run:
        return summary
    start = time.time()
    # a SIGTERM stops the running jobs too (their folders, without a 'done' record, are redone next time)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    Runner(gpus, args.nproc).run(jobs)
    name = args.table.replace(":", "_")
    out = Path(args.out) if args.out else work / "tables" / name
    written = tables_out.write_table(out, args.table, heading, columns, cells, len(seeds), figures=not args.no_figures,
                                     data_roots={n: str(d[0]) for n, d in planner._data.items() if d[0]},
                                     figure_images=args.figure_images)
    failed = sum(j.state in ("failed",) for j in jobs)
    note = f"; {failed} job(s) failed" if failed else ""
    print(f"table written to {written} ({time.time() - start:.0f} s){note}")
    if failed:
        raise SystemExit(1)
    return summary


if __name__ == "__main__":
    main()
