"""Jobs of `reproduce.py`: keyed by what determines their result, run once, resumed after a kill.

A job is one `train.py` or `test.py` command line. Its key is the sha256 of a canonical JSON
of everything that decides its result (method, resolved settings, training hyperparameters
and seed, dataset and its meta file's hash, CLIP weights' sha256, code version, precision;
a test job also its checkpoint's training key). The job's folder is named after the key, so
results of different settings never share a folder. A job is finished when its `job.json`
says so and its outputs (checkpoint, or results.json and maps) are there; anything else in
its folder is a killed run's leftovers, removed before it runs again.

Torch-free: planning, `--dry_run` and resuming never import torch.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from utils import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]
JOB_FILE = "job.json"
CONSOLE_FILE = "console.txt"
PID_FILE = "pid"
# What decides a result: the code these paths hold (not the reporting, tests, benchmarks or documentation).
SOURCE_GLOBS = ("train.py", "test.py", "dataset.py", "metrics.py", "prompt_ensemble.py", "utils.py",
                "models/**/*.py", "engine/**/*.py", "metric_kernels/**/*.py")
OPENAI_CACHE = Path.home() / ".cache" / "clip" / "ViT-L-14-336px.pt"


def canonical(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def key_of(material: dict) -> str:
    return hashlib.sha256(canonical(material).encode()).hexdigest()


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def source_hash(root: Path = ROOT) -> str:
    """sha256 over the paths and contents of the source files that decide a result."""
    digest = hashlib.sha256()
    files = sorted({p for pattern in SOURCE_GLOBS for p in root.glob(pattern)
                    if "__pycache__" not in p.parts and p.resolve() != Path(__file__).resolve()})  # not this runner
    for path in files:
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def git_commit(root: Path = ROOT) -> str | None:
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def clip_fingerprint(weights: str, cache_file: Path | None) -> str:
    """sha256 of the CLIP weights file, cached by (path, size, mtime); 'openai' without a file stays 'openai'."""
    path = Path(weights)
    if weights == "openai":
        if not OPENAI_CACHE.is_file():
            return "openai"
        path = OPENAI_CACHE
    if not path.is_file():
        raise FileNotFoundError(f"--clip_weights {weights}: no such file")
    stat = path.stat()
    entry_key = str(path.resolve())
    cache = {}
    if cache_file and cache_file.is_file():
        try:
            cache = json.loads(cache_file.read_text())
        except (OSError, ValueError):
            cache = {}
    entry = cache.get(entry_key)
    if entry and entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns:
        return entry["sha256"]
    digest = file_sha256(path)
    if cache_file:
        cache[entry_key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(cache, cache_file)
    return digest


@dataclass(eq=False)
class Job:
    kind: str  # "train" or "test"
    method: str
    dataset: str  # training set (train) or evaluated dataset (test)
    material: dict  # what the key is made of
    argv: list  # the script and its arguments (the launcher comes in front)
    folder: Path
    outputs: tuple  # paths (relative to folder) that a finished job has
    images: int | None = None  # images per pass over its dataset (for the time estimate)
    epochs: int = 1
    depends: "Job | None" = None
    state: str = field(default="todo")  # todo, done, running, failed, skipped

    @property
    def key(self) -> str:
        return key_of(self.material)

    def output(self, name: str) -> Path:
        return self.folder / name

    def finished(self) -> bool:
        """job.json says done, for this key, and every output is there."""
        try:
            record = json.loads((self.folder / JOB_FILE).read_text())
        except (OSError, ValueError):
            return False
        return (record.get("status") == "done" and record.get("key") == self.key
                and all((self.folder / name).is_file() for name in self.outputs))

    def record(self) -> dict:
        try:
            return json.loads((self.folder / JOB_FILE).read_text())
        except (OSError, ValueError):
            return {}


def job_folder(work: Path, kind: str, method: str, dataset: str, material: dict) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in dataset)
    return work / "jobs" / method / f"{kind}-{safe}-{key_of(material)[:16]}"


def launcher(nproc: int) -> list[str]:
    if nproc > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    return [sys.executable]


class Runner:
    """Runs jobs as subprocesses: one at a time, or one per device of `gpus` side by side (tests wait for their
    training). A job that fails leaves its folder without a 'done' record; its tests are skipped."""

    def __init__(self, gpus: list[str], nproc: int = 1, log=print, env: dict | None = None, poll: float = 0.2):
        self.slots = list(gpus) or [None]
        self.nproc, self.log, self.poll = nproc, log, poll
        self.env = dict(os.environ if env is None else env)
        self.running: dict = {}  # slot -> (job, process, start, console handle)

    def _start(self, job: Job, slot) -> None:
        alive = still_running(job.folder)
        if alive:
            raise RuntimeError(f"{job.folder} is still being written by process {alive} (an earlier reproduce.py "
                               "killed without its jobs?): wait for it or end it, then run again")
        if job.folder.exists():  # a killed run's leftovers: never mixed with the new run
            shutil.rmtree(job.folder)
        job.folder.mkdir(parents=True)
        command = [*launcher(self.nproc), *job.argv]
        (job.folder / "command.txt").write_text(" ".join(map(_quote, command)) + "\n")
        env = dict(self.env)
        if slot is not None:
            env["CUDA_VISIBLE_DEVICES"] = str(slot)
        console = open(job.folder / CONSOLE_FILE, "w")
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=console, stderr=subprocess.STDOUT)
        (job.folder / PID_FILE).write_text(str(process.pid))
        job.state = "running"
        where = f" on GPU {slot}" if slot is not None else ""
        self.log(f"started {describe(job)}{where} -> {job.folder}")
        self.running[slot] = (job, process, time.time(), console, command)

    def _finish(self, slot, returncode: int) -> None:
        job, _, start, console, command = self.running.pop(slot)
        console.close()
        missing = [name for name in job.outputs if not (job.folder / name).is_file()]
        if returncode == 0 and not missing:
            atomic_write_json({"status": "done", "key": job.key, "material": job.material, "command": command,
                               "returncode": 0, "wall_seconds": time.time() - start, "finished": time.time(),
                               "git_commit": git_commit()}, job.folder / JOB_FILE)
            job.state = "done"
            self.log(f"done {describe(job)} ({time.time() - start:.1f} s)")
        else:
            job.state = "failed"
            why = f"exit {returncode}" if returncode else f"missing {', '.join(missing)}"
            self.log(f"FAILED {describe(job)} ({why}); output in {job.folder / CONSOLE_FILE}")

    def stop(self) -> None:
        for job, process, _, console, _ in self.running.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for job, process, _, console, _ in self.running.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
            console.close()
        self.running.clear()

    def run(self, jobs: list[Job]) -> None:
        """Run every job not finished; dependencies first."""
        pending = [job for job in jobs if job.state == "todo"]
        try:
            while pending or self.running:
                for slot, (job, process, *_rest) in list(self.running.items()):
                    code = process.poll()
                    if code is not None:
                        self._finish(slot, code)
                for job in list(pending):
                    if job.depends is not None and job.depends.state in ("failed", "skipped"):
                        job.state = "skipped"
                        pending.remove(job)
                        self.log(f"skipped {describe(job)}: its training failed")
                free = [slot for slot in self.slots if slot not in self.running]
                for slot in free:
                    ready = next((j for j in pending if j.depends is None or j.depends.state == "done"), None)
                    if ready is None:
                        break
                    pending.remove(ready)
                    self._start(ready, slot)
                if self.running:
                    time.sleep(self.poll)
        except BaseException:
            self.stop()
            raise


def still_running(folder: Path) -> int | None:
    """The process a job folder's pid file names, if it is alive and is that job's (its command names the folder)."""
    try:
        pid = int((folder / PID_FILE).read_text())
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (OSError, ValueError):
        return None
    return pid if str(folder) in command else None


def describe(job: Job) -> str:
    seed = job.material.get("training", {}).get("seed") if job.kind == "train" else \
        job.material.get("train", {}).get("training", {}).get("seed")
    what = "train" if job.kind == "train" else "test"
    on = "on" if job.kind == "train" else "of"
    return f"{what} {job.method} {on} {job.dataset} (seed {seed}, key {job.key[:10]})"


def _quote(word: str) -> str:
    word = str(word)
    if word and all(c.isalnum() or c in "-_./=:,+@" for c in word):
        return word
    return "'" + word.replace("'", "'\\''") + "'"
