"""reproduce.py: planning, job keys, resume detection and table formatting (quick, no model), then end to end on the
tiny fixtures (slow): two methods x two datasets x two seeds, a kill in the middle and a resume, a settings grid."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import FIXTURE, ROOT, VCP_FIXTURE

import reproduce
from engine.jobs import JOB_FILE, Job, Runner, key_of
from models import get_method, method_names, registry
from metrics import METRIC_KEYS
from reporting import tables

TINY_TRAIN = "--image_size 126 --features_list 1 2 3 4 --epoch 1 --num_workers 0"
CLIP = VCP_FIXTURE / "clip_tiny.npz"


def fixture_args(work: Path, *extra: str) -> list[str]:
    """The tiny fixtures as two datasets: 'mvtec' (VCP-CLIP's fixture data), 'visa' (ViP²-CLIP's)."""
    return ["--data", f"mvtec={VCP_FIXTURE / 'data'}", f"visa={FIXTURE / 'data'}", "--clip_weights", str(CLIP),
            "--work", str(work), "--train_args", TINY_TRAIN, "--test_args", "--num_workers 0", "--device", "cpu",
            *extra]


def plan(work: Path, *argv: str):
    args = reproduce.build_parser().parse_args(list(argv))
    heading, columns, specs = reproduce.resolve_table(args)
    planner = reproduce.Planner(args, work)
    cells = planner.plan(specs, args.seeds or [None])
    return planner, cells, columns


# ---------------------------------------------------------------------------------------------- planning
@pytest.mark.parametrize("owner", ["vip2", "vcp"])
def test_a_comparison_table_trains_once_per_training_set_and_seed(owner, tmp_path):
    paper = get_method(owner).paper_tables()
    planner, cells, _ = plan(tmp_path, "--table", f"{owner}:all", "--work", str(tmp_path), "--seeds", "1", "2", "3",
                             "--clip_weights", str(CLIP))
    jobs = list(planner.jobs.values())
    methods = method_names()
    training = [m for m in methods if get_method(m).trains]  # a training-free method: one run, no checkpoint
    trains = [j for j in jobs if j.kind == "train"]
    tests = [j for j in jobs if j.kind == "test"]
    assert len(trains) == len(training) * len(set(paper.evaluation.values())) * 3
    assert len(tests) == (len(training) * 3 + len(methods) - len(training)) * len(paper.rows)
    assert len(cells) == len(methods) * len(paper.rows)
    for job in tests:  # each dataset is tested by the checkpoint of its protocol's training set
        if get_method(job.method).trains:
            assert job.depends.dataset == paper.evaluation[job.dataset]
        else:
            assert job.depends is None and "--checkpoint_path" not in job.argv
    assert all(j.state == "no data" for j in jobs)  # nothing under ./data here: planned, not run


def test_a_training_set_of_two_datasets_is_one_train_job_over_both(tmp_path):
    """AdaCLIP's protocol trains on MVTec AD + ColonDB in one run: one train.py with both roots, in that order; the
    set without data (VisA + ClinicDB here) is planned, not run, and so are the tests depending on it."""
    paper = get_method("adaclip").paper_tables()
    roots = {"mvtec": VCP_FIXTURE / "data", "colondb": FIXTURE / "data"}
    planner, _, _ = plan(tmp_path, "--table", "adaclip:all", "--methods", "adaclip", "--work", str(tmp_path),
                         "--clip_weights", str(CLIP), "--data", *(f"{k}={v}" for k, v in roots.items()))
    trains = {job.dataset: job for job in planner.jobs.values() if job.kind == "train"}
    assert set(trains) == {training_set for training_set, _ in paper.training}
    job = trains["mvtec+colondb"]
    at = job.argv.index("--dataset")
    assert job.argv[at:at + 6] == ["--dataset", "mvtec", "colondb", "--train_data_path",
                                   str(roots["mvtec"].resolve()), str(roots["colondb"].resolve())]
    assert job.argv[job.argv.index("--augment_datasets") + 1] == "mvtec"
    assert job.images == sum(reproduce.test_images(reproduce.meta_of(root, name)) for name, root in roots.items())
    assert job.state == "todo" and trains["visa+clinicdb"].state == "no data"
    tests = [j for j in planner.jobs.values() if j.kind == "test"]
    assert all(j.state == "no data" for j in tests if j.depends.dataset == "visa+clinicdb")


def test_every_declared_table_is_listed_and_a_new_method_joins_comparisons(tmp_path, monkeypatch):
    names = reproduce.table_names()
    for method in method_names():
        paper = get_method(method).paper_tables()
        assert {f"{method}:{key}" for key in (*paper.tables, *paper.ablations)} <= set(names)
    vcp = get_method("vcp")
    # every registered method has its paper (the registry refuses one without): the newcomer brings VCP-CLIP's
    monkeypatch.setitem(registry._METHODS, "zz_new", dataclasses.replace(vcp, name="zz_new", title="New"))
    _, _, specs = reproduce.comparison_specs("vip2", "industrial", list(method_names()), ["mvtec"])
    assert [s.method for s in specs] == list(method_names()) and "zz_new" in [s.method for s in specs]
    by_method = {s.method: s for s in specs}
    assert by_method["zz_new"].paper == by_method["vcp"].paper  # its own paper's values, not another method's


def test_ablation_rows_become_the_flags_that_set_them(tmp_path):
    import train

    for method in method_names():
        info = get_method(method)
        for ablation in info.paper_tables().ablations.values():
            for row in ablation.rows:
                train_flags, test_flags = reproduce.setting_flags(method, row.settings)
                parsed = train.build_parser(method).parse_args(["--model", method, "--train_data_path", "x",
                                                                *train_flags])
                for name, value in row.settings.items():
                    assert tuple(getattr(parsed, name)) == value if isinstance(value, tuple) else \
                        getattr(parsed, name) == value
                if row.values:
                    assert set(row.values) <= set(ablation.columns) <= set(METRIC_KEYS)
    components = get_method("vcp").paper_tables().ablations["components"]
    assert components.rows[0].settings == {} and components.rows[0].values["pixel_auroc"] == 92.0


def test_grid_from_flags_and_from_a_file_plan_the_same_jobs(tmp_path):
    common = ["--work", str(tmp_path), "--clip_weights", str(CLIP), "--table", "grid", "--seeds", "5"]
    from_flags, _, _ = plan(tmp_path, *common, "--methods", "vip2", "--datasets", "mvtec", "--grid",
                            "topk=10,50", "n_ctx=3,7")
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps({"methods": ["vip2"], "datasets": ["mvtec"], "settings": [
        {"topk": t, "n_ctx": n} for t in (10, 50) for n in (3, 7)]}))
    from_file, _, _ = plan(tmp_path, *common, "--grid_file", str(grid))
    assert len(from_flags.jobs) == 8 and set(from_flags.jobs) == set(from_file.jobs)


# ---------------------------------------------------------------------------------------------- keys
def _train_key(tmp_path, *extra, clip=CLIP, code=None):
    argv = ["--table", "grid", "--methods", "vip2", "--datasets", "mvtec", "--work", str(tmp_path),
            "--clip_weights", str(clip), *extra] + (["--code_version", code] if code else [])
    planner, cells, _ = plan(tmp_path, *argv)
    return cells[0]["runs"][0]["train"], cells[0]["runs"][0]["test"]


def test_keys_follow_what_determines_the_result(tmp_path):
    base, base_test = _train_key(tmp_path)
    # the default given explicitly, or flags in another order: the same job
    assert _train_key(tmp_path, "--grid", "topk=50")[0].key == base.key
    assert _train_key(tmp_path, "--seeds", "111")[0].key == base.key  # vip2's default seed
    assert _train_key(tmp_path, "--train_args", "--n_ctx 7 --topk 50")[0].key == base.key
    # a test-only setting at its default is the same test; another value only a new test of the same checkpoint
    assert _train_key(tmp_path, "--grid", "sigma=8")[1].key == base_test.key
    sigma = _train_key(tmp_path, "--grid", "sigma=4")
    assert sigma[0].key == base.key and sigma[1].key != base_test.key
    other_clip = tmp_path / "clip_copy.npz"
    other_clip.write_bytes(CLIP.read_bytes() + b"\0")
    different = [_train_key(tmp_path, "--grid", "topk=10")[0], _train_key(tmp_path, "--seeds", "1")[0],
                 _train_key(tmp_path, clip=other_clip)[0], _train_key(tmp_path, code="another")[0],
                 _train_key(tmp_path, "--precision", "bf16")[0], _train_key(tmp_path, "--train_on", "mvtec")[0],
                 _train_key(tmp_path, "--nproc", "2")[0]]
    keys = [base.key] + [job.key for job in different]
    assert len(set(keys)) == len(keys)
    assert len({job.folder for job in different} | {base.folder}) == len(keys)  # never the same folder


def test_clip_fingerprint_is_the_files_sha256_and_cached(tmp_path):
    import hashlib

    from engine.jobs import clip_fingerprint

    cache = tmp_path / "cache.json"
    assert clip_fingerprint(str(CLIP), cache) == hashlib.sha256(CLIP.read_bytes()).hexdigest()
    entry = json.loads(cache.read_text())[str(CLIP.resolve())]
    entry["sha256"] = "cached"
    cache.write_text(json.dumps({str(CLIP.resolve()): entry}))
    assert clip_fingerprint(str(CLIP), cache) == "cached"  # read from the cache, not hashed again


# ---------------------------------------------------------------------------------------------- resume detection
def _writer_job(tmp_path, name: str, body: str) -> Job:
    material = {"name": name}
    return Job("train", "vip2", "x", material, ["-c", body], tmp_path / name, ("out.txt",))


def test_runner_records_finished_jobs_and_a_killed_one_starts_clean(tmp_path):
    writes = f"import pathlib; pathlib.Path(r'{tmp_path / 'a'}', 'out.txt').write_text('ok')"
    job = _writer_job(tmp_path, "a", writes)
    assert not job.finished()
    Runner([], log=lambda message: None).run([job])
    assert job.state == "done" and job.finished()
    assert json.loads((job.folder / JOB_FILE).read_text())["key"] == key_of(job.material)
    (job.folder / "out.txt").unlink()
    assert not job.finished()  # the record alone is not enough
    # a killed run's leftovers (output without a record) are removed before it runs again
    killed = _writer_job(tmp_path, "b", "raise SystemExit(3)")
    killed.folder.mkdir()
    (killed.folder / "stale.txt").write_text("half")
    Runner([], log=lambda message: None).run([killed])
    assert killed.state == "failed" and not (killed.folder / "stale.txt").exists() and not killed.finished()
    dependent = Job("test", "vip2", "y", {"n": 2}, ["-c", "pass"], tmp_path / "c", (), depends=killed)
    Runner([], log=lambda message: None).run([dependent])
    assert dependent.state == "skipped"


def test_a_job_still_written_by_a_live_process_is_not_started_again(tmp_path):
    job = _writer_job(tmp_path, "a", "pass")
    job.folder.mkdir()
    orphan = subprocess.Popen([sys.executable, "-c", "import time; print('ready', flush=True); time.sleep(30)",
                               str(job.folder)], stdout=subprocess.PIPE, text=True)
    assert orphan.stdout.readline().strip() == "ready"  # running its own command line, not the fork's
    try:
        (job.folder / "pid").write_text(str(orphan.pid))
        with pytest.raises(RuntimeError, match=f"still being written by process {orphan.pid}"):
            Runner([], log=lambda message: None).run([job])
    finally:
        orphan.kill()
        orphan.wait()
    Runner([], log=lambda message: None).run([job])  # once it is gone, the job runs
    assert job.state == "failed"  # (this one writes no output)


def test_jobs_run_side_by_side_one_per_gpu_and_under_torchrun(tmp_path):
    from engine.jobs import launcher

    body = ("import os, pathlib, time; f = pathlib.Path(r'{folder}'); (f / 'started').write_text(str(time.time()));"
            "time.sleep(2); (f / 'out.txt').write_text(os.environ.get('CUDA_VISIBLE_DEVICES', ''))")
    jobs = [_writer_job(tmp_path, name, body.format(folder=tmp_path / name)) for name in ("a", "b", "c")]
    Runner(["0", "1"], log=lambda message: None).run(jobs)
    devices = [(job.folder / "out.txt").read_text() for job in jobs]
    assert devices[:2] == ["0", "1"] and devices[2] in ("0", "1")
    started = [float((job.folder / "started").read_text()) for job in jobs]
    # two at once (each sleeps 2 s), the third waits for a free slot
    assert abs(started[0] - started[1]) < 1.5 and started[2] - min(started[:2]) > 1.9
    assert launcher(1) == [sys.executable]
    assert launcher(2)[1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def test_a_finished_job_is_planned_as_done(tmp_path):
    argv = ["--table", "grid", "--methods", "vip2", "--datasets", "mvtec", "--train_on", "mvtec", "--data",
            f"mvtec={VCP_FIXTURE / 'data'}", "--work", str(tmp_path), "--clip_weights", str(CLIP)]
    planner, cells, _ = plan(tmp_path, *argv)
    train = cells[0]["runs"][0]["train"]
    assert train.state == "todo"
    train.folder.mkdir(parents=True)
    for name in train.outputs:
        (train.folder / name).write_text("x")
    (train.folder / JOB_FILE).write_text(json.dumps({"status": "done", "key": train.key}))
    again, cells, _ = plan(tmp_path, *argv)
    assert cells[0]["runs"][0]["train"].state == "done" and cells[0]["runs"][0]["test"].state == "todo"


def test_dry_run_estimates_time_from_the_measured_speed(tmp_path, capsys):
    argv = ["--table", "vip2:industrial", "--datasets", "mvtec", "visa", "--methods", "vip2", "vcp",
            *fixture_args(tmp_path), "--dry_run"]
    one = reproduce.main([*argv, "--seconds_per_image", "1.0"])
    two = reproduce.main([*argv, "--seconds_per_image", "2.0"])
    images = len(json.loads((VCP_FIXTURE / "data" / "meta_mvtec.json").read_text())["test"]["c01"])
    assert one["todo"] == one["jobs"] == 8 and one["estimate_seconds"] > images
    assert two["estimate_seconds"] == pytest.approx(2 * one["estimate_seconds"])
    assert "8 jobs (4 train, 4 test)" in capsys.readouterr().out
    assert not (tmp_path / "jobs").exists()  # a dry run writes no job


# ---------------------------------------------------------------------------------------------- table formatting
def test_mean_std_and_cells():
    assert tables.mean_std([90.0, 92.0, None]) == (91.0, pytest.approx(2 ** 0.5))
    assert tables.mean_std([90.0]) == (90.0, None) and tables.mean_std([None]) == (None, None)
    assert tables.format_value(91.04, 1.414) == "91.0 ± 1.4"
    assert tables.format_value(91.0, None, fewer=True) == "91.0 ‡" and tables.format_value(None, None) == "–"


def test_markdown_and_latex_show_measured_paper_and_difference():
    entry = {"row": "MVTec AD", "method_title": "ViP²-CLIP", "seeds_done": 1, "seeds_asked": 2,
             "measured": {"pixel_auroc": {"mean": 88.25, "std": None}, "pixel_aupro": {"mean": None, "std": None}},
             "paper": {"pixel_auroc": 90.5, "pixel_aupro": 87.1}}
    text = tables.markdown("vip2:industrial", "Table 1", ("pixel_auroc", "pixel_aupro"), [entry])
    assert "| MVTec AD | ViP²-CLIP | this run | 1/2 | 88.2 ‡ | – |" in text or \
           "| MVTec AD | ViP²-CLIP | this run | 1/2 | 88.3 ‡ | – |" in text
    assert "| | | paper | | 90.5 | 87.1 |" in text and "| | | difference | | -2.2 | – |" in text
    tex = tables.latex("vip2:industrial", "Table 1", ("pixel_auroc", "pixel_aupro"), [entry])
    assert "ViP$^2$-CLIP" in tex and "(90.5, -2.2)" in tex and "\\begin{tabular}{llrr}" in tex


# ---------------------------------------------------------------------------------------------- end to end
def _run(argv, **kwargs):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, str(ROOT / "reproduce.py"), *argv], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def _done_records(work: Path) -> dict:
    return {p.parent.name: json.loads(p.read_text())["finished"] for p in work.glob(f"jobs/*/*/{JOB_FILE}")}


@pytest.mark.slow
def test_two_methods_two_datasets_two_seeds_killed_resumed_and_a_grid(tmp_path):
    work = tmp_path / "work"
    argv = ["--table", "vip2:industrial", "--datasets", "mvtec", "visa", "--methods", "vip2", "vcp",
            "--seeds", "1", "2", "--gpus", "0,1", *fixture_args(work)]
    # a kill in the middle: the whole process group, once some jobs finished
    first = _run(argv, start_new_session=True)
    deadline = time.time() + 400
    while len(_done_records(work)) < 3 and first.poll() is None and time.time() < deadline:
        time.sleep(0.3)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    before = _done_records(work)
    assert 3 <= len(before) < 16, "the kill should land in the middle of the 16 jobs"
    assert not (work / "tables").exists()

    second = _run(argv)
    output, _ = second.communicate(timeout=600)
    assert second.returncode == 0, output[-3000:]
    after = _done_records(work)
    assert len(after) == 16
    assert all(after[name] == finished for name, finished in before.items()), "a finished job ran again"
    started = [line for line in output.splitlines() if line.startswith("started ")]
    assert len(started) == 16 - len(before) and f"{len(before)} done, {16 - len(before)} to run" in output

    out = work / "tables" / "vip2_industrial"
    cells = json.loads((out / "cells.json").read_text())
    assert len(cells["cells"]) == 4 and {c["method"] for c in cells["cells"]} == {"vip2", "vcp"}
    for cell in cells["cells"]:
        assert cell["seeds_done"] == 2 and len(cell["runs"]) == 2
        assert {run["seed"] for run in cell["runs"]} == {1, 2}
        values = []
        for run in cell["runs"]:  # traceable: the numbers come from these files
            results = json.loads(Path(run["test"]["results.json"]).read_text())
            values.append(100 * results["metrics"]["mean"]["pixel_auroc"])
            assert Path(run["train"]["checkpoint"]).is_file() and Path(run["test"]["log"]).is_file()
            assert "test.py" in " ".join(run["test"]["command"]) and run["train"]["command"]
        assert cell["measured"]["pixel_auroc"]["mean"] == pytest.approx(sum(values) / 2)
        paper = get_method(cell["method"]).paper_tables().rows[cell["dataset"]].values
        assert cell["paper"]["pixel_auroc"] == paper["pixel_auroc"]
        assert cell["delta"]["pixel_auroc"] == pytest.approx(cell["measured"]["pixel_auroc"]["mean"]
                                                               - paper["pixel_auroc"])
        rows = Path(cell["per_class_csv"]).read_text().splitlines()
        assert rows[0].startswith("seed,class,") and len(rows) > 2
    table = (out / "table.md").read_text()
    assert table.count("| this run | 2/2 |") == 4 and "difference" in table and (out / "table.tex").is_file()
    for figure in ("qualitative.png", "aupro_per_class.png", "seed_spread.png"):
        assert (out / figure).read_bytes()[:4] == b"\x89PNG"

    # a settings grid of two values, through reproduce.sh: the default value reuses the comparison's jobs, the
    # other trains anew
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHON=sys.executable, TABLE="grid", CLIP_WEIGHTS=str(CLIP),
               WORK=str(work), SEEDS="1", DEVICE="cpu", TRAIN_ARGS=TINY_TRAIN, TEST_ARGS="--num_workers 0",
               EXTRA_ARGS=f"--methods vip2 --datasets mvtec --train_on visa --grid topk=20,50 "
                          f"--data mvtec={VCP_FIXTURE / 'data'} visa={FIXTURE / 'data'}")
    grid = subprocess.run(["bash", str(ROOT / "reproduce.sh")], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    output = grid.stdout + grid.stderr
    assert grid.returncode == 0, output[-3000:]
    assert "4 jobs (2 train, 2 test): 2 done, 2 to run" in output
    cells = json.loads((work / "tables" / "grid" / "cells.json").read_text())["cells"]
    assert [c["settings"] for c in cells] == [{"topk": 20}, {"topk": 50}]
    results = [json.loads(Path(c["runs"][0]["test"]["results.json"]).read_text()) for c in cells]
    assert [r["settings"]["topk"] for r in results] == [20, 50]  # each cell's run used its setting
    refused = subprocess.run(["bash", str(ROOT / "reproduce.sh")], env=dict(env, GPUS="0,1", NPROC="2"),
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "not both" in refused.stderr


def test_code_version_follows_the_source_that_decides_results(tmp_path):
    from engine.jobs import source_hash

    (tmp_path / "models").mkdir()
    (tmp_path / "reporting").mkdir()
    (tmp_path / "train.py").write_text("a = 1\n")
    (tmp_path / "models" / "m.py").write_text("b = 2\n")
    (tmp_path / "reporting" / "r.py").write_text("c = 3\n")
    first = source_hash(tmp_path)
    (tmp_path / "reporting" / "r.py").write_text("c = 4\n")  # figures and tables decide no result
    assert source_hash(tmp_path) == first
    (tmp_path / "models" / "m.py").write_text("b = 5\n")
    assert source_hash(tmp_path) != first


def _finished_job(folder: Path, kind: str, material: dict, files: dict, depends=None) -> Job:
    import numpy as np

    folder.mkdir(parents=True)
    for name, content in files.items():
        if name.endswith(".npz"):
            np.savez(folder / name, **content)
        else:
            (folder / name).write_text(content if isinstance(content, str) else json.dumps(content))
    job = Job(kind, "vip2", "mvtec", material, [f"{kind}.py"], folder, tuple(files), depends=depends)
    (folder / JOB_FILE).write_text(json.dumps({"status": "done", "key": job.key, "command": [f"{kind}.py"]}))
    job.state = "done"
    return job


def test_write_table_from_run_folders_marks_missing_seeds_and_traces_cells(tmp_path):
    import numpy as np

    maps = {"anomaly_maps": np.random.default_rng(0).random((2, 8, 8), dtype=np.float32),
            "gt_masks": np.zeros((2, 8, 8), np.uint8), "labels": np.array([1, 0]),
            "img_paths": np.array(["a.png", "b.png"])}
    runs = []
    for seed, auroc in ((1, 0.80), (2, 0.90), (3, None)):
        trained = _finished_job(tmp_path / f"train{seed}", "train", {"training": {"seed": seed}},
                                {"epoch_1.pth": "x", "train_stats.json": {}})
        if auroc is None:  # this seed's test never finished
            tested = Job("test", "vip2", "mvtec", {"s": seed}, ["test.py"], tmp_path / "missing", ("results.json",),
                         depends=trained)
        else:
            metrics = {"c1": {"pixel_auroc": auroc - 0.05, "pixel_aupro": 0.5}, "c2": {"pixel_auroc": auroc + 0.05,
                                                                                     "pixel_aupro": 0.7},
                       "mean": {"pixel_auroc": auroc, "pixel_aupro": 0.6}}
            tested = _finished_job(tmp_path / f"test{seed}", "test", {"s": seed},
                                   {"results.json": {"metrics": metrics}, "maps.npz": maps}, depends=trained)
        runs.append({"seed": seed, "train": trained, "test": tested})
    spec = reproduce.CellSpec("MVTec AD", "vip2", "mvtec", "visa", (), {}, {"pixel_auroc": 90.5})
    out = tmp_path / "table"
    tables.write_table(out, "vip2:industrial", "Table 1", ("pixel_auroc", "pixel_aupro"),
                       [{"spec": spec, "runs": runs}], 3, data_roots={})
    cell = json.loads((out / "cells.json").read_text())["cells"][0]
    assert cell["seeds_done"] == 2 and cell["measured"]["pixel_auroc"]["values"] == pytest.approx([80.0, 90.0])
    assert cell["measured"]["pixel_auroc"]["mean"] == pytest.approx(85.0)
    assert cell["delta"]["pixel_auroc"] == pytest.approx(85.0 - 90.5)
    assert [run["test"]["state"] for run in cell["runs"]] == ["done", "done", "todo"]
    assert cell["runs"][0]["test"]["results.json"] == str(tmp_path / "test1" / "results.json")
    assert cell["runs"][0]["train"]["checkpoint"] == str(tmp_path / "train1" / "epoch_1.pth")
    table = (out / "table.md").read_text()
    assert "| MVTec AD | ViP²-CLIP | this run | 2/3 | 85.0 ± 7.1 ‡ | 60.0 ± 0.0 ‡ |" in table
    assert "| | | difference | | -5.5 | – |" in table
    rows = Path(cell["per_class_csv"]).read_text().splitlines()
    assert len(rows) == 1 + 2 * 3 and rows[1].startswith("1,c1,0.75")
    for figure in ("qualitative.png", "aupro_per_class.png", "seed_spread.png"):
        assert (out / figure).read_bytes()[:4] == b"\x89PNG"


def test_a_comparison_table_averages_each_method_over_its_datasets():
    def entry(dataset, measured, paper, settings=None):
        return {"method": "vip2", "method_title": "ViP²-CLIP", "dataset": dataset, "settings": settings or {},
                "measured": {"pixel_auroc": {"mean": measured}}, "paper": paper}

    entries = [entry("mvtec", 80.0, {"pixel_auroc": 90.0}), entry("visa", 90.0, {"pixel_auroc": 96.0}),
               entry("mpdd", 70.0, {}), entry("btad", None, {"pixel_auroc": 50.0}),
               entry("mvtec", 10.0, {}, {"topk": 10})]  # a settings row is no part of the average
    (row,) = tables.averages(entries, ("pixel_auroc",))
    assert row["measured"]["pixel_auroc"] == pytest.approx(80.0)  # 80, 90, 70
    assert row["paper"]["pixel_auroc"] == pytest.approx(93.0)  # only where measured: mvtec, visa
    assert row["delta"]["pixel_auroc"] == pytest.approx(85.0 - 93.0)  # over those same two datasets
    assert tables.averages(entries[:1], ("pixel_auroc",)) == []
