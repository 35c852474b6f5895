"""Helpers every script shares and that need no torch: argparse types, logging, atomic writes.

Kept free of torch so that `--help` and `metrics.py`'s command line start in a fraction of a second.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np


class DatasetError(ValueError):
    """Input data that cannot be used as it is; the message names the file and what to do.

    One class for the whole project: the dataset-JSON generator and the loaders raise it alike."""

    def __init__(self, message: str):
        # Raised in a DataLoader worker, it comes back wrapped in the worker's traceback: keep the message.
        if "Original Traceback" in message:
            message = message.rstrip().splitlines()[-1].split(": ", 1)[-1]
        super().__init__(message)


def positive_int(text: str) -> int:
    """argparse type: counts and sizes that must be at least 1 fail at parse time, not mid-run."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, got {text}")
    return value


TRUE_WORDS, FALSE_WORDS = ("true", "yes", "t", "1"), ("false", "no", "f", "0")


def boolean(text: str) -> bool:
    """argparse type of a flag that takes True/False (AdaCLIP's `--use_hsf False`). The authors' str2bool
    reads any other word as False; here it is an error."""
    word = text.strip().lower()
    if word in TRUE_WORDS + FALSE_WORDS:
        return word in TRUE_WORDS
    raise argparse.ArgumentTypeError(f"must be True or False, got {text}")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the module docstring's layout and shows each flag's default where it has a real one."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "%(default)" in text or "default" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)"


class _LineFormatter(logging.Formatter):
    """Captured warnings end in a newline of their own; drop it so the log has no blank lines."""

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).rstrip("\n")


PROJECT_LOGGER = "zsas"  # parent of every module's logger (zsas.train, zsas.dataset, ...)


def one_line_warning(message, category, filename, lineno, line=None) -> str:
    """`warnings.formatwarning` without the source line: users read the message, not our code."""
    return f"warning: {message}\n"


