"""Model and training settings, declared once as dataclass fields and turned into every script's flags.

Each method declares its settings as a dataclass whose fields come from `setting(...)`:
the default, the help text, and what the setting is for (`kind`):

* ``shape``: fixes the shape of trained tensors (prompt lengths...). Recorded in the
  checkpoint; `test.py`/`predict.py` read it from there, and a flag that contradicts
  the checkpoint is an error naming both.
* ``recorded``: decided at training time and recorded (the quirks switch); only
  `train.py` has the flag, the other scripts follow the checkpoint.
* ``output``: changes the outputs but no tensor (layers, image size...). Recorded,
  and free to override at test time.
* ``test``: only used at test time (smoothing, fusion weight); not recorded.
* ``train``: training hyperparameters (in a method's training dataclass).

A setting may also be marked ``trained=True``: it *selects* trained parameters (VCP-CLIP's
`features_list` picks the layer each trained linear head is applied to). Its kind may allow
a test-time flag, but a value other than the checkpoint's is refused: the trained weights
would be applied where they were never trained. Overriding any other recorded setting is
allowed and logged.

Every flag's value is checked as it is parsed: numbers must be finite (no `nan`, `inf`),
and the field's `check` (a range) applies to each value, so a bad flag fails at once with
argparse's usage line, not after the model has loaded.

Nothing here imports torch, so `--help` stays fast.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
from typing import Any, Callable

KINDS = ("shape", "recorded", "output", "test", "train")
# Which kinds become flags in which script; test-like scripts default every flag to
# None ("the checkpoint's, else the method's default").
SCRIPT_KINDS = {
    "train": ("shape", "recorded", "output", "train"),
    "test": ("shape", "output", "test"),
}


def setting(default: Any, help: str, *, kind: str = "output", type: Callable | None = None,
            nargs: str | None = None, choices=None, flag: str | None = None, metavar: str | None = None,
            check: Callable[[Any], str | None] | None = None, trained: bool = False):
    """A dataclass field carrying what its command-line flag needs.

    `flag` overrides the flag's name (a boolean that defaults to True is switched off by a
    negative flag such as `--no_global_context`); `check` returns an error message or None;
    `trained`: the setting selects trained parameters (module docstring).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown setting kind {kind!r}")
    if isinstance(default, bool) and default and flag is None and type is None:
        raise ValueError("a boolean setting that defaults to True needs a negative `flag` (or a `type` that "
                         "parses a value: `--use_hsf False`)")
    metadata = {"help": help, "kind": kind, "type": type, "nargs": nargs, "choices": choices, "flag": flag,
                "metavar": metavar, "check": check, "trained": trained}
    if isinstance(default, (list, dict, set)):
        raise ValueError("use a tuple for sequence defaults")
    return dataclasses.field(default=default, metadata=metadata)


def fields_of(config_class, kinds=KINDS) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(config_class) if f.metadata.get("kind", "output") in kinds]


def selects_trained_parameters(field: dataclasses.Field) -> bool:
    return bool(field.metadata.get("trained"))


def flag_type(field: dataclasses.Field) -> Callable | None:
    """The argparse type of a setting's flag: its `type`, then finite numbers only, then its `check`."""
    convert, check, many = field.metadata.get("type"), field.metadata.get("check"), field.metadata.get("nargs")
    if convert is None:
        return None

    def parse(text: str):
        value = convert(text)
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        message = check(value) if check and not many else None  # a list's own checks run on the whole list
        if message:
            raise argparse.ArgumentTypeError(message)
        return value

    parse.__name__ = getattr(convert, "__name__", "value")  # argparse names it in "invalid float value: 'x'"
    return parse


def flag_name(field: dataclasses.Field) -> str:
    return field.metadata.get("flag") or f"--{field.name}"


def _default_text(value) -> str:
    if isinstance(value, tuple):
        return " ".join(map(str, value))
    return str(value)


class _Refused(argparse.Action):
    """A reference flag whose meaning here would be the opposite or nothing: an error that says why."""

    def __init__(self, option_strings, dest, message: str = "", **kwargs):
        super().__init__(option_strings, dest, nargs=0, help=argparse.SUPPRESS, **kwargs)
        self.message = message

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string}: {self.message}")


