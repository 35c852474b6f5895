"""The shape of a paper's numbers and protocol, which each method's `paper.py` fills in.

`summarize.py` lays results out like the paper's tables from these rows, `train.sh` and
`test.sh` read the protocol (which auxiliary datasets train, which checkpoint evaluates
which dataset) from them, and every dataset key is a `generate_dataset_json` registry
name (a test checks it): the dataset names live in one registry. A training set is one
registry name, or several joined by `+` (`mvtec+colondb`: AdaCLIP's authors train on both
at once, in that order: `train.py --train_data_path A B --dataset a b`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

COMBINED = "+"  # joins the datasets of a training set trained in one run (train.sh and test.sh split on it too)


def training_datasets(training_set: str) -> tuple[str, ...]:
    """The registry names of a training set, in training order: `mvtec+colondb` -> ('mvtec', 'colondb')."""
    return tuple(training_set.split(COMBINED))


NO_TRAINING = None  # a protocol's "training set" for a training-free method (WinCLIP): no checkpoint
NO_TRAINING_WORD = "-"  # how `python -m models.paper METHOD test` prints it for test.sh


@dataclass(frozen=True)
class PaperRow:
    """One dataset of a paper's tables: its title, which table, and the reported values (percent)."""

    title: str
    table: str  # a key of the paper's TABLES
    values: dict  # metric key -> percent
    aliases: tuple[str, ...] = ()  # other labels a results.json may carry (compared without case or punctuation)


def row(title, table, columns, numbers, aliases=()) -> PaperRow:
    return PaperRow(title, table, dict(zip(columns, numbers)), tuple(aliases))


@dataclass(frozen=True)
class AblationRow:
    """One row of an ablation table: the settings that differ from the method's defaults, and the paper's numbers."""

    label: str
    settings: dict  # setting name (models/*/config.py) -> value; {} is the paper's model
    values: dict = field(default_factory=dict)  # metric key -> percent; {} where the paper's number is unavailable


@dataclass(frozen=True)
class Ablation:
    """An ablation table as a settings grid: every row trained on `training`, evaluated on `dataset`."""

    heading: str
    dataset: str  # registry name of the evaluated dataset
    training: str  # the training set the rows train on (registry names joined by COMBINED)
    columns: tuple  # metric keys
    rows: tuple  # AblationRow, in the paper's order
    note: str = ""  # what the paper's table has that these rows cannot express, or where its numbers come from


@dataclass(frozen=True)
class Paper:
    title: str
    rows: dict  # registry name -> PaperRow, in the paper's row order
    tables: dict  # table key -> (heading, metric columns)
    training: tuple  # (training set, extra train.py flags) in train.sh's order; a set: names joined by COMBINED
    # dataset -> the training set its checkpoint was trained on (NO_TRAINING: a training-free method's)
    evaluation: dict = field(default_factory=dict)
    ablations: dict = field(default_factory=dict)  # table key -> Ablation (reproduce.py runs them)


def main(argv=None) -> int:
    """`python -m models.paper METHOD train|test`: the protocol as lines for train.sh and test.sh.

    train: `TRAINING_SET FLAG...` per training run; test: `DATASET TRAINING_SET` per evaluation (a training
    set: a registry name, or several joined by `+`, trained together in one run)
    `python -m models.paper default` prints the default method, `... methods` every registered one."""
    import argparse
    import sys

    from .registry import DEFAULT_METHOD, get_method, method_names

    argv = sys.argv[1:] if argv is None else argv
    if argv in (["default"], ["methods"]):
        print(DEFAULT_METHOD if argv == ["default"] else " ".join(method_names()))
        return 0

    parser = argparse.ArgumentParser(prog="python -m models.paper", description=main.__doc__)
    parser.add_argument("method", choices=method_names())
    parser.add_argument("stage", choices=("train", "test"))
    args = parser.parse_args(argv)
    paper = get_method(args.method).paper_tables()
    if args.stage == "train":
        for auxiliary, flags in paper.training:
            print(" ".join((auxiliary, *flags)))
    else:
        for dataset, auxiliary in paper.evaluation.items():
            print(dataset, NO_TRAINING_WORD if auxiliary is NO_TRAINING else auxiliary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