class _HoldHandler(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def hold_log_records() -> None:
    """Keep what the project's loggers say until `setup_logger` opens the run's log.txt (the output folder is
    created only once the inputs are checked): what the data and checkpoint checks warn reaches log.txt too.
    Should the run fail first, `run_cli` prints the held warnings before the error."""
    target = logging.getLogger(PROJECT_LOGGER)
    for handler in list(target.handlers):
        handler.close()
        target.removeHandler(handler)
    target.addHandler(_HoldHandler())
    target.setLevel(logging.INFO)
    target.propagate = False


def _held_records() -> list[logging.LogRecord]:
    target = logging.getLogger(PROJECT_LOGGER)
    return [r for h in target.handlers if isinstance(h, _HoldHandler) for r in h.records]


def _print_held_warnings() -> None:
    for record in _held_records():
        if record.levelno >= logging.WARNING:
            print(f"warning: {record.getMessage()}", file=sys.stderr)


def setup_logger(name: str, save_path: str | os.PathLike | None, quiet: bool = False) -> logging.Logger:
    """Console plus `save_path/log.txt` (appended), one format for both, for every project logger and for
    Python warnings (e.g. an undefined metric), so that what the console shows, the log keeps.
    `quiet` (the other ranks of a torchrun job): errors only, on the console."""
    formatter = _LineFormatter("%(asctime)s %(message)s", datefmt="%Y-%m-%d %H:%M:%S")
    handlers = [logging.StreamHandler(sys.stdout)]
    if save_path is not None:
        Path(save_path).mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(Path(save_path) / "log.txt"))
    warnings.formatwarning = one_line_warning
    logging.captureWarnings(True)
    held = _held_records()
    for target in (logging.getLogger(PROJECT_LOGGER), logging.getLogger("py.warnings")):
        for handler in list(target.handlers):  # a second main() in one process must not leak open log files
            handler.close()
            target.removeHandler(handler)
        for handler in handlers:
            handler.setFormatter(formatter)
            target.addHandler(handler)
        target.setLevel(logging.ERROR if quiet else logging.INFO)
        target.propagate = False
    project = logging.getLogger(PROJECT_LOGGER)
    for record in held:  # what was said before the log file could exist, in order, with its own time
        if record.levelno >= project.level:
            project.handle(record)
    return logging.getLogger(name)


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike):
    """A binary file to write, in `path`'s folder, renamed onto `path` only once complete:
    a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions of a new file
        with os.fdopen(handle, "wb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_file(path) as file:
        file.write(data)


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def atomic_write_json(obj, path: str | os.PathLike) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, allow_nan=False) + "\n").encode())


def atomic_savez(path: str | os.PathLike, **arrays) -> None:
    """Uncompressed: compressing anomaly maps would save about 15% of the bytes and cost
    about 40 ms per 518 px map."""
    with atomic_file(path) as file:
        np.savez(file, **arrays)


def nan_to_none(value):
    """JSON has no NaN: undefined metrics are written as null."""
    if isinstance(value, dict):
        return {k: nan_to_none(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class OutputError(ValueError):
    """An output path that cannot be written; raised before any long work starts."""


def _nearest_existing(path: Path) -> Path:
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return existing


def check_output_folder(path: str | os.PathLike, flag: str) -> Path:
    """Fail now, not after the long work, if `path` cannot become a folder this run writes into.
    Creates nothing (a failed start must not leave a half-made run behind)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{flag} {path} is a file, not a folder: choose another path or move the file")
    existing = _nearest_existing(path)
    if not existing.is_dir():
        raise OutputError(f"{flag} {path} lies under {existing}, which is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"{flag} {path}: cannot write in {existing} (permission denied); choose another path")
    # os.access says yes on special file systems (/proc, /sys) and to root on a read-only mount: try for real,
    # with a probe folder removed at once, so that this check still creates nothing
    try:
        os.rmdir(tempfile.mkdtemp(dir=existing, prefix=".write-probe-"))
    except OSError as error:
        raise OutputError(f"{flag} {path}: cannot create anything in {existing} ({error.strerror or error}); "
                          "choose a folder on a writable disk") from None
    return path


def check_output_file(path: str | os.PathLike, flag: str, overwrite: bool = True) -> Path:
    """Fail now if `path` cannot be written (its folder is checked as `check_output_folder` does)."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{flag} {path} is a folder; give a file name")
    if path.exists() and not overwrite:
        raise OutputError(f"{flag} {path} already exists; choose another name, or pass --overwrite to replace it")
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputError(f"{flag} {path}: the file is not writable")
    check_output_folder(path.parent, flag)
    return path


STAGING_FOLDER = ".incoming"  # where a run that replaces an earlier one (--overwrite) writes until it is complete


def staging_folder(folder: str | os.PathLike) -> Path:
    """A fresh folder inside `folder` for the files of a run that will replace an earlier run's (--overwrite):
    the earlier files stay untouched until `swap_in`, so an interrupted or failed run costs nothing."""
    staging = Path(folder) / STAGING_FOLDER
    if staging.is_dir():
        shutil.rmtree(staging)  # a killed earlier attempt's
    staging.mkdir(parents=True)
    return staging


def swap_in(staging: Path, folder: Path, earlier: list[Path]) -> None:
    """The new run's files are complete in `staging`: move each onto its place in `folder` (a file replaces
    a file atomically), then remove the earlier run's files that the new run did not replace."""
    folder = Path(folder)
    replaced = folder / ".replaced"
    if replaced.exists():
        shutil.rmtree(replaced)
    moved = set()
    for item in sorted(staging.iterdir()):
        target = folder / item.name
        if target.is_dir() and not target.is_symlink():  # a folder cannot be renamed onto a full one
            replaced.mkdir(exist_ok=True)
            os.replace(target, replaced / item.name)
        os.replace(item, target)
        moved.add(target)
    for path in map(Path, earlier):
        if path in moved or path == staging or not (path.exists() or path.is_symlink()):
            continue
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    staging.rmdir()
    if replaced.exists():
        shutil.rmtree(replaced)


INTERRUPTED_STATUS = 130  # what a shell reports for a process ended by Ctrl-C (128 + SIGINT)


def run_cli(main, script: str, exit_status=None, on_interrupt=None):
    """Run a script's `main`, the one way every script ends: bad input (every project error is a ValueError,
    raised by library code) ends in one line naming the fix, not a traceback; Ctrl-C ends in one line and
    status 130 (files are written atomically, so none is left half done; `on_interrupt` may say or tidy what a
    run leaves partial). `exit_status(result)`, when given, turns main's result into the exit status."""
    try:
        result = main()
    except ValueError as error:
        _print_held_warnings()
        raise SystemExit(f"{script}: {error}") from None
    except OSError as error:  # the disk or the system refused (full, read-only, vanished): say so in one line
        where = f" ({error.filename})" if error.filename and str(error.filename) not in str(error) else ""
        raise SystemExit(f"{script}: {error}{where}") from None
    except KeyboardInterrupt:
        note = on_interrupt() if on_interrupt else None
        print(f"{script}: interrupted; every file written so far is complete (atomic writes)"
              + (f"; {note}" if note else ""), file=sys.stderr, flush=True)
        raise SystemExit(INTERRUPTED_STATUS) from None
    if exit_status is not None:
        raise SystemExit(exit_status(result))
    return result