def add_setting_flags(group, config_class, script: str) -> None:
    """Add one flag per setting of `config_class` that `script` ('train' or 'test') takes.

    For 'train' the flags carry the method's defaults; for 'test' they default to None,
    which means: the checkpoint's value, else the method's default. A class may list
    `REFUSED_FLAGS` ({flag: why}): reference flags that are an error here.
    """
    from_checkpoint = script != "train"
    for option, message in getattr(config_class, "REFUSED_FLAGS", {}).items():
        group.add_argument(option, action=_Refused, message=message, dest=f"_refused_{option.strip('-')}")
    for field in fields_of(config_class, SCRIPT_KINDS[script]):
        meta = field.metadata
        kind = meta["kind"]
        default = field.default
        if from_checkpoint:
            where = "the checkpoint's, else " if kind in ("shape", "output") else ""
            help_text = f"{meta['help']} (default: {where}{_default_text(default)})"
        else:
            help_text = f"{meta['help']} (default: {_default_text(default)})"
        if isinstance(default, bool) and meta["type"] is None:  # a switch: no "(default: ...)"
            help_text = meta["help"] + (" (default: the checkpoint's)" if from_checkpoint else "")
            group.add_argument(flag_name(field), dest=field.name, action="store_const", const=not default,
                               default=None if from_checkpoint else default, help=help_text)
            continue
        options = {"dest": field.name, "help": help_text, "type": flag_type(field), "metavar": meta["metavar"]}
        if meta["nargs"]:
            options["nargs"] = meta["nargs"]
        if meta["choices"]:
            options["choices"] = meta["choices"]
        if from_checkpoint:
            options["default"] = None
        else:
            options["default"] = list(default) if isinstance(default, tuple) else default
        group.add_argument(flag_name(field), **{k: v for k, v in options.items() if v is not None or k == "default"})


def values_from_args(args: argparse.Namespace, config_class, kinds=KINDS) -> dict:
    """The values given on the command line for `config_class`'s settings (None: not given)."""
    return {f.name: getattr(args, f.name) for f in fields_of(config_class, kinds) if hasattr(args, f.name)}


def to_dict(config) -> dict:
    """JSON-ready values of a settings dataclass (tuples as lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}


def from_dict(config_class, values: dict):
    """Build a settings dataclass from a dict, ignoring keys it does not know (older or newer files)."""
    known = {f.name for f in dataclasses.fields(config_class)}
    return config_class(**{k: v for k, v in values.items() if k in known})


def setting_problems(config) -> list[str]:
    """What every field's `check` finds wrong, each naming its flag (for one ValueError listing all)."""
    problems = []
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        check = field.metadata.get("check")
        if isinstance(value, float) and not math.isfinite(value):
            message = f"must be a finite number, got {value}"
        else:
            message = check(value) if check else None
        if message:
            problems.append(f"{flag_name(field)} {message}")
    return problems


def positive(value) -> str | None:
    """A rate or scale that must be above 0 (a learning rate of 0 or below trains nothing, or backwards)."""
    return None if value > 0 else f"must be > 0, got {value}"


def at_least(minimum: int) -> Callable[[Any], str | None]:
    def check(value):
        if isinstance(value, tuple):
            bad = [v for v in value if v < minimum]
            return f"values must be >= {minimum}, got {list(value)}" if bad else None
        return None if value >= minimum else f"must be >= {minimum}, got {value}"
    return check


def non_empty(value) -> str | None:
    return None if value else "needs at least one value"


def method_from_argv(argv) -> str:
    """The `--model` value of a command line, read before the full parser exists: the flags a
    script offers depend on the method. An unknown name falls back to the default so that the
    full parser reports it with the valid choices."""
    import sys

    from .registry import DEFAULT_METHOD, method_names

    # No abbreviations: a method's own flag may start like --model (APRIL-GAN's --mode).
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--model", default=DEFAULT_METHOD)
    known, _ = pre.parse_known_args(sys.argv[1:] if argv is None else argv)
    return known.model if known.model in method_names() else DEFAULT_METHOD


def add_method_flag(parser, chosen: str) -> None:
    from .registry import DEFAULT_METHOD, get_method, method_names

    titles = ", ".join(f"{name} ({get_method(name).title})" for name in method_names())
    parser.add_argument("--model", choices=method_names(), default=DEFAULT_METHOD,
                        help=f"the method: {titles}. The flags below are {get_method(chosen).title}'s; "
                             "`--model NAME --help` lists another method's")
